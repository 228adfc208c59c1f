"""What would an exactly right model score on the recorded validations, once the machine's speed is
counted? Each record's cells predicted again (nothing is run again) and scored against runs
simulated with the machine's speed moving as the record shows it (:mod:`capsim.validate.machine_floor`):
each run at its own speed (the spread of the recorded runs' drifts within a cell) and the
calibrations' mean off by its own error. The records do not keep the rows, so the runs' own
sampling variance is not taken out of their spread here (``capsim validate`` takes it out): the
floor printed here is a little high.

    python calibration/validate/compare_machine_floor.py calibration/validate/vm-2core-2026-11-2*/validation.json

Prints per record the chance floor, the machine floor (median and range over the draws) and the
record's own median |error|, for p50 and p95 over the cells at loads <= 0.85.
"""

from __future__ import annotations

import json
import math
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from capsim.plan import with_rate
from capsim.validate import machine_floor as mf
from capsim.validate.validate import (TARGET_MAX_LOAD, WINDOW_DRAWS, Cell, Validation, scenario_for,
                                      window_percentiles, window_run)
from rederive import derive  # calibration/validate/rederive.py


def floors(path: str) -> dict:
    record = json.load(open(path))
    ov, st = record["overhead"], record["settings"]
    host = derive(record, fit_decode=bool(ov["host"].get("decode_speed")))
    cells = [c for c in record["cells"] if c["load"] <= TARGET_MAX_LOAD]
    run_sd = mf.run_spread([[(math.log(r["drift"]), 0.0) for r in c["measured"].get("per_run", []) if r.get("drift")]
                            for c in cells])
    if run_sd is None:
        return {"name": Path(path).parent.name, "run_sd": None}
    cals = [ov["opening"], *ov.get("between", []), *([ov["closing"]] if ov.get("closing") else [])]
    se = mf.calibration_errors([c["host"] for c in cals])
    rng = np.random.default_rng([st["seed"], 2718])
    offsets = mf.calibration_offsets(se, WINDOW_DRAWS, rng)
    seeds = [st["seed"] + r for r in range(st["repeat"])]
    out_cells = []
    for c in cells:
        def at(k, c=c):
            return with_rate(scenario_for(record["profile"], ov, c["max_batch_size"], c["max_queue_delay_ms"],
                                          st["instances"], st["preprocess_workers"], 1.0, st["seed"], host, speed=k),
                             c["rate_rps"])
        w = window_percentiles(at(1.0), st["duration_s"], seeds)
        cell = Cell(c["max_batch_size"], c["max_queue_delay_ms"], c["load"], c["rate_rps"], {}, c["measured"])
        cell.errors_pct = {q: (w[q] - c["measured"][q]) / c["measured"][q] * 100 for q in ("p50", "p95")}
        cell.chance_pct = w["chance_errors_pct"] or {}
        cell.machine_pct = mf.cell_errors(
            w["draws_by_run"], lambda r, d, k, at=at: window_run(at(k), st["duration_s"], seeds[r], d),
            [o(c["max_batch_size"]) for o in offsets], run_sd, rng) or {}
        out_cells.append(cell)
    v = Validation(record["model"], record["profile"], ov, out_cells, [], st,
                   {"run_sd": run_sd, "calibration_se": se})
    return {"name": Path(path).parent.name, "run_sd": run_sd, "se": se,
            **{q: (v.median_abs_error(q), v.chance_floor(q), v.machine_floor(q)) for q in ("p50", "p95")}}


def main(paths: list[str]) -> None:
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        for r in pool.map(floors, paths):
            if r["run_sd"] is None:
                print(f"{r['name']}: one run per cell, no spread from run to run to read; skipped")
                continue
            se = ", ".join(f"b{b} ±{100 * v:.1f} %" for b, v in r["se"].items())
            parts = [f"{r['name']}: run to run ±{100 * r['run_sd']:.1f} %, calibrations' mean {se};"]
            for q in ("p50", "p95"):
                err, chance, machine = r[q]
                parts.append(f"{q} error {err:.1f} %, chance floor {chance['median']:.1f} %, machine floor "
                             f"{machine['median']:.1f} % ({machine['low']:.1f}-{machine['high']:.1f});")
            print(" ".join(parts), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
