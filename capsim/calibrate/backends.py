"""Model runners for calibration: ONNX Runtime or PyTorch, CPU or CUDA, FP32/FP16/INT8.

Every runner has the same small interface (:class:`Runner`)::

    runner = make_runner(model, "onnxruntime", device="cpu", precision="int8",
                         input_shape=(3, 224, 224))
    y = runner.run(x)                 # float32 NCHW in, float32 numpy out (first output)
    xp = runner.prepare(x)            # once per batch, outside the timed region
    seconds = runner.time_call(xp)    # one timed forward pass
    runner.close()

What the runner records (``backend``, ``backend_version``, ``provider``,
``device``, ``precision``, ``threads``) goes into the calibration profile; see
:meth:`Runner.info`.

Timing:

* CPU (both backends): ``time.perf_counter_ns`` around the forward call only,
  the input already converted.
* torch CUDA: CUDA events around the forward call, then ``synchronize``; the
  input tensor is already on the device (``prepare``).
* ORT CUDA: IO binding with the input already on the device and the output
  kept there, synchronised before and after; if binding fails, perf_counter
  around a plain ``run``.

Threads are always set explicitly and recorded: ONNX Runtime per session
(``intra_op_num_threads``, ``inter_op_num_threads=1``, sequential execution);
torch via ``torch.set_num_threads``, which is *process-global* - the value in
force after the call is what gets recorded.

Precision rules: ``fp16`` needs ``device='cuda'``; ``int8`` needs
``device='cpu'`` (ONNX Runtime static QDQ quantization, U8S8 per-channel, or torch FX
quantization where it works). Option errors are ``ValueError`` (and
:class:`~capsim.errors.CapsimError`) naming the option.

torch / onnx / onnxruntime are imported lazily; when they are missing,
``ImportError("the calibrate extra is missing: pip install 'capsim[calibrate]'")``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from capsim.calibrate.quantize import (
    MISSING_EXTRA,
    _require,
    convert_fp16,
    default_calibration_batches,
    quantize_static_qdq,
    quantize_torch_int8,
)
from capsim.errors import CapsimError

__all__ = [
    "BACKENDS",
    "DEVICES",
    "MISSING_EXTRA",
    "PRECISIONS",
    "BackendOptionError",
    "InferenceError",
    "OnnxRuntimeRunner",
    "Runner",
    "TorchRunner",
    "make_runner",
]

BACKENDS = ("onnxruntime", "torch")
DEVICES = ("cpu", "cuda")
PRECISIONS = ("fp32", "fp16", "int8")

_TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".jit")


class BackendOptionError(CapsimError, ValueError):
    """An unsupported backend / device / precision choice; the message names the option."""


class InferenceError(RuntimeError):
    """A forward call failed inside the backend (e.g. out of memory at a large batch).

    ONNX Runtime's and TorchScript's own exception types do not derive from
    RuntimeError; runners re-raise them as this so that callers can catch one type.
    """


def _default_threads() -> int:
    return os.cpu_count() or 1


# --------------------------------------------------------------------------- base


class Runner:
    """One loaded model on one backend/device/precision; see the module docstring."""

    backend: str = ""
    backend_version: str = ""
    provider: str = ""
    device: str = "cpu"
    precision: str = "fp32"
    threads: int = 1
    model_path: Path | None = None  # the file actually loaded (ONNX variant / TorchScript), if any

    def __init__(self) -> None:
        self._tmpdir: str | None = None

    def run(self, x: np.ndarray) -> np.ndarray:
        """Forward a float32 NCHW batch; return the first output as float32 numpy."""
        raise NotImplementedError

    def prepare(self, x: np.ndarray) -> Any:
        """Convert a batch once into what :meth:`time_call` wants (untimed)."""
        return np.ascontiguousarray(x, dtype=np.float32)

    def _call(self, prepared: Any) -> None:
        raise NotImplementedError

    def time_call(self, x: Any) -> float:
        """Seconds for ONE forward call on ``x`` (the result of :meth:`prepare`).

        A raw numpy array is accepted too; it is prepared first, outside the timing.
        """
        if isinstance(x, np.ndarray):
            x = self.prepare(x)
        t0 = time.perf_counter_ns()
        self._call(x)
        return (time.perf_counter_ns() - t0) * 1e-9

    def info(self) -> dict[str, Any]:
        """What a calibration profile records about this runner."""
        return {
            "backend": self.backend,
            "backend_version": self.backend_version,
            "provider": self.provider,
            "device": self.device,
            "precision": self.precision,
            "threads": self.threads,
        }

    def close(self) -> None:
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.backend} {self.backend_version} {self.provider} "
            f"{self.precision} threads={self.threads}>"
        )


# --------------------------------------------------------------------------- onnxruntime


class OnnxRuntimeRunner(Runner):
    """An ONNX model in an ``onnxruntime.InferenceSession``."""

    backend = "onnxruntime"

    def __init__(self, onnx_path: str | os.PathLike, device: str, precision: str, threads: int) -> None:
        super().__init__()
        ort = _require("onnxruntime")
        self._ort = ort
        self.backend_version = ort.__version__
        self.device = device
        self.precision = precision
        self.model_path = Path(onnx_path)

        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendOptionError(
                    "device 'cuda': onnxruntime has no CUDAExecutionProvider here "
                    "(install onnxruntime-gpu and check the CUDA driver)"
                )
            providers: list[Any] = [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        self._sess = ort.InferenceSession(str(onnx_path), sess_options=so, providers=providers)
        self.provider = self._sess.get_providers()[0]
        if device == "cuda" and self.provider != "CUDAExecutionProvider":
            raise BackendOptionError(
                f"device 'cuda': onnxruntime fell back to {self.provider} (CUDA provider failed to load)"
            )
        opts = self._sess.get_session_options()
        self.threads = int(opts.intra_op_num_threads) or int(threads)
        inp = self._sess.get_inputs()[0]
        self._input_name = inp.name
        self._input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        self._output_name = self._sess.get_outputs()[0].name
        self._io_binding_ok = device == "cuda"
        state = ort.capi.onnxruntime_pybind11_state
        self._errors = tuple(
            e
            for e in (getattr(state, n, None) for n in ("Fail", "RuntimeException", "InvalidArgument", "EPFail",
                                                         "NotImplemented", "InvalidGraph", "EngineError"))
            if isinstance(e, type) and issubclass(e, BaseException)
        )

    def _cast(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x, dtype=self._input_dtype)

    def run(self, x: np.ndarray) -> np.ndarray:
        try:
            out = self._sess.run([self._output_name], {self._input_name: self._cast(x)})[0]
        except self._errors as exc:
            raise InferenceError(f"onnxruntime: {exc}") from exc
        return np.asarray(out, dtype=np.float32)

    def prepare(self, x: np.ndarray) -> Any:
        x = self._cast(x)
        if self.device != "cuda" or not self._io_binding_ok:
            return x
        try:
            value = self._ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
            binding = self._sess.io_binding()
            binding.bind_ortvalue_input(self._input_name, value)
            binding.bind_output(self._output_name, "cuda", 0)
            binding.synchronize_inputs()
            self._sess.run_with_iobinding(binding)  # validate the binding once, untimed
            binding.synchronize_outputs()
            return _OrtBound(binding, value)
        except Exception:  # noqa: BLE001 - is it the binding or the batch that fails?
            self._call(x)  # a batch that fails anyway (e.g. out of memory) raises InferenceError here
            self._io_binding_ok = False  # binding unsupported: time plain runs from now on
            return x

    def time_call(self, x: Any) -> float:
        if isinstance(x, _OrtBound):
            b = x.binding
            try:
                b.synchronize_inputs()
                t0 = time.perf_counter_ns()
                self._sess.run_with_iobinding(b)
                b.synchronize_outputs()
                return (time.perf_counter_ns() - t0) * 1e-9
            except self._errors as exc:
                raise InferenceError(f"onnxruntime: {exc}") from exc
        return super().time_call(x)

    def _call(self, prepared: Any) -> None:
        try:
            self._sess.run([self._output_name], {self._input_name: prepared})
        except self._errors as exc:
            raise InferenceError(f"onnxruntime: {exc}") from exc

    def close(self) -> None:
        self._sess = None
        super().close()


class _OrtBound:
    """An IO binding with its device-resident input (kept alive alongside)."""

    __slots__ = ("binding", "value")

    def __init__(self, binding: Any, value: Any) -> None:
        self.binding = binding
        self.value = value


# --------------------------------------------------------------------------- torch


def _first_output(out: Any) -> Any:
    if isinstance(out, (tuple, list)):
        return _first_output(out[0])
    if isinstance(out, dict):
        return _first_output(next(iter(out.values())))
    return out


class TorchRunner(Runner):
    """A torch ``nn.Module`` or TorchScript module in eval/inference mode."""

    backend = "torch"

    def __init__(self, module: Any, device: str, precision: str, threads: int) -> None:
        super().__init__()
        torch = _require("torch")
        self._torch = torch
        self.backend_version = torch.__version__
        self.device = device
        self.precision = precision
        torch.set_num_threads(int(threads))  # process-global
        self.threads = int(torch.get_num_threads())
        self.provider = f"torch-{device}"
        self._dtype = torch.float16 if precision == "fp16" else torch.float32
        self._tdevice = torch.device(device)
        self._module = module.eval()
        self._errors: tuple[type[BaseException], ...] = (torch.jit.Error,)
        # Each instance gets its own CUDA stream, so that instances timed concurrently (contention)
        # really overlap on the GPU instead of queueing on the default stream.
        self._stream = torch.cuda.Stream() if device == "cuda" else None
        # What "fp32" means on the GPU: cuDNN convolutions use TF32 tensor cores by default.
        self.math = (f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
                     f"matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}, "
                     f"cudnn.benchmark={torch.backends.cudnn.benchmark}") if device == "cuda" else None

    def _on_stream(self) -> Any:
        """Context that makes this instance's CUDA stream current (a no-op on CPU)."""
        if self._stream is None:
            return contextlib.nullcontext()
        return self._torch.cuda.stream(self._stream)

    def _forward(self, t: Any) -> Any:
        try:
            if self._stream is not None:
                # The input may have been written on another stream (the caller's current one):
                # order this stream after it before reading it.
                current = self._torch.cuda.current_stream()
                if current != self._stream:
                    self._stream.wait_stream(current)
                with self._torch.cuda.stream(self._stream):
                    return self._module(t)
            return self._module(t)
        except self._errors as exc:  # TorchScript errors are not RuntimeErrors
            raise InferenceError(f"torch: {exc}") from exc

    def _to_tensor(self, x: np.ndarray) -> Any:
        t = self._torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        return t.to(device=self._tdevice, dtype=self._dtype)

    def run(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        # On CUDA the copy in, the forward, the cast and the copy out all run on this instance's
        # stream, so the final blocking .cpu() waits for exactly this work (and concurrent
        # instances in contention runs do not serialise on the default stream).
        with torch.inference_mode(), self._on_stream():
            out = _first_output(self._forward(self._to_tensor(x)))
            if out.is_quantized:
                out = out.dequantize()
            return out.detach().float().cpu().numpy()

    def prepare(self, x: np.ndarray) -> Any:
        with self._on_stream():
            t = self._to_tensor(x)
        if self._stream is not None:
            self._stream.synchronize()
        return t

    def _call(self, prepared: Any) -> None:
        with self._torch.inference_mode():
            self._forward(prepared)

    def time_call(self, x: Any) -> float:
        if isinstance(x, np.ndarray):
            x = self.prepare(x)
        if self.device != "cuda":
            return super().time_call(x)
        torch = self._torch
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        with torch.inference_mode():
            self._stream.wait_stream(torch.cuda.current_stream())  # the input copy is done
            self._stream.synchronize()
            start.record(self._stream)
            self._forward(x)
            end.record(self._stream)
        end.synchronize()
        return start.elapsed_time(end) * 1e-3  # ms -> s

    def close(self) -> None:
        self._module = None
        if self.device == "cuda":
            try:
                self._torch.cuda.empty_cache()
            except Exception:  # noqa: BLE001
                pass
        super().close()


# --------------------------------------------------------------------------- factory


def _check_choice(option: str, value: Any, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise BackendOptionError(f"{option} {value!r} is not supported; choose one of {', '.join(allowed)}")
    return value


def _full_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(d) for d in input_shape)
    if len(shape) == 3:
        return (1, *shape)
    if len(shape) == 4:
        return shape
    raise BackendOptionError(f"input_shape {tuple(input_shape)} must be (C, H, W) or (N, C, H, W)")


def _export_module(module: Any, path: Path, input_shape: Sequence[int]) -> Path:
    """FP32 ONNX export of a torch module (dynamic batch axis), via capsim.calibrate.export."""
    from capsim.calibrate.export import export_onnx

    return Path(export_onnx(module, path, tuple(input_shape)))


def _onnx_input_shape(path: Path) -> tuple[int, ...] | None:
    """(C, H, W) from the graph's first input when all non-batch dims are static."""
    onnx = _require("onnx")
    inp = onnx.load(str(path), load_external_data=False).graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    rest = [d.dim_value if d.HasField("dim_value") else 0 for d in dims[1:]]
    if not rest or any(v <= 0 for v in rest):
        return None
    return tuple(rest)


def _digest(parts: Sequence[bytes]) -> str:
    h = hashlib.sha1(usedforsecurity=False)
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:12]


