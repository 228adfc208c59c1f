"""Model runners (ONNX Runtime / torch), INT8 QDQ quantization and the fidelity metrics.

A tiny seeded CNN keeps the whole file well under a minute on a CPU. CUDA paths are
only checked for their option errors (no GPU is assumed).
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest

from capsim.calibrate.fidelity import compare

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from capsim.calibrate import backends  # noqa: E402
from capsim.calibrate.backends import make_runner  # noqa: E402
from capsim.calibrate.quantize import (  # noqa: E402
    MISSING_EXTRA,
    convert_fp16,
    default_calibration_batches,
    onnx_size_bytes,
    quantize_static_qdq,
)

SHAPE = (3, 32, 32)
CLASSES = 10


def small_cnn(seed: int = 0) -> torch.nn.Module:
    """conv-bn-relu x3 + global pool + linear; weights from a private torch.Generator.

    Built on the meta device and then filled, so parameter init never draws from
    the global torch RNG.
    """

    def cbr(cin: int, cout: int, stride: int) -> list[torch.nn.Module]:
        return [
            torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False, device="meta"),
            torch.nn.BatchNorm2d(cout, device="meta"),
            torch.nn.ReLU(),
        ]

    model = torch.nn.Sequential(
        *cbr(3, 16, 1),
        *cbr(16, 32, 2),
        *cbr(32, 64, 2),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(64, CLASSES, device="meta"),
    ).to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.Conv2d):
                fan_in = mod.in_channels * mod.kernel_size[0] * mod.kernel_size[1]
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            elif isinstance(mod, torch.nn.BatchNorm2d):
                n = mod.num_features
                mod.weight.copy_(1.0 + 0.1 * torch.randn(n, generator=g))
                mod.bias.copy_(0.1 * torch.randn(n, generator=g))
                mod.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                mod.running_var.copy_(0.5 + torch.rand(n, generator=g))
                mod.num_batches_tracked.zero_()
            elif isinstance(mod, torch.nn.Linear):
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * (1.0 / mod.in_features) ** 0.5)
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
    return model.eval()


def export(model: torch.nn.Module, path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, *SHAPE),),
            str(path),
            input_names=["input"],
            output_names=["output"],
            opset_version=17,
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            dynamo=False,
        )


@pytest.fixture(scope="module")
def model():
    return small_cnn(0)


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(123).standard_normal((8, *SHAPE), dtype=np.float32)


@pytest.fixture(scope="module")
def fp32_onnx(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "small_cnn.onnx"
    export(model, path)
    return path


@pytest.fixture
def restore_torch_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_small_cnn_is_seeded_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a, b = small_cnn(0), small_cnn(0)
    assert torch.equal(torch.get_rng_state(), state)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)
    assert not torch.equal(a[0].weight, small_cnn(1)[0].weight)


def test_ort_fp32_matches_torch_fp32(model, fp32_onnx, x, restore_torch_threads):
    with make_runner(fp32_onnx, "onnxruntime", threads=2) as r_ort, make_runner(model, "torch", threads=2) as r_t:
        y_ort, y_t = r_ort.run(x), r_t.run(x)
        assert r_ort.provider == "CPUExecutionProvider" and r_t.provider == "torch-cpu"
        assert r_ort.backend_version == ort.__version__ and r_t.backend_version == torch.__version__
    assert y_ort.dtype == np.float32 and y_t.dtype == np.float32
    assert y_ort.shape == y_t.shape == (8, CLASSES)
    np.testing.assert_allclose(y_ort, y_t, rtol=1e-4, atol=1e-4)


def test_module_is_exported_into_workdir(model, x, tmp_path):
    with make_runner(model, "onnxruntime", input_shape=SHAPE, workdir=tmp_path, threads=1) as r:
        assert r.model_path is not None and r.model_path.parent == tmp_path and r.model_path.is_file()
        with torch.inference_mode():
            ref = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(r.run(x), ref, rtol=1e-4, atol=1e-4)
        assert r.run(x[:3]).shape == (3, CLASSES)  # dynamic batch
        first = r.model_path
    mtime = first.stat().st_mtime_ns
    with make_runner(model, "onnxruntime", input_shape=SHAPE, workdir=tmp_path, threads=1) as r:
        assert r.model_path == first and first.stat().st_mtime_ns == mtime  # same weights: export reused
    with make_runner(small_cnn(1), "onnxruntime", input_shape=SHAPE, workdir=tmp_path, threads=1) as r:
        assert r.model_path != first  # other weights: another file


def test_ort_int8_qdq_runs_is_smaller_and_faithful(fp32_onnx, x, tmp_path):
    calib = default_calibration_batches(SHAPE, n_batches=4, batch_size=4, seed=7)
    with make_runner(fp32_onnx, "onnxruntime", threads=2) as r32, make_runner(
        fp32_onnx, "onnxruntime", precision="int8", threads=2, workdir=tmp_path, calibration_batches=calib
    ) as r8:
        assert r8.precision == "int8" and r8.provider == "CPUExecutionProvider"
        q = onnx.load(str(r8.model_path))
        ops = {n.op_type for n in q.graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
        assert onnx_size_bytes(r8.model_path) < onnx_size_bytes(fp32_onnx)
        y32, y8 = r32.run(x), r8.run(x)
    assert y8.dtype == np.float32 and y8.shape == y32.shape
    fid = compare(y32, y8)
    assert set(fid) == {"top1_agreement", "max_abs_diff", "mean_abs_diff", "cosine_similarity", "samples"}
    assert fid["samples"] == 8
    assert fid["cosine_similarity"] > 0.9
    assert 0.0 <= fid["top1_agreement"] <= 1.0
    assert 0.0 < fid["max_abs_diff"] < 10.0 and fid["mean_abs_diff"] <= fid["max_abs_diff"]


def test_int8_default_calibration_and_module_source(model, x, tmp_path):
    """No calibration_batches: 8 seeded random batches from input_shape; deterministic."""
    state = np.random.get_state()
    a = default_calibration_batches(SHAPE)
    assert len(a) == 8 and all(b.dtype == np.float32 and b.shape[1:] == SHAPE for b in a)
    assert all(np.array_equal(p, q) for p, q in zip(a, default_calibration_batches(SHAPE), strict=True))
    assert np.random.get_state()[1].tolist() == state[1].tolist()
    with make_runner(model, "onnxruntime", precision="int8", input_shape=SHAPE, workdir=tmp_path, threads=1) as r:
        assert r.run(x).shape == (8, CLASSES)


def test_quantize_static_qdq_directly(fp32_onnx, tmp_path):
    out = quantize_static_qdq(fp32_onnx, tmp_path / "q.onnx", default_calibration_batches(SHAPE, 2, 2))
    assert out == tmp_path / "q.onnx" and out.is_file()
    with pytest.raises(ValueError, match="calibration_batches"):
        quantize_static_qdq(fp32_onnx, tmp_path / "q2.onnx", [])


def test_threads_are_set_and_recorded(fp32_onnx, model, restore_torch_threads):
    with make_runner(fp32_onnx, "onnxruntime", threads=1) as r:
        assert r.threads == 1 and r.info()["threads"] == 1
    with make_runner(model, "torch", threads=1) as r:
        assert r.threads == 1 == torch.get_num_threads()  # process-global, recorded as in force
    import os

    with make_runner(fp32_onnx, "onnxruntime") as r:
        assert r.threads == (os.cpu_count() or 1)
    with pytest.raises(ValueError, match="threads"):
        make_runner(fp32_onnx, "onnxruntime", threads=0)


def test_time_call_returns_positive_seconds(fp32_onnx, model, x, restore_torch_threads):
    for r in (make_runner(fp32_onnx, "onnxruntime", threads=1), make_runner(model, "torch", threads=1)):
        with r:
            prepared = r.prepare(x)
            times = [r.time_call(prepared) for _ in range(3)]
            assert all(0.0 < t < 5.0 for t in times)
            assert 0.0 < r.time_call(x) < 5.0  # a raw array is prepared outside the timing


def test_failed_forward_is_a_runtime_error(fp32_onnx, tmp_path, restore_torch_threads):
    """Backend failures (OOM at a large batch, bad input) surface as RuntimeError for both backends."""
    bad = np.zeros((1, 3, 16, 16), dtype=np.float32)  # the graph wants 32x32
    with make_runner(fp32_onnx, "onnxruntime", threads=1) as r:
        with pytest.raises(RuntimeError, match="onnxruntime"):
            r.run(bad)
        with pytest.raises(RuntimeError):
            r.time_call(r.prepare(bad))

    class Limited(torch.nn.Module):
        def forward(self, x):
            if x.shape[0] > 2:
                raise RuntimeError("out of memory above batch 2")
            return x.mean(dim=(2, 3))

    path = tmp_path / "limited.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(Limited()).save(str(path))
    with make_runner(path, "torch", threads=1) as r:
        assert r.run(np.ones((2, 3, 4, 4), np.float32)).shape == (2, 3)
        with pytest.raises(RuntimeError, match="out of memory"):
            r.time_call(np.ones((4, 3, 4, 4), np.float32))


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_precision_device_errors_name_the_option(backend, fp32_onnx, model):
    src = fp32_onnx if backend == "onnxruntime" else model
    with pytest.raises(ValueError, match=r"fp16.*--device cuda"):
        make_runner(src, backend, device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="int8"):
        make_runner(src, backend, device="cuda", precision="int8")
    with pytest.raises(ValueError, match="backend"):
        make_runner(src, "tensorrt")
    with pytest.raises(ValueError, match="device"):
        make_runner(src, backend, device="tpu")
    with pytest.raises(ValueError, match="precision"):
        make_runner(src, backend, precision="bf16")


def test_errors_are_capsim_errors(fp32_onnx):
    from capsim.errors import CapsimError

    with pytest.raises(CapsimError):
        make_runner(fp32_onnx, "onnxruntime", precision="fp16")


def test_torchscript_with_torch_backend(model, fp32_onnx, x, tmp_path, restore_torch_threads):
    path = tmp_path / "small_cnn.pt"
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated but still supported
        traced = torch.jit.trace(model, torch.zeros(1, *SHAPE))
        torch.jit.save(traced, str(path))
        ref = model(torch.from_numpy(x)).numpy()
    with make_runner(path, "torch", threads=1) as r:
        assert r.backend == "torch" and r.model_path == path
        np.testing.assert_allclose(r.run(x), ref, rtol=1e-5, atol=1e-5)
        assert r.time_call(r.prepare(x)) > 0
    with pytest.raises(ValueError, match="onnxruntime"):
        make_runner(fp32_onnx, "torch")  # an ONNX file on the torch backend
    with pytest.raises(ValueError, match="TorchScript"):
        make_runner(path, "onnxruntime")
    with pytest.raises(ValueError, match="int8.*onnxruntime"):
        make_runner(path, "torch", precision="int8", input_shape=SHAPE)  # FX cannot trace TorchScript


def test_torch_int8_where_it_works(model, x, restore_torch_threads):
    calib = default_calibration_batches(SHAPE, n_batches=2, batch_size=4)
    with make_runner(model, "torch", threads=1) as r32, make_runner(
        model, "torch", precision="int8", threads=1, calibration_batches=calib
    ) as r8:
        fid = compare(r32.run(x), r8.run(x))
    assert fid["cosine_similarity"] > 0.9
    assert model[0].weight.dtype == torch.float32  # caller's module untouched


def test_fp16_conversion_is_valid_onnx(fp32_onnx, tmp_path):
    out = convert_fp16(fp32_onnx, tmp_path / "m16.onnx")
    m = onnx.load(str(out))
    onnx.checker.check_model(m)
    f16 = onnx.TensorProto.FLOAT16
    assert m.graph.input[0].type.tensor_type.elem_type == f16
    assert m.graph.output[0].type.tensor_type.elem_type == f16
    assert all(i.data_type == f16 for i in m.graph.initializer if i.data_type in (onnx.TensorProto.FLOAT, f16))


def test_missing_extra_message(fp32_onnx, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError) as info:
        make_runner(fp32_onnx, "onnxruntime")
    assert str(info.value) == MISSING_EXTRA == "the calibrate extra is missing: pip install 'capsim[calibrate]'"
    assert backends.MISSING_EXTRA == MISSING_EXTRA


# --------------------------------------------------------------------------- fidelity


def test_compare_identical():
    y = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    fid = compare(y, y.copy())
    assert fid == {
        "top1_agreement": 1.0,
        "max_abs_diff": 0.0,
        "mean_abs_diff": 0.0,
        "cosine_similarity": pytest.approx(1.0),
        "samples": 5,
    }


def test_compare_permuted_candidate():
    y = np.random.default_rng(1).standard_normal((16, 10)).astype(np.float32)
    perm = y[:, ::-1]  # classes permuted
    fid = compare(y, perm)
    assert fid["top1_agreement"] < 1.0
    assert fid["cosine_similarity"] < 1.0 and fid["max_abs_diff"] > 0
    rows = compare(y, y[::-1])  # samples permuted
    assert rows["top1_agreement"] < 1.0


def test_compare_segmentation_and_detection_axes():
    rng = np.random.default_rng(2)
    seg = rng.standard_normal((2, 4, 3, 3))
    cand = seg.copy()
    other = (np.argmax(seg[0, :, 1, 2]) + 1) % 4
    cand[0, other, 1, 2] = 100.0  # exactly one of the 2*3*3 pixels changes class
    assert compare(seg, cand)["top1_agreement"] == pytest.approx(1 - 1 / 18)
    det = rng.standard_normal((2, 5, 6))
    cand = det.copy()
    other = (np.argmax(det[1, 2]) + 1) % 6
    cand[1, 2, other] = 100.0  # exactly one of the 2*5 boxes changes class
    assert compare(det, cand)["top1_agreement"] == pytest.approx(1 - 1 / 10)
    with pytest.raises(ValueError, match="shape"):
        compare(det, det[:1])


def test_compare_zero_vectors():
    z = np.zeros((2, 3))
    assert compare(z, z)["cosine_similarity"] == 1.0
    assert compare(z, np.ones((2, 3)))["cosine_similarity"] == 0.0
