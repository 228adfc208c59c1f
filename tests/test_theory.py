"""With max batch 1 the simulator is a textbook queue: compare it with queueing theory.

Following Ciw's test suite: seeded independent replications, a warm-up cut, and an explicit
tolerance. The theoretical values are computed here from closed forms (M/M/1, Pollaczek-
Khinchine for M/D/1 and M/G/1, Erlang C for M/M/c), independently of capsim.analytic, whose
functions are checked separately against the same closed forms and textbook numbers.

Sizing: service mean 10 ms, so mu = 100/s per instance. The noisiest case, M/M/1 at rho = 0.8,
has a per-replication standard deviation of the mean sojourn time of about 2.1 % at 250k
requests (measured over 48 replications; the distribution of a replication's mean is skewed,
an occasional replication is 5-6 % off), so 8 x 250k gives a standard error near 0.75 % and
the 3 % tolerance is about 4 standard errors. The other rho = 0.8 cases are less noisy and
run 0.75-1M requests; rho = 0.5 cases 200-300k. Every simulation runs once per session (cached)
and serves the mean, percentile and Little's law tests.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import pytest
from scipy import optimize, stats

from capsim import analytic
from capsim.config import parse_scenario
from capsim.simulate import simulate

SERVICE_MS = 10.0
MU = 1000.0 / SERVICE_MS
WARMUP = 2_000
SEED = 20240611
MEAN_TOL = 0.03      # simulated mean sojourn within 3 % of theory
LITTLE_TOL = 0.02    # L and lambda x W within 2 %

# name: (variability, cv, servers, rho, requests per replication, replications)
CASES = {
    "M/D/1 rho=0.5": ("none", 0.0, 1, 0.5, 40_000, 5),
    "M/D/1 rho=0.8": ("none", 0.0, 1, 0.8, 150_000, 5),
    "M/M/1 rho=0.5": ("exponential", 1.0, 1, 0.5, 60_000, 5),
    "M/M/1 rho=0.8": ("exponential", 1.0, 1, 0.8, 250_000, 8),
    "M/M/2 rho=0.5": ("exponential", 1.0, 2, 0.5, 40_000, 5),
    "M/M/2 rho=0.8": ("exponential", 1.0, 2, 0.8, 200_000, 5),
    "M/M/3 rho=0.5": ("exponential", 1.0, 3, 0.5, 40_000, 5),
    "M/M/3 rho=0.8": ("exponential", 1.0, 3, 0.8, 200_000, 5),
    "M/G/1 gamma cv=0.5 rho=0.5": ("gamma", 0.5, 1, 0.5, 40_000, 5),
    "M/G/1 gamma cv=0.5 rho=0.8": ("gamma", 0.5, 1, 0.8, 200_000, 5),
}
MM_CASES = [name for name, c in CASES.items() if c[0] == "exponential"]


def case_params(names):
    return [pytest.param(n, id=n) for n in names]


# --------------------------------------------------------------------------- theory, independently


def theory_mm1(lam, mu):
    return 1.0 / (mu - lam)


def theory_pk(lam, es, cv):
    """Pollaczek-Khinchine mean time in system: E[S] + lambda E[S^2] / (2 (1 - rho))."""
    rho = lam * es
    return es + lam * (es**2) * (1 + cv**2) / (2 * (1 - rho))


def theory_erlang_c(c, a):
    """P(wait) in M/M/c via the Erlang B recursion B(k) = a B(k-1) / (k + a B(k-1))."""
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    return c * b / (c - a * (1 - b))


def theory_mmc(lam, mu, c):
    return theory_erlang_c(c, lam / mu) / (c * mu - lam) + 1.0 / mu


def theory_mmc_sojourn_tail(t, lam, mu, c):
    """P(T > t) in M/M/c FCFS: no wait w.p. 1 - C, else Exp(c mu - lam) wait plus Exp(mu) service."""
    pw = theory_erlang_c(c, lam / mu)
    g = c * mu - lam
    if math.isclose(g, mu):
        both = math.exp(-mu * t) * (1 + mu * t)
    else:
        both = (g * math.exp(-mu * t) - mu * math.exp(-g * t)) / (g - mu)
    return (1 - pw) * math.exp(-mu * t) + pw * both


def theory_mmc_quantile(q, lam, mu, c):
    return optimize.brentq(lambda t: theory_mmc_sojourn_tail(t, lam, mu, c) - (1 - q), 0.0, 100.0 / mu, xtol=1e-12)


def theory_mean_s(name):
    dist, cv, c, rho, _, _ = CASES[name]
    lam = rho * c * MU
    if dist == "exponential":
        return theory_mm1(lam, MU) if c == 1 else theory_mmc(lam, MU, c)
    return theory_pk(lam, 1.0 / MU, cv)


# --------------------------------------------------------------------------- simulations (cached)


def scenario(dist, cv, c, rho, requests, reps, seed=SEED, **batching):
    return parse_scenario({
        "name": "theory",
        "arrivals": {"process": "poisson", "rate_rps": rho * c * MU},
        "service": {"batch_latency_ms": {1: SERVICE_MS}, "variability": {"distribution": dist, "cv": cv}},
        "batching": {"max_batch_size": 1, **batching},
        "instances": c,
        "run": {"requests": requests, "warmup_requests": WARMUP, "replications": reps, "seed": seed},
    })


def sojourns(tr):
    """Time in system (s) of measured completed requests: latency without overhead (there is none)."""
    m = ~tr.warmup & tr.completed
    return tr.done[m] - tr.arrival[m]


def time_average_in_system(arrival, leave, t0, t1):
    """Integral of N(t) over [t0, t1] / (t1 - t0), by sweeping the sorted arrival/departure events."""
    times = np.concatenate([arrival, leave])
    steps = np.concatenate([np.ones(len(arrival)), -np.ones(len(leave))])
    order = np.argsort(times, kind="stable")
    times, steps = times[order], steps[order]
    n = np.cumsum(steps)                 # number in system just after each event
    before = np.searchsorted(times, t0, side="right")
    n0 = n[before - 1] if before else 0.0
    inner = (times > t0) & (times < t1)
    edges = np.concatenate([[t0], times[inner], [t1]])
    levels = np.concatenate([[n0], n[inner]])
    return float(np.sum(levels * np.diff(edges)) / (t1 - t0))


@dataclass
class Rep:
    """What the tests need from one replication's trace (the traces themselves are not kept)."""

    mean_sojourn_s: float
    all_completed: bool
    L: float          # time-average number in system over the measurement window
    lam: float        # arrivals in the window per second
    W: float          # mean time in system of those arrivals (s)
    thinned: np.ndarray  # every 50th sojourn time, for distribution tests


