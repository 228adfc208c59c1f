"""Pre/post-processing stages, their timing, and the multi-instance contention measurement."""

import io
import os
import warnings

import numpy as np
import pytest

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from capsim.calibrate.contention import measure_contention  # noqa: E402
from capsim.calibrate.prepost import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    make_jpegs,
    measure_prepost,
    nms,
    postprocess,
    preprocess,
    time_stage,
)


# --------------------------------------------------------------------------- JPEGs / preprocess


def test_make_jpegs_are_valid_and_seeded():
    a = make_jpegs(3, size=(160, 120), seed=0)
    assert len(a) == 3
    for b in a:
        assert isinstance(b, bytes) and b[:2] == b"\xff\xd8"
        img = Image.open(io.BytesIO(b))
        assert img.format == "JPEG"
        assert img.size == (160, 120)
        img.load()
    assert len(set(a)) == 3  # images within one call differ
    assert make_jpegs(3, size=(160, 120), seed=0) == a  # reproducible
    assert make_jpegs(1, size=(160, 120), seed=1)[0] != a[0]  # seed matters
    # realistic content: textured, so far larger than a flat image would compress to
    assert len(make_jpegs(1, size=(640, 480))[0]) > 20_000


def _gray_jpeg(w=300, h=200, level=128):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (level, level, level)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_preprocess_shape_dtype_and_normalisation():
    x = preprocess(_gray_jpeg(), (3, 224, 224))
    assert x.shape == (3, 224, 224) and x.dtype == np.float32 and x.flags["C_CONTIGUOUS"]
    expected = (128 / 255 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(x.mean(axis=(1, 2)), expected, atol=0.03)
    assert x.std(axis=(1, 2)).max() < 0.03  # uniform in, uniform out
    # (B, C, H, W) input shapes and non-square sizes work; the batch axis is dropped
    y = preprocess(make_jpegs(1, size=(64, 48))[0], (1, 3, 96, 128))
    assert y.shape == (3, 96, 128)
    g = preprocess(_gray_jpeg(), (1, 32, 32))
    assert g.shape == (1, 32, 32)
    with pytest.raises(ValueError):
        preprocess(_gray_jpeg(), (5, 32, 32))


# --------------------------------------------------------------------------- NMS / postprocess


def test_nms_keeps_best_of_overlapping_pair():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], dtype=np.float32)
    scores = np.array([0.8, 0.9, 0.7])
    keep = nms(boxes, scores, 0.45)
    assert keep.tolist() == [1, 2]  # highest first, the 0.8 duplicate dropped
    # IoU of the pair is 81/119 = 0.68: a threshold above it keeps both
    assert sorted(nms(boxes, scores, 0.7).tolist()) == [0, 1, 2]
    assert nms(boxes, scores, 0.7).tolist() == [1, 0, 2]
    assert nms(np.zeros((0, 4)), np.zeros(0)).tolist() == []
    # a threshold exactly at the IoU keeps (suppress only when IoU > threshold)
    half = np.array([[0, 0, 2, 1], [0, 0, 1, 1]], dtype=np.float64)  # IoU = 0.5
    assert nms(half, np.array([0.9, 0.8]), 0.5).tolist() == [0, 1]
    assert nms(half, np.array([0.9, 0.8]), 0.49).tolist() == [0]


def test_postprocess_classification():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 20)).astype(np.float32) * 5
    r = postprocess("classification", logits)
    np.testing.assert_allclose(r["probs"].sum(axis=1), 1.0, rtol=1e-5)
    assert r["indices"].shape == (4, 5) and r["scores"].shape == (4, 5)
    assert np.all(np.diff(r["scores"], axis=1) <= 0)  # sorted, highest first
    np.testing.assert_array_equal(r["indices"][:, 0], logits.argmax(axis=1))
    np.testing.assert_array_equal(r["indices"], np.argsort(-logits, axis=1)[:, :5])
    # huge logits do not overflow
    big = postprocess("classification", np.array([[1000.0, 0.0, -1000.0]]))
    assert np.isfinite(big["probs"]).all() and big["indices"].tolist() == [[0, 1, 2]]


