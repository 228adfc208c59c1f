"""How much slower a batch runs beside a decode inside the server, read off one load run's rows
(``capsim load --out rows.csv`` against a server with one decode thread, any batch size): each
batch's time regressed on how long it ran beside other requests' decodes (one intercept per batch
size), and each decode's on how long it ran beside batches. The slowest 1 % are left out.

    python calibration/validate/overlap_in_server.py calibration/validate/device-2026-11-27/stall-rows-vm-2core-12rps.csv

A decode ends when its pre-processing does (the hand-off back is short) and starts its decode
time before that; a batch starts after the pre-processing and the queue wait. The requests of one
batch share its instance, size and compute time. A slope k per overlapped ms is a speed of
1 - k while overlapped, to set beside the co-run's.

A batch that runs slow for any reason stays beside more decodes, so that slope mixes cause and
effect. The second batch figure counts only the decodes within the batch's *nominal* span (the
median time of its size) from its start, which its own slowness does not lengthen; as that span
misses the decodes a stretched batch meets after it, its slope reads somewhat high too.
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict

import numpy as np


def overlap(start: np.ndarray, end: np.ndarray, a: float, b: float) -> float:
    """Total time the intervals [start, end) spend inside [a, b)."""
    return float(np.clip(np.minimum(b, end) - np.maximum(a, start), 0, None).sum())


def slope(y: np.ndarray, x: np.ndarray, groups: np.ndarray) -> tuple[float, dict[int, float]]:
    """Least squares of ``y`` on ``x`` with one intercept per group, the slowest 1 % of each group
    (with over 20 members) left out: (the slope, each group's intercept)."""
    keep = np.ones(len(y), bool)
    for g in np.unique(groups):
        sel = groups == g
        if sel.sum() > 20:
            keep[sel] &= y[sel] <= np.quantile(y[sel], 0.99)
    names = [g for g in np.unique(groups) if (keep & (groups == g)).sum() >= 3]
    keep &= np.isin(groups, names)
    X = np.column_stack([(groups[keep] == g).astype(float) for g in names] + [x[keep]])
    coef = np.linalg.lstsq(X, y[keep], rcond=None)[0]
    return float(coef[-1]), {int(g): float(c) for g, c in zip(names, coef)}


def main(path: str) -> None:
    rows = [r for r in csv.DictReader(open(path)) if r["outcome"] == "ok"]
    col = lambda k: np.array([float(r[k]) for r in rows])  # noqa: E731
    sent, pre, dec = col("sent_s") * 1000.0, col("X-Preprocess-Ms"), col("X-Decode-Ms")
    wait, comp, size = col("X-Queue-Wait-Ms"), col("X-Batch-Compute-Ms"), col("X-Batch-Size").astype(int)
    d_end = sent + pre
    d_start = d_end - dec
    b_start = d_end + wait
    members: dict[tuple, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        members[(r.get("X-Instance"), comp[i], size[i])].append(i)
    batches = list(members.values())
    bs = np.array([size[m[0]] for m in batches])
    bt = np.array([comp[m[0]] for m in batches])
    start = np.array([np.median(b_start[m]) for m in batches])
    nominal = {b: float(np.median(bt[bs == b])) for b in np.unique(bs)}
    # decodes within [start, start + span); a batch's own requests were decoded before it started
    actual = np.array([overlap(d_start, d_end, start[k], start[k] + bt[k]) for k in range(len(batches))])
    fixed = np.array([overlap(d_start, d_end, start[k], start[k] + nominal[bs[k]]) for k in range(len(batches))])
    for label, x in (("its own span", actual), ("its size's median span", fixed)):
        k, alone = slope(bt, x, bs)
        sizes = ", ".join(f"b{b} {alone[b]:.1f} ms" for b in sorted(alone))
        print(f"batch ({label}): alone {sizes}; +{k:.3f} ms per ms beside a decode: speed x{1 - k:.2f} while "
              f"overlapped ({np.mean(x > 0):.0%} of {len(batches)} batches overlapped, {len(rows)} requests)")
    e_start, e_end = start, start + bt
    by_decode = np.array([overlap(e_start, e_end, d_start[i], d_end[i]) for i in range(len(rows))])
    k, alone = slope(dec, by_decode, np.zeros(len(rows), int))
    print(f"decode: {alone[0]:.2f} ms alone, +{k:.3f} ms per ms beside a batch: speed x{1 - k:.2f} while "
          f"overlapped ({np.mean(by_decode > 0):.0%} of them overlapped, {len(rows)} requests)")


if __name__ == "__main__":
    main(sys.argv[1])
