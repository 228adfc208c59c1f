"""The machine floor (capsim/validate/machine_floor.py): a run's speed and its sampling variance,
the machine's spread from run to run, the calibrations' error, the shared offsets, and the
errors an exactly right model shows on a machine whose speed moves, all by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from capsim.validate import machine_floor as mf
from capsim.validate import protocol as P
from capsim.validate.validate import TARGET_ERROR_PCT, Cell, Validation, _machine_line, chance_errors


def row(b, ms, inst=0):
    return {P.H_BATCH_SIZE: b, P.H_COMPUTE: ms, P.H_INSTANCE: inst}


CURVE = {1: 10.0, 2: 16.0, 4: 30.0}.__getitem__


def test_run_speed_counts_a_batch_once_weighted_by_its_size():
    # a batch of 2 (two requests, one time), two batches of 1, and a row without a batch
    rows = [row(2, 20.0), row(2, 20.0), row(1, 11.0), row(1, 12.0), {P.H_BATCH_SIZE: None, P.H_COMPUTE: None}]
    log_k, var = mf.run_log_speed(rows, CURVE)
    w, ms, ref = np.array([2, 1, 1.0]), np.array([20.0, 11.0, 12.0]), np.array([16.0, 10.0, 10.0])
    k = (w * ms).sum() / (w * ref).sum()                    # 63 / 52, as drift.speed counts requests
    assert math.exp(log_k) == pytest.approx(63 / 52)
    var_k = ((w * (ms - k * ref)) ** 2).sum() / (w * ref).sum() ** 2 * 3 / 2
    assert var == pytest.approx(var_k / k ** 2)
    # the same batch time on two instances is two batches
    assert mf.run_log_speed([row(1, 10.0, 0), row(1, 10.0, 1)], CURVE) == (pytest.approx(0.0), pytest.approx(0.0))
    assert mf.run_log_speed([row(1, 10.0), row(1, 10.0)], CURVE) is None   # one batch: no spread to read


def test_run_spread_pools_the_cells_and_takes_out_the_sampling():
    cells = [[(math.log(1.0), 1e-4), (math.log(1.1), 3e-4)],
             [(math.log(0.9), 2e-4), (math.log(1.0), 2e-4), (math.log(1.05), 2e-4)],
             [(math.log(2.0), 0.0)]]                       # one run: says nothing about the spread
    a = np.log([1.0, 1.1]); b = np.log([0.9, 1.0, 1.05])
    pooled = (((a - a.mean()) ** 2).sum() + ((b - b.mean()) ** 2).sum()) / 3
    assert mf.run_spread(cells) == pytest.approx(math.sqrt(pooled - 2e-4))
    assert mf.run_spread([[(0.0, 1.0), (0.01, 1.0)]]) == 0.0  # sampling explains it all: never negative
    assert mf.run_spread([[(0.0, 0.0)], []]) is None


def test_calibration_error_is_the_spread_over_the_root_of_the_count():
    expected = np.std(np.log([1.0, 1.2, 1.1]), ddof=1) / math.sqrt(3)
    assert mf.calibration_error([1.0, 1.2, 1.1]) == pytest.approx(expected)
    assert mf.calibration_error([1.3]) is None
    assert mf.calibration_error([1.3, None]) is None
    # at batch 1 the ratio without the host's own work, at the largest batch its own ratio
    hosts = [{"compute_ratio": 1.5, "compute_ratio_alone": 1.0, "compute_ratio_bmax": 1.2, "bmax": 8},
             {"compute_ratio": 1.6, "compute_ratio_alone": 1.1, "compute_ratio_bmax": 1.3, "bmax": 8}]
    se = mf.calibration_errors(hosts)
    assert se[1] == pytest.approx(mf.calibration_error([1.0, 1.1]))
    assert se[8] == pytest.approx(mf.calibration_error([1.2, 1.3])) and set(se) == {1, 8}
    assert mf.calibration_errors(hosts[:1]) == {1: 0.0}


def test_calibration_offsets_are_shared_and_interpolated_in_log_batch_size():
    offs = mf.calibration_offsets({1: 0.05, 8: 0.10}, 4, np.random.default_rng(3))
    z = np.random.default_rng(3).standard_normal(8).reshape(4, 2) * [0.05, 0.10]
    for o, (z1, z8) in zip(offs, z):
        assert o(1) == pytest.approx(z1) and o(8) == pytest.approx(z8) and o(16) == pytest.approx(z8)
        assert o(2) == pytest.approx(z1 + (z8 - z1) / 3)   # log 2 is a third of log 8
    (one,) = mf.calibration_offsets({1: 0.05}, 1, np.random.default_rng(0))
    assert one(1) == one(8)


def base_draws(runs=2, draws=5):
    rng = np.random.default_rng(0)
    return 100.0 + rng.normal(0, 3, (runs, draws, 3)) + np.array([0.0, 50.0, 80.0])


def test_a_machine_that_keeps_its_speed_leaves_the_chance_errors():
    base = base_draws()
    errs = mf.cell_errors(base, lambda r, d, k: base[r, d], [0.0] * 5, 0.0, np.random.default_rng(1))
    chance = chance_errors(list(base))
    for q in ("p50", "p95", "p99"):
        assert errs[q] == pytest.approx(chance[q])


def test_a_slower_machine_reads_as_the_prediction_too_fast():
    base = np.full((2, 4, 3), 100.0)   # no chance: every draw alike
    slower = math.log(1.1)
    errs = mf.cell_errors(base, lambda r, d, k: base[r, d] * k, [slower] * 4, 0.0, np.random.default_rng(1))
    assert errs["p95"] == pytest.approx([(1 / 1.1 - 1) * 100] * 4)
    # each run at its own speed: the measurement is the median of the runs
    rng = np.random.default_rng(5)
    errs = mf.cell_errors(base, lambda r, d, k: base[r, d] * k, [0.0] * 4, 0.1, np.random.default_rng(5))
    ks = np.exp(0.1 * rng.standard_normal(8)).reshape(4, 2)
    assert errs["p50"] == pytest.approx([(100 - 100 * np.median(k)) / (100 * np.median(k)) * 100 for k in ks])
    assert mf.cell_errors(base[:, :2], lambda r, d, k: base[r, d], [0.0] * 2, 0.0, np.random.default_rng(0)) is None


def test_the_floor_rises_with_the_machines_spread():
    base = base_draws(runs=2, draws=9)

    def floor(sd):
        errs = mf.cell_errors(base, lambda r, d, k: base[r, d] * k, [0.0] * 9, sd, np.random.default_rng(2))
        return float(np.median(np.abs(errs["p95"])))
    assert floor(0.0) < floor(0.05) < floor(0.15)


def test_the_validation_reports_the_machine_floor():
    def cell(load, errs):
        c = Cell(4, 5.0, load, 10.0, {}, {})
        c.machine_pct = {"p50": errs, "p95": [3 * e for e in errs]}
        return c
    machine = {"run_sd": 0.08, "calibration_se": {"1": 0.03, "8": 0.05}, "calibrations": 4}
    v = Validation("m", "p.json", {}, [cell(0.3, [2.0, -4.0, 6.0]), cell(0.7, [-5.0, 1.0, 3.0]),
                                       cell(0.95, [50.0, 50.0, 50.0])], [], {"duration_s": 15}, machine)
    f = v.machine_floor("p95")   # per draw the median over the cells at loads <= 0.85 of |error|
    assert f["median"] == pytest.approx(10.5) and f["low"] == pytest.approx(7.5) and f["high"] == pytest.approx(13.5)
    line = " ".join(_machine_line(f, machine, True))
    assert "10.5 % (7.5-13.5 %)" in line and "±8.0 % from run to run" in line
    assert "±3.0 % at batch 1, ±5.0 % at batch 8" in line and "more often than not" in line
    assert f["median"] > TARGET_ERROR_PCT
    low = v.machine_floor("p50")
    assert "more often than not" not in " ".join(_machine_line(low, machine, True))
    assert v.to_dict()["median_machine_pct"]["p95"]["median"] == pytest.approx(10.5)
    assert Validation("m", "p.json", {}, [Cell(1, 0.0, 0.3, 5.0, {}, {})], [], {}).machine_floor("p95") is None
