"""The whole machine's speed over a run: slow spells (``service.slow_spells``) or swings from
window to window (``service.speed_swings``). When each window falls, and how much longer a job
that starts in it takes."""

from __future__ import annotations

import math
from bisect import bisect_right

import numpy as np


class SpellWindows:
    """The windows of one replication, as sorted start and end times (int ns), and how many times
    longer a job that starts in each takes (``factors``: one per window); 1 outside them."""

    def __init__(self, starts: np.ndarray, ends: np.ndarray, factors):
        self.starts, self.ends = starts, ends
        self.factors = np.broadcast_to(np.asarray(factors, dtype=np.float64), starts.shape).copy()
        # Python lists: read once per batch on the SimPy engine's hot path
        self._starts, self._ends, self._factors = starts.tolist(), ends.tolist(), self.factors.tolist()

    def factor(self, t_ns: int) -> float:
        """How many times longer a job that starts at ``t_ns`` takes."""
        i = bisect_right(self._starts, t_ns) - 1
        return self._factors[i] if i >= 0 and t_ns < self._ends[i] else 1.0


def windows(spells, horizon_ns: int, rng: np.random.Generator) -> SpellWindows:
    """Spells from time 0 to ``horizon_ns``: every ``every_s`` at a random phase (``regular``), or
    with an exponential calm between them of mean ``every_s`` less the spell (so that a spell
    starts every ``every_s`` on average either way)."""
    every, length = spells.every_s * 1e9, spells.length_ms * 1e6
    n = int(horizon_ns / every) + 2
    if spells.regular:
        starts = rng.uniform(0.0, every) + every * np.arange(n)
    else:
        cycle = length + rng.exponential(every - length, n)
        starts = np.cumsum(cycle) - cycle[0] * rng.uniform()   # the run starts somewhere in a cycle
    starts = np.rint(starts).astype(np.int64)
    return SpellWindows(starts, starts + int(round(length)), spells.slowdown)


def swing_windows(swings, horizon_ns: int, rng: np.random.Generator) -> SpellWindows:
    """Back-to-back windows of ``window_s`` from a random phase before time 0 to ``horizon_ns``,
    each with its own factor: lognormal with mean 1 and coefficient of variation ``cv``, its log
    an AR(1) series with lag-one ``correlation`` from window to window."""
    width = swings.window_s * 1e9
    n = int(horizon_ns / width) + 2
    sigma = math.sqrt(math.log1p(swings.cv ** 2))
    rho = swings.correlation
    z = rng.standard_normal(n)
    x = np.empty(n)
    x[0] = z[0]
    for k in range(1, n):   # stationary: every window's log factor is N(0, 1) before scaling
        x[k] = rho * x[k - 1] + math.sqrt(1.0 - rho * rho) * z[k]
    starts = np.rint(width * (np.arange(n) - rng.uniform())).astype(np.int64)
    ends = np.append(starts[1:], starts[-1] + int(round(width)))
    return SpellWindows(starts, ends, np.exp(sigma * x - sigma * sigma / 2.0))


def machine_windows(service, horizon_ns: int, rng: np.random.Generator) -> SpellWindows | None:
    """The run's windows for the service's slow spells or speed swings (None for a steady machine)."""
    if service.slow_spells.every_s:
        return windows(service.slow_spells, horizon_ns, rng)
    if service.speed_swings.cv:
        return swing_windows(service.speed_swings, horizon_ns, rng)
    return None


def machine_throughput_factor(service) -> float:
    """The share of its steady throughput a machine kept busy keeps: the time-mean of 1 / factor.
    Spells: :func:`throughput_factor`. Swings of mean 1: E[1 / f] = 1 + cv^2 for a lognormal (a
    busy server does more in the fast windows than it loses in the slow ones)."""
    if service.slow_spells.every_s:
        return throughput_factor(service.slow_spells)
    return 1.0 + service.speed_swings.cv ** 2


def time_share(spells) -> float:
    """The share of the time in spells (0 when there are none)."""
    return spells.length_ms / 1000.0 / spells.every_s if spells.every_s else 0.0


def mean_factor(spells) -> float:
    """How much longer work takes on average over a long run: 1 + (slowdown - 1) x the share of
    the time in spells."""
    return 1.0 + (spells.slowdown - 1.0) * time_share(spells)


def throughput_factor(spells) -> float:
    """The share of its calm throughput a machine kept busy keeps: in a spell it does 1 / slowdown
    of the work, so 1 - f + f / slowdown, f being the share of the time in spells."""
    f = time_share(spells)
    return 1.0 - f + f / spells.slowdown
