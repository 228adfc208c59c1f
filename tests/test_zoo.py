"""Built-in model zoo (capsim.calibrate.zoo) and model export/loading (capsim.calibrate.export)."""

from __future__ import annotations

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from capsim.calibrate import export, zoo  # noqa: E402

ALL = ["resnet18", "resnet50", "mobilenet_v3_small", "yolo_small", "unet_small", "tiny_cnn"]

# torchvision's published parameter counts (torchvision.models.*(weights=None)).
PUBLISHED_PARAMS = {"resnet18": 11_689_512, "resnet50": 25_557_032, "mobilenet_v3_small": 2_542_856}


@functools.cache
def built(name: str, seed: int = 0):
    """Each model is built once per test session (resnet50 takes a second or so)."""
    return zoo.build(name, seed=seed)


def _input(shape, batch, seed=1):
    return torch.randn((batch, *shape), generator=torch.Generator().manual_seed(seed))


def _close(actual, expected, rel=1e-4):
    """Equal within ``rel`` of the output's scale (element-wise relative error is meaningless near 0)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    scale = float(np.max(np.abs(expected)))
    assert scale > 0
    np.testing.assert_allclose(actual, expected, rtol=rel, atol=rel * scale)


# ----------------------------------------------------------------------------------- zoo


def test_names_and_specs():
    assert zoo.names() == ALL
    assert set(zoo.MODELS) == set(ALL)
    for name, spec in zoo.MODELS.items():
        assert spec.name == name
        assert spec.task in {"classification", "detection", "segmentation"}
        assert len(spec.input_shape) == 3 and all(isinstance(d, int) and d > 0 for d in spec.input_shape)
        assert spec.num_classes > 1 and spec.description
    assert zoo.MODELS["tiny_cnn"].input_shape == (3, 32, 32)
    with pytest.raises(AttributeError):
        zoo.MODELS["tiny_cnn"].num_classes = 3  # frozen


def test_unknown_name_lists_the_names():
    with pytest.raises(ValueError) as info:
        zoo.build("resnet1000")
    for name in ALL:
        assert name in str(info.value)


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_parameter_counts_match_torchvision(name):
    model = built(name)
    assert zoo.count_parameters(model) == PUBLISHED_PARAMS[name]
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMS[name]


def test_other_parameter_counts_are_plausible():
    assert 8_800_000 < zoo.count_parameters(built("yolo_small")) < 8_900_000  # YOLOv3-tiny: 8.85M
    assert 1_800_000 < zoo.count_parameters(built("unet_small")) < 2_100_000
    assert zoo.count_parameters(built("tiny_cnn")) < 100_000


@pytest.mark.parametrize("name", ALL)
def test_output_shape_at_batch_2(name):
    spec = zoo.MODELS[name]
    model = built(name)
    assert not model.training and not any(m.training for m in model.modules())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    with torch.inference_mode():
        out = model(_input(spec.input_shape, 2))
    assert torch.isfinite(out).all()
    c, h, w = spec.input_shape
    if spec.task == "classification":
        assert tuple(out.shape) == (2, spec.num_classes)
        assert not torch.allclose(out.sum(1), torch.ones(2))  # logits, not probabilities
    elif spec.task == "segmentation":
        assert tuple(out.shape) == (2, spec.num_classes, h, w)
    else:
        anchors = 3 * ((h // 16) * (w // 16) + (h // 32) * (w // 32))
        assert tuple(out.shape) == (2, anchors, 4 + 1 + spec.num_classes)
        boxes, scores = out[..., :4], out[..., 4:]
        assert (boxes[..., 2:] > 0).all()  # widths and heights
        assert ((scores >= 0) & (scores <= 1)).all()  # objectness and class scores are probabilities
    # Activations stay O(1) (BatchNorm statistics are set), as in a trained model.
    assert 1e-3 < float(out.abs().mean()) < 1e3


def test_same_seed_same_weights_other_seed_other_weights():
    a = zoo.build("tiny_cnn", seed=7).state_dict()
    b = zoo.build("tiny_cnn", seed=7).state_dict()
    c = zoo.build("tiny_cnn", seed=8).state_dict()
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    weights = [k for k in a if k.endswith("weight") and a[k].dim() > 1]
    assert weights and all(not torch.equal(a[k], c[k]) for k in weights)

    # BatchNorm statistics come from a forward pass: identical whatever the thread count.
    threads = torch.get_num_threads()
    m0 = built("mobilenet_v3_small").state_dict()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)
        m1 = zoo.build("mobilenet_v3_small").state_dict()
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(m0[k], m1[k]) for k in m0)
    assert any(k.endswith("running_var") and not torch.all(m0[k] == 1) for k in m0)


def test_build_leaves_global_rng_untouched():
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    expected = torch.rand(5)
    torch.set_rng_state(state)
    zoo.build("tiny_cnn", seed=3)
    zoo.build("unet_small", seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(torch.rand(5), expected)


# ---------------------------------------------------------------------------- ONNX export


@pytest.mark.parametrize("name", ["tiny_cnn", "mobilenet_v3_small"])
def test_onnx_export_runs_in_onnxruntime_at_any_batch(name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    spec, model = zoo.MODELS[name], built(name)
    target = tmp_path / "deep" / "dir" / f"{name}.onnx"
    path = export.export_onnx(model, target, spec.input_shape)
    assert path == target and path.is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == [f"{name}.onnx"]  # weights inside, no .data file
    proto = onnx.load(str(path))
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {17}

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert inp.name == "input" and out.name == "output"
    assert isinstance(inp.shape[0], str) and list(inp.shape[1:]) == list(spec.input_shape)  # dynamic batch
    for batch in (1, 3):
        x = _input(spec.input_shape, batch, seed=batch)
        with torch.inference_mode():
            ref = model(x).numpy()
        (got,) = sess.run(None, {"input": x.numpy()})
        _close(got, ref)


def test_onnx_export_accepts_batched_shape_and_keeps_training_flag(tmp_path):
    model = zoo.build("tiny_cnn")
    model.train()
    path = export.export_onnx(model, tmp_path / "t.onnx", (4, 3, 32, 32))
    assert path.is_file()
    assert model.training  # exported in eval mode, mode restored
    with pytest.raises(ValueError):
        export.export_onnx(model, tmp_path / "bad.onnx", (32, 32))


# ---------------------------------------------------------------------- TorchScript export


@pytest.mark.parametrize("name, batch", [("tiny_cnn", 3), ("yolo_small", 1)])
def test_torchscript_round_trip(name, batch, tmp_path):
    spec, model = zoo.MODELS[name], built(name)
    path = export.export_torchscript(model, tmp_path / "ts" / f"{name}.pt", spec.input_shape)
    assert path.is_file()
    kind, loaded = export.load_model_file(path)
    assert kind == "torchscript" and isinstance(loaded, torch.jit.ScriptModule)
    x = _input(spec.input_shape, batch)  # traced at batch 2: other batch sizes must work too
    with torch.inference_mode():
        _close(loaded(x).numpy(), model(x).numpy(), rel=1e-5)


# --------------------------------------------------------------------------- load_model_file


def test_load_model_file_onnx_returns_the_path(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"not parsed here")
    assert export.load_model_file(path) == ("onnx", path)
    assert export.load_model_file(str(path)) == ("onnx", path)


@pytest.mark.parametrize("filename, message", [
    ("missing.onnx", "not found"),
    ("missing.pt", "not found"),
    ("model.txt", "unknown model file type"),
    ("model", "unknown model file type"),
    ("weights.h5", ".onnx, .pt, .pth, .ts"),
])
def test_load_model_file_errors(filename, message, tmp_path):
    path = tmp_path / filename
    if not filename.startswith("missing"):
        path.write_bytes(b"x")
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        export.load_model_file(path)


def test_load_model_file_rejects_directories_and_non_torchscript(tmp_path):
    (tmp_path / "dir.onnx").mkdir()
    with pytest.raises(ValueError, match="not a file"):
        export.load_model_file(tmp_path / "dir.onnx")
    state_dict = tmp_path / "state.pth"
    torch.save(built("tiny_cnn").state_dict(), state_dict)
    with pytest.raises(ValueError, match="not a TorchScript archive"):
        export.load_model_file(state_dict)
    garbage = tmp_path / "garbage.ts"
    garbage.write_bytes(b"\x00\x01 not a zip")
    with pytest.raises(export.ModelFileError):
        export.load_model_file(garbage)
