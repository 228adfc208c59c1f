"""Which calibrations should a config be predicted from? A recorded validation predicted again
(nothing is run again) from the mean of all its calibrations (what ``capsim validate`` does), from
the two either side of each config (the one before it and the one after), and from the one before
it alone; and from the median of all (each figure's median over the calibrations); the mean of
all also with the overlap strength fitted (``--overlap-fit``).

    python calibration/validate/compare_calibration_choice.py calibration/validate/vm-2core-2026-11-26{w,x,y,z}/validation.json

Prints the median |error| of p50 and p95 over loads <= 0.85 for each choice (``--centres``: the
mean of all and the median of all only). Needs records with
calibrations between the configs (from record w on).
"""

from __future__ import annotations

import copy
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from capsim.validate.validate import TARGET_MAX_LOAD, _err, mean_host, mean_of, scenario_for, window_percentiles
from rederive import derive  # calibration/validate/rederive.py


def from_calibrations(record: dict, cals: list[dict], center: str = "mean") -> dict:
    """The record as if it had been predicted from ``cals`` only (the co-run, measured once, kept)."""
    r = copy.deepcopy(record)
    overhead = mean_of([{k: v for k, v in c.items() if k != "host"} for c in cals], center)
    host = mean_host([c["host"] for c in cals], center)
    host["sharing"], host["corun"] = record["overhead"]["host"]["sharing"], record["overhead"]["host"]["corun"]
    r["overhead"] = {**overhead, "host": host}
    return r


def errors(record: dict, pick, fit_strength: bool = False, center: str = "mean") -> dict[str, float]:
    o, st = record["overhead"], record["settings"]
    cals = [o["opening"], *o.get("between", []), o["closing"]]
    configs = list(dict.fromkeys((c["max_batch_size"], c["max_queue_delay_ms"]) for c in record["cells"]))
    errs = {"p50": [], "p95": []}
    for i, cfg in enumerate(configs):
        r = from_calibrations(record, pick(cals, i), center)
        host = derive(r, fit_strength=fit_strength, fit_decode=bool(o["host"].get("decode_speed")))
        for c in record["cells"]:
            if (c["max_batch_size"], c["max_queue_delay_ms"]) != cfg or c["load"] > TARGET_MAX_LOAD:
                continue
            sc = scenario_for(record["profile"], r["overhead"], cfg[0], cfg[1], st["instances"],
                              st["preprocess_workers"], c["rate_rps"], st["seed"], host)
            w = window_percentiles(sc, st["duration_s"], [st["seed"] + k for k in range(st["repeat"])])
            for q in errs:
                errs[q].append(abs(_err(w[q], c["measured"][q])))
    return {q: float(np.median(v)) for q, v in errs.items()}


CHOICES = {"mean of all": lambda cals, i: cals,
           "either side": lambda cals, i: [cals[i], cals[i + 1]],
           "before it": lambda cals, i: [cals[i]]}


def compare(path: str, centres_only: bool) -> str:
    record = json.load(open(path))
    o = record["overhead"]
    n_configs = len({(c["max_batch_size"], c["max_queue_delay_ms"]) for c in record["cells"]})
    if len([o.get("opening"), *o.get("between", []), o.get("closing")]) != n_configs + 1:
        return f"{Path(path).parent.name}: no calibration between the configs; skipped"
    parts = [f"{Path(path).parent.name}:"]
    for label, pick in CHOICES.items():
        if centres_only and label != "mean of all":
            continue
        e = errors(record, pick)
        parts.append(f"{label} p50 {e['p50']:.1f} / p95 {e['p95']:.1f} %;")
    e = errors(record, CHOICES["mean of all"], center="median")
    parts.append(f"median of all p50 {e['p50']:.1f} / p95 {e['p95']:.1f} %;")
    if not centres_only:
        e = errors(record, CHOICES["mean of all"], fit_strength=True)
        parts.append(f"mean of all with --overlap-fit p50 {e['p50']:.1f} / p95 {e['p95']:.1f} %")
    return " ".join(parts)


def main(paths: list[str], centres_only: bool = False) -> None:
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        for line in pool.map(compare, paths, [centres_only] * len(paths)):
            print(line, flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    # --centres: only the mean of all against the median of all
    main([a for a in args if a != "--centres"], "--centres" in args)
