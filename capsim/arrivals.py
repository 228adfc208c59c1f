"""Arrival processes, generated vectorised up front (no simulation event per arrival)."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from capsim.config import Arrivals, Priority, RateSchedule
from capsim.errors import ScenarioError


@dataclass
class ArrivalStream:
    """Arrival times (seconds, sorted) with the source (camera), per-source frame index and priority
    level (0 = highest) of each."""

    times: np.ndarray
    source: np.ndarray
    frame: np.ndarray
    n_sources: int
    bursts: np.ndarray | None = None  # (k, 2) [start, end) seconds of each burst, where the process has them
    priority: np.ndarray | None = field(default=None)  # int8 level per arrival; None -> all level 0

    def __post_init__(self):
        if self.priority is None:
            self.priority = np.zeros(len(self.times), np.int8)

    def in_burst(self, t: np.ndarray) -> np.ndarray:
        """Whether each time in ``t`` falls inside a burst (all False when there are none)."""
        t = np.asarray(t, dtype=np.float64)
        if self.bursts is None or not len(self.bursts):
            return np.zeros(t.shape, bool)
        i = np.searchsorted(self.bursts[:, 0], t, side="right") - 1
        return (i >= 0) & (t < self.bursts[np.maximum(i, 0), 1])

    def __len__(self) -> int:
        return len(self.times)


def generate(cfg: Arrivals, n: int, rng: np.random.Generator, base_dir: str | Path = ".",
             priority: Priority | None = None) -> ArrivalStream:
    """``n`` arrivals of the process ``cfg`` drawn from ``rng`` (a trace gives at most its length),
    each with its priority level when ``priority`` has lanes (see :func:`assign_priority`)."""
    s = _generate(cfg, n, rng, base_dir)
    if priority is not None:
        assign_priority(s, cfg, priority, rng)
    return s


def assign_priority(s: ArrivalStream, cfg: Arrivals, priority: Priority, rng: np.random.Generator) -> None:
    """Set each arrival's level: a camera's from ``arrivals.streams[].priority``; a trace's from its
    ``priority`` column when it has one; otherwise drawn at random by the levels' shares (after the
    arrival times, from the same generator, so the times do not change)."""
    levels = len(priority.levels)
    if cfg.process == "streams":
        cam = np.concatenate([np.full(g.count, g.priority, np.int8) for g in cfg.streams])
        s.priority = cam[s.source]
    elif cfg.process == "trace" and s.priority.any():
        if int(s.priority.max()) >= levels:
            raise ScenarioError([f"arrivals.path: the trace's priority column names level {int(s.priority.max())}; "
                                 f"priority.levels has levels 0..{levels - 1}"])
    elif levels > 1:
        shares = np.array([lv.share for lv in priority.levels], np.float64)
        edges = np.cumsum(shares / shares.sum())[:-1]
        s.priority = np.searchsorted(edges, rng.random(len(s)), side="right").astype(np.int8)


def _generate(cfg: Arrivals, n: int, rng: np.random.Generator, base_dir: str | Path) -> ArrivalStream:
    if cfg.process == "poisson" and cfg.rate_schedule is not None:
        return _single(scheduled_poisson(cfg.rate_schedule, n, rng))
    if cfg.process == "poisson":
        return _single(np.cumsum(rng.exponential(1.0 / cfg.rate_rps, n)))
    if cfg.process == "constant":
        return _single(np.arange(1, n + 1, dtype=np.float64) / cfg.rate_rps)
    if cfg.process == "bursty":
        return _single(_mmpp(cfg, n, rng))
    if cfg.process == "streams":
        return _streams(cfg, n, rng)
    if cfg.process == "trace":
        return read_trace(Path(base_dir) / cfg.path, n)
    raise ValueError(cfg.process)


def _single(times: np.ndarray) -> ArrivalStream:
    n = len(times)
    return ArrivalStream(times, np.zeros(n, np.int32), np.arange(n, dtype=np.int64), 1)


def scheduled_poisson(rs: RateSchedule, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` arrival times of a Poisson process whose rate follows the steps of ``rs``.

    A non-homogeneous Poisson process by time warping: unit-rate Poisson points (cumulative sums
    of Exp(1) draws) are mapped through the inverse of the cumulative rate Lambda(t), which is
    piecewise linear over the steps. ``repeat`` wraps Lambda period after period; otherwise the
    last step's rate holds after ``period_s``.
    """
    ends = [st.at_s for st in rs.steps[1:]] + [rs.period_s]
    t_break = np.array([rs.steps[0].at_s] + ends, dtype=np.float64)
    rates = np.array([st.rate_rps for st in rs.steps], dtype=np.float64)
    lam_break = np.concatenate(([0.0], np.cumsum(rates * np.diff(t_break))))
    per_period = lam_break[-1]
    u = np.cumsum(rng.exponential(1.0, n))  # unit-rate Poisson points in "Lambda time"
    if rs.repeat:
        k = np.floor(u / per_period)
        t = k * rs.period_s + np.interp(u - k * per_period, lam_break, t_break)
    else:
        t = np.where(u <= per_period, np.interp(np.minimum(u, per_period), lam_break, t_break),
                     rs.period_s + (u - per_period) / rates[-1])
    # Rounding at a period boundary could put a point a hair before its predecessor.
    return np.maximum.accumulate(t)


