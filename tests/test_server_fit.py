"""What the server's batch-1 calibration runs fit (capsim.validate.server_fit): the overlap strength
from two rates, and the model's own spread."""

import json
import math

import numpy as np
import pytest

from capsim.validate.server_fit import cv, fit, fit_spread, scaled_speed, slowdown
from capsim.validate.validate import (b1_service_times, bracket_host, host_ratio, scenario_for, service_mean,
                                     share_cores)

PROFILE = str(__import__("pathlib").Path(__file__).resolve().parent.parent / "calibration"
              / "resnet18-onnxruntime-cpu-fp32.json")
OVERHEAD = {"host_cpu_ms": 13.0, "preprocess_ms": 7.5, "overhead_ms": 4.5}
CORUN = {"model_speed": {1: 0.44, 8: 0.5}, "preprocess_speed": 0.5, "model_alone_cv": {1: 0.05, 8: 0.05}}
LIGHT, HEAVY = 7.4, 18.5


def host_measuring(strength: float, alone: float, after_idle: dict | None = None) -> dict:
    """A host whose batch-1 runs at the two rates measured what the model says at ``strength``."""
    host = {"profile_b1_ms": 27.0, "rate_rps": HEAVY, "rate_light_rps": LIGHT, "compute_cv": 0.25, "decode_ms": 11.0,
            "compute_b1_ms": 30.0, "compute_b1_light_ms": 30.0, "compute_ratio": 1.0, "compute_ratio_light": 1.0}
    share_cores(host, OVERHEAD, threads=2, instances=1, cores=2, corun=CORUN)
    if after_idle:
        host["after_idle"] = after_idle
    # the measured times are what the model alone at `alone` takes, slowed as the fit models it
    # (the after-idle share depends on the measured time itself: a few fixed-point rounds)
    for _ in range(50):
        for rate, key in ((HEAVY, ""), (LIGHT, "_light")):
            ms = 27.0 * alone * slowdown(host, OVERHEAD, strength, rate, host[f"compute_b1{key}_ms"])
            host[f"compute_b1{key}_ms"], host[f"compute_ratio{key}"] = ms, ms / 27.0
    if after_idle:
        from capsim.validate.validate import account_idle
        account_idle(host, after_idle)
    return host


def test_scaled_speed_scales_the_extra_time():
    assert scaled_speed(0.5, 1.0) == pytest.approx(0.5)     # the co-run as measured
    assert scaled_speed(0.5, 0.0) == pytest.approx(1.0)     # no slowdown beside the decode
    assert scaled_speed(0.5, 0.5) == pytest.approx(1 / 1.5)  # half the extra time: 1 + 0.5 x 1


@pytest.mark.parametrize("strength", [0.0, 0.3, 0.75, 1.0])
def test_the_fit_recovers_the_strength_and_the_speed_alone(strength):
    host = host_measuring(strength, alone=1.1)
    fit(host, OVERHEAD)
    assert host["overlap_strength"] == pytest.approx(strength, abs=1e-6)
    assert host["compute_ratio_alone"] == pytest.approx(1.1, rel=1e-6)
    assert host_ratio(host, 1) == pytest.approx(1.1, rel=1e-6)
    assert host["sharing"]["overlap"]["model_speed"] == {
        1: pytest.approx(scaled_speed(0.44, strength), abs=1e-4), 8: pytest.approx(scaled_speed(0.5, strength), abs=1e-4)}
    assert host["calibration_slowdown"] == pytest.approx(slowdown(host, OVERHEAD, strength, HEAVY, 30.0), rel=1e-9)
    assert host["corun"]["model_speed"] == CORUN["model_speed"]   # the measurement itself is kept


def test_the_fit_takes_the_after_idle_extra_into_account():
    # light load pays more of the idle extra: without it, the flatter ratio would read as a weak overlap
    a = {"extra_ms": 4.0, "tau_ms": 60.0}
    host = host_measuring(0.6, alone=1.05, after_idle=a)
    fit(host, OVERHEAD)
    assert host["overlap_strength"] == pytest.approx(0.6, abs=1e-6)
    assert host["compute_ratio_alone"] == pytest.approx(1.05, rel=1e-6)


