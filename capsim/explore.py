"""What-if analysis behind the app and the report: one config's result and verdict card, and how
its latency moves with the offered rate and the max batch size. Data only, no UI imports.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from capsim.config import SLO, Scenario, max_instances
from capsim.metrics import SimulationResult, _pname
from capsim.plan import Evaluation, judge, max_sustainable_rate, throughput_bound, with_rate
from capsim.simulate import simulate

# Curves and the max-rate search use shorter runs than the headline result: they are for shape.
CURVE_REQUESTS = 20_000
CURVE_REPLICATIONS = 3
# The knee: the first rate step where the percentile grows this many times faster than the load.
KNEE_ELASTICITY = 2.5


def short(sc: Scenario, requests: int = CURVE_REQUESTS, replications: int = CURVE_REPLICATIONS) -> Scenario:
    """A copy of ``sc`` with at most this many requests and replications (warm-up kept below them)."""
    out = copy.deepcopy(sc)
    out.run.requests = min(sc.run.requests, requests)
    out.run.replications = min(sc.run.replications, replications)
    out.run.warmup_requests = min(sc.run.warmup_requests, out.run.requests // 5)
    return out


def slo_of(sc: Scenario) -> SLO:
    """The scenario's SLO, or p95 <= 100 ms when it has none (the charts need a line to draw)."""
    return sc.slo or SLO(percentile=95, latency_ms=100.0, min_throughput_rps=0.0)


def evaluation(sc: Scenario, res: SimulationResult, slo: SLO) -> Evaluation:
    """The scenario's own config as a planner evaluation of ``res``."""
    b = sc.batching
    verdict, obs, ci = judge(res, slo)
    return Evaluation(b.mode, b.max_batch_size, b.max_queue_delay_ms, sc.instances, sc.arrivals.offered_rps() or 0.0,
                      verdict, obs, ci, res)


def rate_free(sc: Scenario) -> Scenario:
    """``sc`` at a reference rate of 1 rps and no throughput goal: what the rate curve and the
    max-rate search depend on (they set their own rates), so they can be cached across rates."""
    out = with_rate(sc, 1.0)
    if out.slo:
        out.slo = SLO(percentile=out.slo.percentile, latency_ms=out.slo.latency_ms, min_throughput_rps=0.0)
    return out


def max_rate(sc: Scenario, engine: str = "auto") -> float:
    """Highest rate at which this config meets the SLO's latency (interval-aware bisection from the
    throughput bound down; does not depend on the scenario's own rate)."""
    slo = slo_of(sc)
    bound = throughput_bound(sc)
    cfg = short(rate_free(sc))
    b = sc.batching
    e = Evaluation(b.mode, b.max_batch_size, b.max_queue_delay_ms, sc.instances, bound, "", None, None, None)
    return max_sustainable_rate(cfg, e, slo, bound, engine)


def verdict_card(sc: Scenario, res: SimulationResult, engine: str = "auto", max_rate_rps: float | None = None,
                 with_max_rate: bool = True) -> dict:
    """Does this config meet its SLO here, by how much, and up to which rate?

    ``max_rate_rps``: the config's max sustainable rate if already known (else searched when
    ``with_max_rate``).
    """
    slo = slo_of(sc)
    key = _pname(slo.percentile)
    rate = sc.arrivals.offered_rps()
    e = evaluation(sc, res, slo)
    card = {"verdict": e.verdict, "percentile": slo.percentile, "target_ms": slo.latency_ms,
            "observed_ms": res.latency_ms.get(key) if res.stable else None,
            "ci_ms": res.latency_ci_ms.get(key) if res.stable else None, "stable": res.stable,
            "unstable_reason": res.unstable_reason, "rate_rps": rate, "throughput_rps": res.throughput_rps,
            "drop_rate": res.drop_rate, "utilization": res.utilization, "max_rate_rps": None, "headroom_pct": None,
            "slo_from_scenario": sc.slo is not None}
    if max_rate_rps is None and with_max_rate:
        max_rate_rps = max_rate(sc, engine)
    if max_rate_rps is not None and rate:
        card["max_rate_rps"] = float(max_rate_rps)
        card["headroom_pct"] = (max_rate_rps / rate - 1.0) * 100.0
    return card


def default_rates(sc: Scenario, points: int = 12) -> list[float]:
    """Offered rates from 10 % to 110 % of the config's throughput bound."""
    bound = throughput_bound(sc)
    return [round(bound * f, 3) for f in np.linspace(0.1, 1.1, points)]


def rate_curve(sc: Scenario, rates: list[float] | None = None, engine: str = "auto") -> list[dict]:
    """p50/p95/p99 (with the SLO percentile's interval), throughput and drops at each offered rate."""
    base = short(sc)
    slo = slo_of(sc)
    out = []
    for r in rates or default_rates(sc):
        res = simulate(with_rate(base, r), engine=engine)
        out.append(_point(res, slo, offered_rps=r))
    return out