@functools.lru_cache(maxsize=None)
def run_case(name):
    """Simulate a case once per session; keep the result's summary and per-replication figures."""
    # A seed per case: cases sharing a seed would share their arrival draws and their errors.
    res = simulate(scenario(*CASES[name], seed=SEED + list(CASES).index(name)))
    reps = []
    for tr in res.traces:
        m = ~tr.warmup
        t0, t1 = tr.arrival[m][0], tr.arrival[m][-1]
        inwin = (tr.arrival >= t0) & (tr.arrival <= t1)
        soj = sojourns(tr)
        reps.append(Rep(
            mean_sojourn_s=float(soj.mean()), all_completed=bool(tr.completed.all()),
            L=time_average_in_system(tr.arrival, tr.done, t0, t1), lam=float(inwin.sum() / (t1 - t0)),
            W=float(np.mean(tr.done[inwin] - tr.arrival[inwin])), thinned=soj[::50].copy()))
    res.traces = []  # ~1 GB over all cases otherwise
    return res, reps


# --------------------------------------------------------------------------- mean latency


@pytest.mark.parametrize("name", case_params(CASES))
def test_mean_latency_matches_theory(name):
    res, reps = run_case(name)
    w = theory_mean_s(name) * 1000.0
    assert res.stable
    assert res.dropped == 0
    assert set(res.batch_size_histogram) == {1}
    sim = res.latency_ms["mean"]
    assert abs(sim - w) / w <= MEAN_TOL, f"{name}: simulated mean {sim:.3f} ms vs theory {w:.3f} ms"

    # Sizing (designed for >= 4 standard errors; checked loosely, as 5 replications estimate it roughly).
    means = np.array([r.mean_sojourn_s * 1000.0 for r in reps])
    k = len(means)
    se = means.std(ddof=1) / math.sqrt(k)
    assert se / w < MEAN_TOL / 2, f"{name}: the run is too short for a 3 % test (standard error {se / w:.2%})"
    # The replications' own 99.9 % interval of the mean contains the exact value (no bias).
    hw = stats.t.ppf(0.9995, k - 1) * se
    assert abs(means.mean() - w) <= hw, f"{name}: theory {w:.3f} outside {means.mean():.3f} +- {hw:.3f}"

    # The result's own theory companion agrees with the closed form computed here.
    assert res.theory_mean_ms == pytest.approx(w, rel=1e-9)


