"""``service.batch_overhead_ms``: each batch holds its instance a fixed time beyond the model's run
(a server handing the batch to the instance's thread and the result back). Hand-computed
timelines in both engines and beside shared cores, M/D/1 with the longer service, the capacity
bound and the napkin; validate's per-stage tables and drift count it where the server does."""

from __future__ import annotations

import numpy as np
import pytest

from capsim import analytic
from capsim.config import parse_scenario
from capsim.plan import throughput_bound
from capsim.simulate import make_engine, simulate

from edits import edited, stream  # tests/edits.py

BASE = {
    "name": "batch-overhead",
    "arrivals": {"process": "poisson", "rate_rps": 50},
    "service": {"batch_latency_ms": {1: 10.0, 4: 25.0}, "batch_overhead_ms": 2.0},
    "batching": {"mode": "triton", "max_batch_size": 1, "max_queue_delay_ms": 0},
    "run": {"requests": 60000, "warmup_requests": 3000, "replications": 2, "seed": 3},
}


def scenario(**edits):
    return parse_scenario(edited(BASE, **edits))


@pytest.mark.parametrize("engine", ["simpy", "fast"])
def test_a_timeline_by_hand(engine):
    # 10 ms of compute and 2 held besides: r0 0-12; r1 (at 1 ms) waits for the instance, 12-24;
    # r2 (at 30 ms) finds it free, 30-42
    eng = make_engine(scenario(), engine)
    tr = eng.run(stream([0.0, 0.001, 0.030]), np.random.default_rng(0))
    assert tr.start * 1000 == pytest.approx([0, 12, 30])
    assert tr.end * 1000 == pytest.approx([12, 24, 42])
    assert tr.latency_ms == pytest.approx([12, 23, 12])


def test_both_engines_give_the_same_latencies():
    sc = scenario(**{"batching.max_batch_size": 4, "batching.max_queue_delay_ms": 3,
                     "service.variability": {"distribution": "gamma", "cv": 0.3}, "arrivals.rate_rps": 150})
    a, b = simulate(sc, engine="simpy"), simulate(sc, engine="fast")
    for ta, tb in zip(a.traces, b.traces):
        assert np.array_equal(ta.latency_ms, tb.latency_ms, equal_nan=True)


@pytest.mark.parametrize("engine", ["simpy", "fast"])
def test_it_is_md1_with_the_longer_service(engine):
    # deterministic 10 + 2 ms at 50 rps: rho 0.6, W = rho / (2 (1 - rho)) x 12 ms = 9 ms, sojourn 21 ms;
    # without the 2 ms it would be 10 + 3.75 = 13.75 ms
    res = simulate(scenario(), engine=engine)
    want = analytic.md1_sojourn(50.0, 0.012) * 1000.0
    assert want == pytest.approx(21.0)
    assert res.to_dict()["latency_ms"]["mean"] == pytest.approx(want, rel=0.03)


def test_the_capacity_and_the_napkin_count_it():
    sc = scenario()
    assert throughput_bound(sc) == pytest.approx(1000.0 / 12.0)      # one batch of 1 per 12 ms
    assert analytic.capacity_rps(sc) == pytest.approx(1000.0 / 12.0)
    four = scenario(**{"batching.max_batch_size": 4})
    assert throughput_bound(four) == pytest.approx(4000.0 / 27.0)
    nap = analytic.napkin(sc)
    assert nap.latency_ms == pytest.approx(12.0) and "2 batch overhead" in nap.formula
    assert analytic.predicted_mean_latency_ms(sc) is None             # no closed form offered for it


def test_beside_shared_cores_the_hand_over_takes_no_share_of_them():
    # decode 10 ms and batch 20 ms alone, half speed beside each other; each batch held 5 ms first.
    #  0-10  r0 decodes; its batch is taken at 10, held 10-15, computes from 15
    # 12-15  r1 decodes alone (3 ms of work), then beside the batch: 7 more at 0.5, done at 29
    # 15-29  the batch does 7 of its 20 beside it, the other 13 alone: done at 42
    # 42-47  r1's batch held, 47-67 computes alone
    sc = parse_scenario({
        "name": "held-shared", "arrivals": {"process": "poisson", "rate_rps": 20},
        "service": {"batch_latency_ms": {1: 20.0}, "batch_overhead_ms": 5.0,
                    "preprocess": {"ms": 10.0, "workers": 1},
                    "cpu_sharing": {"cores": 2, "model_cores": 2, "host_ms": 0.0,
                                    "overlap": {"model_speed": {1: 0.5}, "preprocess_speed": 0.5}}},
        "batching": {"mode": "triton", "max_batch_size": 1, "max_queue_delay_ms": 0},
        "run": {"requests": 1000, "warmup_requests": 100, "replications": 1, "seed": 1}})
    tr = make_engine(sc).run(stream([0.0, 0.012]), np.random.default_rng(0))
    assert tr.entry * 1000 == pytest.approx([10, 29])
    assert tr.start * 1000 == pytest.approx([10, 42])
    assert tr.end * 1000 == pytest.approx([42, 67])


def test_validate_counts_it_where_the_server_does():
    # the server times the model's run alone (X-Batch-Compute-Ms) and the hand-over in the rest
    from capsim.validate import drift
    from capsim.validate.validate import stage_times

    sc = scenario(**{"arrivals.rate_rps": 20, "run.requests": 4000, "run.warmup_requests": 400})
    sim = simulate(sc)
    st = stage_times(sim)
    assert st["compute"] == pytest.approx(10.0)
    assert st["other"] == pytest.approx(2.0)
    assert drift.simulated_by_batch(sim)[1][0] / drift.simulated_by_batch(sim)[1][1] == pytest.approx(10.0)
