"""``service.after_idle``: a batch that follows an idle spell of its instance runs slower.

A hand-computed timeline, capacity unchanged (back-to-back batches pay nothing), the light-load
mean against the closed form, the fit of a measured idle curve, and one-line errors."""

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


def test_a_measured_idle_curve_is_fitted():
    from capsim.validate.idle import fit

    gaps = np.array([0, 25, 50, 100, 200.0])
    extra = 4.0 * (1 - np.exp(-gaps / 60.0))
    a, tau = fit(gaps, extra)
    assert a == pytest.approx(4.0, rel=0.05) and tau == pytest.approx(60.0, rel=0.15)
    # no slowdown (or a speed-up) after idle: nothing to model
    assert fit(gaps, np.array([0.0, -0.5, -0.2, -1.0, -0.8]))[0] == 0.0


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


def test_the_idle_probe_on_a_real_model():
    # the tiny model on ONNX Runtime, timed after idle gaps: a fit that is finite and non-negative
    pytest.importorskip("onnxruntime")
    from capsim.validate.idle import measure
    from capsim.validate.server import load_model

    host = load_model("tiny_cnn", None, "onnxruntime", "cpu", "fp32", 1, 1)
    try:
        out = measure(host, gaps_ms=(0.0, 20.0, 60.0), rounds=2, per_gap=3)
    finally:
        host.close()
    assert out["gaps_ms"] == [0.0, 20.0, 60.0] and out["measured_extra_ms"][0] == 0.0
    assert out["back_to_back_ms"] > 0 and out["extra_ms"] >= 0 and out["tau_ms"] > 0 and out["se_ms"] > 0