@pytest.mark.parametrize("name", case_params(CASES))
def test_throughput_and_utilization_match_offered_load(name):
    dist, cv, c, rho, _, _ = CASES[name]
    res, _ = run_case(name)
    lam = rho * c * MU
    assert res.offered_rps == pytest.approx(lam, rel=0.01)
    assert res.throughput_rps == pytest.approx(lam, rel=0.01)
    assert res.utilization == pytest.approx(rho, rel=0.02)
    # Every request spends exactly one service time in service on average (batch of one).
    assert res.breakdown_ms["service"] == pytest.approx(SERVICE_MS, rel=0.01 if dist == "none" else 0.02)
    if dist == "none":
        assert res.breakdown_ms["service"] == pytest.approx(SERVICE_MS, abs=1e-6)


# --------------------------------------------------------------------------- percentiles and their intervals


def test_percentile_intervals_cover_the_exact_mmc_percentiles():
    """M/M/1 sojourn times are Exp(mu - lambda); M/M/c ones a known mixture. Check the reported
    percentiles and their 95 % intervals against the exact quantiles."""
    rows = []
    for name in MM_CASES:
        _, _, c, rho, _, _ = CASES[name]
        lam = rho * c * MU
        res, _ = run_case(name)
        for p in (50, 90, 95, 99):
            exact = theory_mmc_quantile(p / 100, lam, MU, c) * 1000.0
            if c == 1:
                assert exact == pytest.approx(-math.log(1 - p / 100) / (MU - lam) * 1000.0, rel=1e-9)
            point = res.latency_ms[f"p{p}"]
            lo, hi = res.latency_ci_ms[f"p{p}"]
            rows.append((name, p, exact, point, lo, hi))
            # A sane interval: around the point estimate, not degenerate, not uselessly wide.
            assert lo < point < hi, (name, p, lo, point, hi)
            assert (hi - lo) / 2 / point < 0.12, (name, p, lo, hi)
            # The point estimate is as good as the mean (3 %); p99 rests on 1 % of the sample: 6 %.
            tol = 0.06 if p == 99 else MEAN_TOL
            assert abs(point - exact) / exact <= tol, (name, p, point, exact)
    # 95 % intervals: most of them must cover the exact value (a quarter missing means the
    # intervals are too narrow or the estimates biased; percentiles of one run are correlated,
    # so this is looser than a binomial bound on 24 independent intervals).
    covered = sum(lo <= exact <= hi for _, _, exact, _, lo, hi in rows)
    assert covered >= 0.75 * len(rows), rows


def test_mm1_latency_distribution_is_exponential():
    """Beyond the mean: the whole sojourn distribution of M/M/1 at rho 0.8 is Exp(mu - lambda)."""
    name = "M/M/1 rho=0.8"
    _, reps = run_case(name)
    lam = CASES[name][3] * MU
    # Every 50th request: far enough apart for near-independence at this load.
    sample = np.concatenate([r.thinned for r in reps])
    ks = stats.kstest(sample, "expon", args=(0, 1.0 / (MU - lam)))
    assert ks.statistic < 0.015, ks


# --------------------------------------------------------------------------- Little's law


@pytest.mark.parametrize("name", case_params(["M/D/1 rho=0.8", "M/M/1 rho=0.8", "M/M/3 rho=0.8",
                                               "M/G/1 gamma cv=0.5 rho=0.5"]))
