"""Could anything known before a cell have told its speed? Two candidates, on the recorded
validations (nothing is run again):

- **the cell before it**: each run's drift (the model's speed in the run over the prediction's,
  ``measured.per_run``) against the drift of the run just before it in time (the runs of a config
  go round the loads, repeat after repeat): their correlation per record, and the RMS of the log
  drift left when each run is predicted as is (drift 1) or at the run before it's drift;
- **a steady drift by batch size and load**: each record's cells predicted again at the median
  drift the *other* records measured for the same (B, load), against the plain prediction.

    python calibration/validate/compare_drift_predictors.py \
        calibration/validate/vm-2core-2026-11-26{v,w,x,y,z}/validation.json \
        calibration/validate/vm-2core-2026-11-27{a,b,c,d,e,f,g,h}/validation.json
"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from capsim.plan import with_rate
from capsim.validate.validate import TARGET_MAX_LOAD, _err, scenario_for, window_percentiles
from rederive import derive  # calibration/validate/rederive.py


def runs_in_time_order(record: dict) -> list[list[float]]:
    """Per config, the runs' log drifts in the order they ran."""
    out = []
    configs = list(dict.fromkeys((c["max_batch_size"], c["max_queue_delay_ms"]) for c in record["cells"]))
    for cfg in configs:
        cells = [c for c in record["cells"] if (c["max_batch_size"], c["max_queue_delay_ms"]) == cfg]
        seq = []
        for rep in range(max(len(c["measured"].get("per_run", [])) for c in cells)):
            for c in cells:
                runs = c["measured"].get("per_run", [])
                if rep < len(runs) and runs[rep].get("drift"):
                    seq.append(float(np.log(runs[rep]["drift"])))
        out.append(seq)
    return out


def cell_drift(cell: dict) -> float | None:
    d = [r["drift"] for r in cell["measured"].get("per_run", []) if r.get("drift")]
    return float(np.median(d)) if d else None


def predicted_at(path: str, drifts: dict) -> tuple[float, float, float, float]:
    """Median |error| of p50 and p95 over the cells at loads <= 0.85, plain and at ``drifts[(B, load)]``."""
    record = json.load(open(path))
    ov, st = record["overhead"], record["settings"]
    host = derive(record, fit_decode=bool(ov["host"].get("decode_speed")))
    errs = {k: [] for k in ("plain_p50", "plain_p95", "trend_p50", "trend_p95")}
    for c in record["cells"]:
        if c["load"] > TARGET_MAX_LOAD:
            continue
        for name, k in (("plain", 1.0), ("trend", drifts.get((c["max_batch_size"], c["load"]), 1.0))):
            sc = scenario_for(record["profile"], ov, c["max_batch_size"], c["max_queue_delay_ms"], st["instances"],
                              st["preprocess_workers"], 1.0, st["seed"], host, speed=k)
            w = window_percentiles(with_rate(sc, c["rate_rps"]), st["duration_s"],
                                   [st["seed"] + r for r in range(st["repeat"])])
            for q in ("p50", "p95"):
                e = _err(w.get(q), c["measured"][q])
                if e is not None:
                    errs[f"{name}_{q}"].append(abs(e))
    return tuple(float(np.median(errs[k])) for k in ("plain_p50", "plain_p95", "trend_p50", "trend_p95"))


def main(paths: list[str]) -> None:
    records = {p: json.load(open(p)) for p in paths}
    print("the run before it:")
    rms_as_is, rms_prev = [], []
    for p, rec in records.items():
        x, y = [], []
        for seq in runs_in_time_order(rec):
            x += seq[:-1]
            y += seq[1:]
        x, y = np.array(x), np.array(y)
        rms_as_is += list(y)
        rms_prev += list(y - x)
        print(f"  {Path(p).parent.name}: {len(x)} pairs, correlation {np.corrcoef(x, y)[0, 1]:.2f}")
    def rms(x):
        return 100 * np.sqrt(np.mean(np.square(x)))
    print(f"  log drift left (RMS, every record): predicted as is ±{rms(rms_as_is):.1f} %, "
          f"at the run before it's drift ±{rms(rms_prev):.1f} %")
    by_cell = {p: {(c["max_batch_size"], c["load"]): cell_drift(c) for c in rec["cells"]} for p, rec in records.items()}
    print("a steady drift by (B, load), learnt from the other records (median |error| p50 / p95, plain -> at it):")
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        jobs = {}
        for p in paths:
            drifts = {}
            for key in by_cell[p]:
                others = [by_cell[o][key] for o in paths if o != p and by_cell[o].get(key)]
                if others:
                    drifts[key] = float(np.median(others))
            jobs[p] = pool.submit(predicted_at, p, drifts)
        for p, job in jobs.items():
            a50, a95, b50, b95 = job.result()
            print(f"  {Path(p).parent.name}: {a50:.1f} / {a95:.1f} % -> {b50:.1f} / {b95:.1f} %", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
