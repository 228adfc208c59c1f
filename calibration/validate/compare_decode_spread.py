"""Re-predict a recorded validation's cells with and without the decode's own spread
(``service.preprocess.cv``, the noop run's), on the same measurements (nothing is run again).
Before the simulator drew each decode's time with several workers, a server with two or more
decode threads was predicted with a fixed decode time.

    python calibration/validate/compare_decode_spread.py calibration/validate/device-2026-11-27/validation.json \\
        calibration/validate/device-2026-11-27/resnet18-onnxruntime-cpu-fp32.json

The second argument is the profile where the record's own path (on the machine that ran it) is
not here. Prints, for each variant, each cell's p50 and p95 and the pre-processing stage's p95
(predicted / measured) and the median |error| of p50 and p95 over loads <= 0.85.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from capsim.plan import with_rate
from capsim.simulate import simulate
from capsim.validate import event_loop
from capsim.validate.validate import TARGET_MAX_LOAD, _err, scenario_for, stage_p95, stage_times, window_percentiles
from rederive import derive  # calibration/validate/rederive.py


def main(path: str, profile: str | None = None) -> None:
    record = json.load(open(path))
    if profile:
        record["profile"] = profile
    ov, st = record["overhead"], record["settings"]
    host = derive(record)
    handoff = (event_loop.overhead_stage(host) or {}).get("handoff_ms", 0.0)
    print(f"{st['preprocess_workers']} decode thread(s); the noop run's decode cv {ov['decode_cv']:.2f}")
    for label, spread in (("a fixed decode time", False), ("the decode's own spread", True)):
        print(f"\n{label}:")
        errs = {"p50": [], "p95": []}
        for c in record["cells"]:
            sc = scenario_for(record["profile"], ov, c["max_batch_size"], c["max_queue_delay_ms"], st["instances"],
                              st["preprocess_workers"], c["rate_rps"], st["seed"], host, decode_spread=spread)
            sim = simulate(with_rate(sc, c["rate_rps"]))   # overload is reported as unstable, as validate does
            pred = window_percentiles(sc, st["duration_s"], [st["seed"] + r for r in range(st["repeat"])]) \
                if sim.stable else {}
            pre95 = stage_p95(stage_times(sim, handoff))["preprocess"] if sim.stable else None
            m = c["measured"]
            e = {k: _err(pred.get(k), m[k]) for k in ("p50", "p95")}
            if c["load"] <= TARGET_MAX_LOAD:
                for k, v in e.items():
                    if v is not None:
                        errs[k].append(abs(v))
            cell = "  ".join(f"{k} {_fmt(pred.get(k))}/{m[k]:6.1f} ({_fmt(e[k])} %)" for k in ("p50", "p95"))
            print(f"  B={c['max_batch_size']} D={c['max_queue_delay_ms']:g} load {c['load']:.2f}: {cell}  "
                  f"pre-processing p95 {_fmt(pre95)}/{_fmt((c['stages_p95'].get('preprocess') or [0, None])[1])}")
        print(f"  median |error| over loads <= {TARGET_MAX_LOAD}: p50 {np.median(errs['p50']):.1f} %  "
              f"p95 {np.median(errs['p95']):.1f} %", flush=True)


def _fmt(x) -> str:
    return f"{x:6.1f}" if x is not None else "     –"


if __name__ == "__main__":
    main(*sys.argv[1:3])
