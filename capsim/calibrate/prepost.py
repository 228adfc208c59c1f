"""Pre- and post-processing cost around the model, measured for real.

A request to a CV inference service pays CPU time before the model (JPEG decode,
resize, normalise) and after it (softmax / box decoding + NMS / mask argmax).
This module implements those stages the way a typical service does, with
Pillow and numpy only, and times them on locally generated JPEGs so the decode
cost is realistic without downloading any data.

Nothing here imports torch or onnxruntime; Pillow is imported lazily (it comes
with the ``calibrate`` extra's dependencies).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "make_jpegs",
    "measure_prepost",
    "nms",
    "postprocess",
    "preprocess",
    "time_stage",
]

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

TASKS = ("classification", "detection", "segmentation")


def _pil():
    try:
        from PIL import Image, ImageDraw
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "capsim.calibrate.prepost needs Pillow to encode and decode JPEGs: "
            "pip install 'capsim[calibrate]' pillow"
        ) from exc
    return Image, ImageDraw


# --------------------------------------------------------------------------- images


def make_jpegs(n: int, size: tuple[int, int] = (640, 480), quality: int = 90, seed: int = 0) -> list[bytes]:
    """Return ``n`` real JPEG files (bytes) of ``size`` = (width, height).

    Each image is a colour gradient with random filled shapes and Gaussian
    noise, so it has edges and texture like a photo (a flat image would decode
    unrealistically fast). Randomness comes from ``np.random.default_rng(seed)``
    only; the same seed gives the same bytes.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    w, h = int(size[0]), int(size[1])
    if w < 1 or h < 1:
        raise ValueError(f"size must be positive (width, height), got {size}")
    Image, ImageDraw = _pil()
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    xx /= max(w - 1, 1)
    yy /= max(h - 1, 1)
    out: list[bytes] = []
    for _ in range(n):
        c0 = rng.uniform(0, 255, 3).astype(np.float32)
        cx = rng.uniform(-160, 160, 3).astype(np.float32)
        cy = rng.uniform(-160, 160, 3).astype(np.float32)
        base = c0 + xx[..., None] * cx + yy[..., None] * cy
        img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(4, 12))):
            x0, x1 = np.sort(rng.integers(0, w, 2))
            y0, y1 = np.sort(rng.integers(0, h, 2))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            kind = int(rng.integers(0, 3))
            if kind == 0:
                draw.rectangle([int(x0), int(y0), int(x1), int(y1)], fill=colour)
            elif kind == 1:
                draw.ellipse([int(x0), int(y0), int(x1), int(y1)], fill=colour)
            else:
                draw.line([int(x0), int(y0), int(x1), int(y1)], fill=colour, width=int(rng.integers(1, 8)))
        arr = np.asarray(img, dtype=np.float32)
        arr = arr + rng.normal(0.0, 8.0, arr.shape).astype(np.float32)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(quality))
        out.append(buf.getvalue())
    return out


def _chw(input_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 4:  # (B, C, H, W): the batch dimension does not matter per image
        shape = shape[1:]
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) or (B, C, H, W) with positive sizes, got {input_shape}")
    if shape[0] not in (1, 3):
        raise ValueError(f"input_shape channels must be 1 or 3, got {shape[0]}")
    return shape  # type: ignore[return-value]


def preprocess(jpeg: bytes, input_shape: Sequence[int] = (3, 224, 224)) -> np.ndarray:
    """Decode a JPEG, resize to the model's H x W (bilinear), return float32 CHW.

    Pixels are scaled to [0, 1] and normalised with the ImageNet mean/std
    (for a 1-channel model: luminance with the channel-averaged mean/std).
    ``input_shape`` is (C, H, W) or (B, C, H, W); the result is (C, H, W).
    """
    c, h, w = _chw(input_shape)
    Image, _ = _pil()
    img = Image.open(io.BytesIO(jpeg))
    img = img.convert("RGB" if c == 3 else "L")
    if img.size != (w, h):
        img = img.resize((w, h), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) * np.float32(1.0 / 255.0)
    if c == 3:
        arr = (arr - IMAGENET_MEAN) / IMAGENET_STD  # HWC
        return np.ascontiguousarray(arr.transpose(2, 0, 1))
    arr = (arr - np.float32(IMAGENET_MEAN.mean())) / np.float32(IMAGENET_STD.mean())
    return np.ascontiguousarray(arr[None, :, :])