def test_measurements_outside_the_model_clamp_to_its_ends():
    # compute slower at the light rate than at the heavy one: no overlap slowdown at all (s = 0),
    # and the speed alone is the geometric mean of the two readings
    flat = host_measuring(0.0, alone=1.1)
    flat["compute_ratio_light"] *= 1.1
    fit(flat, OVERHEAD)
    assert flat["overlap_strength"] == 0.0
    k_hi, k_lo = slowdown(flat, OVERHEAD, 0.0, HEAVY, 1.0), slowdown(flat, OVERHEAD, 0.0, LIGHT, 1.0)
    assert flat["compute_ratio_alone"] == pytest.approx(
        math.sqrt(flat["compute_ratio"] / k_hi * flat["compute_ratio_light"] / k_lo))
    assert flat["sharing"]["overlap"]["model_speed"] == {1: 1.0, 8: 1.0}
    # steeper than the co-run's worst case: the co-run as measured (s = 1)
    steep = host_measuring(1.0, alone=1.1)
    steep["compute_ratio"] *= 1.2
    fit(steep, OVERHEAD)
    assert steep["overlap_strength"] == 1.0


def test_without_the_light_rate_or_a_co_run_nothing_is_fitted():
    host = host_measuring(0.5, alone=1.1)
    del host["compute_ratio_light"]
    before = json.loads(json.dumps(host))
    fit(host, OVERHEAD)
    assert json.loads(json.dumps(host)) == before
    no_corun = {"compute_ratio": 1.2, "compute_ratio_light": 1.1}
    fit(no_corun, OVERHEAD)
    assert no_corun == {"compute_ratio": 1.2, "compute_ratio_light": 1.1}


def test_the_simulation_reproduces_both_calibration_runs():
    # the real SimPy engine, B=1, at the two calibration rates, with what the fit derived: its mean
    # batch time must be the compute time measured at each rate (the closed form and the engine agree)
    from capsim.simulate import simulate

    host = host_measuring(0.4, alone=1.1)
    fit(host, OVERHEAD)
    for rate, measured in ((LIGHT, host["compute_b1_light_ms"]), (HEAVY, host["compute_b1_ms"])):
        sc = scenario_for(PROFILE, OVERHEAD, 1, 0.0, 1, 1, rate, seed=3, host=host)
        res = simulate(sc)
        assert res.stable
        assert res.breakdown_ms["service"] == pytest.approx(measured, rel=0.02)
    # and the two differ as measured: the fit is not a constant
    assert host["compute_b1_ms"] / host["compute_b1_light_ms"] > 1.05


def test_a_bracketed_calibration_keeps_the_light_rate_and_fits_again():
    a, b = host_measuring(0.4, alone=1.0), host_measuring(0.4, alone=1.2)
    fit(a, OVERHEAD), fit(b, OVERHEAD)
    m = bracket_host(a, b)
    assert not {"overlap_strength", "own_cv", "sharing"} & set(m)    # derived again from the mean
    assert m["compute_ratio_light"] == pytest.approx(math.sqrt(a["compute_ratio_light"] * b["compute_ratio_light"]))
    assert m["rate_light_rps"] == LIGHT
    share_cores(m, OVERHEAD, threads=2, instances=1, cores=2, corun=CORUN)
    fit(m, OVERHEAD)
    assert m["overlap_strength"] == pytest.approx(0.4, abs=1e-6)       # the same machine, only faster
    assert m["compute_ratio_alone"] == pytest.approx(math.sqrt(1.0 * 1.2), rel=1e-6)


