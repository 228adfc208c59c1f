"""Timing one batch size with statistical care, as perf_analyzer does.

Warm-up first (a number of calls and a minimum time), then calls are timed one by one until the
95 % confidence interval of the median is within ``target_ci_pct`` of it and the last three
measurement windows agree within 10 % — or until the time cap. The stability verdict and the
interval are reported either way, never hidden.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

WINDOW_TOLERANCE = 0.10   # three consecutive windows within 10 % (perf_analyzer's stability rule)
MAX_STORED_SAMPLES = 2000


def median_ci(samples: np.ndarray, z: float = 1.96) -> tuple[float, float]:
    """Distribution-free 95 % interval of the median from order statistics (binomial ranks)."""
    s = np.sort(samples)
    n = len(s)
    half = z * math.sqrt(n) / 2.0
    lo = max(int(math.floor(n / 2.0 - half)), 0)
    hi = min(int(math.ceil(n / 2.0 + half)), n - 1)
    return float(s[lo]), float(s[hi])


def windows_stable(samples: np.ndarray, window: int) -> bool:
    """True when the medians of the last three windows of ``window`` calls are within 10 % of their mean."""
    if len(samples) < 3 * window:
        return False
    meds = [float(np.median(samples[len(samples) - (i + 1) * window: len(samples) - i * window])) for i in range(3)]
    centre = float(np.mean(meds))
    return all(abs(m - centre) <= WINDOW_TOLERANCE * centre for m in meds)


def measure(call: Callable[[], float], batch_size: int, target_ci_pct: float = 2.0, max_seconds: float = 20.0,
            min_reps: int = 30, warmup_calls: int = 5, warmup_seconds: float = 0.5,
            progress: Callable[[dict], None] | None = None) -> dict:
    """Time ``call`` (which returns the seconds one model call took) until the median is pinned down.

    Returns the per-batch record stored in a profile: samples, median, mean, p95, p99, the
    interval of the median, its half-width in %, repetitions, the stability verdict.
    """
    start = time.perf_counter()
    n_warm = 0
    while n_warm < warmup_calls or time.perf_counter() - start < warmup_seconds:
        call()
        n_warm += 1
        if time.perf_counter() - start > max_seconds / 4:
            break
    t_measure = time.perf_counter()
    samples: list[float] = []
    converged = False
    next_check = min_reps
    while True:
        samples.append(call() * 1000.0)
        elapsed = time.perf_counter() - t_measure
        if len(samples) >= next_check or elapsed >= max_seconds:
            arr = np.asarray(samples)
            med = float(np.median(arr))
            lo, hi = median_ci(arr)
            ci_pct = 100.0 * max(med - lo, hi - med) / med
            window = max(10, len(arr) // 6)
            stable = windows_stable(arr, window)
            if progress:
                progress({"batch_size": batch_size, "reps": len(arr), "median_ms": med, "ci_pct": ci_pct,
                          "elapsed_s": elapsed})
            if ci_pct <= target_ci_pct and stable:
                converged = True
                break
            if elapsed >= max_seconds:
                break
            next_check = len(samples) + max(10, len(samples) // 4)
    arr = np.asarray(samples)
    med = float(np.median(arr))
    lo, hi = median_ci(arr)
    stored = arr if len(arr) <= MAX_STORED_SAMPLES else \
        arr[np.linspace(0, len(arr) - 1, MAX_STORED_SAMPLES).astype(int)]
    return {
        "batch_size": batch_size,
        "median_ms": med,
        "mean_ms": float(arr.mean()),
        "p95_ms": float(np.percentile(arr, 95)),
        "p99_ms": float(np.percentile(arr, 99)),
        "ci_ms": [lo, hi],
        "ci_pct": 100.0 * max(med - lo, hi - med) / med,
        "reps": int(len(arr)),
        "warmup_calls": n_warm,
        "stable": bool(windows_stable(arr, max(10, len(arr) // 6))),
        "converged": converged,
        "images_per_s": batch_size / med * 1000.0,
        "elapsed_s": time.perf_counter() - start,
        "samples_ms": [round(float(x), 5) for x in stored],
    }
