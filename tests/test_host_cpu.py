"""``service.cpu_sharing``: a CPU model slowed by the server's own work on the same cores.

Hand-computed slowdowns, exact batch times on both engines, M/M/1 with the slowed service rate,
the capacity fixed point (stable below it, unstable above), a host saturated by its own work,
and one-line errors for the fields.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from capsim import analytic, host_cpu
from capsim.config import parse_scenario
from capsim.errors import ScenarioError
from capsim.plan import throughput_bound
from capsim.simulate import simulate

from edits import edited  # tests/edits.py

PROFILE = str(Path(__file__).resolve().parent.parent / "calibration" / "resnet18-onnxruntime-cpu-fp32.json")

BASE = {
    "name": "cpu-sharing",
    "arrivals": {"process": "poisson", "rate_rps": 20},
    "service": {"batch_latency_ms": {1: 30.0, 8: 200.0}, "cpu_sharing": {"cores": 2, "host_ms": 11.0}},
    "batching": {"mode": "triton", "max_batch_size": 8, "max_queue_delay_ms": 10},
    "run": {"requests": 20000, "warmup_requests": 2000, "replications": 3, "seed": 3},
}


def scenario(**edits):
    return parse_scenario(edited(BASE, **edits))


def slowdown(sc) -> float:
    """The fluid slowdown (the same for every batch size)."""
    (k,) = set(host_cpu.slowdowns(sc).values())
    return k


def test_slowdown_by_hand():
    # 20 rps x 11 ms = 0.22 cores of host work; the model wants both cores: 2 / 1.78
    assert slowdown(scenario()) == pytest.approx(2 / 1.78)
    # 4 cores, a 2-thread model, 1 core of host work: 3 cores are left, enough: no slowdown
    sc = scenario(**{"service.cpu_sharing": {"cores": 4, "model_cores": 2, "host_ms": 10.0},
                     "arrivals.rate_rps": 100})
    assert slowdown(sc) == 1.0
    # 3 cores of host work on 4: one core left for a 2-thread model: twice as slow
    sc = scenario(**{"service.cpu_sharing": {"cores": 4, "model_cores": 2, "host_ms": 10.0},
                     "arrivals.rate_rps": 300})
    assert slowdown(sc) == pytest.approx(2.0)
    # without the section nothing changes
    assert slowdown(scenario(**{"service.cpu_sharing": None})) == 1.0
    # the curve every engine runs with is the profile's, times the slowdown
    assert host_cpu.effective_curve_ms(scenario()) == pytest.approx({1: 30 * 2 / 1.78, 8: 200 * 2 / 1.78})


def test_measured_slowdown_per_core_by_batch_size():
    # 1 + k(b) x 0.22 cores, k = 0.4 at batch 1 and 1.2 at batch 8, linear in log b between
    sc = scenario(**{"service.cpu_sharing.slowdown_per_core": {1: 0.4, 8: 1.2},
                     "service.batch_latency_ms": {1: 30.0, 2: 55.0, 4: 105.0, 8: 200.0}})
    assert host_cpu.slowdowns(sc) == pytest.approx({1: 1.088, 2: 1 + (0.4 + 0.8 / 3) * 0.22,
                                                    4: 1 + (0.4 + 1.6 / 3) * 0.22, 8: 1.264})
    assert host_cpu.effective_curve_ms(sc)[8] == pytest.approx(200 * 1.264)
    # the capacity is the rate at which the slowed full batches just keep up: 8 / (0.2 (1 + 1.2 x 0.011 r)) = r
    r = analytic.capacity_rps(sc)
    assert 8 / (0.2 * (1 + 1.2 * 0.011 * r)) == pytest.approx(r, rel=1e-6)
    with pytest.raises(ScenarioError, match=r"slowdown_per_core\.8: must be >= 0"):
        scenario(**{"service.cpu_sharing.slowdown_per_core": {1: 0.4, 8: -1}})
    with pytest.raises(ScenarioError, match=r"model_cores: not used with slowdown_per_core"):
        scenario(**{"service.cpu_sharing.slowdown_per_core": {1: 0.4}, "service.cpu_sharing.model_cores": 2})


def test_host_work_counts_only_what_the_decoder_can_take():
    # 500 rps offered into one 10 ms decode thread: at most 100 rps are decoded (1.1 cores of host work)
    sc = scenario(**{"arrivals.rate_rps": 500, "service.preprocess": {"ms": 10.0, "workers": 1}})
    assert host_cpu.host_rate_rps(sc) == pytest.approx(100.0)
    assert slowdown(sc) == pytest.approx(2 / (2 - 1.1))


@pytest.mark.parametrize("engine", ["simpy", "fast"])
def test_every_batch_runs_slower_by_the_factor(engine):
    # constant arrivals 100 ms apart, deterministic 30 ms batches of 1: no queueing, so every
    # request's compute is exactly 30 ms x the slowdown (10 rps x 20 ms = 0.2 cores; 2 / 1.8)
    sc = scenario(**{"arrivals": {"process": "constant", "rate_rps": 10},
                     "service.cpu_sharing.host_ms": 20.0, "batching.max_batch_size": 1,
                     "batching.max_queue_delay_ms": 0, "run": {"requests": 200, "warmup_requests": 20,
                                                                "replications": 1, "seed": 1}})
    res = simulate(sc, engine=engine)
    tr = res.traces[0]
    assert np.allclose((tr.end - tr.start) * 1000.0, 30.0 * 2 / 1.8, atol=1e-6)
    assert np.allclose(res.latency_ms["p50"], 30.0 * 2 / 1.8, atol=1e-3)


def test_engines_agree_with_sharing():
    sc = scenario(**{"service.variability": {"distribution": "gamma", "cv": 0.3}})
    a, b = simulate(sc, engine="simpy"), simulate(sc, engine="fast")
    for t1, t2 in zip(a.traces, b.traces):
        assert np.array_equal(t1.end, t2.end)
    # the result says what the sharing did
    info = b.to_dict()["policies"]["cpu_sharing"]
    assert info["host_load_cores"] == pytest.approx(0.22) and info["slowdown"][8] == pytest.approx(2 / 1.78)
    assert "0.22 of 2 cores" in info["note"]


def test_mm1_with_the_slowed_service_rate():
    # M/M/1: 25 ms mean service on both cores; 16 rps x 12.5 ms = 0.2 cores of host work, so the
    # service is 25 x 2 / 1.8 = 27.8 ms: mean sojourn 1 / (36 - 16) = 50 ms (without sharing: 41.7)
    sc = scenario(**{"arrivals.rate_rps": 16, "service.batch_latency_ms": {1: 25.0},
                     "service.variability": {"distribution": "exponential"},
                     "service.cpu_sharing.host_ms": 12.5, "batching.max_batch_size": 1,
                     "batching.max_queue_delay_ms": 0,
                     "run": {"requests": 200000, "warmup_requests": 10000, "replications": 3, "seed": 5}})
    exact = 1000.0 / (1000.0 / (25.0 * 2 / 1.8) - 16)
    assert exact == pytest.approx(50.0)
    assert analytic.predicted_mean_latency_ms(sc) == pytest.approx(exact)
    res = simulate(sc)
    assert res.latency_ms["mean"] == pytest.approx(exact, rel=0.04)


def test_capacity_is_the_fixed_point_and_bounds_stability():
    sc = scenario()
    # the model alone: 8 / 0.2 s = 40 rps; sharing: lambda = 40 x 2 / (2 + 40 x 0.011) = 32.8 rps
    expected = 40 * 2 / (2 + 40 * 0.011)
    assert analytic.capacity_rps(sc) == pytest.approx(expected)
    assert throughput_bound(sc) == pytest.approx(expected)
    # at that rate the slowed model serves exactly that rate with full batches
    at = scenario(**{"arrivals.rate_rps": expected})
    assert 8 / (0.2 * slowdown(at)) == pytest.approx(expected)
    assert simulate(scenario(**{"arrivals.rate_rps": 0.9 * expected})).stable
    over = simulate(scenario(**{"arrivals.rate_rps": 1.15 * expected}))
    # 37.7 rps would be under the model's own 40 rps: only the sharing makes it unstable
    assert not over.stable and "32.8 rps" in over.unstable_reason


def test_a_host_saturated_by_its_own_work_is_unstable():
    sc = scenario(**{"arrivals.rate_rps": 200})  # 200 x 11 ms = 2.2 cores of host work on 2
    assert slowdown(sc) == host_cpu.SATURATED
    res = simulate(sc)
    assert not res.stable
    assert "saturates" in host_cpu.describe(sc)


@pytest.mark.parametrize("section, field", [
    ({"cores": 2, "model_cores": 3}, "service.cpu_sharing.model_cores"),
    ({"host_ms": 3.0}, "service.cpu_sharing.cores"),
    ({"cores": -1}, "service.cpu_sharing.cores"),
    ({"cores": 2, "host_ms": -1}, "service.cpu_sharing.host_ms"),
])
def test_bad_fields_name_themselves(section, field):
    with pytest.raises(ScenarioError, match=field.replace(".", r"\.")):
        scenario(**{"service.cpu_sharing": section})


def test_sharing_needs_a_rate(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s\n0.0\n0.1\n")
    with pytest.raises(ScenarioError, match=r"service\.cpu_sharing: needs a mean arrival rate"):
        scenario(**{"arrivals": {"process": "trace", "path": str(trace)}})


def test_cli_refuses_a_bad_section_in_one_line(tmp_path):
    import yaml

    data = copy.deepcopy(BASE)
    data["service"]["cpu_sharing"] = {"cores": 2, "model_cores": 4}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    r = subprocess.run([sys.executable, "-m", "capsim.cli", "simulate", str(path)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "service.cpu_sharing.model_cores" in lines[0]


def test_process_cpu_time_counts_a_busy_loop():
    from capsim.validate.validate import process_cpu_s

    before = process_cpu_s(os.getpid())
    if before is None:
        pytest.skip("no /proc here")
    t = time.perf_counter()
    while time.perf_counter() - t < 0.3:
        pass
    assert process_cpu_s(os.getpid()) - before >= 0.2


def test_validate_takes_the_host_work_out_of_the_batch_one_ratio():
    from capsim.validate.validate import host_ratio, scenario_for, share_cores

    # batch 1 measured at 20 rps with 10 ms of host CPU per request beside it (0.2 cores on 2):
    # the model alone is 2 / 1.8 times faster; the closed-loop full batches stand as measured
    host = {"compute_b1_ms": 30.0, "profile_b1_ms": 27.0, "compute_ratio": 30.0 / 27.0, "rate_rps": 20.0,
            "compute_cv": 0.1, "decode_ms": 7.0, "compute_bmax_ms": 190.0, "bmax": 8, "profile_bmax_ms": 200.0,
            "compute_ratio_bmax": 0.95}
    share_cores(host, {"host_cpu_ms": 10.0}, threads=2, instances=1, cores=2)
    assert host["sharing"] == {"cores": 2, "model_cores": 2.0, "host_ms": 10.0}
    assert host["calibration_slowdown"] == pytest.approx(2 / 1.8)
    assert host_ratio(host, 1) == pytest.approx(30.0 / 27.0 / (2 / 1.8))
    assert host_ratio(host, 8) == pytest.approx(0.95)
    # the scenario puts the host work back at each cell's rate: at 20 rps batch 1 is 30 ms again
    sc = scenario_for(PROFILE, {"overhead_ms": 3.0, "preprocess_ms": 7.0}, 8, 10.0, 1, 1, 20.0, 1, host)
    from capsim.profile import load_profile

    p1 = load_profile(PROFILE).curve_ms()[1]
    assert host_cpu.effective_curve_ms(sc)[1] == pytest.approx(p1 * 30.0 / 27.0, rel=1e-4)
    # a 1-thread model on 2 cores has a core to spare for 0.2 cores of host work: no slowdown
    one = dict(host)
    share_cores(one, {"host_cpu_ms": 10.0}, threads=1, instances=1, cores=2)
    assert one["calibration_slowdown"] == 1.0 and one["sharing"]["model_cores"] == 1.0
    # without a CPU measurement (no /proc) nothing is added
    bare = {"compute_ratio": 1.3, "rate_rps": 20.0}
    share_cores(bare, {"host_cpu_ms": None}, threads=2, instances=1)
    assert "sharing" not in bare and host_ratio(bare, 1) == 1.3