def test_postprocess_detection_drops_low_scores_and_duplicates():
    C = 3
    rows = np.zeros((2, 6, 4 + 1 + C), dtype=np.float32)

    def row(cx, cy, w, h, obj, cls, p=0.95):
        r = np.zeros(4 + 1 + C, dtype=np.float32)
        r[:5] = cx, cy, w, h, obj
        r[5:] = (1 - p) / (C - 1)
        r[5 + cls] = p
        return r

    rows[0, 0] = row(50, 50, 20, 20, 0.9, 1)  # kept
    rows[0, 1] = row(51, 51, 20, 20, 0.8, 1)  # duplicate of row 0, same class: dropped
    rows[0, 2] = row(51, 51, 20, 20, 0.7, 2)  # same place, other class: kept (class-aware)
    rows[0, 3] = row(200, 200, 30, 10, 0.2, 0)  # objectness below threshold: dropped
    rows[0, 4] = row(300, 100, 10, 10, 0.9, 0)
    rows[0, 4, 5:] = 0.2  # confident object, no confident class: 0.9 * 0.2 = 0.18 below threshold
    rows[1, 0] = row(10, 10, 4, 4, 0.6, 0)  # second image: one box
    out = postprocess("detection", rows)
    assert len(out) == 2
    first = out[0]
    assert [c for _, _, c in first] == [1, 2]
    scores = [s for _, s, _ in first]
    assert scores == sorted(scores, reverse=True)
    np.testing.assert_allclose(scores[0], 0.9 * 0.95, rtol=1e-5)
    np.testing.assert_allclose(first[0][0], [40, 40, 60, 60])  # cx,cy,w,h -> x1,y1,x2,y2
    assert len(out[1]) == 1 and out[1][0][2] == 0
    # stricter threshold drops more; a 2-D array is one image
    assert len(postprocess("detection", rows, score_threshold=0.7)[0]) == 1
    assert len(postprocess("detection", rows[0])) == 1


def test_postprocess_segmentation_and_unknown_task():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 5, 8, 6)).astype(np.float32)
    mask = postprocess("segmentation", logits)
    assert mask.dtype == np.uint8 and mask.shape == (2, 8, 6)
    np.testing.assert_array_equal(mask, logits.argmax(axis=1))
    with pytest.raises(ValueError):
        postprocess("captioning", logits)


# --------------------------------------------------------------------------- timing


def test_time_stage_stats_are_positive_and_ordered():
    data = [np.arange(1000.0) * i for i in range(1, 4)]
    r = time_stage(lambda a: np.sort(a)[::-1].cumsum(), data, min_reps=30, max_seconds=0.05)
    assert r["reps"] >= 30 and len(r["samples_ms"]) == r["reps"]
    assert 0 < r["median_ms"] <= r["p95_ms"] <= r["p99_ms"]
    assert r["mean_ms"] > 0
    assert min(r["samples_ms"]) > 0
    # min_reps wins over a tiny time budget
    assert time_stage(lambda a: None, [1], min_reps=50, max_seconds=0.0)["reps"] == 50


def test_measure_prepost_classifier():
    r = measure_prepost("classification", (3, 224, 224), np.zeros((4, 1000), np.float32), max_seconds=0.6)
    assert r["jpeg_size"] == [640, 480] and r["jpeg_bytes_mean"] > 10_000
    for stage in ("preprocess", "postprocess"):
        s = r[stage]
        assert s["reps"] >= 30 and 0 < s["median_ms"] <= s["p95_ms"] <= s["p99_ms"]
    # decoding a 640x480 JPEG costs more than a softmax over 1000 classes
    assert r["preprocess"]["median_ms"] > r["postprocess"]["median_ms"]


# --------------------------------------------------------------------------- contention


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 10),
    ).eval()
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(2, 3, 64, 64),), str(path), input_names=["x"], output_names=["y"], dynamo=False)
    return path


class OrtRunner:
    def __init__(self, path, threads):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.threads = threads
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def run(self, x):
        return self.session.run(None, {"x": x})[0]


def test_measure_contention_with_real_onnxruntime(tiny_onnx):
    made = []

    def make_runner(threads):
        r = OrtRunner(tiny_onnx, threads)
        made.append(threads)
        return r

    x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    assert OrtRunner(tiny_onnx, 1).run(x).shape == (2, 10)
    calls = []
    r = measure_contention(make_runner, x, instances=(1, 2), seconds_per_k=0.8,
                           progress=lambda k, total: calls.append((k, total)))
    total = os.cpu_count()  # the default thread budget
    half = max(1, total // 2)
    assert r["batch_size"] == 2 and r["total_threads"] == total
    assert r["method"] == "threads, intra-op threads split evenly"
    assert set(r["table"]) == {1, 2}
    assert made == [total, half, half]  # thread budget split: k=2 -> total // 2 each
    t1, t2 = r["table"][1], r["table"][2]
    assert t1["factor"] == 1.0 and t1["threads_per_instance"] == total
    assert t2["threads_per_instance"] == half and t2["factor"] > 0
    assert len(t2["calls_per_instance"]) == 2 and min(t2["calls_per_instance"]) > 0
    for row in (t1, t2):
        assert row["median_ms"] > 0 and row["throughput_batches_per_s"] > 0
    assert calls == [(1, 2), (2, 2)]


def test_measure_contention_errors_propagate():
    class Boom:
        def run(self, x):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        measure_contention(lambda t: Boom(), np.zeros((1, 3)), instances=(1,), seconds_per_k=0.1, warmup_calls=0)
    with pytest.raises(ValueError):
        measure_contention(lambda t: Boom(), np.zeros((1, 3)), instances=(0,))
