"""CPU stages with a FIFO pool of identical workers and a fixed time per request."""

from __future__ import annotations

import numpy as np


def fifo_pool(times: np.ndarray, service_s: float, workers: int) -> np.ndarray:
    """Departure times of requests entering at ``times`` (sorted) a FIFO pool of ``workers``.

    With equal service times and FIFO order, request i starts on the worker freed by request
    i - workers, so d[i] = max(a[i], d[i - c]) + s. For each residue class mod c this is the
    single-server recursion, solved in closed form: d[j] = (j + 1) s + max_{m <= j}(a[m] - m s).
    ``workers == 0`` means no pool at all: a pure delay of ``service_s``.
    """
    times = np.asarray(times, dtype=np.float64)
    if workers <= 0 or service_s == 0.0:
        return times + service_s
    out = np.empty_like(times)
    for r in range(min(workers, len(times))):
        a = times[r::workers]
        j = np.arange(len(a), dtype=np.float64) * service_s
        out[r::workers] = j + service_s + np.maximum.accumulate(a - j)
    return out