# --------------------------------------------------------------------------- post-processing


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.45) -> np.ndarray:
    """Greedy non-maximum suppression (numpy only).

    ``boxes`` is (N, 4) as x1, y1, x2, y2; ``scores`` is (N,). Boxes are
    visited from the highest score down; a box is dropped when its IoU with an
    already kept box is greater than ``iou_threshold``. Returns the kept
    indices (int64) in descending score order.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if boxes.shape[0] != scores.shape[0]:
        raise ValueError(f"boxes has {boxes.shape[0]} rows but scores has {scores.shape[0]}")
    if boxes.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2 = boxes.T
    areas = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        if rest.size == 0:
            break
        iw = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        ih = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = iw * ih
        union = areas[i] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = x - np.max(x, axis=axis, keepdims=True)
    np.exp(z, out=z)
    z /= np.sum(z, axis=axis, keepdims=True)
    return z


def _classification(output: np.ndarray, top_k: int = 5) -> dict[str, np.ndarray]:
    logits = np.asarray(output, dtype=np.float32)
    if logits.ndim == 1:
        logits = logits[None, :]
    logits = logits.reshape(logits.shape[0], -1)
    probs = _softmax(logits.copy(), axis=1)
    k = min(int(top_k), probs.shape[1])
    part = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    part_p = np.take_along_axis(probs, part, axis=1)
    order = np.argsort(-part_p, axis=1, kind="stable")
    idx = np.take_along_axis(part, order, axis=1)
    return {"probs": probs, "indices": idx, "scores": np.take_along_axis(probs, idx, axis=1)}


def _detection(
    output: np.ndarray,
    score_threshold: float = 0.25,
    iou_threshold: float = 0.45,
    max_detections: int = 300,
) -> list[list[tuple[np.ndarray, float, int]]]:
    pred = np.asarray(output, dtype=np.float32)
    if pred.ndim == 2:
        pred = pred[None]
    if pred.ndim != 3 or pred.shape[2] < 6:
        raise ValueError(f"detection output must be [B, N, 4+1+C] with C >= 1, got shape {pred.shape}")
    results: list[list[tuple[np.ndarray, float, int]]] = []
    for rows in pred:
        obj = rows[:, 4]
        cand = obj > score_threshold  # cheap pre-filter: score = obj * cls <= obj
        rows = rows[cand]
        if rows.shape[0] == 0:
            results.append([])
            continue
        cls_scores = rows[:, 5:] * rows[:, 4:5]
        cls = np.argmax(cls_scores, axis=1)
        score = cls_scores[np.arange(rows.shape[0]), cls]
        ok = score > score_threshold
        rows, cls, score = rows[ok], cls[ok], score[ok]
        if rows.shape[0] == 0:
            results.append([])
            continue
        cx, cy, w, h = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        # class-aware NMS: shift each class into its own region so boxes of
        # different classes never overlap, then run one NMS
        offset = cls.astype(np.float32)[:, None] * (float(np.abs(boxes).max()) * 2 + 1)
        keep = nms(boxes + offset, score, iou_threshold)[: int(max_detections)]
        results.append([(boxes[i], float(score[i]), int(cls[i])) for i in keep])
    return results


def _segmentation(output: np.ndarray) -> np.ndarray:
    logits = np.asarray(output)
    if logits.ndim == 3:
        logits = logits[None]
    if logits.ndim != 4:
        raise ValueError(f"segmentation output must be [B, C, H, W], got shape {logits.shape}")
    return np.argmax(logits, axis=1).astype(np.uint8)


def postprocess(task: str, output: np.ndarray, **kw: Any) -> object:
    """Turn a raw model output batch into results.

    - ``"classification"``: ``output`` [B, C] logits -> dict with ``probs``
      (softmax, [B, C]), ``indices`` and ``scores`` (top-k per row, highest
      first, [B, k]); ``top_k`` (default 5).
    - ``"detection"``: ``output`` [B, N, 4+1+C] rows (cx, cy, w, h, objectness,
      class scores...) -> per image a list of ``(box_xyxy, score, class)``
      with score = objectness * class score above ``score_threshold`` (0.25),
      after class-aware NMS at ``iou_threshold`` (0.45), at most
      ``max_detections`` (300), highest score first.
    - ``"segmentation"``: ``output`` [B, C, H, W] -> uint8 [B, H, W] argmax mask.
    """
    if task == "classification":
        return _classification(output, **kw)
    if task == "detection":
        return _detection(output, **kw)
    if task == "segmentation":
        if kw:
            raise TypeError(f"segmentation postprocess takes no options, got {sorted(kw)}")
        return _segmentation(output)
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


# --------------------------------------------------------------------------- timing


def _stats_ms(samples_ns: Sequence[int]) -> dict[str, Any]:
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {
        "median_ms": float(p50),
        "mean_ms": float(ms.mean()),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "samples_ms": [float(v) for v in ms],
        "reps": int(ms.size),
    }


def time_stage(
    fn: Callable[[Any], Any],
    inputs: Sequence[Any],
    min_reps: int = 30,
    max_seconds: float = 5.0,
    warmup: int = 3,
    max_reps: int = 2000,
) -> dict[str, Any]:
    """Time ``fn(inp)`` per call with ``time.perf_counter_ns``.

    ``inputs`` is a sequence cycled through in order (a non-sequence is used
    as the single input). After ``warmup`` untimed calls, calls are timed
    until ``max_seconds`` of timed calls or ``max_reps`` calls, but never
    fewer than ``min_reps``. Returns ``median_ms``, ``mean_ms``, ``p95_ms``,
    ``p99_ms``, ``min_ms``, ``max_ms``, ``samples_ms`` (every call, in order)
    and ``reps``.
    """
    if not isinstance(inputs, (list, tuple)):
        inputs = [inputs]
    if len(inputs) == 0:
        raise ValueError("inputs must hold at least one input")
    min_reps = max(1, int(min_reps))
    max_reps = max(min_reps, int(max_reps))
    n = len(inputs)
    for i in range(max(0, int(warmup))):
        fn(inputs[i % n])
    budget_ns = int(max_seconds * 1e9)
    clock = time.perf_counter_ns
    samples: list[int] = []
    start = clock()
    i = 0
    while True:
        inp = inputs[i % n]
        t0 = clock()
        fn(inp)
        samples.append(clock() - t0)
        i += 1
        if i >= min_reps and (i >= max_reps or clock() - start >= budget_ns):
            break
    return _stats_ms(samples)


def measure_prepost(
    task: str,
    input_shape: Sequence[int],
    example_output: np.ndarray,
    max_seconds: float = 5.0,
    seed: int = 0,
    jpeg_size: tuple[int, int] = (640, 480),
    n_images: int = 16,
) -> dict[str, Any]:
    """Measure per-image pre- and post-processing time for a model.

    ``preprocess``: decode + bilinear resize to the model's H x W + normalise,
    timed per image over ``n_images`` synthetic JPEGs of ``jpeg_size``.
    ``postprocess``: ``postprocess(task, example_output[:1])`` timed per call
    (one image). Each stage gets half of ``max_seconds``.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    shape = _chw(input_shape)
    out = np.asarray(example_output)
    if out.ndim == 0 or out.shape[0] < 1:
        raise ValueError(f"example_output must have a batch dimension with >= 1 row, got shape {out.shape}")
    one = np.ascontiguousarray(out[:1])
    jpegs = make_jpegs(n_images, size=jpeg_size, seed=seed)
    half = max_seconds / 2.0
    pre = time_stage(lambda b: preprocess(b, shape), jpegs, max_seconds=half)
    post = time_stage(lambda o: postprocess(task, o), [one], max_seconds=half)
    return {
        "task": task,
        "input_shape": list(shape),
        "preprocess": pre,
        "postprocess": post,
        "jpeg_size": [int(jpeg_size[0]), int(jpeg_size[1])],
        "jpeg_bytes_mean": float(np.mean([len(b) for b in jpegs])),
        "n_images": int(n_images),
    }
