"""What an exactly right model would show against runs of a given length: the chance floor of
``capsim validate``'s errors, and the runs' errors each against its own schedule's prediction."""

from __future__ import annotations

import numpy as np
import pytest

from capsim.validate.validate import (CHANCE_GOAL_PCT, Cell, Validation, chance_errors, run_error_noise,
                                      runs_needed_s, table, window_percentiles)


def test_chance_errors_by_hand():
    # one run, three draws; p95 100, 110, 90: each draw against the median of the other two
    by_run = [np.array([[50.0, 100.0, 120.0], [50.0, 110.0, 120.0], [50.0, 90.0, 120.0]])]
    ce = chance_errors(by_run)
    assert ce["p95"] == pytest.approx([0.0, (95 - 110) / 110 * 100, (105 - 90) / 90 * 100])
    assert ce["p50"] == pytest.approx([0.0, 0.0, 0.0])
    # two runs: the measurement is the median (mean) of the runs' draw k, the prediction the median
    # over the runs of each run's median over the other draws
    two = [by_run[0], np.array([[50.0, 200.0, 220.0], [50.0, 220.0, 220.0], [50.0, 180.0, 220.0]])]
    ce = chance_errors(two)
    assert ce["p95"][1] == pytest.approx((np.median([95.0, 190.0]) - 165.0) / 165.0 * 100)
    assert chance_errors([by_run[0][:2]]) is None      # two draws leave no prediction to speak of
    bad = [by_run[0].copy()]
    bad[0][1, 1] = np.nan
    assert chance_errors(bad) is None


def _cell(load, chance_p95):
    c = Cell(1, 0.0, load, 10.0, {"p50": 50.0, "p95": 100.0, "p99": 120.0, "throughput": 10.0,
                                  "mean_batch_size": 1.0},
             {"p50": 50.0, "p95": 100.0, "p99": 120.0, "throughput": 10.0, "mean_batch_size": 1.0})
    c.errors_pct = {"p50": 0.0, "p95": 0.0, "p99": 0.0, "throughput": 0.0, "mean_batch_size": 0.0}
    c.chance_pct = {"p95": chance_p95}
    return c


def test_chance_floor_is_the_median_over_cells_per_draw():
    cells = [_cell(0.3, [2.0, -8.0, 4.0]), _cell(0.5, [-6.0, 1.0, 10.0]), _cell(0.7, [4.0, 3.0, -1.0]),
             _cell(0.95, [50.0, 50.0, 50.0])]        # above the target's loads: left out
    v = Validation("m", "p.json", {"preprocess_ms": 5.0, "overhead_ms": 2.0}, cells, [], {"duration_s": 15.0})
    floor = v.chance_floor("p95")
    # per draw, the median |error| over the three cells: 4, 3, 4
    assert floor == {"median": 4.0, "low": 3.0, "high": 4.0, "duration_s": 15.0}
    assert v.chance_floor("p50") is None
    line = next(ln for ln in table(v).splitlines() if "exactly right model" in ln)
    assert "4.0 % here (3.0-4.0 % over the draws)" in line and "15 s run" in line and "would bring" not in line


def test_runs_needed_follow_one_over_the_root_of_the_length():
    assert runs_needed_s({"median": CHANCE_GOAL_PCT, "duration_s": 15.0}) is None
    # twice the goal: four times the length, rounded up to 5 s
    assert runs_needed_s({"median": 2 * CHANCE_GOAL_PCT, "duration_s": 15.0}) == 60.0
    assert runs_needed_s({"median": 1.1 * CHANCE_GOAL_PCT, "duration_s": 15.0}) == 20.0


def test_the_floor_falls_with_the_runs_length():
    # M/M/1 at rho 0.7: the service times drawn again on the same arrivals move a 10 s run's p95
    # more than a 640 s run's (1/8 in theory; seeds 1-51 gave 1/3.3 to 1/12)
    from capsim.config import parse_scenario

    sc = parse_scenario({"arrivals": {"process": "poisson", "rate_rps": 70},
                         "service": {"batch_latency_ms": {1: 10.0},
                                     "variability": {"distribution": "exponential"}},
                         "batching": {"max_batch_size": 1, "max_queue_delay_ms": 0},
                         "run": {"requests": 20000, "warmup_requests": 2000, "replications": 1}})

    def floor(duration):
        ce = window_percentiles(sc, duration, [1], draws=20)["chance_errors_pct"]["p95"]
        return float(np.median(np.abs(ce)))

    short, long = floor(10.0), floor(640.0)
    assert short > 2.0 * long > 0


def test_run_error_noise_by_hand():
    pred = [{"p50": 50.0, "p95": 100.0, "p99": 150.0}, {"p50": 60.0, "p95": 200.0, "p99": 300.0}]
    meas = [{"p50": 50.0, "p95": 110.0, "p99": 150.0}, {"p50": 50.0, "p95": 190.0, "p99": 300.0}]
    n = run_error_noise(pred, meas)
    e1, e2 = (100 - 110) / 110 * 100, (200 - 190) / 190 * 100
    assert n["p95"] == pytest.approx((e2 - e1) / 2)
    assert n["p50"] == pytest.approx(10.0) and n["p99"] == 0.0
    # the raw percentiles differ by a factor of two, the errors hardly: the schedule, not the machine
    assert n["p95"] < 10.0
    assert run_error_noise(pred[:1], meas[:1]) is None
    assert run_error_noise(pred, meas[:1]) is None
    assert run_error_noise(pred, [meas[0], {**meas[1], "p95": float("nan")}]) is None
