"""Results of the queue-side policies (:mod:`capsim.sim.lanes`): per priority level, and per
camera under graceful degradation. Plain JSON-ready data for ``SimulationResult.policies``,
plus the short text the CLI prints.
"""

from __future__ import annotations

import numpy as np

from capsim.config import Scenario
from capsim.sim.engine import ReplicationTrace
from capsim.sim.queue import DROP_REASONS

LEVEL_PERCENTILES = (50, 95, 99)
DEGRADE_BINS = 50


def summarize_policies(sc: Scenario, traces: list[ReplicationTrace]) -> dict:
    """The ``policies`` sections of the queue-side policies ``sc`` uses."""
    out = {}
    if sc.priority is not None:
        out["priority"] = priority_summary(sc, traces)
    if sc.queue.degrade is not None:
        out["degrade"] = degrade_summary(sc, traces)
    return out


def _window(tr: ReplicationTrace) -> tuple[float, float]:
    t = tr.arrival[~tr.warmup]
    return float(t[0]), float(t[-1])


def priority_summary(sc: Scenario, traces: list[ReplicationTrace]) -> list[dict]:
    """Per level (0 = highest): offered share, completions, drops by reason, latency percentiles
    with 95 % intervals (as the overall ones; null when the level is unstable or nothing of it
    completed) and throughput, over the measured requests (after the warm-up)."""
    from capsim.backlog import backlog_trend
    from capsim.metrics import BATCH_MEANS, GROWTH_LIMIT, MIN_GROWTH_REQUESTS, _percentile_cis, _pname

    measured_total = sum(int((~tr.warmup).sum()) for tr in traces)
    out = []
    for lv in range(len(sc.priority.levels)):
        per_rep, arrivals, completed, thru, reasons = [], 0, 0, [], {r: 0 for r in DROP_REASONS[1:]}
        slopes, backlogs = [], []
        for tr in traces:
            at = tr.extras["priority"] == lv
            m = at & ~tr.warmup
            done = m & tr.completed
            arrivals += int(m.sum())
            completed += int(done.sum())
            per_rep.append(tr.latency_ms[done])
            for code, name in enumerate(DROP_REASONS):
                if code:
                    reasons[name] += int((m & (tr.drop_reason == code)).sum())
            t0, t1 = _window(tr)
            span = max(t1 - t0, 1e-12)
            thru.append(np.count_nonzero(at & (tr.done >= t0) & (tr.done <= t1)) / span)
            idx = np.flatnonzero(at)
            first = int(np.argmax(~tr.warmup[idx])) if (~tr.warmup[idx]).any() else len(idx)
            leave = np.where(tr.completed[idx], tr.done[idx], tr.drop_t[idx])
            slope, last = backlog_trend(tr.arrival[idx], leave, first)
            slopes.append(slope)
            backlogs.append(last)
        slope, backlog = float(np.mean(slopes)), float(np.mean(backlogs))
        stable = not (slope > GROWTH_LIMIT and backlog > MIN_GROWTH_REQUESTS)
        pooled = np.concatenate(per_rep)
        lat = {_pname(q): None for q in LEVEL_PERCENTILES}
        ci = {_pname(q): None for q in LEVEL_PERCENTILES}
        if stable and len(pooled):
            groups = per_rep if len(traces) > 1 else [g for g in np.array_split(pooled, BATCH_MEANS) if len(g)]
            for q, (point, interval) in zip(LEVEL_PERCENTILES, _percentile_cis(groups, pooled, list(LEVEL_PERCENTILES))):
                lat[_pname(q)] = point
                ci[_pname(q)] = interval
        dropped = arrivals - completed
        out.append({
            "level": lv,
            "offered_share": arrivals / measured_total if measured_total else 0.0,
            "arrivals": arrivals,
            "completed": completed,
            "dropped": dropped,
            "drop_rate": dropped / arrivals if arrivals else 0.0,
            "drops_by_reason": reasons,
            "latency_ms": lat,
            "latency_ci_ms": ci,
            "throughput_rps": float(np.mean(thru)),
            "stable": stable,
            "backlog_growth": slope,
        })
    return out


