"""Results per step of a time-varying arrival rate (``arrivals.rate_schedule``).

Each request belongs to the schedule step that was in force when it arrived. For each step the
summary pools every replication's measurement window (warm-up excluded): the offered rate
(arrivals / time spent in the step), the throughput (completions / that time), the p95 latency
of the step's completed requests and its drop rate, and whether the step's rate is above the
capacity bound (overloaded: its queue grows for as long as the step lasts).
"""

from __future__ import annotations

import numpy as np

from capsim.config import RateSchedule, Scenario
from capsim.sim.engine import ReplicationTrace


def step_bounds(rs: RateSchedule) -> tuple[np.ndarray, np.ndarray]:
    """[start, end) of each step within one period (the last ends at period_s)."""
    starts = np.array([st.at_s for st in rs.steps], dtype=np.float64)
    ends = np.append(starts[1:], rs.period_s)
    return starts, ends


def step_of(rs: RateSchedule, t: np.ndarray) -> np.ndarray:
    """Index of the step in force at each time in ``t`` (the last step once it holds for good)."""
    t = np.asarray(t, dtype=np.float64)
    phase = np.mod(t, rs.period_s) if rs.repeat else np.minimum(t, rs.period_s)
    starts, _ = step_bounds(rs)
    return np.clip(np.searchsorted(starts, phase, side="right") - 1, 0, len(starts) - 1)


def time_in_steps(rs: RateSchedule, t0: float, t1: float) -> np.ndarray:
    """Seconds of [t0, t1] spent in each step."""
    starts, ends = step_bounds(rs)
    if not rs.repeat:
        ends = ends.copy()
        ends[-1] = np.inf  # the last rate holds after the period

    def upto(t: float) -> np.ndarray:  # time spent in each step during [0, t]
        if rs.repeat:
            k, phase = divmod(t, rs.period_s)
            return k * (ends - starts) + np.clip(phase - starts, 0.0, ends - starts)
        return np.clip(t - starts, 0.0, ends - starts)

    return upto(t1) - upto(t0)


def step_summary(sc: Scenario, traces: list[ReplicationTrace]) -> dict:
    """The ``policies["rate_schedule"]`` section of a result: one row per schedule step."""
    rs = sc.arrivals.rate_schedule
    k = len(rs.steps)
    span = np.zeros(k)
    arrived, completed, dropped, done_in = np.zeros(k), np.zeros(k), np.zeros(k), np.zeros(k)
    lat: list[list[np.ndarray]] = [[] for _ in range(k)]
    for tr in traces:
        m = ~tr.warmup
        t = tr.arrival[m]
        t0, t1 = float(t[0]), float(t[-1])
        span += time_in_steps(rs, t0, t1)
        step = step_of(rs, t)
        ok = tr.completed[m]
        arrived += np.bincount(step, minlength=k)
        completed += np.bincount(step[ok], minlength=k)
        dropped += np.bincount(step[~ok], minlength=k)
        d = tr.done[(tr.done >= t0) & (tr.done <= t1)]  # every completion in the window, as in summarize
        done_in += np.bincount(step_of(rs, d), minlength=k)
        lm = tr.latency_ms[m]
        for i in range(k):
            lat[i].append(lm[ok & (step == i)])
    from capsim.analytic import capacity_rps

    bound = capacity_rps(sc)
    rows = []
    for i, st in enumerate(rs.steps):
        pooled = np.concatenate(lat[i])
        sp = span[i]
        rows.append({
            "at_s": st.at_s,
            "rate_rps": st.rate_rps,
            "measured_s": float(sp),
            "offered_rps": float(arrived[i] / sp) if sp > 0 else None,
            "throughput_rps": float(done_in[i] / sp) if sp > 0 else None,
            "p95_ms": float(np.percentile(pooled, 95)) if len(pooled) else None,
            "drop_rate": float(dropped[i] / arrived[i]) if arrived[i] else None,
            # The run can be stable overall while a peak step is above capacity (quieter steps drain
            # the backlog): its latency then only says how long the peak lasted.
            "overloaded": bool(st.rate_rps > bound),
        })
    return {"period_s": rs.period_s, "repeat": rs.repeat, "mean_rps": rs.mean_rps(), "capacity_bound_rps": bound,
            "steps": rows}


def format_steps(section: dict) -> list[str]:
    """The per-step table of ``capsim simulate``'s text output."""
    def num(v, width: int, spec: str) -> str:
        return f"{'n/a':>{width}}" if v is None else f"{v:{width}{spec}}"

    mode = "repeats" if section["repeat"] else "then holds the last rate"
    out = [f"rate schedule (period {section['period_s']:g} s, {mode}; mean {section['mean_rps']:.1f} rps):",
           f"  {'step at (s)':>12s}{'rate':>9s}{'offered':>9s}{'thruput':>9s}{'p95 ms':>9s}{'drops':>8s}"]
    for r in section["steps"]:
        out.append(f"  {r['at_s']:12g}{r['rate_rps']:9.1f}{num(r['offered_rps'], 9, '.1f')}"
                   f"{num(r['throughput_rps'], 9, '.1f')}{num(r['p95_ms'], 9, '.1f')}"
                   f"{num(r['drop_rate'], 8, '.2%')}"
                   + (f"  OVERLOADED: above the capacity bound {section['capacity_bound_rps']:.1f} rps"
                      if r["overloaded"] else ""))
    return out
