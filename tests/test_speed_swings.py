"""``service.speed_swings``: the whole machine's speed swinging from window to window, and
``capsim validate``'s measurement of it in the batch-1 calibration runs.

The windows by hand and in the pool kernel; their factors' mean, spread and correlation; every
batch taking its window's factor times the curve; the tail they add at rho 0.8; the capacity's
E[1/f]; one-line errors; the fit recovering known swings from synthetic batch times and finding
none where there are none."""

from __future__ import annotations

import math

import numpy as np
import pytest

from capsim.config import SpeedSwings, parse_scenario
from capsim.errors import CapsimError, ScenarioError
from capsim.sim.spells import SpellWindows, machine_throughput_factor, swing_windows
from capsim.sim.stages import fifo_pool_each
from capsim.simulate import make_engine, simulate
from capsim.validate import swings

from edits import edited  # tests/edits.py

MS = 1_000_000
BASE = {
    "name": "speed-swings",
    "arrivals": {"process": "poisson", "rate_rps": 80},
    "service": {"batch_latency_ms": {1: 10.0}, "speed_swings": {"cv": 0.2, "window_s": 1.0}},
    "batching": {"mode": "triton", "max_batch_size": 1, "max_queue_delay_ms": 0},
    "run": {"requests": 60000, "warmup_requests": 3000, "replications": 1, "seed": 3},
}


def scenario(**edits):
    return parse_scenario(edited(BASE, **edits))


