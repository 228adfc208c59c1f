"""Co-run: how much a batch and the JPEG decode slow each other when they run at the same moment.

On a CPU server the model's runtime threads and the pre-processing threads share the cores. A
fair share of the cores would slow a 2-thread model on 2 cores by 1.5x beside one decode; runtimes
whose threads meet at a barrier after every operator lose far more (one stalled thread holds up
the batch). This measures it directly, in this process, with the server's own model runner and
decode function: the model alone, then beside ``decoders`` threads that decode without pause,
and the decode alone, then beside a batch of each size that runs without pause (a runtime's
threads take more of the cores from a decode beside small batches: on the 2-core VM resnet18's
batch 1 left it about x0.5, batch 8 about x0.7). The ratios are the speeds of
``service.cpu_sharing.overlap``. Alone and beside alternate in short rounds, so that a machine
whose speed drifts (a VM's neighbours) slows both sides alike instead of one.
"""

from __future__ import annotations

import threading
import time

import numpy as np


def _loop(fn, seconds: float, out: list, stop: threading.Event | None = None) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end and not (stop is not None and stop.is_set()):
        out.append(fn())


def _beside(main, other, seconds: float, threads: int = 1) -> list[float]:
    """Times of ``main`` run for ``seconds`` while ``threads`` threads run ``other`` without pause."""
    stop = threading.Event()
    side = [threading.Thread(target=_loop, args=(other, seconds + 60.0, [], stop), daemon=True)
            for _ in range(threads)]
    for t in side:
        t.start()
    time.sleep(0.1)  # the side threads are running before the first timed call
    out: list[float] = []
    try:
        _loop(main, seconds, out)
    finally:
        stop.set()
        for t in side:
            t.join()
    return out


def _alternate(main, other, seconds: float, rounds: int, threads: int = 1) -> tuple[list[float], list[float]]:
    """``main`` alone and beside ``threads`` threads running ``other``, ``seconds`` each in all,
    alternating in ``rounds`` rounds."""
    alone: list[float] = []
    beside: list[float] = []
    for _ in range(rounds):
        _loop(main, seconds / rounds, alone)
        beside += _beside(main, other, seconds / rounds, threads)
    return alone, beside


def measure(host, body: bytes, content_type: str, sizes, seconds: float = 3.0, decoders: int = 1, say=None,
            rounds: int = 4) -> dict:
    """Speeds of a batch of each size in ``sizes`` beside ``decoders`` busy decode threads, and of
    one decode beside a busy batch of each size, each as (median alone) / (median beside),
    ``seconds`` alone and as long beside, in ``rounds`` alternating rounds. ``host`` is the
    server's :class:`~capsim.validate.server.ModelHost` (instance 0 is used)."""
    from capsim.validate.server import timed_decode

    shape = host.input_shape

    def decode() -> float:
        return timed_decode(body, content_type, None, shape)[1]

    model_speed, alone_ms, beside_ms, cv = {}, {}, {}, {}
    x_by_b = {}
    for b in sorted(set(sizes)):
        x = x_by_b[b] = np.random.default_rng(b).standard_normal((b, *shape)).astype(np.float32)
        if say:
            say(f"co-run: batch {b} alone and beside {decoders} decoding thread(s), in turns ({2 * seconds:g} s)")

        def run(x=x) -> float:
            return host.run(0, x)[1]

        alone, beside = _alternate(run, decode, seconds, rounds, decoders)
        alone_ms[b], beside_ms[b] = float(np.median(alone)), float(np.median(beside))
        model_speed[b] = min(1.0, alone_ms[b] / beside_ms[b])
        cv[b] = float(np.std(alone) / np.mean(alone))
    d_alone, d_beside, pre_speed = {}, {}, {}
    for b, x in x_by_b.items():
        if say:
            say(f"co-run: the decode alone and beside batch {b}, in turns ({2 * seconds:g} s)")
        decode_alone, decode_beside = _alternate(decode, lambda x=x: host.run(0, x)[1], seconds, rounds)
        d_alone[b], d_beside[b] = float(np.median(decode_alone)), float(np.median(decode_beside))
        pre_speed[b] = min(1.0, d_alone[b] / d_beside[b])
    big = max(x_by_b)
    return {"model_speed": model_speed, "preprocess_speed": pre_speed[big], "preprocess_speed_by_batch": pre_speed,
            "model_alone_ms": alone_ms, "model_beside_ms": beside_ms, "model_alone_cv": cv,
            "decode_alone_ms": d_alone[big], "decode_beside_ms": d_beside[big],
            "decode_alone_by_batch_ms": d_alone, "decode_beside_by_batch_ms": d_beside,
            "decoders": decoders, "seconds": seconds}
