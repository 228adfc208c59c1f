"""Number of requests in the system seen by each arrival, and its trend: the stability test's data."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _trend(arrival, dep_sorted, first):
    """Least-squares slope of the backlog seen by arrivals ``first..`` against their index, and the last backlog.

    The backlog at arrival i is i + 1 minus the departures at or before it; both arrays are sorted,
    so one merge pass counts them (a binary search per arrival costs 10x more).
    """
    n = arrival.shape[0]
    m = n - first
    gone = 0
    sx = 0.0
    sy = 0.0
    sxy = 0.0
    sxx = 0.0
    last = 0
    for i in range(first, n):
        a = arrival[i]
        while gone < dep_sorted.shape[0] and dep_sorted[gone] <= a:
            gone += 1
        y = float(i + 1 - gone)
        x = float(i - first)
        sx += x
        sy += y
        sxy += x * y
        sxx += x * x
        last = i + 1 - gone
    if m < 3:
        return 0.0, last
    den = m * sxx - sx * sx
    return (m * sxy - sx * sy) / den, last


def backlog_trend(arrival: np.ndarray, leave: np.ndarray, first: int) -> tuple[float, int]:
    """(growth per arrival, final backlog) of the requests from index ``first`` on.

    ``leave`` is each request's departure or drop time (NaN sorts last: never left).
    """
    if first >= len(arrival):
        return 0.0, 0
    return _trend(np.ascontiguousarray(arrival, dtype=np.float64), np.sort(leave), first)
