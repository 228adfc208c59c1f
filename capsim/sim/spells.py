"""Slow spells of the whole machine (``service.slow_spells``): when they fall in a run, and how
much longer a job that starts in one takes."""

from __future__ import annotations

from bisect import bisect_right

import numpy as np


class SpellWindows:
    """The spells of one replication, as sorted start and end times (int ns), and their slowdown."""

    def __init__(self, starts: np.ndarray, ends: np.ndarray, slowdown: float):
        self.starts, self.ends, self.slowdown = starts, ends, float(slowdown)
        # Python lists: read once per batch on the SimPy engine's hot path
        self._starts, self._ends = starts.tolist(), ends.tolist()

    def factor(self, t_ns: int) -> float:
        """How many times longer a job that starts at ``t_ns`` takes."""
        i = bisect_right(self._starts, t_ns) - 1
        return self.slowdown if i >= 0 and t_ns < self._ends[i] else 1.0


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
