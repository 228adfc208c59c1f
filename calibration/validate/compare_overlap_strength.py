"""Does the co-run's overlap slowdown hold in the server at full strength? Recorded validations
predicted again (nothing is run again) with the co-run's extra time ``1 / speed - 1`` scaled by
a fixed overlap strength ``s`` (``server_fit.set_strength``; ``s = 1`` is what ``capsim validate``
does), and the strength chosen for each record from the *other* records (leave one out), so the
record it is scored on never chose it.

    python calibration/validate/compare_overlap_strength.py calibration/validate/vm-2core-2026-11-26{v,w,x,y,z}/validation.json ...

Prints, per strength, each record's median |error| of p50 and p95 over the cells at loads <= 0.85
that the prediction finds stable (as ``capsim validate`` counts them), the median error of the
cells' mean compute time by load, and the leave-one-out result.
"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from collections import defaultdict

import numpy as np

from capsim.plan import with_rate
from capsim.simulate import simulate
from capsim.validate import event_loop
from capsim.validate.validate import (TARGET_MAX_LOAD, _err, predicted_stages, scenario_for, window_percentiles)
from rederive import derive  # calibration/validate/rederive.py

STRENGTHS = (1.0, 0.75, 0.5, 0.25, 0.0)


def cell_errors(record: dict, host: dict) -> list[dict]:
    """Each stable cell's p50, p95 and mean compute error (%), with its batch size and load."""
    ov, st = record["overhead"], record["settings"]
    handoff = (event_loop.overhead_stage(host) or {}).get("handoff_ms", 0.0)
    out = []
    for c in record["cells"]:
        if c["load"] > TARGET_MAX_LOAD:
            continue
        base = scenario_for(record["profile"], ov, c["max_batch_size"], c["max_queue_delay_ms"], st["instances"],
                            st["preprocess_workers"], 1.0, st["seed"], host)
        sc = with_rate(base, c["rate_rps"])
        sim = simulate(sc)
        if not sim.stable:
            continue
        pred = window_percentiles(sc, st["duration_s"], [st["seed"] + r for r in range(st["repeat"])])
        compute = predicted_stages(sim, base, handoff)["compute"]
        out.append({"b": c["max_batch_size"], "load": c["load"],
                    "p50": _err(pred.get("p50"), c["measured"]["p50"]),
                    "p95": _err(pred.get("p95"), c["measured"]["p95"]),
                    "compute": _err(compute, c["stages"]["compute"][1])})
    return out


def med(cells: list[dict], key: str) -> float:
    v = [abs(c[key]) for c in cells if c[key] is not None]
    return float(np.median(v)) if v else float("nan")


def one(path: str, s: float) -> list[dict]:
    """The record's cells predicted again at strength ``s``."""
    record = json.load(open(path))
    return cell_errors(record, derive(record, fit_decode=bool(record["overhead"]["host"].get("decode_speed")),
                                      strength=s))


def main(paths: list[str]) -> None:
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        jobs = {(p, s): pool.submit(one, p, s) for p in paths for s in STRENGTHS}
        table: dict[str, dict[float, list[dict]]] = {}
        for (path, s), job in jobs.items():
            name = path.split("/")[-2]
            cells = table.setdefault(name, {})[s] = job.result()
            print(f"{name} s {s:.2f}: p50 {med(cells, 'p50'):5.1f} %  p95 {med(cells, 'p95'):5.1f} %  "
                  f"({len(cells)} stable cells)", flush=True)
    print("\nmedian error of the cells' mean compute time (signed, %), by load, over all records:")
    for s in STRENGTHS:
        by_load = defaultdict(list)
        for rows in table.values():
            for c in rows[s]:
                if c["compute"] is not None:
                    by_load[c["load"]].append(c["compute"])
        print(f"  s {s:.2f}: " + "  ".join(f"load {L:.2f} {np.median(v):+5.1f}" for L, v in sorted(by_load.items())))
    print("\nleave one out (the strength with the lowest mean of the other records' p50 and p95 medians):")
    for name in table:
        def score(s: float) -> float:
            return float(np.mean([med(table[o][s], q) for o in table if o != name for q in ("p50", "p95")]))
        best = min(STRENGTHS, key=score)
        own, chosen = table[name][1.0], table[name][best]
        print(f"  {name}: s {best:.2f}: p50 {med(own, 'p50'):5.1f} -> {med(chosen, 'p50'):5.1f} %, "
              f"p95 {med(own, 'p95'):5.1f} -> {med(chosen, 'p95'):5.1f} %")


if __name__ == "__main__":
    main(sys.argv[1:])
