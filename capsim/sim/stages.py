"""CPU stages with a FIFO pool of identical workers: a fixed time per request, or each request's
own time (stretched in the machine's slow spells); and each request's own overhead outside the
model."""

from __future__ import annotations

import numpy as np
from numba import njit


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


def stage_draws_ns(stage, n: int, rng: np.random.Generator) -> np.ndarray:
    """Each of ``n`` requests' time in ``stage`` (int ns): ``stage.ms``, or with ``stage.cv`` a
    gamma draw of that mean and spread."""
    mean_ns = stage.ms * 1e6
    if stage.cv <= 0:
        return np.full(n, int(round(mean_ns)), np.int64)
    return np.rint(gamma_draws(mean_ns, stage.cv, n, rng)).astype(np.int64)


def overhead_draws_ms(service, n: int, rng: np.random.Generator) -> np.ndarray | None:
    """Each of ``n`` requests' overhead (ms), a gamma draw of mean ``service.overhead_ms`` and
    spread ``service.overhead_cv`` from a stream of its own (so the service draws stay as they
    were); None when every request takes the same."""
    if service.overhead_cv <= 0 or service.overhead_ms <= 0:
        return None
    return gamma_draws(service.overhead_ms, service.overhead_cv, n, rng.spawn(1)[0])


def gamma_draws(mean: float, cv: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` gamma draws of that mean and coefficient of variation (shape 1 / cv^2)."""
    shape = 1.0 / cv ** 2
    return rng.gamma(shape, mean / shape, n)


def fifo_pool_each(times_ns: np.ndarray, service_ns: np.ndarray, workers: int, spells=None) -> np.ndarray:
    """Departures (int ns) from a FIFO pool of ``workers`` of requests entering at ``times_ns``
    (sorted), each taking its own ``service_ns``: each starts, in arrival order, on the worker
    free first. With several workers a short one can overtake a long one, so departures are not
    sorted. ``workers == 0`` means no pool: each request is delayed by its own time. With
    ``spells`` (:class:`capsim.sim.spells.SpellWindows`) a request that starts in a window takes
    that window's factor times its time."""
    a = np.ascontiguousarray(times_ns, dtype=np.int64)
    s = np.ascontiguousarray(service_ns, dtype=np.int64)
    if spells is None:
        return _pool(a, s, int(workers), _NO_SPELLS, _NO_SPELLS, _NO_FACTORS)
    return _pool(a, s, int(workers), spells.starts, spells.ends, spells.factors)


_NO_SPELLS = np.empty(0, np.int64)
_NO_FACTORS = np.empty(0, np.float64)


@njit(cache=True)
def _pool(a, s, c, starts, ends, factors):
    out = np.empty_like(a)
    free = np.full(max(c, 1), -(2 ** 62), np.int64)
    for i in range(len(a)):
        w = 0
        for k in range(1, c):
            if free[k] < free[w]:
                w = k
        t = a[i] if c <= 0 or a[i] > free[w] else free[w]
        d = s[i]
        if len(starts):
            j = np.searchsorted(starts, t, side="right") - 1
            if j >= 0 and t < ends[j]:
                d = np.int64(round(d * factors[j]))
        if c > 0:
            free[w] = t + d
        out[i] = t + d
    return out


def latest_frame_pool(times_ns: np.ndarray, source: np.ndarray, service_ns: int, workers: int,
                      n_sources: int) -> tuple[np.ndarray, np.ndarray]:
    """A FIFO pool of ``workers`` that keeps only each source's latest waiting frame.

    Frames (sorted by arrival, integer ns) wait for a worker in one FIFO line holding at most one
    frame per source: when a frame of source s arrives while an earlier frame of s still waits
    (no worker has picked it up), the earlier one is dropped at that instant and the new one joins
    the back of the line. A free worker takes the head of the line. At one instant, workers freed
    then pick up waiting frames before the arrival is handled, so a frame whose decode starts at
    t is never dropped by an arrival at t. Returns (departure ns, or -1 for a dropped frame; drop
    time ns, or -1 for a kept one).
    """
    return _latest(np.ascontiguousarray(times_ns, dtype=np.int64), np.ascontiguousarray(source, dtype=np.int64),
                   int(service_ns), int(workers), max(int(n_sources), 1))


@njit(cache=True)
def _serve(line, head, tail, dropped_at, free, t, done, waiting, src, s, c, now):
    """Workers free by ``now`` take waiting frames, oldest first; returns the new head of the line."""
    while head < tail:
        j = line[head]
        if dropped_at[j] >= 0:
            head += 1
            continue
        w = 0
        for k in range(1, c):
            if free[k] < free[w]:
                w = k
        if free[w] > now:
            break
        start = free[w] if free[w] > t[j] else t[j]
        done[j] = start + s
        free[w] = done[j]
        if waiting[src[j]] == j:
            waiting[src[j]] = -1
        head += 1
    return head


@njit(cache=True)
def _latest(t, src, s, c, n_src):
    n = len(t)
    done = np.full(n, -1, np.int64)
    dropped_at = np.full(n, -1, np.int64)
    free = np.zeros(c, np.int64)
    line = np.empty(n, np.int64)
    head = 0
    tail = 0
    waiting = np.full(n_src, -1, np.int64)
    for i in range(n):
        head = _serve(line, head, tail, dropped_at, free, t, done, waiting, src, s, c, t[i])
        k = waiting[src[i]]
        if k >= 0:  # the camera's older frame is still waiting: the newer one supersedes it
            dropped_at[k] = t[i]
        line[tail] = i
        tail += 1
        waiting[src[i]] = i
        head = _serve(line, head, tail, dropped_at, free, t, done, waiting, src, s, c, t[i])  # a free worker now
    _serve(line, head, tail, dropped_at, free, t, done, waiting, src, s, c, np.iinfo(np.int64).max)
    return done, dropped_at