def _mmpp(cfg: Arrivals, n: int, rng: np.random.Generator) -> np.ndarray:
    """Two-state Markov-modulated Poisson process: calm at rate_rps, bursts at burst_rate_rps.

    Starts in the stationary state mix; sojourns are exponential with the given means.
    """
    rates = (cfg.rate_rps, cfg.burst_rate_rps)
    means = (cfg.mean_calm_s, cfg.mean_burst_s)
    state = int(rng.random() < means[1] / (means[0] + means[1]))
    chunks, t, total = [], 0.0, 0
    while total < n:
        # Draw many sojourns at once: alternate states starting from `state`.
        k = 256
        lengths = rng.exponential(1.0, k)
        states = (state + np.arange(k)) % 2
        lengths *= np.where(states == 1, means[1], means[0])
        starts = t + np.concatenate(([0.0], np.cumsum(lengths)[:-1]))
        counts = rng.poisson(np.where(states == 1, rates[1], rates[0]) * lengths)
        offs = rng.random(counts.sum())
        seg = np.repeat(np.arange(k), counts)
        times = starts[seg] + offs * lengths[seg]
        # Sort within each segment; segments are already in time order.
        times = times[np.lexsort((times, seg))]
        chunks.append(times)
        total += len(times)
        t = starts[-1] + lengths[-1]
        state = (state + k) % 2
    return np.concatenate(chunks)[:n]


def _burst_clock(cfg: Arrivals, horizon: float, rng: np.random.Generator):
    """Alternating calm and burst periods (exponential lengths, stationary start) for camera
    streams; during a burst the cameras' clock runs ``burst_factor`` times faster.

    Returns breakpoints in real time and in camera time (piecewise linear, for ``np.interp``)
    covering ``horizon`` seconds of camera time, and the burst windows in real time.
    """
    means, speed = (cfg.mean_calm_s, cfg.mean_burst_s), (1.0, cfg.burst_factor)
    state = int(rng.random() < means[1] / (means[0] + means[1]))
    real, cam, bursts = [0.0], [0.0], []
    while cam[-1] < horizon:
        length = rng.exponential(means[state])
        real.append(real[-1] + length)
        cam.append(cam[-1] + length * speed[state])
        if state:
            bursts.append((real[-2], real[-1]))
        state ^= 1
    return np.array(real), np.array(cam), np.array(bursts, dtype=np.float64).reshape(-1, 2)


