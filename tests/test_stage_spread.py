"""``service.preprocess.cv``: each request's pre-processing takes its own time (gamma, mean ms).

Hand-computed timelines (one worker and two), the pool's wait against Pollaczek-Khinchine
(M/G/1) and Erlang C (M/M/c), the spread of the drawn times, requests overtaking each other in a
pool of several, the cores shared moment to moment, and one-line errors where it is not modelled."""

from __future__ import annotations

import numpy as np
import pytest

from capsim.config import parse_scenario
from capsim.errors import CapsimError, ScenarioError
from capsim.analytic import mmc_sojourn
from capsim.sim.stages import fifo_pool_each, stage_draws_ns
from capsim.simulate import make_engine, simulate

from edits import edited  # tests/edits.py

BASE = {
    "name": "decode-spread",
    "arrivals": {"process": "poisson", "rate_rps": 60},
    "service": {"batch_latency_ms": {1: 0.01}, "preprocess": {"ms": 10.0, "workers": 1, "cv": 0.5}},
    "batching": {"mode": "triton", "max_batch_size": 1, "max_queue_delay_ms": 0},
    "run": {"requests": 60000, "warmup_requests": 2000, "replications": 3, "seed": 4},
}


def scenario(**edits):
    return parse_scenario(edited(BASE, **edits))


