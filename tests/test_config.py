"""Scenario model: field definitions, loading, overrides, service curves."""

import numpy as np
import pytest

from capsim import scenarios
from capsim.config import apply_overrides, field_spec, iter_fields, load_scenario, parse_scenario
from capsim.errors import ScenarioError
from capsim.service import ServiceCurve, contention_table

BASE = {"arrivals": {"process": "poisson", "rate_rps": 50}, "service": {"batch_latency_ms": {1: 10, 2: 12, 8: 30}},
        "batching": {"max_batch_size": 8, "max_queue_delay_ms": 5}}


def test_every_field_has_help_and_builtins_round_trip():
    paths = [p for p, _, _ in iter_fields()]
    assert "batching.max_batch_size" in paths and "arrivals.streams[].fps" in paths
    for path, spec, _ in iter_fields():
        assert spec.help, path
    assert field_spec("arrivals.rate_rps").unit == "rps"
    for name in scenarios.names():
        sc = load_scenario(name)
        again = parse_scenario(sc.to_dict())
        assert again.to_dict() == sc.to_dict()


def test_problems_are_collected_one_line_each():
    bad = {"arrivals": {"process": "poisson", "rate_rps": -5}, "service": {"batch_latency_ms": {1: 10}},
           "instances": 0, "queue": {"on_full": "explode"}}
    with pytest.raises(ScenarioError) as exc:
        parse_scenario(bad)
    problems = exc.value.problems
    assert "arrivals.rate_rps: must be > 0 rps, got -5" in problems
    assert any(p.startswith("instances: must be >= 1") for p in problems)
    assert any(p.startswith("queue.on_full: must be one of reject, drop_oldest") for p in problems)
    assert all("\n" not in p for p in problems)


def test_batch_size_above_curve_names_the_field():
    with pytest.raises(ScenarioError, match=r"batching.max_batch_size: 16 is above the largest measured batch size 8"):
        parse_scenario({**BASE, "batching": {"max_batch_size": 16}})


def test_curve_interpolation_is_monotone_and_exact_at_points():
    curve = ServiceCurve({1: 25, 2: 27, 4: 34, 8: 48}, 8)
    ms = curve.seconds[1:] * 1000
    assert ms[0] == pytest.approx(25) and ms[1] == pytest.approx(27)
    assert ms[3] == pytest.approx(34) and ms[7] == pytest.approx(48)
    assert np.all(np.diff(ms) > 0)
    assert 34 < ms[4] < 48 and 27 < ms[2] < 34
    with pytest.raises(ValueError):
        ServiceCurve({1: 25, 2: 27}, 4)


def test_contention_interpolates_between_measured_counts():
    sc = parse_scenario({**BASE, "instances": 4, "service": {"batch_latency_ms": {1: 10, 8: 30},
                                                             "contention": {2: 1.2, 4: 1.6}}})
    assert contention_table(sc.service, 4)[1:].tolist() == pytest.approx([1.0, 1.2, 1.4, 1.6])


def test_overrides_go_through_validation():
    data = apply_overrides({"batching": {"max_batch_size": 4}}, ["batching.max_batch_size=2", "run.seed=7",
                                                                 "batching.preferred_batch_sizes=1,2"])
    assert data["batching"] == {"max_batch_size": 2, "preferred_batch_sizes": [1, 2]} or \
        data["batching"]["preferred_batch_sizes"] == "1,2"
    sc = load_scenario("mini-challenge", ["batching.max_batch_size=4", "service.batch_latency_ms.8=50"])
    assert sc.batching.max_batch_size == 4 and sc.service.batch_latency_ms[8] == 50
    with pytest.raises(ScenarioError, match="arrivals.rate_rps: must be > 0"):
        load_scenario("mini-challenge", ["arrivals.rate_rps=-1"])


def test_toml_and_trace_scenarios(tmp_path):
    (tmp_path / "arrivals.csv").write_text("arrival_s,source\n0.0,0\n0.010,1\n0.020,0\n0.030,1\n" +
                                           "".join(f"{0.04 + i * 0.01:.3f},{i % 2}\n" for i in range(200)))
    (tmp_path / "sc.toml").write_text(
        'name = "t"\n[arrivals]\nprocess = "trace"\npath = "arrivals.csv"\n'
        '[service.batch_latency_ms]\n1 = 5.0\n2 = 6.0\n[batching]\nmax_batch_size = 2\n'
        '[run]\nrequests = 150\nwarmup_requests = 10\nreplications = 1\n'
    )
    from capsim.simulate import simulate

    res = simulate(load_scenario(tmp_path / "sc.toml"))
    tr = res.traces[0]
    assert len(tr.arrival) == 150 and set(tr.source.tolist()) == {0, 1}
    # 100 rps against a 5 ms service: nobody waits, latency is the service time
    assert res.latency_ms["p50"] == pytest.approx(5.0, abs=1e-6)


def test_null_empties_a_curve_so_a_profile_can_replace_it():
    sc = load_scenario("mini-challenge", ["service.batch_latency_ms=null",
                                          "service.profile=calibration/resnet18-onnxruntime-cpu-fp32.json"])
    assert sc.service.batch_latency_ms == {} and sc.service.curve_ms()[1] > 0
    with pytest.raises(ScenarioError, match="service.batch_latency_ms: required"):
        load_scenario("mini-challenge", ["service.batch_latency_ms=null"])


def test_camera_bursts_need_their_lengths_and_only_apply_to_streams():
    cams = {"process": "streams", "streams": [{"count": 6, "fps": 25}]}
    with pytest.raises(ScenarioError) as exc:
        parse_scenario({**BASE, "arrivals": {**cams, "burst_factor": 3}})
    assert "arrivals.mean_burst_s: required for process streams; set it" in exc.value.problems
    assert "arrivals.mean_calm_s: required for process streams; set it" in exc.value.problems
    with pytest.raises(ScenarioError, match="arrivals.mean_burst_s: not used by process streams"):
        parse_scenario({**BASE, "arrivals": {**cams, "mean_burst_s": 1}})
    with pytest.raises(ScenarioError, match="arrivals.burst_factor: must be >= 1"):
        parse_scenario({**BASE, "arrivals": {**cams, "burst_factor": 0.5, "mean_burst_s": 1, "mean_calm_s": 4}})
    with pytest.raises(ScenarioError, match="arrivals.burst_factor: not used by process poisson"):
        parse_scenario({**BASE, "arrivals": {**BASE["arrivals"], "burst_factor": 2}})
    sc = parse_scenario({**BASE, "arrivals": {**cams, "burst_factor": 3, "mean_burst_s": 1, "mean_calm_s": 4}})
    assert sc.arrivals.offered_rps() == pytest.approx(210)
