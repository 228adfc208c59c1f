"""Re-predict recorded validations with the machine's speed swinging from second to second
(``service.speed_swings``), measured in each record's own batch-1 calibration runs; nothing is
run again.

    python calibration/validate/compare_speed_swings.py calibration/validate/vm-2core-2026-11-2*/validation.json

Records from before ``capsim validate`` kept each batch's start (``swing_runs``) have each
calibration run's batches as (idle time before it, compute time) in order (``idle_runs``); the
starts follow from those and the batch overhead: each batch starts its idle time after the one
before let go. The
swings are fitted over all the record's calibration runs beyond what the simulation without them
makes (:func:`capsim.validate.swings.fit` with its baseline), the
model's own spread refitted under them, and each cell predicted again as its runs measure it.
Prints the fitted swings and the median |error| of p50 and p95 over loads <= 0.85 with and
without them.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np

from capsim.validate import swings
from capsim.validate.validate import b1_batch_series
from rederive import derive, errors  # calibration/validate/rederive.py


def series_from_idle_runs(idle_runs, held_ms: float):
    """Each run's (start ms, compute ms) rebuilt from its (idle ms, compute ms) pairs."""
    out = []
    for gaps, compute in idle_runs:
        gaps, compute = np.asarray(gaps, float), np.asarray(compute, float)
        starts = np.cumsum(gaps + np.concatenate([[0.0], compute[:-1] + held_ms]))
        out.append((starts, compute))
    return out


def main(paths: list[str]) -> None:
    for path in paths:
        record = json.load(open(path))
        raw = record["overhead"]["host"]
        if raw.get("swing_runs"):
            runs = raw["swing_runs"]
        elif raw.get("idle_runs"):
            runs = series_from_idle_runs(raw["idle_runs"], raw.get("batch_overhead_ms", 0.0))
        else:
            print(f"{Path(path).parent.name}: no batch-1 runs kept; skipped")
            continue
        fit_decode = bool(raw.get("decode_speed"))
        host0 = derive(record, fit_decode=fit_decode)
        plain = errors(record, host0)
        st = record["settings"]
        fitted = swings.fit(runs, baseline=b1_batch_series(record["profile"], record["overhead"], host0,
                                                           st["instances"], st["preprocess_workers"], st["seed"]))
        with_swings = copy.deepcopy(record)
        with_swings["overhead"]["host"].update(speed_swings=fitted, swing_runs=None)
        host = derive(with_swings, fit_decode=fit_decode)
        e = errors(with_swings, host)
        print(f"{Path(path).parent.name}: swings cv {fitted['cv']:.3f} correlation {fitted['correlation']:.2f} "
              f"over {fitted['windows']} windows, own cv {host['own_cv']:.2f}; median |error| p50 {plain['p50']:.1f} "
              f"-> {e['p50']:.1f} %, p95 {plain['p95']:.1f} -> {e['p95']:.1f} %", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