def test_littles_law(name):
    res, reps = run_case(name)
    for r in reps:
        assert r.all_completed
        assert abs(r.L - r.lam * r.W) / (r.lam * r.W) < LITTLE_TOL, (name, r.L, r.lam, r.W)
    Ls = [r.L for r in reps]
    Ws = [r.W for r in reps]
    # Against the reported throughput and mean latency (overhead is 0: latency is time in system).
    L_mean = float(np.mean(Ls))
    lw = res.throughput_rps * res.latency_ms["mean"] / 1000.0
    assert abs(L_mean - lw) / lw < LITTLE_TOL, (name, L_mean, lw)
    # And against theory: L = lambda W with the exact W.
    _, _, c, rho, _, _ = CASES[name]
    assert L_mean == pytest.approx(rho * c * MU * theory_mean_s(name), rel=0.04)
    # The result's own Little's law check (first replication) agrees and is within 2 %.
    ll = res.littles_law
    assert ll.rel_error < LITTLE_TOL
    assert ll.L == pytest.approx(Ls[0], rel=1e-6)
    assert ll.L == pytest.approx(ll.lam_rps * ll.W_ms / 1000.0, rel=LITTLE_TOL)
    assert ll.W_ms == pytest.approx(Ws[0] * 1000.0, rel=1e-6)


def test_littles_law_sweep_matches_a_hand_computed_example():
    """The helper above, on a case small enough to integrate by hand."""
    arrival = np.array([0.0, 1.0, 2.0, 2.5])
    leave = np.array([3.0, 1.5, 4.0, 10.0])
    # On [1, 4]: request 0 in [1, 3] -> 2; request 1 -> 0.5; request 2 in [2, 4] -> 2; request 3 -> 1.5.
    assert time_average_in_system(arrival, leave, 1.0, 4.0) == pytest.approx(6.0 / 3.0)


# --------------------------------------------------------------------------- the batcher at B = 1


def test_max_batch_one_is_the_same_queue_in_every_mode():
    """At B = 1 the queue delay is irrelevant and timer mode is triton: identical traces."""
    base = scenario("exponential", 1.0, 2, 0.8, 20_000, 1)
    variants = [scenario("exponential", 1.0, 2, 0.8, 20_000, 1, max_queue_delay_ms=50.0),
                scenario("exponential", 1.0, 2, 0.8, 20_000, 1, mode="timer"),
                scenario("exponential", 1.0, 2, 0.8, 20_000, 1, mode="timer", max_queue_delay_ms=50.0)]
    ref = simulate(base).traces[0]
    for sc in variants:
        tr = simulate(sc).traces[0]
        for f in ("start", "end", "done", "instance", "batch_instance"):
            assert np.array_equal(getattr(tr, f), getattr(ref, f)), (sc.batching, f)


# --------------------------------------------------------------------------- capsim.analytic against the closed forms


def test_analytic_textbook_numbers():
    # M/M/1, lambda 8, mu 10: W = 1 / (10 - 8) = 0.5 s.
    assert analytic.mm1_sojourn(8.0, 10.0) == pytest.approx(0.5)
    # M/D/1, rho 0.8, S = 1: W = 1 + 0.8 / (2 x 0.2) = 3.
    assert analytic.md1_sojourn(0.8, 1.0) == pytest.approx(3.0)
    # M/G/1, rho 0.5, S = 1, cv 0.5: W = 1 + 0.5 x 1.25 / (2 x 0.5) = 1.625.
    assert analytic.mg1_sojourn(0.5, 1.0, 0.5) == pytest.approx(1.625)
    # M/G/1 with cv 1 is M/M/1.
    assert analytic.mg1_sojourn(8.0, 0.1, 1.0) == pytest.approx(analytic.mm1_sojourn(8.0, 10.0))
    # Erlang C: c = 2, a = 1 -> 1/3; c = 3, a = 2 -> 4/9; c = 1 -> rho.
    assert analytic.erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert analytic.erlang_c(3, 2.0) == pytest.approx(4 / 9)
    assert analytic.erlang_c(1, 0.7) == pytest.approx(0.7)
    # M/M/3, lambda 2, mu 1: Wq = (4/9) / (3 - 2), W = 1 + 4/9.
    assert analytic.mmc_sojourn(2.0, 1.0, 3) == pytest.approx(1 + 4 / 9)
    # A classic call-centre number: 10 agents, 8 Erlangs offered -> P(wait) = 0.4092.
    assert analytic.erlang_c(10, 8.0) == pytest.approx(0.4092, abs=5e-4)