def test_each_window_has_its_own_factor_by_hand():
    w = SpellWindows(np.array([0, 10]) * MS, np.array([10, 20]) * MS, [2.0, 0.5])
    assert [w.factor(t * MS) for t in (0, 9, 10, 19, 20, 50)] == [2.0, 2.0, 0.5, 0.5, 1.0, 1.0]
    # one worker: 0 starts in x2 -> 0 + 8 = 8; 9 waits? no, starts at 9 in x2 -> 17; 17 starts in x0.5 -> 19
    out = fifo_pool_each(np.array([0, 9, 12]) * MS, np.array([4, 4, 4]) * MS, 1, w)
    assert list(out // MS) == [8, 17, 19]


def test_the_windows_have_the_asked_mean_spread_and_correlation():
    sw = SpeedSwings(cv=0.3, window_s=0.5, correlation=0.6)
    w = swing_windows(sw, 20000 * 10 ** 9, np.random.default_rng(1))
    width = 0.5 * 1e9
    assert w.starts[0] <= 0 < w.ends[0] and np.array_equal(w.ends[:-1], w.starts[1:])   # back to back from before 0
    assert np.all(np.abs(np.diff(w.starts) - width) <= 1) and w.ends[-1] >= 20000 * 10 ** 9
    f = w.factors
    assert f.mean() == pytest.approx(1.0, abs=0.02) and f.std() / f.mean() == pytest.approx(0.3, abs=0.02)
    x = np.log(f)
    assert np.corrcoef(x[:-1], x[1:])[0, 1] == pytest.approx(0.6, abs=0.03)


def test_every_batch_takes_its_windows_factor_times_the_curve():
    res = simulate(scenario(**{"arrivals.rate_rps": 60, "run.requests": 20000}))
    assert res.engine == "simpy"
    tr = res.traces[0]
    order = np.argsort(tr.start)
    took = np.round((tr.end - tr.start)[order] * 1000.0, 6)
    # one time per window: in start order the batch time changes once per 1 s window, no more
    seconds = tr.start[order][-1] - tr.start[order][0]
    changes = np.count_nonzero(np.diff(took))
    assert 0.9 * seconds <= changes <= seconds + 1
    # and the windows' times spread as asked around the curve's 10 ms
    per_window = took[np.r_[True, np.diff(took) != 0]]
    assert per_window.mean() == pytest.approx(10.0, rel=0.03)
    assert per_window.std() / per_window.mean() == pytest.approx(0.2, abs=0.03)


def test_swings_lengthen_the_tail_at_the_same_mean():
    # M/D/1 at rho 0.8: a few slow seconds leave queues that take many seconds to drain
    plain = simulate(scenario(**{"service.speed_swings.cv": 0.0}))
    swung = simulate(scenario())
    correlated = simulate(scenario(**{"service.speed_swings.correlation": 0.7}))
    assert swung.breakdown_ms["service"] == pytest.approx(10.0, rel=0.03)   # of mean 1
    assert swung.latency_ms["p95"] > 2.0 * plain.latency_ms["p95"]
    assert correlated.latency_ms["p95"] > 1.5 * swung.latency_ms["p95"]
    # windows far shorter than a batch's wait are independent per-batch spread: nearly no change
    fine = simulate(scenario(**{"service.speed_swings.window_s": 0.002}))
    assert fine.latency_ms["p95"] < 1.2 * plain.latency_ms["p95"]


def test_the_capacity_counts_the_fast_windows():
    from capsim import analytic

    sc = scenario(**{"service.speed_swings.cv": 0.3})
    assert machine_throughput_factor(sc.service) == pytest.approx(1.09)
    assert analytic.capacity_rps(sc) == pytest.approx(109.0)
    assert analytic.capacity_rps(scenario(**{"service.speed_swings.cv": 0.0})) == pytest.approx(100.0)


@pytest.mark.parametrize("edits, field", [
    ({"service.speed_swings.cv": -0.1}, "service.speed_swings.cv"),
    ({"service.speed_swings.correlation": 1.0}, "service.speed_swings.correlation"),
    ({"service.speed_swings.window_s": 0}, "service.speed_swings.window_s"),
    ({"service.slow_spells": {"every_s": 1.0}}, "service.speed_swings: not modelled with service.slow_spells"),
    ({"arrivals": {"process": "closed", "concurrency": 4}}, "service.speed_swings: not modelled with closed-loop"),
])
def test_bad_swings_say_so_in_one_line(edits, field):
    with pytest.raises(ScenarioError, match=field.replace(".", r"\.")):
        scenario(**edits)


def test_the_fast_engine_refuses_them_in_one_line():
    with pytest.raises(CapsimError, match=r"--engine fast: .*service\.speed_swings"):
        make_engine(scenario(), "fast")


def _synthetic_runs(cv: float, rho: float, seed: int, runs: int = 6, seconds: int = 60, rate: float = 18.0,
                    own_cv: float = 0.2):
    """Batch starts (ms) at ``rate`` per second and times of 30 ms x the window's factor x an own spread."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(runs):
        w = swing_windows(SpeedSwings(cv=cv, window_s=1.0, correlation=rho), seconds * 10 ** 9, rng) if cv else None
        start = np.sort(rng.uniform(0, seconds * 1000.0, int(rate * seconds)))
        sigma = math.sqrt(math.log1p(own_cv ** 2))
        own = rng.lognormal(-sigma ** 2 / 2, sigma, len(start))
        f = np.array([w.factor(int(t * 1e6)) for t in start]) if w else 1.0
        out.append((start + 1234.5, 30.0 * f * own))
    return out


@pytest.mark.parametrize("cv, rho", [(0.15, 0.0), (0.1, 0.6)])
def test_the_fit_recovers_known_swings(cv, rho):
    fitted = swings.fit(_synthetic_runs(cv, rho, seed=4))
    assert fitted["cv"] == pytest.approx(cv, abs=0.03)
    assert fitted["correlation"] == pytest.approx(rho, abs=0.2)
    assert fitted["windows"] > 300 and fitted["window_s"] == 1.0


def test_the_fit_finds_no_swings_where_the_batches_spread_on_their_own():
    fitted = swings.fit(_synthetic_runs(0.0, 0.0, seed=5, own_cv=0.3))
    assert fitted["cv"] < 0.03   # a window of ~18 batches spreads 0.3 / sqrt(18) = 0.07: subtracted
    assert swings.fit([])["cv"] == 0.0 and swings.fit([(np.arange(3.0), np.ones(3))])["windows"] == 0


def test_batch_series_reads_each_batch_start_from_the_headers():
    from capsim.validate import protocol as P

    rows = [{"outcome": "ok", "sent_s": 1.0, P.H_PREPROCESS: 8.0, P.H_QUEUE_WAIT: 2.0, P.H_COMPUTE: 30.0},
            {"outcome": "ok", "sent_s": 0.5, P.H_PREPROCESS: 7.0, P.H_QUEUE_WAIT: 0.0, P.H_COMPUTE: 31.0},
            {"outcome": "rejected", "sent_s": 0.7, P.H_COMPUTE: None}]
    start, compute = swings.batch_series(rows)
    assert list(start) == [507.0, 1010.0] and list(compute) == [31.0, 30.0]


def test_a_host_with_swings_predicts_with_them():
    from capsim.validate.validate import mean_host, mean_of, scenario_for

    from test_server_fit import OVERHEAD, PROFILE, host_measuring

    host = host_measuring(1.0, alone=1.1)
    plain = scenario_for(PROFILE, OVERHEAD, 4, 5.0, 1, 1, 10.0, 1, host)
    sw = {"cv": 0.1, "window_s": 1.0, "correlation": 0.3, "windows": 120}
    swung = scenario_for(PROFILE, OVERHEAD, 4, 5.0, 1, 1, 10.0, 1, {**host, "speed_swings": sw})
    assert swung.service.speed_swings == SpeedSwings(cv=0.1, window_s=1.0, correlation=0.3)
    assert swung.service.batch_latency_ms == plain.service.batch_latency_ms   # of mean 1: the means stand
    assert plain.service.speed_swings.cv == 0.0
    # the calibrations' batch runs are pooled; the fit is derived again from the pool
    a, b = {"swing_runs": [[[1.0], [2.0]]], "speed_swings": sw}, {"swing_runs": [[[3.0], [4.0]]]}
    assert mean_of([a, b])["swing_runs"] == [[[1.0], [2.0]], [[3.0], [4.0]]]
    assert "speed_swings" not in mean_host([a, b])


def test_the_straddle_correction_by_hand():
    # independent windows measured at a random phase correlate 1/4; a correlation r shows as
    # (1 + 4r + r^2) / (4 + 2r)
    assert swings.unstraddled_correlation(0.25) == 0.0 and swings.unstraddled_correlation(0.1) == 0.0
    for r in (0.2, 0.5, 0.8):
        assert swings.unstraddled_correlation((1 + 4 * r + r * r) / (4 + 2 * r)) == pytest.approx(r)
    assert swings.unstraddled_correlation(float("nan")) == 0.0