def _module_digest(module: Any, input_shape: Sequence[int]) -> str:
    """Key for a module's exported file in ``workdir``: class, input shape and every tensor's bytes.

    Lets repeated ``make_runner`` calls on the same workdir (fp32 reference, one runner per
    instance in contention runs) reuse one export / quantization instead of redoing it.
    """
    parts = [type(module).__qualname__.encode(), repr(tuple(int(d) for d in input_shape)).encode()]
    try:
        for name, t in module.state_dict().items():
            t = t.detach().cpu().contiguous()
            parts += [name.encode(), str(t.dtype).encode(), repr(tuple(t.shape)).encode()]
            parts.append(t.reshape(-1).view(_require("torch").uint8).numpy().tobytes())
    except Exception:  # noqa: BLE001 - unhashable state: never reuse
        parts.append(uuid.uuid4().bytes)
    return _digest(parts)


def _batches_digest(batches: Sequence[np.ndarray]) -> str:
    return _digest([np.ascontiguousarray(b, dtype=np.float32).tobytes() + repr(np.shape(b)).encode() for b in batches])


def _is_onnx(p: Path) -> bool:
    return p.suffix.lower() == ".onnx"


def _is_torchscript(p: Path) -> bool:
    return p.suffix.lower() in _TORCHSCRIPT_SUFFIXES


