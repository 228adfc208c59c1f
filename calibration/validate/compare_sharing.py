"""Re-predict a recorded ``capsim validate`` JSON under each way of modelling the shared cores.

The measurements stay as recorded; only the prediction changes, so the models are compared on
identical cells (a new run would measure a different machine state). Usage:

    python3 calibration/validate/compare_sharing.py validation.json [more.json ...] [--host-ms 13] [--cores 2]
        [--corun 1:0.47,4:0.44,8:0.41/0.5] [--cells]

Each record is predicted without ``cpu_sharing``, with the average (fluid) sharing, and, where a
co-run is known (the record's own, or ``--corun`` for records made before validate measured one:
model speeds by batch size / the decode's speed), moment to moment. Each prediction is compared
both ways: with the long-run percentiles (``steady``) and with what a run of the record's length
measures (``window``, :func:`capsim.validate.validate.window_percentiles`).

``--host-ms``: the server's CPU per request outside the model, for records made before validate
measured it; ``--cores``: the cores of the machine the record was made on (default: the
record's, else 2).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from capsim.plan import with_rate
from capsim.simulate import simulate
from capsim.validate.validate import TARGET_MAX_LOAD, _err, scenario_for, share_cores, window_percentiles

RAW = ("sharing", "compute_ratio_alone", "calibration_slowdown", "corun")


def parse_corun(text: str) -> dict:
    speeds, pre = text.split("/")
    model = {int(b): float(v) for b, v in (p.split(":") for p in speeds.split(","))}
    return {"model_speed": model, "preprocess_speed": float(pre), "model_alone_cv": {1: 0.064}}


def errors(d: dict, host: dict, windows: bool) -> tuple[float, float, list[str]]:
    ov, st = d["overhead"], d["settings"]
    errs: dict[str, list[float]] = {"p50": [], "p95": []}
    cells = []
    for c in d["cells"]:
        sc = with_rate(scenario_for(d["profile"], ov, c["max_batch_size"], c["max_queue_delay_ms"], st["instances"],
                                    st["preprocess_workers"], 1.0, st["seed"], host), c["rate_rps"])
        sim = simulate(sc)
        p = sim.latency_ms
        if windows and sim.stable:
            p = window_percentiles(sc, st["duration_s"], [st["seed"] + r for r in range(st.get("repeat") or 1)])
        for k in errs:
            e = _err(p[k], c["measured"][k]) if sim.stable else None
            if c["load"] <= TARGET_MAX_LOAD + 1e-9:
                errs[k].append(abs(e) if e is not None else float("inf"))
        e95 = _err(p["p95"], c["measured"]["p95"]) if sim.stable else None
        cells.append(f"B={c['max_batch_size']} load {c['load']:.2f}: "
                     + (f"{e95:+.0f} %" if e95 is not None else "unstable"))
    return float(np.median(errs["p50"])), float(np.median(errs["p95"])), cells


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("records", nargs="+")
    ap.add_argument("--host-ms", type=float)
    ap.add_argument("--cores", type=int)
    ap.add_argument("--corun", help="model speeds by batch size / decode speed, for records without a co-run")
    ap.add_argument("--cells", action="store_true", help="print every cell's p95 error")
    a = ap.parse_args()
    for path in a.records:
        d = json.load(open(path))
        ov, st = dict(d["overhead"]), d["settings"]
        if a.host_ms is not None and ov.get("host_cpu_ms") is None:
            ov["host_cpu_ms"] = a.host_ms
        d["overhead"] = ov
        base = {k: v for k, v in ov["host"].items() if k not in RAW}
        cores = a.cores or (ov["host"].get("sharing") or {}).get("cores") or 2
        fluid = dict(base)
        share_cores(fluid, ov, st.get("threads"), st["instances"], cores=cores)
        if "sharing" not in fluid:
            raise SystemExit(f"{path}: no CPU per request recorded; pass --host-ms")
        variants = [("no sharing", base), ("average", fluid)]
        corun = ov["host"].get("corun") or (parse_corun(a.corun) if a.corun else None)
        if corun:
            moment = dict(base)
            share_cores(moment, ov, st.get("threads"), st["instances"], cores=cores, corun=corun)
            own = "own co-run" if ov["host"].get("corun") else "--corun"
            variants.append((f"moment ({own})", moment))
        print(path)
        for name, h in variants:
            for windows in (False, True):
                p50, p95, cells = errors(d, h, windows)
                label = f"{name}, {'window' if windows else 'steady'}"
                print(f"  {label:32s} median |error| over loads <= {TARGET_MAX_LOAD}: p50 {p50:5.1f} %, "
                      f"p95 {p95:5.1f} %", flush=True)
                if a.cells:
                    print("      p95: " + "; ".join(cells))


if __name__ == "__main__":
    main()
