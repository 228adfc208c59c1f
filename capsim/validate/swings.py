"""How much the machine's speed swings from second to second, measured in the server's own
batch-1 calibration runs (``service.speed_swings``).

Each run's batches are put in windows of ``window_s`` by when they started, and each batch time
is taken over its run's mean (so that the drift from one run to the next, which the calibrations'
mean already answers, does not count). The spread of the windows' means is partly the batches'
own spread, which a window of n batches shows divided by n; what is left is the machine's speed
moving: ``cv`` is the root of the windows' variance less the mean of each window's own variance
over its n. The lag-one ``correlation`` of the window means, over that same variance, says how
long a slow spell lasts.

The simulator's windows fall at a random phase, so a measured window straddles two of them (a
share u in one, 1 - u in the next, u uniform). With the windows' variance s2 and lag-one
correlation r, the measured means then have variance s2 (2/3 + r/3) and lag-one covariance
s2 (1/6 + 2r/3 + r^2/6): their correlation is 1/4 at r = 0. :func:`fit` solves those two for s2
and r, so that what it fits, simulated and measured the same way, gives back what was measured.
"""

from __future__ import annotations

import math

import numpy as np

from capsim.validate import protocol as P
from capsim.validate.idle import batch_start_ms

WINDOW_S = 1.0          # the unit the drift diagnostic reads a run's speed in
MIN_BATCHES = 3         # a window with fewer batches says little about its speed
MAX_CORRELATION = 0.95  # a series of a few dozen windows cannot tell 0.95 from 1


def batch_series(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(each batch's start in ms, its compute time in ms), in start order, from one load run's
    completed rows against a B=1 server (one batch per request; :func:`capsim.validate.idle.batch_start_ms`)."""
    ok = [r for r in rows if r["outcome"] == "ok" and r.get(P.H_COMPUTE) is not None]
    start = np.array([batch_start_ms(r) for r in ok])
    compute = np.array([r[P.H_COMPUTE] for r in ok], dtype=float)
    order = np.argsort(start, kind="stable")
    return start[order], compute[order]


def window_means(start_ms, compute_ms, window_s: float = WINDOW_S):
    """Per window with at least :data:`MIN_BATCHES` batches: (its index, its mean of the run-normalized
    batch times, its own variance over its count)."""
    start, compute = np.asarray(start_ms, float), np.asarray(compute_ms, float)
    if len(start) < 2 * MIN_BATCHES:
        return np.zeros(0, int), np.zeros(0), np.zeros(0)
    x = compute / compute.mean()
    k = np.floor((start - start[0]) / (window_s * 1000.0)).astype(int)
    idx, means, own = [], [], []
    for w in np.unique(k):
        v = x[k == w]
        if len(v) >= MIN_BATCHES:
            idx.append(w)
            means.append(v.mean())
            own.append(v.var(ddof=1) / len(v))
    return np.array(idx, int), np.array(means), np.array(own)


def moments(runs, window_s: float = WINDOW_S) -> tuple[float, float, int]:
    """(the window means' variance beyond their batches' own spread, their lag-one covariance, the
    windows read) over several runs' ``(start_ms, compute_ms)`` (:func:`batch_series`), each run
    about its own mean: its level is the calibration's."""
    idx, means, own = [], [], []
    for start, compute in runs:
        i, m, o = window_means(start, compute, window_s)
        if len(m) >= 2:
            idx.append(i)
            means.append(m - m.mean())
            own.append(o)
    n = sum(len(m) for m in means)
    if n < 4:
        return 0.0, 0.0, n
    dev = np.concatenate(means)
    between = float(np.mean(dev ** 2) * n / max(n - len(means), 1) - np.mean(np.concatenate(own)))
    lag = np.concatenate([m[:-1][np.diff(i) == 1] * m[1:][np.diff(i) == 1] for i, m in zip(idx, means)])
    return between, float(lag.mean()) if len(lag) else 0.0, n


def fit(runs, window_s: float = WINDOW_S, baseline=None) -> dict:
    """``service.speed_swings`` from several runs' ``(start_ms, compute_ms)`` (:func:`batch_series`),
    pooled: cv 0 when the window means spread no more than their batches' own spread explains.
    ``baseline`` (runs of the same kind from the simulation without swings) takes out what the
    model already makes window to window: a second with more arrivals has more decodes beside its
    batches. ``windows`` is how many windows it was read from."""
    between, lag, n = moments(runs, window_s)
    if baseline is not None:
        b_between, b_lag, _ = moments(baseline, window_s)
        between, lag = between - max(b_between, 0.0), lag - b_lag
    if n < 4 or between <= 0:
        return {"cv": 0.0, "window_s": window_s, "correlation": 0.0, "windows": n}
    rho = unstraddled_correlation(lag / between)
    spread = between / (2.0 / 3.0 + rho / 3.0)
    return {"cv": round(float(np.sqrt(spread)), 4), "window_s": window_s, "correlation": round(rho, 4),
            "windows": n}


def unstraddled_correlation(measured: float) -> float:
    """The windows' own lag-one correlation r whose straddled means show ``measured``: the root in
    [0, 1) of (1 + 4r + r^2) / (4 + 2r) = measured; 0 at or below 1/4."""
    m = float(measured)
    if not math.isfinite(m) or m <= 0.25:
        return 0.0
    b, c = 4.0 - 2.0 * m, 1.0 - 4.0 * m
    r = (-b + math.sqrt(b * b - 4.0 * c)) / 2.0
    return float(min(max(r, 0.0), MAX_CORRELATION))
