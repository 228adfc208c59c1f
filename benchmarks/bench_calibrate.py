"""Calibration speed and rigor: resnet18 on ONNX Runtime, FP32 and INT8, batches 1,2,4,8.

Prints how long each calibration took (target: FP32 within 90 s on a 2-core machine), the
widest 95 % interval of a median (target: within +-3 %), and the INT8/FP32 speed ratio per batch,
both measured in this run.

    python benchmarks/bench_calibrate.py [--model resnet18] [--batch-sizes 1,2,4,8]
"""

from __future__ import annotations

import argparse
import time

from capsim.calibrate.run import calibrate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--batch-sizes", default="1,2,4,8")
    args = ap.parse_args()
    sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    runs = {}
    for precision in ("fp32", "int8"):
        t = time.perf_counter()
        data = calibrate(model=args.model, backend="onnxruntime", precision=precision, batch_sizes=sizes,
                         prepost=False)
        runs[precision] = (time.perf_counter() - t, data)
    hw = runs["fp32"][1]["hardware"]
    print(f"calibration benchmark: {args.model}, onnxruntime CPU, batches {args.batch_sizes}, "
          f"{hw['cpu_model']}, {hw['threads_used']} threads")
    print(f"{'precision':10s} {'wall s':>7s} {'target':>8s} {'widest CI':>10s} {'all stable':>11s}")
    for precision, (wall, data) in runs.items():
        widest = max(b["ci_pct"] for b in data["batches"])
        stable = all(b["stable"] for b in data["batches"])
        target = "<= 90 s" if precision == "fp32" else ""
        print(f"{precision:10s} {wall:7.1f} {target:>8s} {widest:9.2f}% {str(stable):>11s}")
    print(f"\n{'batch':>6s} {'fp32 ms':>9s} {'int8 ms':>9s} {'int8 speed-up':>14s}")
    f32 = {b["batch_size"]: b["median_ms"] for b in runs["fp32"][1]["batches"]}
    i8 = {b["batch_size"]: b["median_ms"] for b in runs["int8"][1]["batches"]}
    for b in sorted(set(f32) & set(i8)):
        print(f"{b:6d} {f32[b]:9.3f} {i8[b]:9.3f} {f32[b] / i8[b]:13.2f}x")
    fid = runs["int8"][1]["fidelity"]
    print(f"\nINT8 fidelity vs FP32 (same weights, same inputs): top-1 agreement {fid['top1_agreement']:.1%}, "
          f"cosine {fid['cosine_similarity']:.4f}")


if __name__ == "__main__":
    main()
