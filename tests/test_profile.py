"""Calibration profiles as the simulator reads them: loading, perf_analyzer import, scenario use,
mismatch refusal, empirical resampling. (Measuring real models is in test_calibrate.py.)"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from capsim.config import load_scenario, parse_scenario
from capsim.errors import ScenarioError
from capsim.profile import ProfileError, from_perf_analyzer, load_profile
from capsim.simulate import simulate

DATA = Path(__file__).parent / "data"


def _profile(tmp_path, samples: dict[int, list[float]], **extra) -> Path:
    """A profile file with the given per-batch samples (ms), written the way calibrate writes them."""
    batches = []
    for b, s in samples.items():
        arr = np.asarray(s, float)
        batches.append({"batch_size": b, "median_ms": float(np.median(arr)), "mean_ms": float(arr.mean()),
                        "p95_ms": float(np.percentile(arr, 95)), "p99_ms": float(np.percentile(arr, 99)),
                        "ci_ms": [float(arr.min()), float(arr.max())], "stable": True, "reps": len(arr),
                        "images_per_s": b / float(np.median(arr)) * 1000, "samples_ms": arr.tolist()})
    data = {"capsim_profile": 1,
            "model": {"name": "resnet18", "task": "classification", "input_shape": [3, 224, 224],
                      "precision": "fp32", "backend": "onnxruntime", "backend_version": "1.0", "provider": "cpu"},
            "hardware": {"device": "cpu", "cpu_model": "Test CPU 9000", "hostname": "box", "threads_used": 2},
            "batches": batches, "failures": [], "preprocess": {"median_ms": 3.0}, "postprocess": {"median_ms": 0.5},
            "contention": {"batch_size": 2, "method": "threads", "table": {"1": {"factor": 1.0}, "2": {"factor": 1.5}}},
            "fidelity": None, **extra}
    p = tmp_path / "prof.json"
    p.write_text(json.dumps(data))
    return p


def _scenario(profile: Path, **service) -> dict:
    return {"arrivals": {"process": "poisson", "rate_rps": 20},
            "service": {"profile": str(profile), **service},
            "batching": {"max_batch_size": 4, "max_queue_delay_ms": 2}, "instances": 1,
            "run": {"requests": 4000, "warmup_requests": 200, "replications": 2, "seed": 3}}


def test_profile_drives_curve_stages_and_contention(tmp_path):
    p = _profile(tmp_path, {1: [10, 10, 10], 2: [12, 12, 12], 4: [16, 16, 16]})
    sc = parse_scenario(_scenario(p), base_dir=tmp_path)
    assert sc.service.curve_ms() == {1: 10.0, 2: 12.0, 4: 16.0}
    assert sc.service.preprocess.ms == 3.0 and sc.service.postprocess.ms == 0.5
    assert sc.service.contention == {2: 1.5}
    # Scenario values win over the profile's.
    sc2 = parse_scenario(_scenario(p, preprocess={"ms": 7}), base_dir=tmp_path)
    assert sc2.service.preprocess.ms == 7
    # A relative path resolves against the scenario file's folder.
    (tmp_path / "sc.json").write_text(json.dumps(_scenario(Path("prof.json"))))
    assert load_scenario(tmp_path / "sc.json").service.curve_ms()[4] == 16.0


def test_batch_size_above_the_profile_is_refused(tmp_path):
    p = _profile(tmp_path, {1: [10], 2: [12]})
    with pytest.raises(ScenarioError, match=r"batching.max_batch_size: 4 is above the largest measured batch size 2 "
                                            r"in the calibration profile"):
        parse_scenario(_scenario(p), base_dir=tmp_path)


def test_missing_and_malformed_profiles_name_the_field(tmp_path):
    with pytest.raises(ScenarioError, match=r"service.profile: profile .*nope.json not found"):
        parse_scenario(_scenario(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"capsim_profile": 1, "model": {}, "hardware": {}, "batches": []}')
    with pytest.raises(ScenarioError, match=r"service.profile: .*not a valid calibration profile"):
        parse_scenario(_scenario(bad))
    p = _profile(tmp_path, {1: [10], 4: [16]})
    with pytest.raises(ScenarioError, match="give either batch_latency_ms or profile"):
        parse_scenario(_scenario(p, batch_latency_ms={1: 5}))


def test_mismatched_model_or_hardware_is_refused_unless_allowed(tmp_path):
    p = _profile(tmp_path, {1: [10], 2: [12], 4: [16]})
    with pytest.raises(ScenarioError, match=r"service.profile: .*measured model 'resnet18' but the scenario declares "
                                            r"service.model 'resnet50'.*--allow-mismatch"):
        parse_scenario(_scenario(p, model="resnet50"))
    with pytest.raises(ScenarioError, match=r"measured on .*Test CPU 9000.* service.hardware 'A100'"):
        parse_scenario(_scenario(p, hardware="A100"))
    assert parse_scenario(_scenario(p, model="resnet18", hardware="test cpu"))  # matches, case-insensitive
    assert parse_scenario(_scenario(p, model="resnet50", allow_mismatch=True))
    # The CLI flag sets allow_mismatch.
    (tmp_path / "sc.json").write_text(json.dumps(_scenario(p, model="resnet50")))
    cmd = [sys.executable, "-m", "capsim.cli", "simulate", str(tmp_path / "sc.json"), "--requests", "1000",
           "--replications", "1", "--format", "json"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 2 and "service.model 'resnet50'" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(cmd + ["--allow-mismatch"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_empirical_variability_resamples_the_measured_samples(tmp_path):
    # Batch 1 alternates 8 and 12 ms (median 10); batch 4 is always 16 ms.
    p = _profile(tmp_path, {1: [8, 12] * 50, 2: [12] * 10, 4: [16] * 10})
    data = _scenario(p, variability={"distribution": "empirical"})
    data["batching"] = {"max_batch_size": 4, "max_queue_delay_ms": 0}
    data["arrivals"] = {"process": "constant", "rate_rps": 5}  # no queueing: every batch is a single request
    res = simulate(parse_scenario(data, base_dir=tmp_path))
    tr = res.traces[0]
    service_ms = np.round((tr.end - tr.start) * 1000, 6)
    assert set(np.unique(service_ms)) == {8.0, 12.0}
    assert 0.4 < np.mean(service_ms == 8.0) < 0.6
    with pytest.raises(ScenarioError, match="empirical resamples a calibration profile"):
        parse_scenario({**data, "service": {"batch_latency_ms": {1: 5, 4: 9}, "variability":
                                            {"distribution": "empirical"}}})


def test_perf_analyzer_import_takes_the_lowest_concurrency_infer_time():
    files = [str(DATA / "perf_analyzer_resnet50_b1.csv"), str(DATA / "perf_analyzer_resnet50_b8.csv"),
             str(DATA / "perf_analyzer_resnet50_batch4.csv")]
    data = from_perf_analyzer(files, model="resnet50", hardware="T4")
    curve = {b["batch_size"]: b["median_ms"] for b in data["batches"]}
    assert curve == {1: pytest.approx(4.710), 4: pytest.approx(6.420), 8: pytest.approx(9.630)}
    # @B overrides the file name.
    forced = from_perf_analyzer([str(DATA / "perf_analyzer_resnet50_b8.csv") + "@16"])
    assert [b["batch_size"] for b in forced["batches"]] == [16]


def test_perf_analyzer_cli_round_trip_and_errors(tmp_path):
    out = tmp_path / "pa.json"
    r = subprocess.run([sys.executable, "-m", "capsim.cli", "calibrate", "--from-perf-analyzer",
                        str(DATA / "perf_analyzer_resnet50_b1.csv"), str(DATA / "perf_analyzer_resnet50_b8.csv"),
                        "--model-name", "resnet50", "--hardware", "T4", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    prof = load_profile(out)
    assert prof.curve_ms() == {1: pytest.approx(4.71), 8: pytest.approx(9.63)}
    r = subprocess.run([sys.executable, "-m", "capsim.cli", "profile", "show", str(out), "--format", "json"],
                       capture_output=True, text=True)
    rows = json.loads(r.stdout)["batches"]
    assert [row["batch_size"] for row in rows] == [1, 8] and rows[0]["median_ms"] == pytest.approx(4.71)
    bad = tmp_path / "nobatch.csv"
    bad.write_text((DATA / "perf_analyzer_resnet50_b1.csv").read_text())
    r = subprocess.run([sys.executable, "-m", "capsim.cli", "calibrate", "--from-perf-analyzer", str(bad),
                        "--out", str(tmp_path / "x.json")], capture_output=True, text=True)
    assert r.returncode == 2 and "no batch size" in r.stderr and "Traceback" not in r.stderr


def test_profile_compare_prints_ratios(tmp_path):
    a = _profile(tmp_path, {1: [10] * 5, 2: [12] * 5})
    b = tmp_path / "b.json"
    data = json.loads(a.read_text())
    for row in data["batches"]:
        row["median_ms"] /= 2
    b.write_text(json.dumps(data))
    r = subprocess.run([sys.executable, "-m", "capsim.cli", "profile", "compare", str(a), str(b), "--format", "json"],
                       capture_output=True, text=True)
    rows = json.loads(r.stdout)["batches"]
    assert [row["ratio_b_over_a"] for row in rows] == [pytest.approx(0.5), pytest.approx(0.5)]
    with pytest.raises(ProfileError, match="not found"):
        load_profile(tmp_path / "missing.json")