def _step_integral(bp: np.ndarray, values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Integral from bp[0] to each x of the step function equal to values[j] on [bp[j], bp[j+1])."""
    cum = np.concatenate(([0.0], np.cumsum(values[:-1] * np.diff(bp))))
    j = np.searchsorted(bp, x, side="right") - 1
    return cum[j] + values[j] * (x - bp[j])


def _stride_steps(d: dict, cam: int) -> tuple[np.ndarray, np.ndarray]:
    m = d["source"] == cam
    bp = np.concatenate(([0.0], d["t"][m]))
    return bp, np.concatenate(([float(d["base"])], d["stride"][m].astype(np.float64)))


def degrade_summary(sc: Scenario, traces: list[ReplicationTrace]) -> dict:
    """Per camera: processed frames per second and mean stride in each of ``DEGRADE_BINS`` equal
    time bins of the first replication (from 0 to its last arrival, warm-up included: a timeline),
    frames are binned by arrival; and, over all replications, the fraction of time each camera ran
    above its base stride (measurement window) and its mean processed fps there."""
    tr0 = traces[0]
    end = float(tr0.arrival[-1])
    width = end / DEGRADE_BINS if end > 0 else 1.0
    edges = np.arange(DEGRADE_BINS + 1) * width
    d0 = tr0.extras["degrade"]
    n_src = d0["n_sources"]
    cams = []
    for cam in range(n_src):
        m = (tr0.source == cam) & tr0.completed
        counts = np.histogram(tr0.arrival[m], bins=edges)[0]
        bp, vals = _stride_steps(d0, cam)
        F = _step_integral(bp, vals, edges)
        above, fps = [], []
        for tr in traces:
            d = tr.extras["degrade"]
            t0, t1 = _window(tr)
            span = max(t1 - t0, 1e-12)
            bpr, v = _stride_steps(d, cam)
            over = (v > d["base"]).astype(np.float64)
            G = _step_integral(bpr, over, np.array([t0, t1]))
            above.append((G[1] - G[0]) / span)
            sel = (tr.source == cam) & tr.completed & ~tr.warmup
            fps.append(np.count_nonzero(sel) / span)
        cams.append({
            "camera": cam,
            "processed_fps": (counts / width).tolist(),
            "stride": np.round(np.diff(F) / width, 6).tolist(),  # rounding hides float noise of the integral
            "mean_processed_fps": float(np.mean(fps)),
            "max_stride": int(vals.max()),
            "above_base_fraction": float(np.mean(above)),
        })
    return {"bin_s": width, "t_s": edges[:-1].tolist(), "base_stride": sc.queue.stride,
            "max_stride": sc.queue.degrade.max_stride, "cameras": cams}


def _ms(v) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def format_text(policies: dict) -> list[str]:
    """Lines for ``capsim simulate``'s text report (none when no queue-side policy is used)."""
    out = []
    levels = policies.get("priority")
    if levels:
        out.append("")
        out.append(f"{'priority level':16s}{'share':>7s}{'done':>9s}{'drops':>8s}{'p50':>9s}{'p95':>9s}"
                   f"{'p99':>9s}{'rps':>9s}")
        for r in levels:
            lat = r["latency_ms"]
            note = "" if r["stable"] else "  unstable"
            out.append(f"  {r['level']:<14d}{r['offered_share']:7.1%}{r['completed']:9d}{r['drop_rate']:8.1%}"
                       f"{_ms(lat['p50']):>9s}{_ms(lat['p95']):>9s}{_ms(lat['p99']):>9s}"
                       f"{r['throughput_rps']:9.1f}{note}")
    deg = policies.get("degrade")
    if deg:
        out.append("")
        out.append(f"degrade (base stride {deg['base_stride']}, max {deg['max_stride']}):")
        for c in deg["cameras"]:
            out.append(f"  camera {c['camera']}: {c['mean_processed_fps']:.1f} fps processed, stride up to "
                       f"{c['max_stride']}, above base {c['above_base_fraction']:.0%} of the time")
    return out
