"""Queueing theory and napkin estimates to set beside simulated results.

All functions take and return seconds and requests per second unless named ``_ms``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from capsim.config import Scenario, busy_per_device, max_instances
from capsim import host_cpu
from capsim.service import ServiceCurve, contention_table


def _check_stable(rho: float) -> None:
    if not 0 <= rho < 1:
        raise ValueError(f"utilization {rho:.3f} >= 1: the queue has no steady state")


def mm1_sojourn(lam: float, mu: float) -> float:
    """Mean time in system of an M/M/1 queue: 1 / (mu - lambda)."""
    _check_stable(lam / mu)
    return 1.0 / (mu - lam)


def mg1_sojourn(lam: float, mean_s: float, cv: float) -> float:
    """Mean time in system of an M/G/1 queue (Pollaczek-Khinchine): E[S] + lambda E[S^2] / (2 (1 - rho))."""
    rho = lam * mean_s
    _check_stable(rho)
    es2 = mean_s**2 * (1.0 + cv**2)
    return mean_s + lam * es2 / (2.0 * (1.0 - rho))


def md1_sojourn(lam: float, mean_s: float) -> float:
    """Mean time in system of an M/D/1 queue: P-K with zero service variance."""
    return mg1_sojourn(lam, mean_s, 0.0)


def erlang_c(c: int, a: float) -> float:
    """Probability that an arrival waits in an M/M/c queue with offered load a = lambda / mu."""
    rho = a / c
    _check_stable(rho)
    term, total = 1.0, 1.0
    for k in range(1, c):
        term *= a / k
        total += term
    last = term * a / c / (1.0 - rho)
    return last / (total + last)


def mmc_sojourn(lam: float, mu: float, c: int) -> float:
    """Mean time in system of an M/M/c queue (Erlang C)."""
    wq = erlang_c(c, lam / mu) / (c * mu - lam)
    return wq + 1.0 / mu


def capacity_rps(sc: Scenario) -> float:
    """Throughput bound: every instance (the most autoscaling allows) always busy on full batches,
    at full contention on each device; with a network stage, at most what the link carries."""
    n, k = max_instances(sc), busy_per_device(sc)
    factor = float(contention_table(sc.service, k)[k])
    cap = host_cpu.sustainable_rps(
        sc, lambda curve: ServiceCurve(curve, sc.batching.max_batch_size).capacity_rps(n, contention=factor))
    net = sc.network
    if net is not None:
        cap = min(cap, net.bandwidth_mbps * 1e6 / (net.request_kb() * 1024 * 8))
    return cap


@dataclass
class Napkin:
    """The seed's back-of-the-envelope estimate, which ignores queueing."""

    latency_ms: float          # max wait + pre/post + overhead + compute(B)
    capacity_rps: float        # instances x B / compute(B)
    littles_in_flight: float   # offered rate x latency budget (Little's law), when both are known
    formula: str

    def to_dict(self) -> dict:
        return {"latency_ms": self.latency_ms, "capacity_rps": self.capacity_rps,
                "littles_in_flight": self.littles_in_flight, "formula": self.formula}


def napkin(sc: Scenario) -> Napkin:
    """max queue delay + pre/post + overhead + compute(B), as in the seed's worked example 1."""
    B = sc.batching.max_batch_size
    compute = host_cpu.effective_curve_ms(sc).get(B)
    if compute is None:
        compute = ServiceCurve(host_cpu.effective_curve_ms(sc), B).mean_s(B) * 1000.0
    s = sc.service
    prepost = s.preprocess.ms + s.postprocess.ms
    lat = sc.batching.max_queue_delay_ms + prepost + s.overhead_ms + compute + s.batch_overhead_ms
    rate = sc.arrivals.offered_rps()
    budget = sc.slo.latency_ms if sc.slo else lat
    in_flight = (rate or 0.0) * budget / 1000.0
    def ms(v: float) -> str:  # measured curves give long decimals; a napkin needs three digits
        return f"{v:.3g}" if v < 100 else f"{v:.0f}"

    held = f" + {ms(s.batch_overhead_ms)} batch overhead" if s.batch_overhead_ms else ""
    formula = (f"{ms(sc.batching.max_queue_delay_ms)} wait + {ms(prepost)} pre/post + {ms(s.overhead_ms)} overhead "
               f"+ {ms(compute)} compute(b={B}){held} = {ms(lat)} ms")
    return Napkin(lat, capacity_rps(sc), in_flight, formula)


@dataclass
class LittlesLaw:
    """L (time-average number in system) against lambda x W over the measurement window."""

    L: float
    lam_rps: float
    W_ms: float
    rel_error: float

    def to_dict(self) -> dict:
        return {"L": self.L, "lambda_rps": self.lam_rps, "W_ms": self.W_ms, "rel_error": self.rel_error}


def littles_law(arrival: np.ndarray, leave: np.ndarray, t0: float, t1: float) -> LittlesLaw:
    """Check L = lambda W on [t0, t1] from each request's arrival and departure (or drop) time.

    L integrates the number in system over the window; lambda counts arrivals in the window;
    W is the mean time in system of those arrivals. The two sides differ only by edge effects,
    so a large error flags a bookkeeping bug or a system that is not in steady state.
    """
    inside = np.clip(np.minimum(leave, t1) - np.maximum(arrival, t0), 0.0, None)
    T = t1 - t0
    L = float(inside.sum() / T)
    m = (arrival >= t0) & (arrival <= t1)
    lam = float(m.sum() / T)
    W = float(np.mean(leave[m] - arrival[m]))
    rel = abs(L - lam * W) / (lam * W) if lam * W > 0 else 0.0
    return LittlesLaw(L, lam, W * 1000.0, rel)


def predicted_mean_latency_ms(sc: Scenario) -> float | None:
    """Exact mean latency from queueing theory where the scenario is a textbook queue, else None.

    Covered: max batch 1, Poisson arrivals, no caps/timeouts/stages, no contention; one instance
    with any service distribution (M/G/1), or several with exponential service (M/M/c).
    """
    s, b, q = sc.service, sc.batching, sc.queue
    if (b.max_batch_size != 1 or sc.arrivals.process != "poisson" or sc.arrivals.rate_schedule is not None
            or q.max_size or q.timeout_ms
            or q.per_source_max_size or q.stride != 1 or s.preprocess.ms or s.postprocess.ms or s.contention
            or s.variability.distribution == "empirical" or q.deadline_ms or sc.priority is not None
            or sc.network is not None or sc.autoscale is not None or s.batch_overhead_ms):
        return None
    lam, mean = sc.arrivals.rate_rps, host_cpu.effective_curve_ms(sc)[1] / 1000.0  # slowed by shared cores
    cv = 1.0 if s.variability.distribution == "exponential" else s.variability.cv
    try:
        if sc.instances == 1:
            w = mg1_sojourn(lam, mean, cv)
        elif s.variability.distribution == "exponential":
            w = mmc_sojourn(lam, 1.0 / mean, sc.instances)
        else:
            return None
    except ValueError:
        return None
    return w * 1000.0 + s.overhead_ms