def test_service_mean_is_the_mean_without_the_slowest_percent():
    times = np.r_[np.full(99, 30.0), 40.0]     # skewed right: the median (30) would read low
    assert service_mean(times) == pytest.approx(30.0)   # the slowest 1 % (one stall of 40) left out
    skewed = np.r_[np.full(50, 30.0), np.full(50, 36.0)]
    assert service_mean(skewed) == pytest.approx(33.0) and np.median(skewed) == 33.0
    tail = np.r_[np.full(80, 30.0), np.full(20, 40.0)]
    assert service_mean(tail) == pytest.approx(32.0) and np.median(tail) == 30.0


def simulated_b1(host):
    return b1_service_times(PROFILE, OVERHEAD, host, 1, 1, seed=5)


@pytest.mark.parametrize("measured_cv", [0.25, 0.35])
def test_the_own_spread_makes_the_simulated_batch_times_spread_as_measured(measured_cv):
    # a weak overlap (s = 0.3) leaves most of the measured spread to the model itself
    host = host_measuring(0.3, alone=1.1)
    fit(host, OVERHEAD)
    host["compute_cv"] = measured_cv
    before = cv(simulated_b1(host))           # the co-run's spread alone (0.05) and the overlaps
    assert before < measured_cv - 0.05
    fit_spread(host, simulated_b1)
    assert host["own_cv"] > host["corun"]["alone_cv"]
    assert cv(simulated_b1(host)) == pytest.approx(measured_cv, abs=0.015)
    sc = scenario_for(PROFILE, OVERHEAD, 4, 5.0, 1, 1, 10.0, 1, host)
    assert sc.service.variability.cv == pytest.approx(host["own_cv"])   # the cells draw with it


def test_a_spread_the_overlaps_already_make_keeps_the_co_runs():
    host = host_measuring(1.0, alone=1.1)
    fit(host, OVERHEAD)
    host["compute_cv"] = 0.01     # less than the engine makes itself: nothing is added
    fit_spread(host, simulated_b1)
    assert host["own_cv"] == host["corun"]["alone_cv"]
    plain = {"compute_cv": 0.3}   # no co-run: the measured spread is used as it is (scenario_for)
    fit_spread(plain, simulated_b1)
    assert plain == {"compute_cv": 0.3}


def test_cv_leaves_one_stall_out():
    times = np.r_[np.full(50, 30.0), np.full(49, 36.0), 500.0]
    assert cv(times) == pytest.approx(np.std(times[:-1]) / np.mean(times[:-1]))


# --------------------------------------------------------------------------- the decode's speed

CORUN_BY_SIZE = {**CORUN, "preprocess_speed": 0.8, "preprocess_speed_by_batch": {1: 0.7, 8: 0.8}}


def host_with_decode(decode_ms: float, corun: dict = CORUN_BY_SIZE) -> dict:
    host = {"profile_b1_ms": 27.0, "rate_rps": HEAVY, "compute_cv": 0.25, "decode_ms": decode_ms,
            "compute_b1_ms": 33.0, "compute_ratio": 33.0 / 27.0}
    share_cores(host, OVERHEAD, threads=2, instances=1, cores=2, corun=corun)
    return host


def test_the_decode_fit_finds_the_speed_that_takes_the_measured_time():
    # a stand-in simulation whose decode spends 60 % of its time beside a batch: the measured
    # 7.5 x (1 + 0.6 x 1) ms is a decode at x0.5 there, against the co-run's x0.7 beside batch 1
    from capsim.validate.server_fit import decode_speed_b1, fit_decode_speed, sharing_slowdown

    host = host_with_decode(7.5 * 1.6)
    product = host["compute_ratio_alone"] * host["calibration_slowdown"]   # the measured ratio, kept

    def simulated(h):
        return 7.5 * (1.0 + 0.6 * (1.0 / decode_speed_b1(h["sharing"]["overlap"]) - 1.0))

    fit_decode_speed(host, OVERHEAD, simulated)
    assert host["decode_speed"] == pytest.approx(0.5, rel=1e-3)
    # one speed beside every batch size: the co-run's shape by size is not kept
    assert host["sharing"]["overlap"]["preprocess_speed"] == pytest.approx(0.5, abs=1e-4)
    assert "preprocess_speed_by_batch" not in host["sharing"]["overlap"]
    # the slower decode overlaps more: the batch-1 ratio is divided by the slowdown at the new speed
    assert host["calibration_slowdown"] == pytest.approx(sharing_slowdown(host, OVERHEAD, 1.0, HEAVY))
    assert host["compute_ratio_alone"] * host["calibration_slowdown"] == pytest.approx(product)
    assert host["corun"]["preprocess_speed_by_batch"] == {1: 0.7, 8: 0.8}   # the measurement itself is kept


