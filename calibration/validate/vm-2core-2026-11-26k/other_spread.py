"""What a spread of the `other` stage (HTTP, event loop, client) would be worth in record k.

Each cell is simulated long-run with the record's own calibration (as `capsim validate` builds
it), and its latencies are re-read three ways: as predicted (A: `other` the noop run's constant),
with the in-server mean of `other` at the calibration rate as a constant (B), and with `other`
drawn from a gamma of that mean and a cv of 0.55 (C: the cells' p95 of `other` is about 1.9 times
its mean, which a gamma of cv 0.55 gives). Prints each cell's p50/p95 error and the medians. The
latencies are the long-run ones, not the 15-s windows, so only the differences between A, B and
C mean something.

    python calibration/validate/vm-2core-2026-11-26k/other_spread.py calibration/validate/vm-2core-2026-11-26k/validation.json
"""

import json
import sys

import numpy as np

from capsim.simulate import simulate
from capsim.validate.validate import _err, scenario_for

CV = 0.55

v = json.load(open(sys.argv[1]))
ov, host, st = v["overhead"], v["overhead"]["host"], v["settings"]
rng = np.random.default_rng(0)
other = host["other_ms"]
res = {"A": [], "B": [], "C": []}
for c in v["cells"]:
    sc = scenario_for(v["profile"], ov, c["max_batch_size"], c["max_queue_delay_ms"], st["instances"],
                      st["preprocess_workers"], c["rate_rps"], st["seed"], host)
    r = simulate(sc)
    lat = np.concatenate([t.latency_ms[t.completed & ~t.warmup] for t in r.traces])
    k = 1 / CV ** 2
    variants = {"A": lat, "B": lat - ov["overhead_ms"] + other,
                "C": lat - ov["overhead_ms"] + rng.gamma(k, other / k, len(lat))}
    line = []
    for name, lat_v in variants.items():
        e = [_err(float(np.percentile(lat_v, q)), c["measured"][f"p{q}"]) for q in (50, 95)]
        res[name].append(e)
        line.append(f"{name} {e[0]:+.1f}/{e[1]:+.1f}")
    print(f"B={c['max_batch_size']} load {c['load']:.2f}: " + "  ".join(line))
print(f"other: noop run {ov['overhead_ms']:.2f} ms, in the server at the calibration rate {other:.2f} ms")
for name, e in res.items():
    m = np.median(np.abs(np.array(e)), axis=0)
    print(f"{name}: median |error| p50 {m[0]:.1f} %, p95 {m[1]:.1f} %")
