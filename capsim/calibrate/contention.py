"""Multi-instance slowdown: how much slower one batch gets when k model
instances share a device.

The measurement runs k runners concurrently in k Python threads (onnxruntime
and torch release the GIL while computing), each with an equal share of the
intra-op thread budget, and compares the median per-batch latency with the
single-instance median. The simulator multiplies a batch's service time by
``factor`` for the number of instances busy on that device.

Only the standard library and numpy are imported here; the runner (and the
backend behind it) comes from the caller.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

__all__ = ["measure_contention"]

METHOD = "threads, intra-op threads split evenly"


def _run_concurrently(runners: list[Any], x: np.ndarray, warmup_s: float, seconds: float) -> tuple[list[list[int]], float]:
    """Run every runner in its own thread, all released together.

    Returns per-runner latencies (ns) of the calls started inside the measured
    window, and the aggregate throughput (calls/s): the sum over runners of
    recorded calls / (end of its last recorded call - start of its first).
    """
    k = len(runners)
    clock = time.perf_counter_ns
    marks: dict[str, int] = {}

    def release() -> None:  # run by one thread once all k workers are ready
        marks["from"] = clock() + int(warmup_s * 1e9)
        marks["stop"] = marks["from"] + int(seconds * 1e9)

    barrier = threading.Barrier(k, action=release)
    latencies: list[list[int]] = [[] for _ in range(k)]
    first_start = [0] * k
    last_end = [0] * k
    errors: list[BaseException] = []

    def worker(j: int) -> None:
        runner = runners[j]
        own: list[int] = latencies[j]
        try:
            barrier.wait()
            measure_from, stop_at = marks["from"], marks["stop"]
            while not errors:
                t0 = clock()
                if t0 >= stop_at:
                    break
                runner.run(x)
                t1 = clock()
                if t0 >= measure_from:
                    if not own:
                        first_start[j] = t0
                    own.append(t1 - t0)
                    last_end[j] = t1
        except BaseException as exc:  # re-raised in the calling thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(j,), name=f"capsim-contention-{j}", daemon=True) for j in range(k)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
    if real or errors:
        raise (real or errors)[0]
    rate = sum(len(v) / ((last_end[j] - first_start[j]) / 1e9) for j, v in enumerate(latencies) if v)
    return latencies, float(rate)


def measure_contention(
    make_runner: Callable[[int], Any],
    x: np.ndarray,
    instances: Iterable[int] = (1, 2, 3, 4),
    total_threads: int | None = None,
    seconds_per_k: float = 3.0,
    progress: Callable[[int, int], Any] | None = None,
    warmup_calls: int = 2,
) -> dict[str, Any]:
    """Measure the slowdown factor for k concurrent instances.

    For each k in ``instances`` (1 is always measured, first, as the
    baseline), build k runners with ``make_runner(max(1, total_threads // k))``
    (``total_threads`` defaults to ``os.cpu_count()``), warm each up with
    ``warmup_calls`` sequential calls, then run all k concurrently in k Python
    threads, each calling ``run(x)`` in a loop; the first ~10% of
    ``seconds_per_k`` (at most 0.5 s) is a concurrent warm-up that is not
    recorded, then calls are timed with ``perf_counter_ns`` for
    ``seconds_per_k`` seconds.

    Per k the table holds ``factor`` (median latency at k / median at k=1),
    ``threads_per_instance``, ``median_ms``, ``mean_ms``, ``p95_ms``,
    ``throughput_batches_per_s`` (all instances together: the sum of each
    instance's recorded calls over its own busy span), ``calls`` and
    ``calls_per_instance``. ``progress(k, total)`` is called after each k,
    with ``total`` the number of k values measured.
    """
    ks = sorted({int(k) for k in instances})
    if not ks or ks[0] < 1:
        raise ValueError(f"instances must be positive integers, got {list(instances)}")
    if ks[0] != 1:
        ks.insert(0, 1)
    if total_threads is None:
        total_threads = os.cpu_count() or 1
    total_threads = int(total_threads)
    if total_threads < 1:
        raise ValueError(f"total_threads must be >= 1, got {total_threads}")
    if seconds_per_k <= 0:
        raise ValueError(f"seconds_per_k must be > 0, got {seconds_per_k}")
    x = np.asarray(x)
    batch_size = int(x.shape[0]) if x.ndim >= 1 else 1
    warmup_s = min(0.5, 0.1 * float(seconds_per_k))

    table: dict[int, dict[str, Any]] = {}
    base_median: float | None = None
    for idx, k in enumerate(ks, start=1):
        threads = max(1, total_threads // k)
        runners = [make_runner(threads) for _ in range(k)]
        try:
            for r in runners:
                for _ in range(max(0, int(warmup_calls))):
                    r.run(x)
            lat, rate = _run_concurrently(runners, x, warmup_s, float(seconds_per_k))
        finally:
            for r in runners:
                close = getattr(r, "close", None)
                if callable(close):
                    close()
            del runners
        per_instance = [len(v) for v in lat]
        all_ns = np.concatenate([np.asarray(v, dtype=np.float64) for v in lat if v]) if any(per_instance) else None
        if all_ns is None or all_ns.size == 0:
            raise RuntimeError(
                f"no call finished inside the {seconds_per_k} s window at k={k}; raise seconds_per_k"
            )
        ms = all_ns / 1e6
        median = float(np.median(ms))
        if base_median is None:
            base_median = median
        table[k] = {
            "factor": 1.0 if k == 1 else float(median / base_median),
            "threads_per_instance": threads,
            "median_ms": median,
            "mean_ms": float(ms.mean()),
            "p95_ms": float(np.percentile(ms, 95)),
            "throughput_batches_per_s": rate,
            "calls": int(ms.size),
            "calls_per_instance": per_instance,
        }
        if progress is not None:
            progress(k, len(ks))
    return {
        "batch_size": batch_size,
        "total_threads": total_threads,
        "seconds_per_k": float(seconds_per_k),
        "table": table,
        "method": METHOD,
    }
