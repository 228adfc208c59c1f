"""Export PyTorch models to ONNX / TorchScript files and load model files back.

Exported graphs have one input named ``input`` and one output named ``output``, with a
dynamic batch axis (axis 0), so one file serves every batch size the calibrator times.

ONNX export and torch 2.13: ``torch.onnx.export`` defaults to the torch.export-based
("dynamo") exporter.  For the CNNs here the legacy TorchScript-based exporter
(``dynamo=False``) is used by default because, offline and on CPU, it is ~10-20x faster
(about 0.3 s for a tiny CNN, 1 s for MobileNetV3 and 4 s for ResNet-50, against 10-20 s),
it honours ``opset_version=17`` (the dynamo exporter emits opset 18 and its down-conversion
to 17 fails for these graphs, keeping 18), it writes the weights inside the ``.onnx`` file
(the dynamo exporter defaults to an external ``.data`` file) and it prints nothing beyond
warnings, which are silenced here.  Both produce graphs that ONNX Runtime runs at any
batch size with outputs equal to PyTorch's within float32 rounding.  When the legacy
exporter fails (or is gone in a later torch), ``dynamo=None`` falls back to the dynamo one.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from capsim.errors import CapsimError

__all__ = [
    "ModelFileError", "export_onnx", "export_torchscript", "load_model_file", "ONNX_SUFFIXES", "TORCHSCRIPT_SUFFIXES",
]

ONNX_SUFFIXES = (".onnx",)
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts")
EXAMPLE_BATCH = 2  # not 1: torch.export specialises size-1 dimensions, which would fix the batch axis


class ModelFileError(CapsimError, ValueError):
    """A model file that cannot be used: missing, or of an unknown kind."""


def _torch():
    from capsim.calibrate import require

    require("torch")
    import torch

    return torch


def _sample_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    """(C, H, W) from (C, H, W) or (N, C, H, W); N is ignored since the batch axis is dynamic."""
    shape = tuple(int(d) for d in input_shape)
    if len(shape) == 4:
        shape = shape[1:]
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) or (N, C, H, W) with positive sizes, got {tuple(input_shape)}")
    return shape


def _example_input(torch, model, input_shape: Sequence[int]):
    """A batch of EXAMPLE_BATCH random inputs on the model's device, in its floating dtype."""
    device, dtype = torch.device("cpu"), torch.float32
    for p in list(model.parameters()) + list(model.buffers()):
        if p.is_floating_point():
            device, dtype = p.device, p.dtype
            break
    gen = torch.Generator().manual_seed(0)  # private generator: global RNG state untouched
    x = torch.randn((EXAMPLE_BATCH, *_sample_shape(input_shape)), generator=gen)
    return x.to(device=device, dtype=dtype)


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' warnings and log records (errors still raise)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _export_legacy(torch, model, x, path: Path, opset: int) -> None:
    torch.onnx.export(
        model,
        (x,),
        str(path),
        input_names=["input"],
        output_names=["output"],
        opset_version=opset,
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        do_constant_folding=True,
        dynamo=False,
    )


def _export_dynamo(torch, model, x, path: Path, opset: int) -> None:
    torch.onnx.export(
        model,
        (x,),
        str(path),
        input_names=["input"],
        output_names=["output"],
        # opset 18 is the oldest the dynamo exporter writes natively; asking for less
        # triggers a version conversion that fails for common CNN graphs.
        opset_version=max(int(opset), 18),
        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
        external_data=False,  # weights inside the .onnx file (models here are far below 2 GB)
        verbose=False,
        dynamo=True,
    )


def export_onnx(model, path, input_shape: Sequence[int], opset: int = 17, *, dynamo: bool | None = None) -> Path:
    """Export ``model`` to an ONNX file at ``path`` and return the path.

    ``input_shape`` is the per-sample shape (C, H, W) (a leading batch size is accepted and
    ignored).  The graph has input ``input`` and output ``output`` with a dynamic batch
    axis 0.  ``dynamo=False`` uses the legacy TorchScript-based exporter (opset ``opset``),
    ``True`` the torch.export-based one (opset at least 18), ``None`` (default) the legacy
    one with a fallback to the dynamo one if it fails.  Parent directories are created.
    The model is exported in eval mode and left in the mode it was in.
    """
    torch = _torch()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = _example_input(torch, model, input_shape)
    with _eval_mode(model), torch.no_grad(), _quiet():
        if dynamo:
            _export_dynamo(torch, model, x, path, opset)
        else:
            try:
                _export_legacy(torch, model, x, path, opset)
            except Exception as legacy_error:
                if dynamo is not None:
                    raise
                try:
                    _export_dynamo(torch, model, x, path, opset)
                except Exception as dynamo_error:
                    raise RuntimeError(
                        f"ONNX export failed with both exporters: legacy: {legacy_error}; dynamo: {dynamo_error}"
                    ) from dynamo_error
    return path


def export_torchscript(model, path, input_shape: Sequence[int]) -> Path:
    """Trace ``model`` with ``torch.jit.trace`` and save it to ``path`` (loadable by ``torch.jit.load``).

    The trace is taken in eval mode at batch EXAMPLE_BATCH; the zoo's models contain no
    batch-size-dependent Python, so the saved module runs at any batch size.
    """
    torch = _torch()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = _example_input(torch, model, input_shape)
    with _eval_mode(model), torch.no_grad(), _quiet():
        traced = torch.jit.trace(model, (x,), check_trace=False)
        torch.jit.save(traced, str(path))
    return path


def load_model_file(path) -> tuple[str, Any]:
    """Identify a model file by its suffix: ``("onnx", path)`` or ``("torchscript", module)``.

    ``.onnx`` files are returned as their path (ONNX Runtime opens them itself);
    ``.pt`` / ``.pth`` / ``.ts`` files are loaded with ``torch.jit.load`` onto the CPU and put
    in eval mode.  Raises :class:`ModelFileError` (a ``ValueError``) for a missing file, a
    directory, an unknown suffix, or a ``.pt`` file that is not a TorchScript archive.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    known = ", ".join(ONNX_SUFFIXES + TORCHSCRIPT_SUFFIXES)
    if suffix not in ONNX_SUFFIXES + TORCHSCRIPT_SUFFIXES:
        raise ModelFileError(
            f"{path}: unknown model file type {path.suffix or '(no suffix)'!r}; expected one of {known} "
            "(ONNX, or TorchScript saved with torch.jit.save)"
        )
    if not path.exists():
        raise ModelFileError(f"{path}: model file not found")
    if not path.is_file():
        raise ModelFileError(f"{path}: not a file")
    if suffix in ONNX_SUFFIXES:
        return "onnx", path
    torch = _torch()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates torch.jit.load
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # e.g. a pickled state_dict / eager model saved with torch.save
        raise ModelFileError(
            f"{path}: not a TorchScript archive ({type(exc).__name__}); save the model with "
            "torch.jit.save(torch.jit.trace(model, example)) or export it to ONNX"
        ) from None
    return "torchscript", module.eval()
