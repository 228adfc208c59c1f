"""The capacity question: can this service meet the SLO at this rate, with which settings?

Search: every combination of batching mode, max batch size, max queue delay and instance count
is simulated at the target rate with a short screening run (a few replications), and judged
against the SLO with its confidence interval. Rule for the recommendation: among configs that
meet the SLO, the fewest instances; then the most headroom (target minus the percentile's upper
interval bound); then the smaller batch and delay. The recommended config is re-simulated with
the scenario's full run length for the verdict, and its highest sustainable rate is found by
bisection on the rate, where a rate counts as sustainable only when the interval is under the
target (interval-aware), and an unstable run or a throughput shortfall is never sustainable.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from capsim import analytic
from capsim.config import SLO, Scenario
from capsim.errors import CapsimError
from capsim.metrics import SimulationResult, _pname
from capsim import host_cpu
from capsim.service import ServiceCurve, contention_table
from capsim.simulate import simulate

RULE = ("fewest instances that meet the SLO; then the most headroom (target - upper CI bound of the "
        "percentile); then the smaller batch and delay")
BISECTION_STEPS = 10


@dataclass
class Evaluation:
    """One config at one rate, judged against the SLO."""

    mode: str
    max_batch_size: int
    max_queue_delay_ms: float
    instances: int
    rate_rps: float
    verdict: str                 # feasible | infeasible | inconclusive
    observed_ms: float | None    # the SLO percentile
    ci_ms: list[float] | None
    result: SimulationResult | None = field(repr=False)  # None: ruled out by the capacity bound, not simulated
    note: str = ""

    @property
    def config(self) -> dict:
        return {"mode": self.mode, "max_batch_size": self.max_batch_size,
                "max_queue_delay_ms": self.max_queue_delay_ms, "instances": self.instances}

    def headroom_ms(self, target: float) -> float:
        return target - self.ci_ms[1] if self.ci_ms else -math.inf

    def to_dict(self) -> dict:
        r = self.result
        if r is None:
            return {**self.config, "rate_rps": self.rate_rps, "verdict": self.verdict, "note": self.note,
                    "latency_ms": None, "latency_ci_ms": None, "slo_observed_ms": None, "slo_ci_ms": None,
                    "throughput_rps": None, "drop_rate": None, "utilization": None, "stable": False}
        lat = r.to_dict()["latency_ms"]
        ci = r.to_dict()["latency_ci_ms"]
        return {**self.config, "rate_rps": self.rate_rps, "verdict": self.verdict,
                "latency_ms": {k: lat[k] for k in ("p50", "p95", "p99")},
                "latency_ci_ms": {k: ci[k] for k in ("p50", "p95", "p99")},
                "slo_observed_ms": self.observed_ms, "slo_ci_ms": self.ci_ms,
                "throughput_rps": r.throughput_rps, "drop_rate": r.drop_rate, "utilization": r.utilization,
                "stable": r.stable}


def _refuse_closed(sc: Scenario) -> None:
    if sc.arrivals.process == "closed":
        raise CapsimError("arrivals.process: closed-loop clients have no offered rate to scale; "
                          "vary arrivals.concurrency instead")


def with_rate(sc: Scenario, rps: float) -> Scenario:
    """A copy of ``sc`` whose arrival process offers ``rps`` on average (shape kept)."""
    _refuse_closed(sc)
    out = copy.deepcopy(sc)
    a = out.arrivals
    current = a.offered_rps()
    if current is None:
        raise CapsimError("arrivals.process: plan needs a rate it can scale (poisson, constant, bursty, streams); "
                          "a trace has a fixed rate")
    k = rps / current
    if a.rate_schedule is not None:  # every step scaled: the profile keeps its shape
        for st in a.rate_schedule.steps:
            st.rate_rps *= k
    elif a.process in ("poisson", "constant"):
        a.rate_rps = rps
    elif a.process == "bursty":
        a.rate_rps *= k
        a.burst_rate_rps *= k
    else:
        for g in a.streams:
            g.fps *= k
    return out


def with_config(sc: Scenario, mode: str, B: int, D: float, N: int) -> Scenario:
    out = copy.deepcopy(sc)
    out.batching.mode = mode
    out.batching.max_batch_size = B
    out.batching.max_queue_delay_ms = D
    out.batching.preferred_batch_sizes = [p for p in out.batching.preferred_batch_sizes if p <= B] \
        if mode == "triton" else []
    out.instances = N
    return out


def throughput_bound(sc: Scenario) -> float:
    """Most requests per second the instances could ever complete: the best batch size's rate per
    instance, at the best number of busy instances given the contention slowdown."""
    factors = contention_table(sc.service, sc.instances)
    busy = max(k / factors[k] for k in range(1, sc.instances + 1))

    def bound_at(curve_ms: dict[int, float]) -> float:
        curve = ServiceCurve(curve_ms, sc.batching.max_batch_size)
        return float(busy * max(b / curve.seconds[b] for b in range(1, sc.batching.max_batch_size + 1)))

    return host_cpu.sustainable_rps(sc, bound_at)


def judge(res: SimulationResult, slo: SLO) -> tuple[str, float | None, list[float] | None]:
    """feasible / infeasible / inconclusive for one result, with the percentile and its interval."""
    s = res.slo
    if not res.stable or not s["throughput_met"] or s["observed_ms"] is None:
        return "infeasible", s["observed_ms"], s["ci_ms"]
    lo, hi = s["ci_ms"]
    if hi <= slo.latency_ms:
        return "feasible", s["observed_ms"], s["ci_ms"]
    if lo > slo.latency_ms:
        return "infeasible", s["observed_ms"], s["ci_ms"]
    return "inconclusive", s["observed_ms"], s["ci_ms"]


@dataclass
class Plan:
    """The answer to the capacity question."""

    question: dict
    verdict: str
    recommended: Evaluation | None
    alternatives: list[Evaluation]
    max_rate_rps: float | None
    headroom_pct: float | None
    binding: list[str]
    napkin: dict
    evaluated: int
    engine: str
    more_requests: int | None = None   # when inconclusive: simulated requests that would settle it

    def to_dict(self) -> dict:
        return {"question": self.question, "verdict": self.verdict, "rule": RULE,
                "recommended": self.recommended.to_dict() if self.recommended else None,
                "alternatives": [a.to_dict() for a in self.alternatives],
                "max_rate_rps": self.max_rate_rps, "headroom_pct": self.headroom_pct, "binding": self.binding,
                "napkin": self.napkin, "evaluated_configs": self.evaluated, "engine": self.engine,
                "more_requests_to_settle": self.more_requests}


def plan(sc: Scenario, rps: float | None = None, slo: SLO | None = None, max_instances: int = 4,
         batch_sizes: list[int] | None = None, delays_ms: list[float] | None = None,
         modes: tuple[str, ...] = ("triton",), engine: str = "auto", screen_requests: int = 20_000,
         screen_replications: int = 3, progress: Callable[[int, int], None] | None = None) -> Plan:
    """Search the batching and instance knobs for configs that meet ``slo`` at ``rps``."""
    slo = slo or sc.slo
    if slo is None:
        raise CapsimError("slo: the scenario has no SLO; add slo: {percentile: 95, latency_ms: ...} or pass --slo")
    _refuse_closed(sc)
    rps = rps or sc.arrivals.offered_rps()
    if rps is None or not rps > 0:
        raise CapsimError("--rps: give the target rate (> 0); the scenario's arrivals do not define one")
    base = with_rate(sc, rps)
    base.slo = slo
    curve = sc.service.curve_ms()
    largest = max(curve)
    sizes = sorted(set(batch_sizes or [b for b in (1, 2, 4, 8, 16, 32, 64) if b <= largest]))
    for b in sizes:
        if b > largest:
            raise CapsimError(f"--batch-sizes: {b} is above the largest measured batch size {largest}")
    delays = sorted(set(delays_ms if delays_ms is not None else [0, 2, 5, 10, 20]))
    if sc.service.contention and max_instances > max(max(sc.service.contention), 1):
        max_instances = max(sc.service.contention)  # no slowdown factor measured beyond that
    screen = copy.deepcopy(base)
    screen.run.requests = max(screen_requests, sc.run.warmup_requests + 1000)
    screen.run.replications = screen_replications
    sheds_load = bool(sc.queue.max_size or sc.queue.timeout_ms or sc.queue.per_source_max_size)

    def rank(e: Evaluation):
        order = {"feasible": 0, "inconclusive": 1, "infeasible": 2}[e.verdict]
        return (order, e.instances if e.verdict == "feasible" else 0, -e.headroom_ms(slo.latency_ms),
                e.max_batch_size, e.max_queue_delay_ms)

    # Instance counts are searched in increasing order and the search stops at the first count
    # with a feasible config: by the rule, more instances could never be recommended.
    per_n = [(m, b, d) for m in modes for b in sizes for d in (delays if b > 1 else [0.0])]
    total = len(per_n) * max_instances
    evals: list[Evaluation] = []
    engine_used = set()
    for n in range(1, max_instances + 1):
        for (m, b, d) in per_n:
            cfg = with_config(screen, m, b, d, n)
            bound = throughput_bound(cfg)
            if rps >= bound and not sheds_load:
                # Offered load at or above what the instances can ever serve: the queue grows without
                # bound, so there is nothing to simulate.
                evals.append(Evaluation(m, b, d, n, rps, "infeasible", None, None, None,
                                        note=f"capacity bound {bound:.1f} rps < {rps:g} rps"))
            else:
                res = simulate(cfg, engine=engine)
                engine_used.add(res.engine)
                verdict, obs, ci = judge(res, slo)
                evals.append(Evaluation(m, b, d, n, rps, verdict, obs, ci, res))
            if progress:
                progress(len(evals), total)
        if any(e.verdict == "feasible" for e in evals):
            break

    evals.sort(key=rank)
    best = evals[0]
    # The verdict comes from the full-length run of the recommended config.
    full = simulate(with_config(base, best.mode, best.max_batch_size, best.max_queue_delay_ms, best.instances),
                    engine=engine)
    verdict, obs, ci = judge(full, slo)
    recommended = Evaluation(best.mode, best.max_batch_size, best.max_queue_delay_ms, best.instances, rps, verdict,
                             obs, ci, full)
    more = None
    if verdict == "inconclusive":
        hw = (ci[1] - ci[0]) / 2.0
        gap = abs(slo.latency_ms - obs)
        n_now = full.scenario.run.requests * full.scenario.run.replications
        more = int(n_now * ((hw / gap) ** 2 if gap > 0 else 100.0)) - n_now

    max_rate = max_sustainable_rate(screen, best, slo, rps, engine)
    headroom = (max_rate / rps - 1.0) * 100.0

    return Plan(
        question={"rps": rps, "slo": {"percentile": slo.percentile, "latency_ms": slo.latency_ms,
                                      "min_throughput_rps": slo.min_throughput_rps},
                  "scenario": sc.name, "max_instances": max_instances, "batch_sizes": sizes, "delays_ms": delays,
                  "modes": list(modes)},
        verdict=verdict, recommended=recommended, alternatives=evals[1:6], max_rate_rps=max_rate,
        headroom_pct=headroom, binding=binding(recommended), napkin=napkin_beside(recommended, slo),
        evaluated=len(evals), engine="/".join(sorted(engine_used | {full.engine})), more_requests=more,
    )


def sustainable(sc: Scenario, e: Evaluation, slo: SLO, rate: float, engine: str) -> bool:
    """True only when the config meets the latency SLO at ``rate`` with the whole interval under the target.

    The throughput goal is left out here: the rate being tried is the throughput in question.
    """
    latency_only = SLO(percentile=slo.percentile, latency_ms=slo.latency_ms, min_throughput_rps=0.0)
    cfg = with_rate(with_config(sc, e.mode, e.max_batch_size, e.max_queue_delay_ms, e.instances), rate)
    cfg.slo = latency_only
    return judge(simulate(cfg, engine=engine), latency_only)[0] == "feasible"


def max_sustainable_rate(sc: Scenario, e: Evaluation, slo: SLO, rps: float, engine: str,
                         steps: int = BISECTION_STEPS) -> float:
    """Highest rate at which ``e`` still meets the SLO, by bisection (0 when not even a trickle does)."""
    cfg = with_config(sc, e.mode, e.max_batch_size, e.max_queue_delay_ms, e.instances)
    hi = analytic.capacity_rps(cfg)  # nothing is sustainable above the capacity bound
    lo = 0.0
    if sustainable(sc, e, slo, min(rps, hi * 0.999), engine):
        lo = min(rps, hi * 0.999)
    elif not sustainable(sc, e, slo, hi * 0.01, engine):
        return 0.0
    else:
        lo, hi = hi * 0.01, min(rps, hi)
    for _ in range(steps):
        mid = (lo + hi) / 2.0
        if sustainable(sc, e, slo, mid, engine):
            lo = mid
        else:
            hi = mid
    return lo


def binding(e: Evaluation) -> list[str]:
    """What limits the recommended config, most limiting first."""
    r, sc = e.result, e.result.scenario
    out = []
    if r.utilization >= 0.85:
        out.append(f"model compute: instances busy {r.utilization:.0%} of the time")
    bd = r.breakdown_ms
    if bd["batch_formation"] > max(bd["queue_wait"], 0.0) and bd["batch_formation"] > 0.1 * bd["service"]:
        out.append(f"batch-formation delay: requests wait {bd['batch_formation']:.1f} ms for batches to fill")
    for stage in ("preprocess", "postprocess"):
        st = getattr(sc.service, stage)
        if st.workers and e.rate_rps * st.ms / 1000.0 / st.workers >= 0.85:
            out.append(f"{stage} workers: {e.rate_rps * st.ms / 1000.0 / st.workers:.0%} busy")
    caps = r.drops_by_reason.get("rejected", 0) + r.drops_by_reason.get("dropped_oldest", 0)
    if caps and r.drop_rate >= 0.005:
        out.append(f"queue cap: {r.drop_rate:.1%} of requests dropped")
    if not out:
        out.append(f"nothing close to its limit (utilization {r.utilization:.0%}); latency is mostly service time")
    return out


def napkin_beside(e: Evaluation, slo: SLO) -> dict:
    """The seed's formula and Little's law next to the simulated percentile, with the difference explained."""
    r = e.result
    nap = analytic.napkin(r.scenario)
    key = _pname(slo.percentile)
    sim = r.latency_ms.get(key) if r.stable else None
    in_flight = e.rate_rps * (r.latency_ms["mean"] / 1000.0) if r.stable else None
    if sim is None:
        why = "the config cannot keep up at this rate; the napkin figure assumes it can"
    elif sim > nap.latency_ms:
        why = (f"simulated {key} is {sim - nap.latency_ms:.1f} ms above the napkin: the napkin ignores queueing "
               f"(mean queue wait {r.breakdown_ms['queue_wait']:.1f} ms here, more in the tail)")
    else:
        why = (f"simulated {key} is {nap.latency_ms - sim:.1f} ms below the napkin: batches average "
               f"{r.mean_batch_size:.1f} of {e.max_batch_size} and rarely wait the full delay")
    return {"formula": nap.formula, "napkin_latency_ms": nap.latency_ms, "capacity_bound_rps": nap.capacity_rps,
            "littles_law_in_flight": in_flight, "simulated_ms": sim, "difference": why}
