"""``service.after_idle``: a batch that follows an idle spell of its instance runs slower.

A hand-computed timeline, capacity unchanged (back-to-back batches pay nothing), the light-load
mean against the closed form, the fit to a server's batches (each batch's idle time read off the
timing headers), and one-line errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from capsim.config import parse_scenario
from capsim.errors import CapsimError, ScenarioError
from capsim.simulate import make_engine, simulate

from edits import edited, stream  # tests/edits.py

BASE = {
    "name": "after-idle",
    "arrivals": {"process": "poisson", "rate_rps": 20},
    "service": {"batch_latency_ms": {1: 10.0, 4: 30.0}, "after_idle": {"extra_ms": 5.0, "tau_ms": 50.0}},
    "batching": {"mode": "triton", "max_batch_size": 1, "max_queue_delay_ms": 0},
    "run": {"requests": 20000, "warmup_requests": 2000, "replications": 2, "seed": 7},
}


def scenario(**edits):
    return parse_scenario(edited(BASE, **edits))


def test_a_timeline_by_hand():
    # 10 ms batches, 5 ms extra after a long idle (tau 50 ms). Arrivals 0, 100, 105 ms:
    #   r0 at 0: the instance has been idle 0 ms: 10 ms, done at 10
    #   r1 at 100: idle 90 ms: 10 + 5 (1 - e^-1.8) = 14.17 ms, done at 114.17
    #   r2 at 105 waits; at 114.17 the instance has not been idle: 10 ms, done at 124.17
    eng = make_engine(scenario())
    assert eng.name == "simpy"   # the fast engine does not model it: auto picks SimPy
    tr = eng.run(stream([0.0, 0.100, 0.105]), np.random.default_rng(0))
    extra = 5.0 * (1 - math.exp(-90 / 50))
    assert tr.start * 1000 == pytest.approx([0, 100, 100 + 10 + extra])
    assert tr.end * 1000 == pytest.approx([10, 110 + extra, 120 + extra])
    assert tr.latency_ms == pytest.approx([10, 10 + extra, 15 + extra])


def test_light_load_pays_the_closed_form_and_capacity_is_unchanged():
    # B=1, Poisson at rate r: a batch finds the instance idle with probability 1 - rho, and then it
    # has been idle an Exp(r) time, so the mean extra is (1 - rho) * extra / (1 + r * tau)
    sc = scenario()
    res = simulate(sc)
    tr_ms = np.concatenate([(t.end - t.start)[~t.warmup] for t in res.traces]) * 1000
    from capsim.validate.idle import mean_extra

    # 12 % here: the closed form capsim validate takes out of its batch-1 calibration
    assert tr_ms.mean() == pytest.approx(10.0 + mean_extra(5.0, 50.0, 20.0, 10.0), rel=0.02)
    assert tr_ms.mean() > 10.0 * 1.15   # a clear effect at this light load
    # saturated, batches run back to back: the same throughput as without it
    hot = {"arrivals.rate_rps": 150.0, "run.requests": 6000, "run.warmup_requests": 600}
    with_idle = simulate(scenario(**hot))
    without = simulate(scenario(**hot, **{"service.after_idle": None}))
    assert with_idle.throughput_rps == pytest.approx(without.throughput_rps, rel=0.02)


def test_the_fast_engine_refuses_it_in_one_line():
    with pytest.raises(CapsimError, match=r"--engine fast: .*service\.after_idle"):
        simulate(scenario(), engine="fast")


@pytest.mark.parametrize("field,value,needle", [
    ("service.after_idle.extra_ms", -1.0, "service.after_idle.extra_ms"),
    ("service.after_idle.tau_ms", 0.0, "service.after_idle.tau_ms"),
])
def test_bad_fields_name_themselves(field, value, needle):
    with pytest.raises(ScenarioError, match=needle):
        scenario(**{field: value})


def rows_of(batches, instance="0"):
    """Completed rows of a B=1 server: (sent_s, pre-processing, queue wait, compute, batch overhead) in ms."""
    return [{"outcome": "ok", "sent_s": sent, "X-Preprocess-Ms": pre, "X-Queue-Wait-Ms": qw, "X-Batch-Compute-Ms": c,
             "X-Batch-Overhead-Ms": held, "X-Instance": instance} for sent, pre, qw, c, held in batches]


def test_idle_gaps_by_hand():
    from capsim.validate.idle import idle_gaps

    # sent at 0, 0.1 s, 0.11 s: batches start at 0+8 = 8, 100+9 = 109, 110+10+29 = 149 ms; each holds
    # its instance compute + overhead: 8..38, 109..140, 149..179. The third request waited behind the
    # second (idle 9 ms by its start: the queue wait read from the headers is what says when it began)
    rows = rows_of([(0.0, 8.0, 0.0, 29.0, 1.0), (0.100, 9.0, 0.0, 30.0, 1.0), (0.110, 10.0, 29.0, 28.0, 2.0)])
    rows.insert(1, {"outcome": "rejected", "sent_s": 0.05})     # no batch: not counted
    gaps, compute = idle_gaps(list(reversed(rows)))              # any row order
    assert gaps == pytest.approx([109 - 38, 149 - 140]) and compute == pytest.approx([30.0, 28.0])
    # two instances: each its own timeline, the first batch of each left out
    two = rows_of([(0.0, 8.0, 0.0, 29.0, 1.0), (0.2, 8.0, 0.0, 29.0, 1.0)], "0") + rows_of(
        [(0.01, 8.0, 0.0, 20.0, 1.0), (0.05, 8.0, 0.0, 20.0, 1.0)], "1")
    gaps, compute = idle_gaps(two)
    assert sorted(gaps) == pytest.approx([58 - 39, 208 - 38]) and sorted(compute) == [20.0, 29.0]
    assert [len(x) for x in idle_gaps(rows_of([(0.0, 8.0, 0.0, 29.0, 1.0)]))] == [0, 0]


def test_the_in_server_fit_recovers_the_extra_with_each_run_at_its_own_speed():
    from capsim.validate.idle import fit_in_server

    rng = np.random.default_rng(3)
    runs = []
    for base in (30.0, 34.0, 31.0, 37.0):     # a machine that drifts from run to run
        g = rng.exponential(120.0, 150)
        c = base + 4.0 * (1 - np.exp(-g / 80.0))
        # back-to-back batches (the request waited) ran beside the next decodes: slower, and left out
        g, c = np.r_[g, np.zeros(40)], np.r_[c, np.full(40, base + 12.0)]
        runs.append((g, c))
    out = fit_in_server(runs)
    assert out["extra_ms"] == pytest.approx(4.0, rel=0.01) and out["tau_ms"] == pytest.approx(80.0, rel=0.05)
    # the 160 back-to-back batches left out, and of the 600 idle ones those under 1 ms and each run's slowest 1 %
    assert 580 <= out["batches"] < 600 and out["se_ms"] < 0.01
    # one pooled base time would read the drift as an idle effect: the fit does not
    flat = [(g, np.full(len(g), base)) for (g, _), base in zip(runs, (30.0, 34.0, 31.0, 37.0))]
    assert fit_in_server(flat)["extra_ms"] == 0.0
    # faster after idle, or too few idle batches: nothing to model
    faster = [(g, 30.0 - 2.0 * (1 - np.exp(-g / 80.0))) for g, _ in runs]
    assert fit_in_server(faster)["extra_ms"] == 0.0
    assert fit_in_server([(np.array([50.0, 0.0]), np.array([30.0, 31.0]))])["extra_ms"] == 0.0


def test_the_in_server_fit_reads_the_simulators_after_idle_back():
    # the SimPy engine with service.after_idle at a light rate, its batches' idle times taken from
    # the trace as a server's headers give them: the fit finds the extra the scenario holds
    from capsim.validate.idle import fit_in_server

    sc = scenario(**{"arrivals.rate_rps": 8.0, "service.batch_latency_ms": {1: 35.0, 4: 90.0},
                     "service.variability": {"distribution": "gamma", "cv": 0.2},
                     "service.after_idle": {"extra_ms": 4.0, "tau_ms": 70.0}, "run.requests": 6000,
                     "run.warmup_requests": 0, "run.replications": 2})
    runs = []
    for t in simulate(sc).traces:
        order = np.argsort(t.start)
        start, end = t.start[order] * 1000, t.end[order] * 1000
        runs.append((np.maximum(0.0, start[1:] - end[:-1]), (end - start)[1:]))
    out = fit_in_server(runs)
    assert out["extra_ms"] == pytest.approx(4.0, abs=3 * out["se_ms"] + 0.3)
    assert out["se_ms"] < 0.5


def test_validate_takes_the_calibration_runs_idle_extra_out_of_its_ratio():
    from capsim.validate.idle import mean_extra
    from capsim.validate.validate import account_idle

    host = {"rate_rps": 20.0, "compute_b1_ms": 10.0, "compute_ratio": 1.2}
    account_idle(host, {"extra_ms": 5.0, "tau_ms": 50.0})
    assert host["after_idle"] == {"extra_ms": 5.0, "tau_ms": 50.0}
    paid = mean_extra(5.0, 50.0, 20.0, 10.0)
    assert host["idle_slowdown"] == pytest.approx(1 + paid / 10.0)
    assert host["compute_ratio_alone"] == pytest.approx(1.2 / (1 + paid / 10.0))
    # nothing measured (or no slowdown after idle): the host is left alone
    plain = {"rate_rps": 20.0, "compute_b1_ms": 10.0, "compute_ratio": 1.2}
    account_idle(plain, {"extra_ms": 0.0, "tau_ms": 50.0})
    account_idle(plain, None)
    assert plain == {"rate_rps": 20.0, "compute_b1_ms": 10.0, "compute_ratio": 1.2}
