"""Time-varying Poisson load (arrivals.rate_schedule): the warped process, its per-step summary,
plan scaling, engine agreement and schedule validation."""

from __future__ import annotations

import numpy as np
import pytest

from capsim import scenarios as builtin
from capsim.arrivals import generate, scheduled_poisson
from capsim.config import RateSchedule, RateStep, load_scenario, parse_scenario
from capsim.errors import ScenarioError
from capsim.plan import with_rate
from capsim.rate_schedule import format_steps, step_of, time_in_steps
from capsim.simulate import simulate


def _sc(schedule: dict, **run) -> object:
    data = {
        "name": "sched",
        "arrivals": {"process": "poisson", "rate_schedule": schedule},
        "service": {"batch_latency_ms": {1: 4, 2: 5, 4: 7}, "variability": {"distribution": "exponential"}},
        "batching": {"max_batch_size": 4, "max_queue_delay_ms": 2},
        "run": {"requests": 20000, "warmup_requests": 500, "replications": 2, "seed": 3, **run},
    }
    return parse_scenario(data)


TWO_STEP = {"steps": [{"at_s": 0, "rate_rps": 20}, {"at_s": 60, "rate_rps": 120}], "period_s": 120, "repeat": True}


def _rs(steps, period, repeat=True) -> RateSchedule:
    return RateSchedule([RateStep(a, r) for a, r in steps], period, repeat)


def test_rate_inside_each_step_matches_within_2_percent():
    rs = _rs([(0, 20), (60, 120), (90, 45)], 120)
    t = scheduled_poisson(rs, 600_000, np.random.default_rng(11))
    assert np.all(np.diff(t) >= 0)
    span = time_in_steps(rs, 0.0, float(t[-1]))
    counts = np.bincount(step_of(rs, t), minlength=3)
    rates = counts / span
    np.testing.assert_allclose(rates, [20, 120, 45], rtol=0.02)
    # 600k arrivals at a mean of (20*60 + 120*30 + 45*30) / 120 = 51.25 rps last about 11 700 s.
    assert rs.mean_rps() == pytest.approx(51.25)
    assert t[-1] == pytest.approx(600_000 / 51.25, rel=0.01)


def test_repeat_starts_over_and_hold_keeps_the_last_rate():
    rng = lambda: np.random.default_rng(5)  # noqa: E731
    rep = scheduled_poisson(_rs([(0, 20), (60, 120)], 120, True), 200_000, rng())
    hold = scheduled_poisson(_rs([(0, 20), (60, 120)], 120, False), 200_000, rng())
    # Same unit-rate draws: identical inside the first period, different after it.
    first = rep < 120
    np.testing.assert_array_equal(rep[first], hold[: first.sum()])
    # Repeat: each period's first 60 s run at 20 rps again.
    m = (rep >= 120) & (np.mod(rep, 120) < 60)
    assert m.sum() / time_in_steps(_rs([(0, 20), (60, 120)], 120, True), 120.0, float(rep[-1]))[0] == \
        pytest.approx(20, rel=0.03)
    # Hold: after period_s the last rate (120 rps) holds for good.
    after = hold[hold >= 120]
    assert len(after) / (hold[-1] - 120) == pytest.approx(120, rel=0.02)
    rs = _rs([(0, 20), (60, 120)], 120, False)
    assert set(np.unique(step_of(rs, after))) == {1}
    np.testing.assert_allclose(time_in_steps(rs, 0, 1000), [60, 940])


def test_draws_come_only_from_the_generator_passed_in():
    sc = _sc(TWO_STEP)
    state = np.random.get_state()[1].copy()
    a = generate(sc.arrivals, 5000, np.random.default_rng(1))
    b = generate(sc.arrivals, 5000, np.random.default_rng(1))
    np.testing.assert_array_equal(a.times, b.times)
    np.testing.assert_array_equal(np.random.get_state()[1], state)


def test_mean_rps_and_offered_rate():
    sc = _sc(TWO_STEP)
    assert sc.arrivals.rate_schedule.mean_rps() == 70.0  # (20*60 + 120*60) / 120
    assert sc.arrivals.offered_rps() == 70.0
    assert _rs([(0, 10), (30, 40), (50, 5)], 100).mean_rps() == pytest.approx((300 + 800 + 250) / 100)


def test_with_rate_scales_every_step_and_keeps_the_shape():
    sc = _sc(TWO_STEP)
    out = with_rate(sc, 140.0)
    assert [s.rate_rps for s in out.arrivals.rate_schedule.steps] == [40.0, 240.0]
    assert [s.at_s for s in out.arrivals.rate_schedule.steps] == [0, 60]
    assert out.arrivals.offered_rps() == pytest.approx(140.0)
    assert [s.rate_rps for s in sc.arrivals.rate_schedule.steps] == [20, 120]  # the original is untouched


