"""How does the machine's speed move, with nothing else running? The model alone (the server's own
runner), batches of the given sizes back to back in turns, every run's end time and duration
kept; then per size the spread of the window means (1, 5, 15, 60 s), their correlation with the
next window, and whether the few seconds just before a 15 s window predict it better than the
whole run's mean (the question a short speed probe before each validation cell would answer).

    python calibration/validate/speed_alone.py --seconds 600 --sizes 1 --out rows.json
    python calibration/validate/speed_alone.py --seconds 600 --sizes 1,8 --turn-s 5 --out rows.json
    python calibration/validate/speed_alone.py --rows rows.json          # the figures again

Nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def measure(model: str, sizes: list[int], seconds: float, turn_s: float, threads: int) -> list[tuple]:
    """(end time s, batch size, ms) of every run, the sizes in turns of ``turn_s`` seconds."""
    from capsim.validate.server import load_model

    host = load_model(model, None, "onnxruntime", "cpu", "fp32", 1, threads=threads)
    xs = {b: np.random.default_rng(b).standard_normal((b, *host.input_shape)).astype(np.float32) for b in sizes}
    for b in sizes:
        for _ in range(5):
            host.run(0, xs[b])
    rows, t0, turn = [], time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        b = sizes[turn % len(sizes)]
        end = min(time.perf_counter() + turn_s, t0 + seconds)
        while time.perf_counter() < end:
            _, ms = host.run(0, xs[b])
            rows.append((time.perf_counter() - t0, b, ms))
        turn += 1
    return rows


def windows(t: np.ndarray, ms: np.ndarray, width: float) -> np.ndarray:
    """Mean time per window of ``width`` seconds (windows without a run left out)."""
    k = (t // width).astype(int)
    return np.array([ms[k == i].mean() for i in np.unique(k)])


def report(rows: list[tuple]) -> list[str]:
    arr = np.array(rows, float)
    t, b, ms = arr[:, 0], arr[:, 1].astype(int), arr[:, 2]
    out = []
    for size in sorted(set(b.tolist())):
        sel = b == size
        cv = ms[sel].std() / ms[sel].mean()
        out.append(f"batch {size}: {sel.sum()} runs, median {np.median(ms[sel]):.1f} ms, cv {cv:.3f}")
        turns = len(set(b.tolist()))
        for width in (1, 5, 15, 60):
            w = np.log(windows(t[sel], ms[sel], width))
            if len(w) < 4:
                continue
            w -= w.mean()
            lag1 = np.corrcoef(w[:-1], w[1:])[0, 1]
            out.append(f"  {width:3d} s windows{' (of the run, in turns)' if turns > 1 else ''}: {len(w)}, "
                       f"spread ±{100 * w.std():.1f} %, correlation with the next {lag1:.2f}")
        if turns == 1:   # a probe of the 5 s just before each 15 s window, against the run's mean
            probe, mean = [], []
            for i in range(1, int(t[sel][-1] // 15)):
                win = ms[sel][(t[sel] >= 15 * i) & (t[sel] < 15 * (i + 1))].mean()
                pre = ms[sel][(t[sel] >= 15 * i - 5) & (t[sel] < 15 * i)].mean()
                probe.append(np.log(win / pre))
                mean.append(np.log(win / ms[sel].mean()))
            out.append(f"  a 15 s window from the 5 s before it: ±{100 * np.std(probe):.1f} %; "
                       f"from the run's mean: ±{100 * np.std(mean):.1f} %")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", help="figures from rows written before (--out) instead of measuring")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--sizes", default="1")
    ap.add_argument("--seconds", type=float, default=600.0)
    ap.add_argument("--turn-s", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="write the rows here (JSON)")
    a = ap.parse_args()
    if a.rows:
        rows = json.load(open(a.rows))
    else:
        rows = measure(a.model, [int(x) for x in a.sizes.split(",")], a.seconds, a.turn_s, a.threads)
        if a.out:
            json.dump(rows, open(a.out, "w"))
    print("\n".join(report(rows)))


if __name__ == "__main__":
    main()
