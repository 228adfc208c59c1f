"""Calibration with real runtimes on a tiny CNN (fast): profiles round-trip into simulations,
timings behave, INT8 fidelity is recorded, failing large batches are caught."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from capsim.calibrate.run import calibrate
from capsim.config import parse_scenario
from capsim.profile import Profile, load_profile
from capsim.simulate import simulate

FAST = dict(max_seconds=1.0, target_ci_pct=5.0)


@pytest.fixture(scope="module")
def fp32_profile(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cal") / "tiny.json"
    r = subprocess.run([sys.executable, "-m", "capsim.cli", "calibrate", "--model", "tiny_cnn", "--backend",
                        "onnxruntime", "--batch-sizes", "1,4,16", "--max-seconds", "1.5", "--target-ci", "5",
                        "--instances", "1,2", "--out", str(out), "--quiet"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "images/s" in r.stdout and "wrote" in r.stdout  # the summary table
    return out


def test_profile_round_trips_and_is_sane(fp32_profile):
    prof = load_profile(fp32_profile)
    again = Profile(json.loads(prof.to_json()))
    assert again.curve_ms() == prof.curve_ms()
    m, h = prof.model, prof.hardware
    assert (m["name"], m["backend"], m["precision"], m["task"]) == ("tiny_cnn", "onnxruntime", "fp32", "classification")
    assert m["backend_version"] and h["cpu_model"] and h["threads_used"] >= 1 and prof.data["date"]
    curve = prof.curve_ms()
    assert list(curve) == [1, 4, 16]
    assert all(v > 0 for v in curve.values())
    assert curve[16] > curve[1]  # a compute-bound model: bigger batches take longer
    for b in prof.batches:
        lo, hi = b["ci_ms"]
        assert lo <= b["median_ms"] <= hi and b["median_ms"] <= b["p95_ms"] <= b["p99_ms"]
        assert b["reps"] >= 30 and len(b["samples_ms"]) == min(b["reps"], 2000) and isinstance(b["stable"], bool)
    assert prof.stage_ms("preprocess") > 0 and prof.stage_ms("postprocess") > 0
    cont = prof.contention()
    assert cont[1] == 1.0 and cont[2] > 0
    assert prof.data["contention"]["table"]["2"]["threads_per_instance"] == max(1, h["threads_used"] // 2)


def test_profile_feeds_a_simulation(fp32_profile):
    sc = parse_scenario({"arrivals": {"process": "poisson", "rate_rps": 50},
                         "service": {"profile": str(fp32_profile), "variability": {"distribution": "empirical"}},
                         "batching": {"max_batch_size": 16, "max_queue_delay_ms": 1},
                         "run": {"requests": 3000, "warmup_requests": 100, "replications": 2}})
    res = simulate(sc)
    assert res.stable and res.completed > 0
    assert res.breakdown_ms["preprocess"] == pytest.approx(load_profile(fp32_profile).stage_ms("preprocess"), rel=1e-3)


def test_int8_records_fidelity_against_fp32():
    data = calibrate(model="tiny_cnn", backend="onnxruntime", precision="int8", batch_sizes=(1, 4), prepost=False,
                     **FAST)
    fid = data["fidelity"]
    assert "FP32 output of the same weights" in fid["reference"]
    assert 0.0 <= fid["top1_agreement"] <= 1.0 and fid["cosine_similarity"] > 0.9 and fid["max_abs_diff"] >= 0
    assert data["model"]["precision"] == "int8"


def test_a_failing_large_batch_is_recorded_and_calibration_goes_on(tmp_path):
    import torch

    class Limited(torch.nn.Module):
        """A real model that runs out of memory above batch 4, as a GPU would."""

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3)

        def forward(self, x):
            if x.shape[0] > 4:
                raise RuntimeError("out of memory: tried to allocate a batch above 4")
            return self.conv(x).mean(dim=(2, 3))

    path = tmp_path / "limited.pt"
    torch.jit.script(Limited()).save(str(path))
    data = calibrate(model_file=str(path), backend="torch", batch_sizes=(1, 2, 4, 8, 16), input_shape=(3, 16, 16),
                     **FAST)
    assert [b["batch_size"] for b in data["batches"]] == [1, 2, 4]
    assert data["max_feasible_batch"] == 4
    assert data["failures"][0]["batch_size"] == 8 and "out of memory" in data["failures"][0]["error"]
    assert data["preprocess"]["median_ms"] > 0  # the rest of the calibration still ran


@pytest.mark.parametrize("argv,field", [
    (["--model", "resnet999"], "--model"),
    (["--model", "tiny_cnn", "--precision", "fp16"], "fp16"),
    (["--model", "tiny_cnn", "--batch-sizes", "1,x"], "--batch-sizes"),
    (["--model", "tiny_cnn", "--input-shape", "224x224"], "--input-shape"),
    (["--model-file", "missing.onnx"], "--model-file"),
])
def test_bad_calibrate_options_exit_2_with_one_line(tmp_path, argv, field):
    r = subprocess.run([sys.executable, "-m", "capsim.cli", "calibrate", *argv, "--out", str(tmp_path / "o.json"),
                        "--quiet"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and field in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_bring_your_own_onnx_file_through_the_cli(tmp_path):
    onnx_path = tmp_path / "models" / "tiny.onnx"
    r = subprocess.run([sys.executable, "-m", "capsim.cli", "models", "export", "tiny_cnn", "--format", "onnx",
                        "--out", str(onnx_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and onnx_path.exists(), r.stderr
    out = tmp_path / "own.json"
    r = subprocess.run([sys.executable, "-m", "capsim.cli", "calibrate", "--model-file", str(onnx_path),
                        "--input-shape", "3x32x32", "--batch-sizes", "1,2", "--max-seconds", "1", "--target-ci", "5",
                        "--no-prepost", "--out", str(out), "--quiet"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    prof = load_profile(out)
    assert prof.model["source"] == "file:tiny.onnx" and prof.model["input_shape"] == [3, 32, 32]
    assert sorted(prof.curve_ms()) == [1, 2] and prof.data["preprocess"] is None
