"""Re-predict a recorded ``capsim validate`` JSON with and without ``service.cpu_sharing``, and
with the cores shared moment to moment where the record holds a co-run (``overlap``).

The measurements stay as recorded; only the prediction changes, so the two models are compared
on identical cells (a new run would measure a different machine state). Usage:

    python3 calibration/validate/compare_sharing.py validation.json [--host-ms 13] [--cores 2] [--cells]

``--host-ms``: the server's CPU per request outside the model, for records made before validate
measured it; ``--cores``: the cores of the machine the record was made on (default: the record's,
else 2).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from capsim.plan import with_rate
from capsim.simulate import simulate
from capsim.validate.validate import TARGET_MAX_LOAD, _err, scenario_for, share_cores

RAW = ("sharing", "compute_ratio_alone", "calibration_slowdown", "corun")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("record")
    ap.add_argument("--host-ms", type=float)
    ap.add_argument("--cores", type=int)
    ap.add_argument("--cells", action="store_true", help="print every cell's p95")
    a = ap.parse_args()
    d = json.load(open(a.record))
    ov, st = dict(d["overhead"]), d["settings"]
    if a.host_ms is not None:
        ov["host_cpu_ms"] = a.host_ms
    host = {k: v for k, v in ov["host"].items() if k not in RAW}
    cores = a.cores or (ov["host"].get("sharing") or {}).get("cores") or 2
    fluid = dict(host)
    share_cores(fluid, ov, st.get("threads"), st["instances"], cores=cores)
    if "sharing" not in fluid:
        raise SystemExit(f"{a.record}: no CPU per request recorded; pass --host-ms")
    variants = [("without cpu_sharing", host), ("with cpu_sharing (fluid)", fluid)]
    if ov["host"].get("corun"):
        moment = dict(host)
        share_cores(moment, ov, st.get("threads"), st["instances"], cores=cores, corun=ov["host"]["corun"])
        variants.append(("moment to moment (co-run)", moment))
    for name, h in variants:
        errs: dict[str, list[float]] = {"p50": [], "p95": []}
        cells = []
        for c in d["cells"]:
            sc = scenario_for(d["profile"], ov, c["max_batch_size"], c["max_queue_delay_ms"], st["instances"],
                              st["preprocess_workers"], 1.0, st["seed"], h)
            p = simulate(with_rate(sc, c["rate_rps"])).to_dict()["latency_ms"]
            for k in errs:
                e = _err(p[k], c["measured"][k])
                if c["load"] <= TARGET_MAX_LOAD + 1e-9:
                    errs[k].append(abs(e) if e is not None else float("inf"))
            e95 = _err(p["p95"], c["measured"]["p95"])
            cells.append(f"B={c['max_batch_size']} load {c['load']:.2f}: "
                         + (f"{e95:+.0f} %" if e95 is not None else "unstable"))
        print(f"{name:28s} median |error| over loads <= {TARGET_MAX_LOAD}: p50 {np.median(errs['p50']):.1f} %, "
              f"p95 {np.median(errs['p95']):.1f} %")
        if a.cells:
            print("    p95: " + "; ".join(cells))


if __name__ == "__main__":
    main()
