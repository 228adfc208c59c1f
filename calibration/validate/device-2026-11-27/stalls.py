"""Where the 16-core machine's queue-wait tail comes from: a B=1 server (resnet18, ONNX Runtime
CPU, 4 threads, 2 decode threads) at 31 and 52 rps for 25 s, one row per request with the
server's timing headers (``calibration/validate/stall_rows.sh``). For each rate: the stages'
percentiles; the dispatch gap (how long the instance stayed idle while a request waited: the
event loop's delay); compute by how much of the batch overlapped decodes; and whether the slow
batches (over 2x the median) come at random or in spells, from the autocorrelation of the
batch-time ratio in 50 ms bins.

    python calibration/validate/device-2026-11-27/stalls.py [rows.csv ...]
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent


def main(paths: list[str]) -> None:
    for path in paths or sorted(str(p) for p in HERE.glob("stall-rows-*.csv")):
        rows = [r for r in csv.DictReader(open(path)) if r["outcome"] == "ok"]
        col = lambda k: np.array([float(r[k]) for r in rows])  # noqa: E731
        sent, pre, dec = col("sent_s") * 1000, col("X-Preprocess-Ms"), col("X-Decode-Ms")
        wait, comp, held = col("X-Queue-Wait-Ms"), col("X-Batch-Compute-Ms"), col("X-Batch-Overhead-Ms")
        lat = col("latency_ms")
        enq = sent + pre
        start = enq + wait
        end = start + comp + held
        print(f"{Path(path).name}: {len(rows)} requests")
        for name, x in (("latency", lat), ("queue wait", wait), ("compute", comp), ("decode", dec)):
            p50, p95, p99 = np.percentile(x, [50, 95, 99])
            print(f"  {name:10s} mean {x.mean():6.1f}  p50 {p50:6.1f}  p95 {p95:6.1f}  p99 {p99:6.1f}  max {x.max():6.1f} ms")
        o = np.argsort(start)
        prev_end = np.concatenate([[-np.inf], end[o][:-1]])
        gap = start[o] - np.maximum(enq[o], prev_end)
        print("  dispatch gap (instance idle while a request waited) p50 %.2f  p99 %.2f  max %.2f ms" %
              (*np.percentile(gap, [50, 99]), gap.max()))
        d_end = enq - (pre - dec) / 2   # the decode's interval, give or take the hand-offs
        d_start = d_end - dec
        overlap = np.array([np.clip(np.minimum(end[i] - held[i], d_end) - np.maximum(start[i], d_start), 0, None).sum()
                            for i in range(len(rows))]) / comp
        for lo, hi in ((0, 0.01), (0.01, 0.5), (0.5, 1.0), (1.0, np.inf)):
            m = (overlap >= lo) & (overlap < hi)
            if not m.any():
                continue
            print(f"  decodes beside the batch {lo:.2f}-{hi:.2f} of its time: {m.sum():4d} batches, "
                  f"compute mean {comp[m].mean():5.1f}  p95 {np.percentile(comp[m], 95):5.1f} ms")
        ratio = comp / np.median(comp)
        t = start / 1000.0
        bins = (t / 0.05).astype(int)
        s, n = np.zeros(bins.max() + 1), np.zeros(bins.max() + 1)
        np.add.at(s, bins, ratio - 1)
        np.add.at(n, bins, 1)
        x = np.where(n > 0, s / np.maximum(n, 1), 0.0)
        x -= x.mean()
        ac = np.correlate(x, x, "full")[len(x) - 1:]
        ac /= ac[0]
        lags = np.arange(len(ac)) * 0.05
        m = (lags > 0.5) & (lags < 5)
        top = np.argsort(ac[m])[::-1][:4]
        slow = ratio > 2
        print(f"  slow batches (over 2x the median): {slow.sum()} of {len(rows)} ({100 * slow.mean():.1f} %), at "
              + ", ".join(f"{v:.1f}" for v in np.sort(t[slow])[:16]) + " s ...")
        print("  autocorrelation of the batch-time ratio, highest at lags "
              + ", ".join(f"{lags[m][k]:.2f} s ({ac[m][k]:.2f})" for k in top))


if __name__ == "__main__":
    main(sys.argv[1:])
