"""``capsim calibrate``: time a model at each batch size and write a calibration profile."""

from __future__ import annotations

import datetime as _dt
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from capsim import __version__
from capsim.calibrate import require
from capsim.calibrate.fingerprint import fingerprint
from capsim.calibrate.timing import measure
from capsim.errors import CapsimError
from capsim.profile import FORMAT_VERSION

DEFAULT_SHAPE = (3, 224, 224)
FIDELITY_BATCH = 8


class CalibrationError(CapsimError):
    """Calibration cannot start with these options; the message names the option and the fix."""


def _source(model: str | None, model_file: str | None, input_shape, task: str | None, seed: int):
    """(the model object or path, its name, task, input shape, where it came from)."""
    if model:
        require("torch")
        from capsim.calibrate import zoo

        if model not in zoo.MODELS:
            raise CalibrationError(f"--model: no built-in model {model!r}; choose one of {', '.join(zoo.names())} "
                                   "or give --model-file")
        spec = zoo.MODELS[model]
        return zoo.build(model, seed=seed), model, spec.task, tuple(input_shape or spec.input_shape), f"zoo:{model}"
    from capsim.calibrate.export import load_model_file

    path = Path(model_file)
    try:
        kind, obj = load_model_file(path)
    except (ValueError, FileNotFoundError, OSError) as exc:
        raise CalibrationError(f"--model-file: {exc}") from None
    return obj, path.stem, task or "classification", tuple(input_shape or DEFAULT_SHAPE), f"file:{path.name}"