@pytest.mark.parametrize("c", [1, 2, 3, 5, 10])
@pytest.mark.parametrize("rho", [0.1, 0.5, 0.8, 0.95])
def test_analytic_agrees_with_independent_closed_forms(c, rho):
    lam = rho * c * MU
    assert analytic.erlang_c(c, lam / MU) == pytest.approx(theory_erlang_c(c, lam / MU), rel=1e-9)
    assert analytic.mmc_sojourn(lam, MU, c) == pytest.approx(theory_mmc(lam, MU, c), rel=1e-9)
    if c == 1:
        assert analytic.mm1_sojourn(lam, MU) == pytest.approx(theory_mm1(lam, MU), rel=1e-12)
        assert analytic.mmc_sojourn(lam, MU, 1) == pytest.approx(theory_mm1(lam, MU), rel=1e-9)
        for cv in (0.0, 0.5, 1.0, 2.0):
            assert analytic.mg1_sojourn(lam, 1 / MU, cv) == pytest.approx(theory_pk(lam, 1 / MU, cv), rel=1e-12)
        assert analytic.md1_sojourn(lam, 1 / MU) == pytest.approx(theory_pk(lam, 1 / MU, 0.0), rel=1e-12)


@pytest.mark.parametrize("fn, args", [
    (analytic.mm1_sojourn, (10.0, 10.0)),
    (analytic.mm1_sojourn, (12.0, 10.0)),
    (analytic.mg1_sojourn, (1.0, 1.0, 0.5)),
    (analytic.md1_sojourn, (2.0, 1.0)),
    (analytic.erlang_c, (2, 2.0)),
    (analytic.mmc_sojourn, (30.0, 10.0, 3)),
])
def test_analytic_refuses_unstable_queues(fn, args):
    with pytest.raises(ValueError):
        fn(*args)


def test_predicted_mean_latency_covers_exactly_the_textbook_queues():
    # M/M/3 and M/G/1 are covered, overhead added on top.
    sc = scenario("exponential", 1.0, 3, 0.8, 5_000, 1)
    assert analytic.predicted_mean_latency_ms(sc) == pytest.approx(theory_mmc(240.0, MU, 3) * 1000.0)
    sc = parse_scenario({
        "arrivals": {"process": "poisson", "rate_rps": 50},
        "service": {"batch_latency_ms": {1: 10}, "variability": {"distribution": "gamma", "cv": 0.5},
                    "overhead_ms": 7},
        "run": {"requests": 1_000, "warmup_requests": 0},
    })
    assert analytic.predicted_mean_latency_ms(sc) == pytest.approx(theory_pk(50.0, 0.01, 0.5) * 1000.0 + 7.0)
    # Not textbook queues: no formula rather than a wrong one.
    not_covered = [
        {"batching": {"max_batch_size": 2}, "service": {"batch_latency_ms": {1: 10, 2: 12}}},
        {"arrivals": {"process": "constant", "rate_rps": 50}},
        {"instances": 2, "service": {"batch_latency_ms": {1: 10}}},  # M/D/2 has no closed form here
        {"queue": {"max_size": 5}},
        {"queue": {"timeout_ms": 50}},
        {"service": {"batch_latency_ms": {1: 10}, "preprocess": {"ms": 2}}},
        {"instances": 2, "service": {"batch_latency_ms": {1: 10}, "contention": {2: 1.3},
                                     "variability": {"distribution": "exponential", "cv": 1}}},
        {"arrivals": {"process": "poisson", "rate_rps": 150}},  # rho > 1
    ]
    for extra in not_covered:
        data = {"arrivals": {"process": "poisson", "rate_rps": 50}, "service": {"batch_latency_ms": {1: 10}},
                "run": {"requests": 1_000, "warmup_requests": 0}}
        for k, v in extra.items():
            data[k] = {**data.get(k, {}), **v} if isinstance(v, dict) else v
        assert analytic.predicted_mean_latency_ms(parse_scenario(data)) is None, extra
