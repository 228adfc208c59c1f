"""``service.overhead_cv``: each request's overhead outside the model takes its own time (gamma,
mean ``overhead_ms``), in both engines, from a stream of its own; one-line errors where it is
not modelled."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from capsim.config import parse_scenario
from capsim.errors import ScenarioError
from capsim.simulate import simulate

from edits import edited  # tests/edits.py

BASE = {
    "name": "overhead-spread",
    "arrivals": {"process": "poisson", "rate_rps": 40},
    "service": {"batch_latency_ms": {1: 10.0, 4: 25.0}, "overhead_ms": 8.0, "overhead_cv": 0.5},
    "batching": {"mode": "triton", "max_batch_size": 4, "max_queue_delay_ms": 2},
    "run": {"requests": 40000, "warmup_requests": 2000, "replications": 2, "seed": 5},
}


def scenario(**edits):
    return parse_scenario(edited(BASE, **edits))


def overheads(result) -> np.ndarray:
    out = []
    for t in result.traces:
        m = t.completed
        out.append(t.latency_ms[m] - (t.done - t.arrival)[m] * 1000.0)
    return np.concatenate(out)


@pytest.mark.parametrize("engine", ["simpy", "fast"])
def test_each_request_draws_its_own_overhead(engine):
    o = overheads(simulate(scenario(), engine=engine))
    assert o.mean() == pytest.approx(8.0, rel=0.01)
    assert o.std() / o.mean() == pytest.approx(0.5, rel=0.02)
    # a gamma of shape 1/cv^2 = 4: its 95th percentile, 15.5 ms, not the mean
    assert np.percentile(o, 95) == pytest.approx(stats.gamma.ppf(0.95, 4, scale=2.0), rel=0.02)


def test_both_engines_give_the_same_latencies():
    a, b = simulate(scenario(), engine="simpy"), simulate(scenario(), engine="fast")
    for ta, tb in zip(a.traces, b.traces):
        assert np.array_equal(ta.latency_ms, tb.latency_ms, equal_nan=True)


def test_the_queue_is_untouched_and_the_tail_grows():
    # the overhead comes after the response leaves: every other time stays as it was
    spread, fixed = simulate(scenario()), simulate(scenario(**{"service.overhead_cv": 0.0}))
    for ts, tf in zip(spread.traces, fixed.traces):
        assert np.array_equal(ts.done, tf.done, equal_nan=True)
    assert overheads(fixed).std() < 1e-9
    ls, lf = spread.to_dict()["latency_ms"], fixed.to_dict()["latency_ms"]
    assert ls["mean"] == pytest.approx(lf["mean"], rel=0.01)  # the same mean overhead...
    assert ls["p99"] > lf["p99"] + 1.5                        # ...with a longer tail


def test_light_load_latency_is_service_plus_overhead():
    # 1 rps against a 10 ms batch: nobody waits, so latency = 10 ms + the request's overhead, and
    # its percentiles are the gamma's shifted by 10 ms
    r = simulate(scenario(**{"arrivals.rate_rps": 1.0, "batching.max_batch_size": 1,
                             "batching.max_queue_delay_ms": 0, "service.batch_latency_ms": {1: 10.0}}),
                 engine="simpy")
    lat = r.to_dict()["latency_ms"]
    for q in (50, 95, 99):
        assert lat[f"p{q}"] == pytest.approx(10.0 + stats.gamma.ppf(q / 100, 4, scale=2.0), rel=0.03), q


@pytest.mark.parametrize("edits,field", [
    ({"service.overhead_ms": 0.0}, "service.overhead_cv: spreads overhead_ms, which is 0"),
    ({"service.overhead_cv": -0.2}, "service.overhead_cv"),
    ({"arrivals": {"process": "closed", "concurrency": 4}}, "service.overhead_cv: not modelled with closed-loop"),
])
def test_where_it_is_not_modelled_it_says_so(edits, field):
    with pytest.raises(ScenarioError, match=field.replace(".", r"\.")):
        scenario(**edits)
