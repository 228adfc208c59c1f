"""Reduced-precision model variants for calibration: INT8 (static, QDQ) and FP16.

* :func:`quantize_static_qdq` - ONNX Runtime *static* INT8 quantization in QDQ
  format (per-channel weights), calibrated with batches the caller supplies.
* :func:`convert_fp16` - an FP16 copy of an ONNX model (for CUDA).
* :func:`quantize_torch_int8` - PyTorch FX static INT8 quantization (CPU),
  "where it works"; otherwise a clear error pointing at ONNX Runtime.
* :func:`default_calibration_batches` - seeded random calibration data from a
  private ``numpy.random.Generator`` (global RNG state is never touched).

Calibration data here is random: with the zoo's random weights there is no
dataset to calibrate on, and fidelity is judged against the FP32 output of the
same weights on the same inputs (see :mod:`capsim.calibrate.fidelity`).

torch / onnx / onnxruntime are imported lazily; when absent the error says
which extra to install.
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from capsim.calibrate import EXTRA_HINT, MissingExtra

MISSING_EXTRA = EXTRA_HINT  # "the calibrate extra is missing: pip install 'capsim[calibrate]'"


class MissingCalibrateExtra(MissingExtra, ImportError):
    """torch / onnx / onnxruntime is not installed (an ImportError and a CapsimError)."""


__all__ = [
    "MISSING_EXTRA",
    "MissingCalibrateExtra",
    "convert_fp16",
    "default_calibration_batches",
    "onnx_size_bytes",
    "quantize_static_qdq",
    "quantize_torch_int8",
]


def _require(module: str) -> Any:
    """Import ``module`` or raise ImportError with the one-line install hint."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingCalibrateExtra(MISSING_EXTRA) from exc


def default_calibration_batches(
    input_shape: Sequence[int],
    n_batches: int = 8,
    batch_size: int | None = None,
    seed: int = 0,
) -> list[np.ndarray]:
    """``n_batches`` float32 batches of standard-normal "images" from a seeded Generator.

    ``input_shape`` is either per-sample ``(C, H, W)`` or a full ``(N, C, H, W)``;
    with the latter its N is the batch size unless ``batch_size`` is given.
    """
    shape = tuple(int(d) for d in input_shape)
    if len(shape) == 4:
        per_sample = shape[1:]
        bs = batch_size if batch_size is not None else max(1, shape[0])
    else:
        per_sample = shape
        bs = batch_size if batch_size is not None else 4
    if any(d <= 0 for d in per_sample):
        raise ValueError(f"input_shape must be positive, got {tuple(input_shape)}")
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((bs, *per_sample), dtype=np.float32) for _ in range(n_batches)]


def _check_batches(calibration_batches: Iterable[np.ndarray] | None) -> list[np.ndarray]:
    if calibration_batches is None:
        raise ValueError("calibration_batches: at least one float32 batch is required")
    batches = [np.ascontiguousarray(b, dtype=np.float32) for b in calibration_batches]
    if not batches:
        raise ValueError("calibration_batches: at least one float32 batch is required")
    return batches


def onnx_size_bytes(path: str | os.PathLike) -> int:
    """Bytes on disk of an ONNX model: the file plus the external-data files it references."""
    onnx = _require("onnx")
    path = Path(path)
    total = path.stat().st_size
    model = onnx.load(str(path), load_external_data=False)
    seen: set[str] = set()
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location" and entry.value not in seen:
                seen.add(entry.value)
                p = path.parent / entry.value
                if p.exists():
                    total += p.stat().st_size
    return total