def test_one_worker_by_hand():
    # arrivals 0, 1, 2 and 20 ms taking 3, 1, 1 and 2 ms: the second and third wait for the first
    ms = 1_000_000
    out = fifo_pool_each(np.array([0, 1, 2, 20]) * ms, np.array([3, 1, 1, 2]) * ms, 1)
    assert list(out // ms) == [3, 4, 5, 22]


def test_two_workers_by_hand():
    # arrivals 0, 0, 1, 2 and 3 ms taking 5, 1, 1, 4 and 1 ms on two workers: the first holds one
    # worker to 5 while the second, third and fourth pass on the other (the fourth to 6); the fifth
    # waits for the first worker to free at 5. Departures 5, 1, 2, 6, 6: not in arrival order.
    ms = 1_000_000
    out = fifo_pool_each(np.array([0, 0, 1, 2, 3]) * ms, np.array([5, 1, 1, 4, 1]) * ms, 2)
    assert list(out // ms) == [5, 1, 2, 6, 6]
    assert list(fifo_pool_each(np.array([0, 1]) * ms, np.array([5, 1]) * ms, 0) // ms) == [5, 2]  # a pure delay
    assert list(fifo_pool_each(np.array([0, 1]) * ms, np.array([5, 1]) * ms, 1) // ms) == [5, 6]


def test_draws_have_the_mean_and_spread_asked_for():
    st = scenario().service.preprocess
    t = stage_draws_ns(st, 200_000, np.random.default_rng(1)) / 1e6
    assert t.mean() == pytest.approx(10.0, rel=0.01) and t.std() / t.mean() == pytest.approx(0.5, rel=0.02)
    fixed = scenario(**{"service.preprocess.cv": 0.0}).service.preprocess
    assert set(stage_draws_ns(fixed, 10, np.random.default_rng(1))) == {10_000_000}


@pytest.mark.parametrize("cv", [0.0, 0.5, 1.0])
def test_the_pools_wait_is_pollaczek_khinchine(cv):
    # M/G/1 decode pool at rho 0.6: W = lambda E[S^2] / (2 (1 - rho)), E[S^2] = s^2 (1 + cv^2);
    # 17.5 ms in the stage with fixed times, 19.4 at cv 0.5, 25.0 at cv 1
    lam, s = 0.060, 10.0
    theory = s + lam * s * s * (1 + cv * cv) / (2 * (1 - lam * s))
    res = simulate(scenario(**{"service.preprocess.cv": cv}))
    assert res.breakdown_ms["preprocess"] == pytest.approx(theory, rel=0.04)
    assert res.engine == ("fast" if cv == 0 else "simpy")  # the fast engine does not draw stage times


@pytest.mark.parametrize("workers, rate", [(2, 120), (3, 240)])
def test_several_workers_at_cv_1_are_erlang_c(workers, rate):
    # exponential decode times (gamma, cv 1) on c workers: the stage is an M/M/c queue
    # (rho 0.6 and 0.8 here; 15.6 and 20.4 ms in the stage, against 10 ms alone)
    res = simulate(scenario(**{"service.preprocess.cv": 1.0, "service.preprocess.workers": workers,
                               "arrivals.rate_rps": rate}))
    theory = mmc_sojourn(rate, 100.0, workers) * 1000.0
    assert res.breakdown_ms["preprocess"] == pytest.approx(theory, rel=0.05)
    assert res.engine == "simpy"


def test_with_several_workers_the_queue_takes_requests_as_their_decode_ends():
    res = simulate(scenario(**{"service.preprocess.workers": 2, "arrivals.rate_rps": 120, "run.replications": 1}))
    tr = res.traces[0]
    assert np.sum(np.diff(tr.entry) < 0) > 100          # short decodes overtook long ones
    by_entry = np.argsort(tr.entry, kind="stable")
    assert np.all(np.diff(tr.dispatch[by_entry]) >= 0)  # and the batcher's FIFO follows the entries
    assert np.all(tr.dispatch >= tr.entry)


def test_sharing_the_cores_at_full_speed_changes_nothing_with_several_workers():
    # moment-to-moment sharing at speed 1 everywhere is the plain pool: the same requests enter the
    # queue at the same instants, overtaking included, and leave at the same instants
    edits = {"service.preprocess.workers": 2, "arrivals.rate_rps": 120, "service.batch_latency_ms": {1: 2.0, 4: 5.0},
             "batching.max_batch_size": 4, "run.requests": 20000, "run.replications": 1}
    plain = simulate(scenario(**edits)).traces[0]
    shared = simulate(scenario(**edits, **{"service.cpu_sharing": {
        "cores": 4, "model_cores": 1, "host_ms": 0.0,
        "overlap": {"model_speed": {1: 1.0}, "preprocess_speed": 1.0}}})).traces[0]
    assert np.sum(np.diff(plain.entry) < 0) > 100
    assert np.array_equal(plain.entry, shared.entry) and np.array_equal(plain.done, shared.done)


def test_requests_leave_the_worker_in_order_and_the_spread_shows():
    res = simulate(scenario(**{"run.replications": 1}))
    tr = res.traces[0]
    assert np.all(np.diff(tr.entry) >= 0)   # one worker: the queue behind it sees them in order
    busy = (tr.entry - tr.arrival) * 1000.0
    assert np.percentile(busy, 95) > 2 * 10.0   # a fixed 10 ms with this wait would give far less


def test_the_cores_shared_moment_to_moment_draw_each_decode_too():
    # a decode slowed to x0.5 beside a batch; at a light load the batches are rare, and each decode
    # takes its own time around 10 ms
    sc = scenario(**{"arrivals.rate_rps": 5, "service.batch_latency_ms": {1: 1.0},
                     "service.cpu_sharing": {"cores": 2, "model_cores": 1, "host_ms": 10.0,
                                             "overlap": {"model_speed": {1: 0.5}, "preprocess_speed": 0.5}},
                     "run.requests": 20000, "run.replications": 1})
    tr = simulate(sc).traces[0]
    m = tr.completed & ~tr.warmup
    t = (tr.entry - tr.arrival)[m] * 1000.0
    assert t.mean() == pytest.approx(10.0 * (1 + 0.05 * 0.6), rel=0.06)   # a little wait and overlap
    assert np.std(t) / np.mean(t) > 0.4


@pytest.mark.parametrize("edits, field", [
    ({"service.preprocess.ms": 0.0}, "service.preprocess.cv: spreads service.preprocess.ms, which is 0"),
    ({"service.postprocess": {"ms": 1.0, "workers": 1, "cv": 0.3}}, "service.postprocess.cv: not modelled yet"),
    ({"service.preprocess.cv": -0.1}, "service.preprocess.cv"),
])
def test_where_it_is_not_modelled_it_says_so(edits, field):
    with pytest.raises(ScenarioError, match=field.replace(".", r"\.")):
        scenario(**edits)


def test_the_fast_engine_refuses_it_in_one_line():
    with pytest.raises(CapsimError, match=r"--engine fast: .*service\.preprocess\.cv"):
        make_engine(scenario(), "fast")
