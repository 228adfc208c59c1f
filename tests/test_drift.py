"""The model's speed during a measured run against the prediction's curve (capsim.validate.drift),
and the cells predicted again at each run's own speed."""

from __future__ import annotations

import pytest

from capsim.config import parse_scenario
from capsim.simulate import simulate
from capsim.validate import drift
from capsim.validate import protocol as P

CURVE = {1: 10.0, 2: 16.0, 4: 28.0}.__getitem__


def _row(b: int, ms: float, t: float = 0.5) -> dict:
    return {P.H_BATCH_SIZE: b, P.H_COMPUTE: ms, "received_s": t}


def test_compute_is_summed_by_batch_size_one_term_per_request():
    rows = [_row(1, 10.0), _row(1, 12.0), _row(4, 30.0), _row(4, 30.0), _row(4, 30.0), _row(4, 30.0),
            {P.H_BATCH_SIZE: None, P.H_COMPUTE: None, "received_s": 0.1}]   # a request without timing headers
    assert drift.compute_by_batch(rows) == {1: (22.0, 2), 4: (120.0, 4)}


def test_speed_is_measured_over_the_curve_at_the_same_batch_sizes():
    # batch 1 at 11 ms (curve 10) twice, one batch of 4 at 30 ms (curve 28) seen by 4 requests
    by = {1: (22.0, 2), 4: (120.0, 4)}
    assert drift.speed(by, CURVE) == pytest.approx(142.0 / (2 * 10.0 + 4 * 28.0))
    assert drift.speed({}, CURVE) is None
    assert drift.speed({8: (80.0, 8)}, CURVE) is None   # a batch size the curve does not cover


def test_a_slow_second_shows_by_the_second_though_the_mean_hides_it():
    rows = ([_row(1, 10.0, 0.1 + i / 100) for i in range(20)]     # second 0 at the curve's speed
            + [_row(1, 20.0, 1.1 + i / 100) for i in range(6)]    # second 1 twice as slow
            + [_row(1, 10.0, 2.1 + i / 100) for i in range(20)]   # second 2 at the curve's speed
            + [_row(1, 50.0, 3.5)])                               # too few answers in second 3 to count
    assert drift.speed_by_second(rows, CURVE) == pytest.approx([1.0, 2.0, 1.0])
    assert drift.speed(drift.compute_by_batch(rows), CURVE) == pytest.approx((400 + 120 + 50) / 470)


def _scenario(rate: float, cv: float | None = None, ms: float = 10.0) -> object:
    svc = {"batch_latency_ms": {1: ms, 2: 1.6 * ms, 4: 2.8 * ms}}
    if cv is not None:
        svc["variability"] = {"distribution": "gamma", "cv": cv}
    return parse_scenario({"arrivals": {"process": "poisson", "rate_rps": rate}, "service": svc,
                           "batching": {"max_batch_size": 4, "max_queue_delay_ms": 2},
                           "run": {"requests": 20000, "warmup_requests": 2000, "replications": 2, "seed": 3}})


def test_the_simulation_runs_at_its_own_curve_speed():
    # deterministic batch times: exactly the curve at every batch size the batcher formed
    sc = _scenario(120.0)
    sim = simulate(sc)
    by = drift.simulated_by_batch(sim)
    assert len(by) > 1   # batches of several sizes, so the per-size weighting matters
    assert drift.speed(by, drift.curve_of(sc)) == pytest.approx(1.0, abs=1e-9)
    # gamma-distributed times average to the curve
    sc = _scenario(120.0, cv=0.3)
    assert drift.speed(drift.simulated_by_batch(simulate(sc)), drift.curve_of(sc)) == pytest.approx(1.0, abs=0.02)
    assert drift.drift(1.3, 1.0) == pytest.approx(1.3) and drift.drift(None, 1.0) is None


def test_cells_are_predicted_again_at_each_runs_own_speed():
    from capsim.plan import with_rate
    from capsim.validate.validate import _given_speed, window_percentiles

    rate, duration, seed = 60.0, 10.0, 5
    base = _scenario(1.0, cv=0.2)
    sim = simulate(with_rate(base, rate))

    def run_at(k: float) -> dict:   # a measured run whose every batch of 1 took k x the curve
        rows = [_row(1, 10.0 * k, 0.2 + i / 100) for i in range(50)]
        return {"p50": 20.0, "p95": 40.0, "p99": 50.0, "ok_rows": rows}

    def scenario_at(k: float):
        return _scenario(1.0, cv=0.2, ms=10.0 * k)

    sim_speed = drift.speed(drift.simulated_by_batch(sim), drift.curve_of(base))
    out = _given_speed(sim, base, [run_at(sim_speed)], {"host": True}, rate, duration, seed, True, scenario_at)
    # a run at exactly the simulated speed: the same prediction as the like-for-like window
    assert out["speed"] == pytest.approx(1.0)
    plain = window_percentiles(with_rate(base, rate), duration, [seed])
    assert out["p95"] == pytest.approx(plain["p95"], rel=1e-6)
    assert out["per_run"][0]["drift_by_second"] == pytest.approx([1.0, 1.0])
    # runs 40 % slower: each predicted at its own speed (seeds seed and seed + 1), the median taken
    slow = _given_speed(sim, base, [run_at(1.4 * sim_speed)] * 2, {"host": True}, rate, duration, seed, True,
                        scenario_at)
    assert slow["speed"] == pytest.approx(1.4)
    assert slow["p95"] > 1.3 * out["p95"]
    # without a host calibration there is no curve to scale: the runs' drift is still reported
    none = _given_speed(sim, base, [run_at(1.4 * sim_speed)], None, rate, duration, seed, True, scenario_at)
    assert set(none) == {"per_run"} and none["per_run"][0]["drift"] == pytest.approx(1.4)