def quantize_static_qdq(
    fp32_onnx_path: str | os.PathLike,
    out_path: str | os.PathLike,
    calibration_batches: Iterable[np.ndarray],
    *,
    per_channel: bool = True,
    preprocess: bool = True,
    activations: str = "uint8",
) -> Path:
    """Static INT8 quantization of an FP32 ONNX model, QDQ format, per-channel weights.

    Weights are signed 8-bit, per output channel; activations are unsigned
    8-bit by default (U8S8: on an AVX2 CPU without VNNI it ran ResNet-18 about
    2x faster than S8S8 with the same fidelity), or signed with
    ``activations="int8"``. Activation ranges come from MinMax calibration over
    ``calibration_batches`` (float32 arrays fed to the model's first input).
    ``onnxruntime.quantization.quant_pre_process`` (shape inference plus graph
    optimisation, e.g. folding BatchNorm into Conv) runs first when
    ``preprocess`` is true; if it fails on a model the raw graph is quantized.
    Returns ``out_path`` as a Path.
    """
    onnx = _require("onnx")
    _require("onnxruntime")
    quant = _require("onnxruntime.quantization")

    src = Path(fp32_onnx_path)
    dst = Path(out_path)
    if not src.is_file():
        raise FileNotFoundError(f"fp32 ONNX model not found: {src}")
    batches = _check_batches(calibration_batches)
    act_types = {"uint8": quant.QuantType.QUInt8, "int8": quant.QuantType.QInt8}
    if activations not in act_types:
        raise ValueError(f"activations {activations!r} is not supported; choose one of uint8, int8")
    dst.parent.mkdir(parents=True, exist_ok=True)

    input_name = onnx.load(str(src), load_external_data=False).graph.input[0].name

    class _Reader(quant.CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            b = next(self._it, None)
            return None if b is None else {input_name: b}

        def rewind(self) -> None:
            self._it = iter(batches)

    with tempfile.TemporaryDirectory(prefix="capsim-quant-") as tmp:
        model_input = src
        if preprocess:
            pre = Path(tmp) / "preprocessed.onnx"
            try:
                from onnxruntime.quantization.shape_inference import quant_pre_process

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
                if pre.is_file():
                    model_input = pre
            except Exception:  # noqa: BLE001 - preprocessing is an optimisation only
                model_input = src
        quant.quantize_static(
            str(model_input),
            str(dst),
            _Reader(),
            quant_format=quant.QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=act_types[activations],
            weight_type=quant.QuantType.QInt8,
            calibrate_method=quant.CalibrationMethod.MinMax,
        )
    return dst


def convert_fp16(fp32_onnx_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Write an FP16 copy of an FP32 ONNX model (weights, activations and I/O in float16).

    Uses ``onnxconverter_common.float16`` when installed, otherwise the copy of
    the same converter bundled with onnxruntime (``onnxruntime.transformers.float16``).
    The graph's input and output become float16; runners cast float32 arrays
    in and out.
    """
    onnx = _require("onnx")
    try:
        from onnxconverter_common import float16 as f16  # type: ignore[import-not-found]
    except ImportError:
        try:
            from onnxruntime.transformers import float16 as f16
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise MissingCalibrateExtra(MISSING_EXTRA) from exc
    src = Path(fp32_onnx_path)
    dst = Path(out_path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(src))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model16 = f16.convert_float_to_float16(model, keep_io_types=False)
    if model16.ByteSize() > 1_900_000_000:  # protobuf's 2 GB limit
        onnx.save_model(model16, str(dst), save_as_external_data=True, location=dst.name + ".data")
    else:
        onnx.save_model(model16, str(dst))
    return dst


def quantize_torch_int8(model: Any, calibration_batches: Iterable[np.ndarray]) -> Any:
    """Static INT8 quantization of a torch ``nn.Module`` for CPU with FX graph mode.

    Uses ``torch.ao.quantization`` (``prepare_fx`` / ``convert_fx``) with the
    default qconfig of the current quantized engine (x86/fbgemm/onednn/qnnpack;
    the process-global engine setting is read, not changed), calibrated on
    ``calibration_batches``. Models that are not symbolically traceable, and
    TorchScript modules, raise ValueError suggesting the onnxruntime backend.
    The caller's model is not modified.
    """
    torch = _require("torch")
    batches = _check_batches(calibration_batches)
    hint = "use backend='onnxruntime' with precision='int8' (static QDQ quantization) instead"
    if isinstance(model, torch.jit.ScriptModule):
        raise ValueError(f"precision 'int8' with the torch backend cannot quantize a TorchScript model; {hint}")
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"precision 'int8' with the torch backend needs a torch.nn.Module; {hint}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.ao.quantization import get_default_qconfig_mapping
            from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

            engine = torch.backends.quantized.engine
            if engine not in ("x86", "fbgemm", "onednn", "qnnpack"):
                engine = "x86"
            m = copy.deepcopy(model).to("cpu").float().eval()
            example = (torch.from_numpy(batches[0]),)
            prepared = prepare_fx(m, get_default_qconfig_mapping(engine), example)
            with torch.no_grad():
                for b in batches:
                    prepared(torch.from_numpy(b))
            quantized = convert_fx(prepared).eval()
            with torch.inference_mode():
                quantized(example[0])  # fail here, not in the timing loop
    except Exception as exc:  # noqa: BLE001 - any failure gets the same advice
        raise ValueError(
            f"precision 'int8' with the torch backend failed for this model "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); {hint}"
        ) from exc
    return quantized
