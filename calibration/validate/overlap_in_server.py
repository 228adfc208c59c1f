"""How much slower a batch runs beside a decode inside the server, read off one load run's rows
(``capsim load --out rows.csv`` against a B=1 server with one decode thread): each batch's time
regressed on how long it ran beside other requests' decodes, and each decode's on how long it
ran beside other batches. The slowest 1 % are left out.

    python calibration/validate/overlap_in_server.py calibration/validate/device-2026-11-27/stall-rows-vm-2core-12rps.csv

A decode ends when its pre-processing does (the hand-off back is short) and starts its decode
time before that; a batch starts after the pre-processing and the queue wait. A slope k per
overlapped ms is a speed of 1 - k while overlapped, to set beside the co-run's.
"""

from __future__ import annotations

import csv
import sys

import numpy as np


def main(path: str) -> None:
    rows = [r for r in csv.DictReader(open(path)) if r["outcome"] == "ok"]
    col = lambda k: np.array([float(r[k]) for r in rows])  # noqa: E731
    sent, pre, dec = col("sent_s") * 1000.0, col("X-Preprocess-Ms"), col("X-Decode-Ms")
    wait, comp = col("X-Queue-Wait-Ms"), col("X-Batch-Compute-Ms")
    d_end = sent + pre
    d_start = d_end - dec
    b_start = d_end + wait
    b_end = b_start + comp
    beside_decode, beside_batch = np.zeros(len(rows)), np.zeros(len(rows))
    for i in range(len(rows)):
        o = np.clip(np.minimum(b_end[i], d_end) - np.maximum(b_start[i], d_start), 0, None)
        o[i] = 0.0
        beside_decode[i] = o.sum()
        o = np.clip(np.minimum(d_end[i], b_end) - np.maximum(d_start[i], b_start), 0, None)
        o[i] = 0.0
        beside_batch[i] = o.sum()
    for name, y, x in (("batch", comp, beside_decode), ("decode", dec, beside_batch)):
        keep = y < np.quantile(y, 0.99)
        alone, slope = np.linalg.lstsq(np.vstack([np.ones(keep.sum()), x[keep]]).T, y[keep], rcond=None)[0]
        print(f"{name}: {alone:.2f} ms alone, +{slope:.3f} ms per ms beside the other: speed x{1 - slope:.2f} "
              f"while overlapped ({np.mean(x > 0):.0%} of them overlapped, {len(rows)} requests)")


if __name__ == "__main__":
    main(sys.argv[1])
