"""Side experiment: does a batch run slower after the model sat idle? resnet18 on ONNX Runtime CPU
FP32 with the server's own runner (2 threads), timed back to back and after idle gaps of 30-150 ms
(busy-waiting the last 2 ms so the gap is exact), the gaps in turns so that drift hits them alike.

    python3 calibration/validate/vm-2core-2026-11-26f/idle_gaps.py > idle_gaps.txt
"""
import time

import numpy as np

from capsim.validate.server import load_model


def wait(ms: float) -> None:
    """Sleep ``ms``, busy-waiting the last 2 ms so that the gap is what it says."""
    end = time.perf_counter() + ms / 1000.0
    while time.perf_counter() < end - 0.002:
        time.sleep(0.001)
    while time.perf_counter() < end:
        pass

host = load_model("resnet18", None, "onnxruntime", "cpu", "fp32", 1, threads=2)
runner = host.runners[0]
xs = {b: runner.prepare(np.random.default_rng(b).standard_normal((b, 3, 224, 224)).astype(np.float32))
      for b in (1, 4)}
for x in xs.values():
    for _ in range(3):
        runner.time_call(x)
GAPS = {1: (0, 30, 80, 150), 4: (0, 80, 150)}
times = {(b, g): [] for b, gaps in GAPS.items() for g in gaps}


for _ in range(6):
    for b, gaps in GAPS.items():
        for g in gaps:
            for _ in range(4):
                wait(g)
                times[b, g].append(runner.time_call(xs[b]))
for b, gaps in GAPS.items():
    base = np.mean(times[b, 0])
    for g in gaps:
        m = np.mean(times[b, g])
        print(f"batch {b}, idle {g:3d} ms before: mean {m * 1e3:6.1f} ms ({(m - base) * 1e3:+5.1f} ms, x{m / base:.3f}), "
              f"median {np.median(times[b, g]) * 1e3:6.1f} ms, n={len(times[b, g])}")