def test_fast_and_simpy_traces_are_identical_on_a_schedule():
    pytest.importorskip("numba")
    from capsim.sim.engine import SimPyEngine
    from capsim.sim.fast import FastEngine, unsupported_features

    sc = _sc(TWO_STEP, requests=30000)
    assert unsupported_features(sc) == []
    arr = generate(sc.arrivals, sc.run.requests, np.random.default_rng(7))
    ref = SimPyEngine(sc).run(arr, np.random.default_rng(8))
    fast = FastEngine(sc, fallback=False).run(arr, np.random.default_rng(8))
    for f in ("arrival", "entry", "dispatch", "start", "end", "done", "latency_ms", "batch_size", "instance",
              "drop_reason", "batch_start", "batch_end", "batch_size_by_batch", "batch_instance"):
        np.testing.assert_array_equal(getattr(fast, f), getattr(ref, f), err_msg=f)


def test_simulate_reports_each_step():
    sc = _sc(TWO_STEP, requests=40000)
    res = simulate(sc, engine="simpy")
    sec = res.policies["rate_schedule"]
    assert sec["period_s"] == 120 and sec["repeat"] is True and sec["mean_rps"] == 70.0
    lo, hi = sec["steps"]
    assert (lo["at_s"], lo["rate_rps"], hi["at_s"], hi["rate_rps"]) == (0, 20, 60, 120)
    assert lo["offered_rps"] == pytest.approx(20, rel=0.06)
    assert hi["offered_rps"] == pytest.approx(120, rel=0.03)
    assert hi["throughput_rps"] == pytest.approx(hi["offered_rps"], rel=0.03)
    assert lo["drop_rate"] == hi["drop_rate"] == 0.0
    # Busier step, fuller batches but more queueing: its p95 is the higher one here.
    assert hi["p95_ms"] > lo["p95_ms"] > 0
    text = "\n".join(format_steps(sec))
    assert "rate schedule (period 120 s, repeats; mean 70.0 rps)" in text
    assert len(text.splitlines()) == 4
    assert res.to_dict()["policies"]["rate_schedule"] == sec


def test_daily_traffic_builtin():
    sc = load_scenario("daily-traffic")
    rs = sc.arrivals.rate_schedule
    assert len(rs.steps) == 24 and rs.period_s == 2400 and rs.repeat
    assert [s.at_s for s in rs.steps] == [100 * h for h in range(24)]
    rates = [s.rate_rps for s in rs.steps]
    assert rates.index(max(rates)) == 12 and min(rates) < max(rates) / 10  # quiet night, midday peak
    assert "compressed" in sc.description
    assert "daily-traffic" in builtin.names()


BAD = [
    ({"steps": []}, "arrivals.rate_schedule.steps: give at least one step"),
    ({"steps": [{"at_s": 5, "rate_rps": 1}]}, "arrivals.rate_schedule.steps[0].at_s: the first step starts at 0 s"),
    ({"steps": [{"at_s": 0, "rate_rps": 1}, {"at_s": 0, "rate_rps": 2}]},
     "arrivals.rate_schedule.steps[1].at_s: steps must start in increasing order"),
    ({"steps": [{"at_s": 0, "rate_rps": 1}, {"at_s": 50, "rate_rps": 2}], "period_s": 50},
     "arrivals.rate_schedule.period_s: must be after the last step's start"),
    ({"steps": [{"at_s": 0, "rate_rps": 0}]}, "arrivals.rate_schedule.steps[0].rate_rps"),
]


@pytest.mark.parametrize("schedule,message", BAD)
def test_bad_schedules_give_one_line_errors(schedule, message):
    with pytest.raises(ScenarioError) as exc:
        _sc(schedule)
    assert len(exc.value.problems) == 1 and "\n" not in str(exc.value)
    assert str(exc.value).startswith(message)


def test_schedule_with_a_rate_or_another_process_is_refused():
    with pytest.raises(ScenarioError, match=r"^arrivals.rate_rps: not used by process poisson"):
        parse_scenario({"arrivals": {"process": "poisson", "rate_rps": 5, "rate_schedule": TWO_STEP},
                        "service": {"batch_latency_ms": {1: 4}}})
    with pytest.raises(ScenarioError, match=r"arrivals.rate_schedule: not used by process constant"):
        parse_scenario({"arrivals": {"process": "constant", "rate_rps": 5, "rate_schedule": TWO_STEP},
                        "service": {"batch_latency_ms": {1: 4}}})


def test_a_peak_above_capacity_is_flagged_even_when_the_run_is_stable():
    from capsim.config import load_scenario
    from capsim.simulate import simulate

    # mini-challenge's bound is 166.7 rps: 200 rps for 20 s of every 120 s overloads, the rest drains
    sc = load_scenario("mini-challenge", [
        "arrivals.rate_rps=null", "run.requests=60000", "run.replications=2",
        "arrivals.rate_schedule={steps: [{at_s: 0, rate_rps: 20}, {at_s: 100, rate_rps: 200}], period_s: 120}"])
    res = simulate(sc)
    steps = res.policies["rate_schedule"]["steps"]
    assert [st["overloaded"] for st in steps] == [False, True]
    assert res.policies["rate_schedule"]["capacity_bound_rps"] == pytest.approx(8 / 0.048)
    assert steps[1]["p95_ms"] > 5 * steps[0]["p95_ms"]
