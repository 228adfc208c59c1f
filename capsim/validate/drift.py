"""How fast the model ran during a measured run, against the curve the prediction used.

A shared machine's speed drifts by tens of per cent within minutes (a VM's neighbours, a CPU's
clock). The prediction scales the profile by calibrations measured before and after the cells;
if the model then ran slower during a cell, every queue in that cell grows, and near capacity a
few per cent of speed becomes tens of per cent of latency. These figures say how much of a
cell's error is the machine's speed and how much is the queueing model:

- a run's **model speed** is the time its batches took (the server's ``X-Batch-Compute-Ms``)
  over the time the prediction's curve gives batches of the same sizes, request-weighted;
- the simulation's own figure, measured the same way on its trace, includes the slowdowns the
  model predicts (cores shared with the decode, instances sharing a device);
- their ratio, the **drift**, is the slowdown the prediction did not foresee. Predicting again
  with the curve scaled by each run's drift checks the queueing and batching model alone.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from capsim.validate import protocol as P

ByBatch = dict[int, tuple[float, int]]   # batch size -> (sum of batch compute ms over requests, requests)


def compute_by_batch(rows: list[dict]) -> ByBatch:
    """The measured batch compute time summed by batch size, one term per completed request (a
    batch of 8 counts eight times, as eight requests waited for it)."""
    out: dict[int, list] = {}
    for r in rows:
        b, ms = r.get(P.H_BATCH_SIZE), r.get(P.H_COMPUTE)
        if b is None or ms is None or not math.isfinite(ms) or b < 1:
            continue
        acc = out.setdefault(int(b), [0.0, 0])
        acc[0] += float(ms)
        acc[1] += 1
    return {b: (s, n) for b, (s, n) in out.items()}


def speed(by_batch: ByBatch, curve_ms: Callable[[int], float]) -> float | None:
    """Measured compute over the curve's compute for the same batches (1.2: 20 % slower than the
    curve); None without batches or for a batch size the curve does not cover."""
    num = den = 0.0
    for b, (s, n) in by_batch.items():
        try:
            ref = curve_ms(b)
        except (IndexError, KeyError, ValueError):
            return None
        num += s
        den += n * ref
    return num / den if den > 0 else None


def speed_by_second(rows: list[dict], curve_ms: Callable[[int], float], min_requests: int = 5) -> list[float]:
    """:func:`speed` in each whole second of a run (by when the response came back), for the
    seconds with at least ``min_requests`` answers: a run's mean speed hides a slow spell, and a
    two-second spell at ×1.5 near capacity leaves a queue that takes many seconds to drain."""
    by_s: dict[int, list[dict]] = {}
    for r in rows:
        t = r.get("received_s")
        if t is not None and math.isfinite(t):
            by_s.setdefault(int(t), []).append(r)
    out = []
    for t in sorted(by_s):
        if len(by_s[t]) >= min_requests:
            k = speed(compute_by_batch(by_s[t]), curve_ms)
            if k is not None:
                out.append(k)
    return out


def run_speed(rows: list[dict], curve_ms: Callable[[int], float]) -> tuple[float | None, list[float]]:
    """A measured run's :func:`speed` over the whole run and :func:`speed_by_second`."""
    return speed(compute_by_batch(rows), curve_ms), speed_by_second(rows, curve_ms)


def simulated_by_batch(sim) -> ByBatch:
    """:func:`compute_by_batch` of a simulation's measured (non-warm-up, completed) requests (the
    model's run: without the batch overhead, which the server does not count in its compute time)."""
    out: dict[int, list] = {}
    held = sim.scenario.service.batch_overhead_ms
    for tr in sim.traces:
        keep = tr.completed & ~tr.warmup
        sizes = tr.batch_size[keep].astype(int)
        ms = (tr.end[keep] - tr.start[keep]) * 1000.0 - held
        for b in np.unique(sizes):
            sel = sizes == b
            acc = out.setdefault(int(b), [0.0, 0])
            acc[0] += float(ms[sel].sum())
            acc[1] += int(sel.sum())
    return {b: (s, n) for b, (s, n) in out.items()}


def curve_of(sc) -> Callable[[int], float]:
    """The scenario's mean batch compute time (ms) by batch size, interpolated as the engine does."""
    from capsim.service import ServiceCurve

    curve = ServiceCurve(sc.service.curve_ms(), max(sc.service.curve_ms()))
    return lambda b: curve.mean_s(int(b)) * 1000.0


def drift(run_speed: float | None, sim_speed: float | None) -> float | None:
    """The slowdown the prediction did not foresee: the run's speed over the simulation's."""
    if run_speed is None or sim_speed is None or sim_speed <= 0:
        return None
    return run_speed / sim_speed
