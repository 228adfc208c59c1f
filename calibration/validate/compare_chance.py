"""How much of a recorded validation's error is chance and how much the machine (nothing is run
again): for each record, the cells predicted again as ``capsim validate`` predicts them now, and

- the **chance floor**: the median |error| an exactly right model would show over the cells at
  loads <= 0.85 from the runs' length alone (each service-time draw on the runs' own arrival
  schedules standing in for the measurement; :func:`capsim.validate.validate.chance_errors`), at
  the record's run length and at ``--also`` seconds;
- the runs' **raw noise** (half the range of their percentiles, as the records printed it) and
  their **own-error noise** (half the range of their errors, each run against the prediction for
  its own arrival schedule: :func:`capsim.validate.validate.run_error_noise`), medians over cells.

    python calibration/validate/compare_chance.py --also 60 calibration/validate/vm-2core-2026-11-2*/validation.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from capsim.validate.validate import TARGET_MAX_LOAD, _err, run_error_noise, scenario_for, window_percentiles
from rederive import derive  # calibration/validate/rederive.py


def floor(lists: list[list[float]]) -> tuple[float, float, float]:
    per_draw = np.median(np.abs(np.array(lists)), axis=0)
    return float(np.median(per_draw)), float(per_draw.min()), float(per_draw.max())


def main(paths: list[str], also: float | None) -> None:
    for path in paths:
        record = json.load(open(path))
        ov, st = record["overhead"], record["settings"]
        if st.get("repeat", 1) < 2 or not record["cells"][0]["measured"].get("per_run"):
            print(f"{Path(path).parent.name}: one run per cell or no per-run figures; skipped")
            continue
        host = derive(record, fit_decode=bool(ov["host"].get("decode_speed")))
        seeds = [st["seed"] + r for r in range(st["repeat"])]
        chance = {d: {"p50": [], "p95": []} for d in (st["duration_s"], also) if d}
        errs, raw, own = {"p50": [], "p95": []}, [], []
        for c in record["cells"]:
            if c["load"] > TARGET_MAX_LOAD:
                continue
            sc = scenario_for(record["profile"], ov, c["max_batch_size"], c["max_queue_delay_ms"], st["instances"],
                              st["preprocess_workers"], c["rate_rps"], st["seed"], host)
            for d in chance:
                w = window_percentiles(sc, d, seeds)
                for q in ("p50", "p95"):
                    chance[d][q].append(w["chance_errors_pct"][q])
                if d == st["duration_s"]:
                    for q in errs:
                        errs[q].append(abs(_err(w[q], c["measured"][q])))
                    noise = run_error_noise(w["per_run"], c["measured"]["per_run"])
                    own.append(noise["p95"])
                    runs = [r["p95"] for r in c["measured"]["per_run"]]
                    raw.append(100 * (max(runs) - min(runs)) / 2 / c["measured"]["p95"])
        parts = [f"{Path(path).parent.name} ({st['duration_s']:g} s x {st['repeat']}):",
                 f"error p50 {np.median(errs['p50']):.1f} % p95 {np.median(errs['p95']):.1f} %;"]
        for d, lists in chance.items():
            m50, _, _ = floor(lists["p50"])
            m95, lo, hi = floor(lists["p95"])
            parts.append(f"chance at {d:g} s p50 {m50:.1f} % p95 {m95:.1f} % ({lo:.1f}-{hi:.1f});")
        parts.append(f"p95 noise raw ±{np.median(raw):.1f} %, own errors ±{np.median(own):.1f} %")
        print(" ".join(parts), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("records", nargs="+")
    ap.add_argument("--also", type=float, help="also the chance floor at runs of this many seconds")
    a = ap.parse_args()
    main(a.records, a.also)