def _streams(cfg: Arrivals, n: int, rng: np.random.Generator) -> ArrivalStream:
    """Each camera emits frames every 1/fps from a random phase, with Gaussian jitter; with a
    ``burst_factor``, every camera speeds up by that factor during the (shared) bursts."""
    fps = np.concatenate([np.full(g.count, g.fps) for g in cfg.streams])
    jitter = np.concatenate([np.full(g.count, g.jitter_ms / 1000.0) for g in cfg.streams])
    horizon = (n + len(fps)) / fps.sum()
    # The bursts come from a generator of their own, so a longer run extends the same schedule.
    clock = _burst_clock(cfg, horizon, np.random.default_rng(rng.integers(2**63))) \
        if cfg.burst_factor is not None else None
    times, source, frame = [], [], []
    for cam, (f, j) in enumerate(zip(fps, jitter)):
        k = int(np.ceil(horizon * f)) + 2
        idx = np.arange(k, dtype=np.int64)
        t = (rng.random() + idx) / f
        if clock is not None:
            t = np.interp(t, clock[1], clock[0])
        if j > 0:
            t = t + rng.normal(0.0, j, k)
        times.append(t)
        source.append(np.full(k, cam, np.int32))
        frame.append(idx)
    t = np.concatenate(times)
    order = np.argsort(t, kind="stable")[:n]
    t = t[order]
    shift = min(t[0], 0.0)  # jitter may push the very first frame below zero
    t -= shift
    bursts = clock[2] - shift if clock is not None else None
    return ArrivalStream(t, np.concatenate(source)[order], np.concatenate(frame)[order], len(fps), bursts)


def read_trace(path: Path, n: int | None = None) -> ArrivalStream:
    """Arrival times from a CSV: one time in seconds per line, or columns ``arrival_s`` [, ``source``]
    [, ``priority``] (a level, 0 = highest)."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            # Keep each row's line number (blank lines are skipped, not renumbered).
            rows = [(n, r) for n, r in enumerate(csv.reader(fh), start=1) if r and any(c.strip() for c in r)]
    except OSError as exc:
        raise ScenarioError([f"arrivals.path: cannot read {path}: {exc.strerror}; give an existing CSV file"]) from None
    except UnicodeDecodeError:
        raise ScenarioError([f"arrivals.path: {path} is not UTF-8 text; give a CSV of arrival times"]) from None
    if not rows:
        raise ScenarioError([f"arrivals.path: {path} holds no arrival times"])
    header = [c.strip().lower() for c in rows[0][1]]
    col, src_col, pri_col = 0, None, None
    if "arrival_s" in header:
        col = header.index("arrival_s")
        src_col = header.index("source") if "source" in header else None
        pri_col = header.index("priority") if "priority" in header else None
        rows = rows[1:]
    times, sources, levels = [], [], []
    for line, r in rows:
        try:
            times.append(float(r[col]))
        except (ValueError, IndexError):
            raise ScenarioError([f"arrivals.path: line {line} of {path} is not a time in seconds: {','.join(r)!r}"]) \
                from None
        if src_col is not None:
            try:
                sources.append(int(r[src_col]))
            except (ValueError, IndexError):
                raise ScenarioError([f"arrivals.path: line {line} of {path} has a source that is not a whole "
                                     f"number: {','.join(r)!r}"]) from None
        else:
            sources.append(0)
        if pri_col is not None:
            try:
                levels.append(int(r[pri_col]))
            except (ValueError, IndexError):
                raise ScenarioError([f"arrivals.path: line {line} of {path} has a priority that is not a whole "
                                     f"number: {','.join(r)!r}"]) from None
    t = np.asarray(times, dtype=np.float64)
    if len(t) < 2:
        raise ScenarioError([f"arrivals.path: {path} needs at least 2 arrival times, got {len(t)}"])
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise ScenarioError([f"arrivals.path: {path} has negative or non-finite times; times are seconds >= 0"])
    order = np.argsort(t, kind="stable")
    src = np.asarray(sources, dtype=np.int32)[order]
    if np.any(src < 0):
        raise ScenarioError([f"arrivals.path: {path} has negative source ids"])
    pri = np.asarray(levels, dtype=np.int64)[order] if pri_col is not None else np.zeros(len(t), np.int64)
    if np.any(pri < 0) or np.any(pri > 127):
        raise ScenarioError([f"arrivals.path: {path} has priority levels outside 0..127; 0 is the highest level"])
    pri = pri.astype(np.int8)
    t = t[order]
    if t[-1] <= t[0]:
        raise ScenarioError([f"arrivals.path: every arrival time in {path} is {t[0]:g} s; a trace must span time"])
    if n is not None:
        t, src, pri = t[:n], src[:n], pri[:n]
    n_src = int(src.max()) + 1
    frame = np.zeros(len(t), np.int64)
    for s in np.unique(src):
        m = src == s
        frame[m] = np.arange(m.sum())
    return ArrivalStream(t, src, frame, n_src, priority=pri)