def test_a_decode_no_slower_than_alone_runs_at_full_speed():
    from capsim.validate.server_fit import fit_decode_speed

    host = host_with_decode(7.0)    # faster than the noop run's 7.5: no slowdown to fit
    fit_decode_speed(host, OVERHEAD, lambda h: pytest.fail("nothing to simulate"))
    assert host["decode_speed"] == 1.0 and host["sharing"]["overlap"]["preprocess_speed"] == 1.0


def test_the_fitted_decode_takes_in_the_simulation_what_the_server_measured():
    # the real SimPy engine at the calibration rate: its mean decode is the measured one
    from capsim.validate.server_fit import fit_decode_speed
    from capsim.validate.validate import b1_simulation, decode_ms

    host = host_with_decode(14.0, corun=CORUN)    # an older co-run: one speed (x0.5) for every size
    assert decode_ms(*b1_simulation(PROFILE, OVERHEAD, host, 1, 1, seed=5)) < 13.0
    fit_decode_speed(host, OVERHEAD, lambda h: decode_ms(*b1_simulation(PROFILE, OVERHEAD, h, 1, 1, seed=5)))
    assert host["decode_speed"] < 0.5
    assert decode_ms(*b1_simulation(PROFILE, OVERHEAD, host, 1, 1, seed=6)) == pytest.approx(14.0, rel=0.03)
    sc = scenario_for(PROFILE, OVERHEAD, 4, 5.0, 1, 1, 10.0, 1, host)
    assert sc.service.cpu_sharing.overlap.preprocess_speed == host["sharing"]["overlap"][
        "preprocess_speed"]   # the cells run with it
    assert not sc.service.cpu_sharing.overlap.preprocess_speed_by_batch


@pytest.mark.parametrize("strength", [0.0, 0.5, 0.75, 1.0])
def test_a_set_strength_scales_the_speeds_and_takes_the_ratio_again(strength):
    # measured as the model says at this strength: the set share gives back the speed alone
    from capsim.validate.server_fit import set_strength

    def measured(s: float) -> dict:
        h = host_measuring(s, alone=1.1)
        h["compute_ratio_alone"] = h["compute_ratio"] / h["calibration_slowdown"]   # as share_cores takes it
        return h

    host = measured(strength)
    set_strength(host, OVERHEAD, strength)
    assert host["overlap_strength"] == strength and host["overlap_strength_given"]
    assert host["sharing"]["overlap"]["model_speed"] == {
        1: pytest.approx(scaled_speed(0.44, strength), abs=1e-4), 8: pytest.approx(scaled_speed(0.5, strength), abs=1e-4)}
    assert host["calibration_slowdown"] == pytest.approx(slowdown(host, OVERHEAD, strength, HEAVY, 30.0), rel=1e-9)
    assert host["compute_ratio_alone"] == pytest.approx(1.1, rel=1e-3)   # speeds rounded to 4 places
    assert host["corun"]["model_speed"] == CORUN["model_speed"]
    # a weaker overlap leaves more of the measured time to the model itself
    weak = measured(1.0)
    set_strength(weak, OVERHEAD, 0.5)
    assert weak["compute_ratio_alone"] > 1.1


def test_a_set_strength_without_a_co_run_changes_nothing():
    from capsim.validate.server_fit import set_strength

    plain = {"compute_ratio": 1.2, "calibration_slowdown": 1.1}
    set_strength(plain, OVERHEAD, 0.5)
    assert plain == {"compute_ratio": 1.2, "calibration_slowdown": 1.1}
