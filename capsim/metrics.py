"""Turns replication traces into the reported result: percentiles with confidence intervals,
throughput, drops, utilization, latency breakdown, stability and the SLO verdict.

Percentiles are over completed requests after the warm-up. Each percentile carries a 95 %
interval: its point estimate pools every replication; the half-width comes from the spread of
the per-replication values (Student t), or, with one replication, from 10 batch means.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from capsim import analytic, host_cpu
from capsim.config import Scenario
from capsim.sim import autoscale, devices, network
from capsim.sim.engine import ReplicationTrace
from capsim.sim.queue import DROP_REASONS
from capsim.tdist import t_cdf, t_ppf

PERCENTILES = (50, 90, 95, 99)
BATCH_MEANS = 10
# A queue that keeps growing by more than this fraction of arrivals is not in steady state.
GROWTH_LIMIT = 0.005
MIN_GROWTH_REQUESTS = 50


@dataclass
class SimulationResult:
    """Everything ``capsim simulate`` reports, as data."""

    scenario: Scenario
    engine: str
    replications: int
    offered_rps: float
    throughput_rps: float
    completed: int
    dropped: int
    drops_by_reason: dict[str, int]
    latency_ms: dict[str, float]
    latency_ci_ms: dict[str, list[float]]
    mean_batch_size: float
    batch_size_histogram: dict[int, int]
    utilization: float
    breakdown_ms: dict[str, float]
    stable: bool
    unstable_reason: str | None
    backlog_growth: float
    napkin: analytic.Napkin
    littles_law: analytic.LittlesLaw
    theory_mean_ms: float | None
    slo: dict | None
    traces: list[ReplicationTrace] = field(default_factory=list, repr=False)
    # Results of the production policies the scenario uses (priority levels, camera strides,
    # instance counts, ...), one key per policy; empty when it uses none.
    policies: dict = field(default_factory=dict)

    @property
    def drop_rate(self) -> float:
        total = self.completed + self.dropped
        return self.dropped / total if total else 0.0

    def to_dict(self) -> dict:
        """The JSON contract of ``capsim simulate --format json``.

        When the run is unstable the latency figures are null: they only measure how long the
        run lasted, not a latency the service would have.
        """
        lat = self.latency_ms if self.stable else {k: None for k in self.latency_ms}
        ci = self.latency_ci_ms if self.stable else {k: None for k in self.latency_ci_ms}
        return {
            "scenario": self.scenario.name,
            "engine": self.engine,
            "replications": self.replications,
            "offered_rps": self.offered_rps,
            "throughput_rps": self.throughput_rps,
            "completed": self.completed,
            "dropped": self.dropped,
            "drop_rate": self.drop_rate,
            "drops_by_reason": self.drops_by_reason,
            "latency_ms": lat,
            "latency_ci_ms": ci,
            "mean_batch_size": self.mean_batch_size,
            "batch_size_histogram": {str(k): v for k, v in self.batch_size_histogram.items()},
            "utilization": self.utilization,
            "breakdown_ms": self.breakdown_ms,
            "stable": self.stable,
            "unstable_reason": self.unstable_reason,
            "backlog_growth": self.backlog_growth,
            "napkin": self.napkin.to_dict(),
            "littles_law": self.littles_law.to_dict(),
            "theory_mean_ms": self.theory_mean_ms,
            "slo": self.slo,
            "policies": self.policies,
        }


def _window(tr: ReplicationTrace) -> tuple[float, float]:
    measured = ~tr.warmup
    t = tr.arrival[measured]
    return float(t[0]), float(t[-1])


def _percentile_cis(groups: list[np.ndarray], pooled: np.ndarray, qs: list[float]) -> list[tuple[float, list[float]]]:
    """Each percentile of ``pooled`` with its 95 % interval from the spread across ``groups``."""
    points = np.percentile(pooled, qs)  # one partition for all the percentiles
    vals = np.array([np.percentile(g, qs) for g in groups if len(g)])
    if len(vals) < 2:
        return [(float(p), [float(p), float(p)]) for p in points]
    hws = t_ppf(0.975, len(vals) - 1) * vals.std(axis=0, ddof=1) / np.sqrt(len(vals))
    # A latency is never negative.
    return [(float(p), [max(float(p - hw), 0.0), float(p + hw)]) for p, hw in zip(points, hws)]


def _groups(traces: list[ReplicationTrace]) -> list[np.ndarray]:
    """Per-replication latency samples, or batch means of the single replication."""
    per_rep = [tr.latency_ms[~tr.warmup & tr.completed] for tr in traces]
    if len(per_rep) > 1:
        return per_rep
    return [g for g in np.array_split(per_rep[0], BATCH_MEANS) if len(g)]


def _backlog_growth(tr: ReplicationTrace) -> tuple[float, int]:
    """Slope of the number in system (sampled at each measured arrival) per arrival, and the final backlog."""
    from capsim.backlog import backlog_trend  # compiled; loaded only when a result is summarised

    measured = np.flatnonzero(~tr.warmup)
    if not len(measured):
        return 0.0, 0
    return backlog_trend(tr.arrival, np.where(tr.completed, tr.done, tr.drop_t), int(measured[0]))


def summarize(sc: Scenario, traces: list[ReplicationTrace], engine: str) -> SimulationResult:
    measured = [~tr.warmup for tr in traces]
    done = [m & tr.completed for m, tr in zip(measured, traces)]
    pooled = np.concatenate([tr.latency_ms[d] for tr, d in zip(traces, done)])
    completed = int(sum(d.sum() for d in done))
    dropped = int(sum((m & ~tr.completed).sum() for m, tr in zip(measured, traces)))
    reasons = {}
    for code, name in enumerate(DROP_REASONS):
        if code:
            reasons[name] = int(sum(((tr.drop_reason == code) & m).sum() for m, tr in zip(measured, traces)))

    # Rates over each replication's measurement window, averaged.
    offered, thru, util = [], [], []
    for tr, m, d in zip(traces, measured, done):
        t0, t1 = _window(tr)
        span = max(t1 - t0, 1e-12)
        offered.append((m.sum() - 1) / span if m.sum() > 1 else 0.0)
        # Every completion inside the window counts, warm-up requests' too: under overload the
        # server spends the window clearing what the warm-up left, at full capacity.
        thru.append(np.count_nonzero((tr.done >= t0) & (tr.done <= t1)) / span)
        busy = np.clip(np.minimum(tr.batch_end, t1) - np.maximum(tr.batch_start, t0), 0.0, None).sum()
        util.append(busy / max(autoscale.serving_seconds(tr, t0, t1), 1e-12))  # busy / serving capacity

    lat, ci = {}, {}
    groups = _groups(traces)
    qs = list(PERCENTILES)
    if sc.slo and sc.slo.percentile not in qs:
        qs.append(sc.slo.percentile)
    if len(pooled):
        lat["mean"] = float(pooled.mean())
        for q, (point, interval) in zip(qs, _percentile_cis(groups, pooled, qs)):
            lat[_pname(q)] = point
            ci[_pname(q)] = interval
        lat["max"] = float(pooled.max())
    else:
        lat = {k: float("nan") for k in ["mean", *(_pname(q) for q in qs), "max"]}
        ci = {_pname(q): [float("nan")] * 2 for q in qs}

    # Batches that started inside the measurement windows.
    sizes = np.concatenate([tr.batch_size_by_batch[tr.batch_start >= _window(tr)[0]] for tr in traces])
    hist = {int(b): int(c) for b, c in zip(*np.unique(sizes, return_counts=True))} if len(sizes) else {}

    def mean_of(f) -> float:
        vals = np.concatenate([f(tr)[d] for tr, d in zip(traces, done)])
        return float(vals.mean()) if len(vals) else float("nan")

    wait = mean_of(lambda tr: (tr.start - tr.entry) * 1000.0)
    formation = mean_of(lambda tr: tr.formation_ms)
    breakdown = {
        "queue_wait": wait - formation,
        "batch_formation": formation,
        "service": mean_of(lambda tr: (tr.end - tr.start) * 1000.0),
        "preprocess": mean_of(lambda tr: (tr.entry - tr.arrival) * 1000.0),
        "postprocess": mean_of(lambda tr: (tr.done - tr.end) * 1000.0),
        "overhead": sc.service.overhead_ms,
    }
    if sc.network is not None:
        network.adjust_breakdown(breakdown, traces, done)

    growth = [_backlog_growth(tr) for tr in traces]
    slope = float(np.mean([g[0] for g in growth]))
    final_backlog = float(np.mean([g[1] for g in growth]))
    cap = analytic.capacity_rps(sc)
    stable = not (slope > GROWTH_LIMIT and final_backlog > MIN_GROWTH_REQUESTS)
    reason = None
    if not stable:
        reason = (f"the queue grows without bound ({slope:.1%} of arrivals pile up, {final_backlog:.0f} requests "
                  f"in system at the end): offered {np.mean(offered):.1f} rps against a capacity of at most "
                  f"{cap:.1f} rps")

    tr0 = traces[0]
    t0, t1 = _window(tr0)
    leave = np.where(tr0.completed, tr0.done, tr0.drop_t)
    little = analytic.littles_law(tr0.arrival, leave, t0, t1)

    res = SimulationResult(
        scenario=sc, engine=engine, replications=len(traces), offered_rps=float(np.mean(offered)),
        throughput_rps=float(np.mean(thru)), completed=completed, dropped=dropped, drops_by_reason=reasons,
        latency_ms=lat, latency_ci_ms=ci, mean_batch_size=float(sizes.mean()) if len(sizes) else 0.0,
        batch_size_histogram=hist, utilization=float(np.mean(util)), breakdown_ms=breakdown, stable=stable,
        unstable_reason=reason, backlog_growth=slope, napkin=analytic.napkin(sc), littles_law=little,
        theory_mean_ms=analytic.predicted_mean_latency_ms(sc), slo=None, traces=traces,
    )
    if sc.slo:
        res.slo = _judge(sc, res, groups)
    from capsim.queue_policies import summarize_policies  # imports this module's helpers
    res.policies.update(summarize_policies(sc, traces))
    if sc.arrivals.rate_schedule is not None:
        from capsim.rate_schedule import step_summary

        res.policies["rate_schedule"] = step_summary(sc, traces)
    if sc.devices is not None:
        res.policies["devices"] = devices.device_summary(sc, traces)
    if host_cpu.active(sc):
        res.policies["cpu_sharing"] = {"host_load_cores": host_cpu.host_load_cores(sc),
                                       "slowdown": host_cpu.slowdowns(sc), "note": host_cpu.describe(sc)}
    if sc.autoscale is not None:
        res.policies["autoscale"] = autoscale.autoscale_summary(sc, traces)
    return res


def _pname(q: float) -> str:
    return f"p{q:g}".replace(".", "_")


def _judge(sc: Scenario, res: SimulationResult, groups: list[np.ndarray]) -> dict:
    """The SLO verdict: met / not met / inconclusive, with a one-sided confidence."""
    slo = sc.slo
    key = _pname(slo.percentile)
    observed = res.latency_ms[key]
    low, high = res.latency_ci_ms[key]
    # Sustained rate: the configured rate less what was dropped (the measured rate wobbles around it).
    nominal = sc.arrivals.offered_rps() or res.offered_rps
    sustained = nominal * (1.0 - res.drop_rate) if res.stable else res.throughput_rps
    throughput_ok = sustained >= slo.min_throughput_rps * (1 - 1e-9)
    hw = (high - low) / 2.0
    if not res.stable or not np.isfinite(observed):  # unstable, or nothing completed
        confidence, verdict = 0.0, "not met"
    else:
        df = max(len(groups) - 1, 1)
        se = hw / t_ppf(0.975, df) if hw > 0 else 0.0
        if se > 0:
            confidence = float(t_cdf((slo.latency_ms - observed) / se, df))
        else:
            confidence = 1.0 if observed <= slo.latency_ms else 0.0
        if not throughput_ok:
            verdict = "not met"
        elif high <= slo.latency_ms:
            verdict = "met"
        elif low > slo.latency_ms:
            verdict = "not met"
        else:
            verdict = "inconclusive"
    met = bool(res.stable and throughput_ok and np.isfinite(observed) and observed <= slo.latency_ms)
    return {
        "met": met,
        "verdict": verdict,
        "percentile": slo.percentile,
        "target_ms": slo.latency_ms,
        "observed_ms": observed if res.stable else None,
        "ci_ms": [low, high] if res.stable else None,
        "confidence": confidence,
        "min_throughput_rps": slo.min_throughput_rps,
        "sustained_rps": sustained,
        "throughput_met": throughput_ok,
    }
