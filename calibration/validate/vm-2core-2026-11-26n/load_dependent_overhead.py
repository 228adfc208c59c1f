"""Would a load-dependent overhead help? (Tried, not built.)

In the cells the measured `other` grows with load (record m, B=1: 5.8 ms at load 0.3 to 7.5 ms
at 0.85). Here each request's overhead (`capsim validate`'s `overhead_ms`/`overhead_cv`) is
slowed by 1/preprocess_speed (the decode's co-run speed) for the half spent at arrival and the
half after the response, each while a batch runs at that instant, scaled so that the mean
stays what was measured at the calibration rate. Each cell is simulated long-run, and the
latencies are read as predicted (A) and with that slowdown (B). Only the differences between A
and B mean something (the JSON's predictions are 15-s windows).

    python calibration/validate/vm-2core-2026-11-26n/load_dependent_overhead.py \
        calibration/validate/vm-2core-2026-11-26m/validation.json calibration/validate/vm-2core-2026-11-26n/validation.json
"""
import json, sys
import numpy as np
from capsim.simulate import simulate
from capsim.validate.validate import _err, scenario_for
from capsim.validate.event_loop import overhead_stage

def busy_at(t, starts, ends):
    # merged intervals: one instance, batches don't overlap
    i = np.searchsorted(starts, t, side="right") - 1
    ok = i >= 0
    out = np.zeros(len(t), bool)
    out[ok] = t[ok] < ends[i[ok]]
    return out

def slow_factor(tr, m, ps):
    s, e = tr.batch_start, tr.batch_end
    o = np.argsort(s); s, e = s[o], e[o]
    fa = np.where(busy_at(tr.arrival[m], s, e), 1 / ps, 1.0)
    fd = np.where(busy_at(tr.done[m], s, e), 1 / ps, 1.0)
    return 0.5 * (fa + fd)

for path in sys.argv[1:]:
    v = json.load(open(path))
    ov, host, st = v["overhead"], v["overhead"]["host"], v["settings"]
    ps = host["sharing"]["overlap"]["preprocess_speed"]
    o = overhead_stage(host)
    # anchor: mean slowdown at the calibration rate (B=1)
    sc = scenario_for(v["profile"], ov, 1, 0, st["instances"], st["preprocess_workers"], host["rate_rps"], st["seed"], host)
    r = simulate(sc)
    k_cal = np.mean(np.concatenate([slow_factor(t, t.completed & ~t.warmup, ps) for t in r.traces]))
    res = {"A": [], "B": []}
    for c in v["cells"]:
        sc = scenario_for(v["profile"], ov, c["max_batch_size"], c["max_queue_delay_ms"], st["instances"],
                          st["preprocess_workers"], c["rate_rps"], st["seed"], host)
        r = simulate(sc)
        la, lb, ks = [], [], []
        for t in r.traces:
            m = t.completed & ~t.warmup
            ov_i = t.latency_ms[m] - (t.done - t.arrival)[m] * 1000
            f = slow_factor(t, m, ps) / k_cal
            ks.append(f.mean())
            la.append(t.latency_ms[m]); lb.append(t.latency_ms[m] - ov_i + ov_i * f)
        la, lb = np.concatenate(la), np.concatenate(lb)
        line = []
        for name, lat in (("A", la), ("B", lb)):
            e = [_err(float(np.percentile(lat, q)), c["measured"][f"p{q}"]) for q in (50, 95)]
            res[name].append(e); line.append(f"{name} {e[0]:+.1f}/{e[1]:+.1f}")
        print(f"B={c['max_batch_size']} load {c['load']:.2f}: overhead x{np.mean(ks):.2f}  " + "  ".join(line))
    print(path, f"k_cal {k_cal:.2f}")
    for name, e in res.items():
        m = np.median(np.abs(np.array(e)), axis=0)
        print(f"  {name}: median |error| p50 {m[0]:.1f} %, p95 {m[1]:.1f} %")