def calibrate(*, model: str | None = None, model_file: str | None = None, backend: str = "onnxruntime",
              device: str = "cpu", precision: str = "fp32", batch_sizes=(1, 2, 4, 8), input_shape=None,
              task: str | None = None, threads: int | None = None, instances=None, max_seconds: float = 20.0,
              target_ci_pct: float = 2.0, prepost: bool = True, seed: int = 0,
              progress: Callable[[str], None] | None = None) -> dict:
    """Measure and return profile data (see capsim/profile.py for the format)."""
    if bool(model) == bool(model_file):
        raise CalibrationError("--model / --model-file: give exactly one of them")
    require("numpy", "onnxruntime" if backend == "onnxruntime" else "torch")
    from capsim.calibrate import backends

    say = progress or (lambda msg: None)
    threads = threads or os.cpu_count() or 1
    src, name, task, shape, origin = _source(model, model_file, input_shape, task, seed)
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="capsim-cal-") as work:
        def make(prec: str, nthreads: int):
            try:
                return backends.make_runner(src, backend, device=device, precision=prec, threads=nthreads,
                                            input_shape=shape, workdir=work)
            except ValueError as exc:
                raise CalibrationError(str(exc)) from None

        say(f"preparing {name} ({backend}, {device}, {precision}, {threads} threads)")
        runner = make(precision, threads)
        batches, failures = [], []
        for b in sorted(set(batch_sizes)):
            x = rng.standard_normal((b, *shape), dtype=np.float32)
            try:
                prepared = runner.prepare(x)
                rec = measure(lambda: runner.time_call(prepared), b, target_ci_pct=target_ci_pct,
                              max_seconds=max_seconds,
                              progress=lambda p: say(f"batch {p['batch_size']}: {p['reps']} calls, median "
                                                     f"{p['median_ms']:.3f} ms \u00b1{p['ci_pct']:.1f}%"))
            except Exception as exc:  # noqa: BLE001 - OOM and runtime failures (torch.jit.Error is no RuntimeError)
                failures.append({"batch_size": b, "error": f"{exc.__class__.__name__}: {str(exc)[:300]}"})
                say(f"batch {b}: failed ({exc.__class__.__name__}); larger batches skipped")
                break
            batches.append(rec)
            say(f"batch {b}: median {rec['median_ms']:.3f} ms, {rec['images_per_s']:.1f} images/s, "
                f"{'stable' if rec['stable'] else 'NOT stable'}")
        if not batches:
            raise CalibrationError(f"--batch-sizes: even batch {min(batch_sizes)} failed: {failures[0]['error']}")
        largest = max(r["batch_size"] for r in batches)
        example = runner.run(rng.standard_normal((1, *shape), dtype=np.float32))

        fidelity = None
        if precision != "fp32":
            from capsim.calibrate.fidelity import compare

            say("fidelity against fp32")
            ref = make("fp32", threads)
            x = rng.standard_normal((min(FIDELITY_BATCH, largest), *shape), dtype=np.float32)
            want, got = ref.run(x), runner.run(x)
            what = "FP32 output of the same weights on the same inputs (random weights: no dataset accuracy)"
            if task == "detection":  # [B, N, 4 box + 1 objectness + classes]: agreement on the class scores
                want, got = want[..., 5:], got[..., 5:]
                what += "; top-1 over each anchor's class scores"
            fidelity = {"reference": what, **compare(want, got)}
            ref.close()

        pre = post = None
        if prepost:
            from capsim.calibrate.prepost import measure_prepost

            say("pre/post-processing on CPU")
            pp = measure_prepost(task, shape, example, max_seconds=min(5.0, max_seconds))
            pre, post = _stage(pp["preprocess"]), _stage(pp["postprocess"])
            pre["what"] = f"JPEG {pp['jpeg_size'][0]}x{pp['jpeg_size'][1]} decode + resize + normalise, per image"
            post["what"] = f"{task} post-processing, per image"

        contention = None
        ks = sorted(set(instances or ()))
        if len(ks) > 1:
            from capsim.calibrate.contention import measure_contention

            cb = max(b for b in (1, 2, 4) if b <= largest)  # small: many timed calls per k
            x = rng.standard_normal((cb, *shape), dtype=np.float32)
            say(f"contention: {', '.join(map(str, ks))} instances at batch {cb}")
            contention = measure_contention(lambda t: make(precision, t), x, instances=tuple(ks),
                                            total_threads=threads, seconds_per_k=min(3.0, max_seconds),
                                            progress=lambda k, n: say(f"contention: {k} instances done"))
            contention["table"] = {str(k): v for k, v in contention["table"].items()}
            if device == "cuda":
                contention["method"] = ("threads, one model copy per instance, "
                                        + ("one CUDA stream each" if backend == "torch" else "one session each")
                                        + "; latency of run() incl. host<->device copies")
        runner.close()

    return {
        "capsim_profile": FORMAT_VERSION,
        "model": {"name": name, "task": task, "input_shape": list(shape), "precision": precision,
                  "backend": backend, "backend_version": runner.backend_version, "provider": runner.provider,
                  "source": origin, "seed": seed},
        "hardware": fingerprint(device, runner.threads),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": {"target_ci_pct": target_ci_pct, "max_seconds_per_batch": max_seconds,
                     "stability": "median of the last three windows within 10 %", "ci": "order-statistic 95 % "
                     "interval of the median", "timer": _timer(backend, device), "capsim_version": __version__,
                     **({"cuda_math": runner.math} if getattr(runner, "math", None) else {})},
        "batches": batches,
        "max_feasible_batch": largest,
        "failures": failures,
        "preprocess": pre,
        "postprocess": post,
        "contention": contention,
        "fidelity": fidelity,
    }


def _timer(backend: str, device: str) -> str:
    if device != "cuda":
        return "perf_counter_ns per call"
    if backend == "torch":
        return "CUDA events on the instance's stream around the forward, input already on the GPU"
    return "perf_counter_ns around run_with_iobinding, input and output on the GPU"


def _stage(rec: dict) -> dict:
    keep = ("median_ms", "mean_ms", "p95_ms", "p99_ms", "reps")
    return {k: rec[k] for k in keep if k in rec}