def make_runner(
    model: Any,
    backend: str,
    device: str = "cpu",
    precision: str = "fp32",
    threads: int | None = None,
    input_shape: Sequence[int] | None = None,
    workdir: str | os.PathLike | None = None,
    calibration_batches: Sequence[np.ndarray] | None = None,
) -> Runner:
    """Load ``model`` on ``backend`` ("onnxruntime" | "torch"), ``device`` and ``precision``.

    ``model`` is a ``torch.nn.Module`` (exported to ONNX in ``workdir`` for
    onnxruntime; used directly by torch, after ``.eval()``), a path to an
    ``.onnx`` file (onnxruntime only) or a TorchScript file
    (``.pt``/``.pth``/``.ts``; torch only).

    ``input_shape`` is ``(C, H, W)`` or ``(N, C, H, W)``; it is needed to
    export a module and to make default calibration data (for an ONNX file it
    is read from the graph when static). ``threads`` defaults to
    ``os.cpu_count()``. ``workdir`` holds exported / converted / quantized
    model files, named by a digest of the weights, input shape and calibration
    data, so later calls with the same workdir reuse them; without it a
    temporary directory is used and removed by :meth:`Runner.close`.

    ``precision='int8'`` (CPU only) calibrates on ``calibration_batches``
    (float32 arrays); default: 8 seeded random batches
    (:func:`~capsim.calibrate.quantize.default_calibration_batches`).
    ``precision='fp16'`` needs ``device='cuda'``.
    """
    _check_choice("backend", backend, BACKENDS)
    _check_choice("device", device, DEVICES)
    _check_choice("precision", precision, PRECISIONS)
    if precision == "fp16" and device != "cuda":
        raise BackendOptionError("precision 'fp16' needs --device cuda (no fast FP16 kernels on CPU)")
    if precision == "int8" and device != "cpu":
        raise BackendOptionError(
            "precision 'int8' is supported on --device cpu only (ONNX Runtime static QDQ); "
            "use fp16 on cuda"
        )
    if threads is None:
        threads = _default_threads()
    threads = int(threads)
    if threads < 1:
        raise BackendOptionError(f"threads must be >= 1, got {threads}")

    if device == "cuda" and backend == "onnxruntime":  # fail before exporting / converting anything
        if "CUDAExecutionProvider" not in _require("onnxruntime").get_available_providers():
            raise BackendOptionError(
                "device 'cuda': onnxruntime has no CUDAExecutionProvider here "
                "(install onnxruntime-gpu and check the CUDA driver)"
            )

    is_path = isinstance(model, (str, os.PathLike))
    path = Path(model) if is_path else None
    if path is not None and not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")

    tmpdir: str | None = None

    def _work() -> Path:
        nonlocal tmpdir
        if workdir is not None:
            d = Path(workdir)
            d.mkdir(parents=True, exist_ok=True)
            return d
        if tmpdir is None:
            tmpdir = tempfile.mkdtemp(prefix="capsim-calibrate-")
        return Path(tmpdir)

    def _calibration(shape_hint: Sequence[int] | None) -> list[np.ndarray]:
        if calibration_batches is not None:
            return list(calibration_batches)
        if shape_hint is None:
            raise BackendOptionError(
                "precision 'int8': pass input_shape or calibration_batches (the model's input shape "
                "is not known)"
            )
        return default_calibration_batches(shape_hint)

    try:
        if backend == "onnxruntime":
            if path is not None:
                if _is_torchscript(path):
                    raise BackendOptionError(
                        f"backend 'onnxruntime' cannot load TorchScript file {path.name}; "
                        "use backend='torch' or give an .onnx file"
                    )
                fp32_path = path
                stem = path.stem
                st = path.stat()
                key = _digest([str(path.resolve()).encode(), str(st.st_size).encode(), str(st.st_mtime_ns).encode()])
            else:
                torch = _require("torch")
                if not isinstance(model, torch.nn.Module):
                    raise BackendOptionError(
                        f"model must be a torch.nn.Module or a path, got {type(model).__name__}"
                    )
                if input_shape is None:
                    raise BackendOptionError("input_shape is required to export a torch module to ONNX")
                stem = type(model).__name__.lower() or "model"
                key = _module_digest(model, input_shape)
                fp32_path = _work() / f"{stem}-{key}.fp32.onnx"
                if not fp32_path.is_file():  # same weights and shape already exported here: reuse
                    fp32_path = _export_module(model, fp32_path, input_shape)
            shape_hint = input_shape if input_shape is not None else _onnx_input_shape(fp32_path)
            if precision == "fp32":
                load_path = fp32_path
            elif precision == "fp16":
                load_path = _work() / f"{stem}-{key}.fp16.onnx"
                if not load_path.is_file():
                    load_path = convert_fp16(fp32_path, load_path)
            else:
                batches = _calibration(shape_hint)
                load_path = _work() / f"{stem}-{key}-{_batches_digest(batches)}.int8.qdq.onnx"
                if not load_path.is_file():
                    load_path = quantize_static_qdq(fp32_path, load_path, batches)
            runner: Runner = OnnxRuntimeRunner(load_path, device, precision, threads)
        else:
            torch = _require("torch")
            if path is not None:
                if _is_onnx(path):
                    raise BackendOptionError(
                        f"backend 'torch' cannot run ONNX file {path.name}; use backend='onnxruntime'"
                    )
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", DeprecationWarning)
                        module = torch.jit.load(str(path), map_location="cpu")
                except Exception as exc:  # noqa: BLE001
                    raise BackendOptionError(
                        f"backend 'torch' needs a TorchScript file (torch.jit.save); could not load "
                        f"{path.name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                    ) from exc
                owned = True
            elif isinstance(model, torch.nn.Module):
                module = model
                owned = False
            else:
                raise BackendOptionError(f"model must be a torch.nn.Module or a path, got {type(model).__name__}")
            if device == "cuda" and not torch.cuda.is_available():
                raise BackendOptionError("device 'cuda': torch.cuda.is_available() is False here")
            if precision == "int8":
                module = quantize_torch_int8(module, _calibration(input_shape))
            elif device == "cuda" or precision == "fp16":
                if not owned:
                    import copy

                    module = copy.deepcopy(module)  # leave the caller's module on CPU / fp32
                module = module.to(device)
                if precision == "fp16":
                    module = module.half()
            runner = TorchRunner(module, device, precision, threads)
            runner.model_path = path
    except BaseException:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    runner._tmpdir = tmpdir
    return runner