def batch_curve(sc: Scenario, sizes: list[int] | None = None, engine: str = "auto") -> list[dict]:
    """Throughput and latency at the current rate for each max batch size (delay and instances kept)."""
    base = short(sc)
    slo = slo_of(sc)
    largest = max(sc.service.curve_ms())
    sizes = sizes or [b for b in (1, 2, 4, 8, 16, 32, 64) if b <= largest]
    out = []
    for b in sizes:
        cfg = copy.deepcopy(base)
        cfg.batching.max_batch_size = b
        cfg.batching.preferred_batch_sizes = [p for p in cfg.batching.preferred_batch_sizes if p <= b]
        res = simulate(cfg, engine=engine)
        out.append({"max_batch_size": b, **_point(res, slo, offered_rps=sc.arrivals.offered_rps())})
    return out


def _point(res: SimulationResult, slo: SLO, offered_rps: float | None) -> dict:
    key = _pname(slo.percentile)
    ok = res.stable
    return {"offered_rps": offered_rps, "throughput_rps": res.throughput_rps, "stable": ok,
            "p50": res.latency_ms["p50"] if ok else None, "p95": res.latency_ms["p95"] if ok else None,
            "p99": res.latency_ms["p99"] if ok else None, "slo_ms": res.latency_ms[key] if ok else None,
            "slo_ci_ms": res.latency_ci_ms[key] if ok else None, "drop_rate": res.drop_rate,
            "utilization": res.utilization, "mean_batch_size": res.mean_batch_size}


def knee(curve: list[dict], key: str = "slo_ms") -> float | None:
    """The offered rate after which latency grows much faster than load: the first step where
    (relative latency increase) / (relative rate increase) exceeds KNEE_ELASTICITY, or where the
    run turns unstable. None when the curve stays flat."""
    pts = [p for p in curve if p["offered_rps"]]
    for a, b in zip(pts, pts[1:]):
        if a[key] is None:
            return None
        if b[key] is None or not b["stable"]:
            return a["offered_rps"]
        dl = (b[key] - a[key]) / a[key] if a[key] > 0 else 0.0
        dr = (b["offered_rps"] - a["offered_rps"]) / a["offered_rps"]
        if dr > 0 and dl / dr > KNEE_ELASTICITY:
            return a["offered_rps"]
    return None


@dataclass
class Timeline:
    """Queue length, arrivals, completions and drops over time in replication 0 (bins of ``step_s``)."""

    t_s: list[float]              # each bin's end
    queue_len: list[float]        # requests waiting in the queue, mean over the bin
    queue_max: list[float]        # and its largest sampled value in the bin
    arrivals_rps: list[float]
    completions_rps: list[float]
    drops_rps: list[float]
    step_s: float
    drops_by_reason: dict[str, list[float]] = field(default_factory=dict)


def timeline(res: SimulationResult, bins: int = 200) -> Timeline:
    """Queue length and rates over time, from the first replication's trace."""
    from capsim.sim.queue import DROP_REASONS

    tr = res.traces[0]
    t_end = float(np.nanmax(np.concatenate([tr.arrival, tr.done[np.isfinite(tr.done)]]))) if len(tr.arrival) else 0.0
    step = t_end / bins if t_end > 0 else 1.0
    edges = np.linspace(0.0, step * bins, bins + 1)
    entered = np.sort(tr.entry[np.isfinite(tr.entry)])
    left_queue = np.sort(np.concatenate([tr.start[np.isfinite(tr.start)],
                                         tr.drop_t[np.isfinite(tr.drop_t) & np.isfinite(tr.entry)]]))
    fine = np.linspace(0.0, step * bins, bins * 20 + 1)[1:]  # 20 samples per bin
    queue = (np.searchsorted(entered, fine, side="right") - np.searchsorted(left_queue, fine, side="right"))
    queue = queue.reshape(bins, 20)

    def rate(times):
        return (np.histogram(times, edges)[0] / step).tolist()

    dropped = tr.drop_reason > 0
    by_reason = {name: rate(tr.drop_t[tr.drop_reason == code]) for code, name in enumerate(DROP_REASONS)
                 if code and (tr.drop_reason == code).any()}
    return Timeline(edges[1:].tolist(), queue.mean(axis=1).tolist(), queue.max(axis=1).astype(float).tolist(),
                    rate(tr.arrival), rate(tr.done[np.isfinite(tr.done)]), rate(tr.drop_t[dropped]), step, by_reason)


def instance_utilization(res: SimulationResult) -> list[float]:
    """Busy fraction of each instance over the measured window, averaged over replications."""
    out = np.zeros(max_instances(res.scenario))
    for tr in res.traces:
        measured = tr.arrival[~tr.warmup]
        if len(measured) < 2:
            continue
        t0, t1 = float(measured[0]), float(measured[-1])
        busy = np.clip(np.minimum(tr.batch_end, t1) - np.maximum(tr.batch_start, t0), 0.0, None)
        out += np.bincount(tr.batch_instance, weights=busy, minlength=len(out))[: len(out)] / (t1 - t0)
    return (out / max(len(res.traces), 1)).tolist()


def latency_sample(res: SimulationResult, limit: int = 20_000) -> np.ndarray:
    """Measured latencies (ms) of completed requests, thinned evenly to at most ``limit`` for charts."""
    lat = np.concatenate([tr.latency_ms[~tr.warmup & tr.completed] for tr in res.traces])
    lat = np.sort(lat)
    if len(lat) > limit:
        lat = lat[np.linspace(0, len(lat) - 1, limit).astype(int)]
    return lat
