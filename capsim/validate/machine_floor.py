"""The machine floor: the median |error| an exactly right model would show on a validation's cells
once the machine's own speed is counted, beside the chance a finite run leaves.

The chance floor (``validate.chance_errors``) draws the service times again on the runs' own
arrival schedules; a machine whose speed moves from run to run adds two things no prediction made
before the runs can know:

- **each run's own speed**: the spread of the model's speed between the runs of one cell (same
  config, same load, a minute apart), less what a run's finite number of batches explains. The
  prediction is the same for those runs, so whatever its own errors are, they cancel in that spread;
- **the calibrations' own error**: the prediction scales the profile by the mean of the in-server
  calibrations, which is off the machine's mean speed by about their spread over the root of their
  number (at batch 1 and at the largest batch; between them in log batch size, as the curve is
  scaled). That offset is shared by every cell.

In each draw every run of every cell is simulated at ``exp(calibration offset + run's own
offset)`` times the predicted batch times and stands in for the measurement, against the
prediction from the other draws at the predicted speed. On the 2-core VM (records v-27h) this
gives about 10 % at p95 at the median record: there, a ±10 % target sits at the machine's floor.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from capsim.validate import protocol as P

QUANTILES = ("p50", "p95", "p99")


def run_log_speed(rows: list[dict], curve_ms: Callable[[int], float]) -> tuple[float, float] | None:
    """(log of a run's model speed, its sampling variance) from the run's completed rows: the speed
    is the requests' batch compute time over the curve's for the same batch sizes (as
    :func:`capsim.validate.drift.speed`), and its variance is the ratio estimator's over the run's
    batches (requests that share a batch share its time, so a batch counts once, weighted by its
    size). None with fewer than two batches."""
    batches: dict[tuple, tuple[int, float]] = {}
    for r in rows:
        b, ms = r.get(P.H_BATCH_SIZE), r.get(P.H_COMPUTE)
        if b is None or ms is None or not math.isfinite(ms) or b < 1:
            continue
        # every request of one batch carries the batch's own compute time, to the bit
        batches[(r.get(P.H_INSTANCE), int(b), float(ms))] = (int(b), float(ms))
    if len(batches) < 2:
        return None
    w = np.array([b for b, _ in batches.values()], float)
    ms = np.array([m for _, m in batches.values()])
    ref = np.array([curve_ms(int(b)) for b in w])
    k = float((w * ms).sum() / (w * ref).sum())
    n = len(w)
    resid = w * (ms - k * ref)
    var_k = float((resid ** 2).sum() / (w * ref).sum() ** 2 * n / (n - 1))
    return math.log(k), var_k / (k * k)


def run_spread(cells: list[list[tuple[float, float]]]) -> float | None:
    """The machine's speed from run to run (sd of log speed): the pooled spread of the runs' log
    speeds within each cell, less their mean sampling variance; ``cells`` holds each cell's runs as
    (log speed, sampling variance). None without a cell of two or more runs."""
    ss, dof, samp = 0.0, 0, []
    for runs in cells:
        if len(runs) < 2:
            continue
        x = np.array([r[0] for r in runs])
        ss += float(((x - x.mean()) ** 2).sum())
        dof += len(x) - 1
        samp += [r[1] for r in runs]
    if dof == 0:
        return None
    return math.sqrt(max(ss / dof - float(np.mean(samp)), 0.0))


def calibration_error(ratios: list[float]) -> float | None:
    """How far the mean of the calibrations' ratios is from the machine's mean speed, as a sd of
    log speed: their spread over the root of their number. None with fewer than two."""
    vals = [r for r in ratios if r is not None and r > 0]
    if len(vals) < 2:
        return None
    return float(np.std(np.log(vals), ddof=1) / math.sqrt(len(vals)))


def calibration_errors(hosts: list[dict]) -> dict[int, float]:
    """:func:`calibration_error` of in-server calibrations at batch 1 (the ratio with the host's own
    work taken out where it is known) and at the largest batch they measured; ``{1: 0.0}`` where
    neither can be read (a single calibration)."""
    se = {1: calibration_error([h.get("compute_ratio_alone", h.get("compute_ratio")) for h in hosts])}
    bmax = hosts[0].get("bmax") if hosts else None
    if bmax:
        se[bmax] = calibration_error([h.get("compute_ratio_bmax") for h in hosts])
    return {b: v for b, v in se.items() if v is not None} or {1: 0.0}


def calibration_offsets(se: dict[int, float], draws: int, rng: np.random.Generator) -> list[Callable[[int], float]]:
    """One shared offset of log speed per draw, as a function of batch size: drawn at each batch
    size ``se`` covers (batch 1, the largest) and interpolated in log batch size between them."""
    sizes = sorted(se)
    out = []
    for _ in range(draws):
        z = {b: rng.standard_normal() * se[b] for b in sizes}

        def at(b: int, z=z) -> float:
            if len(sizes) == 1 or b <= sizes[0]:
                return z[sizes[0]]
            if b >= sizes[-1]:
                return z[sizes[-1]]
            t = math.log(b / sizes[0]) / math.log(sizes[-1] / sizes[0])
            return z[sizes[0]] * (1 - t) + z[sizes[-1]] * t
        out.append(at)
    return out


def exact_model_errors(base: np.ndarray, measured: np.ndarray) -> dict[str, list[float]] | None:
    """Errors (%) of an exactly right model, one per draw ``d``: the prediction is the median over
    the other draws of ``base`` (then over the runs), the measurement the median over the runs of
    ``measured[:, d]``, as ``validate._combine`` takes it. Both hold each run's p50/p95/p99 per
    draw (runs, draws, 3); with ``measured`` = ``base`` that is the chance floor. None without
    three draws or with a non-finite figure."""
    base, measured = np.asarray(base, float), np.asarray(measured, float)
    if (base.ndim != 3 or base.shape[1] < 3 or base.shape != measured.shape
            or not (np.isfinite(base).all() and np.isfinite(measured).all())):
        return None
    out: dict[str, list[float]] = {q: [] for q in QUANTILES}
    for d in range(base.shape[1]):
        meas = np.median(measured[:, d], axis=0)
        pred = np.median(np.median(np.delete(base, d, axis=1), axis=1), axis=0)
        for i, q in enumerate(QUANTILES):
            out[q].append(float((pred[i] - meas[i]) / meas[i] * 100.0))
    return out


def cell_errors(base: np.ndarray, measure: Callable[[int, int, float], np.ndarray], offsets: list[float],
                run_sd: float, rng: np.random.Generator) -> dict[str, list[float]] | None:
    """One cell's :func:`exact_model_errors` on a machine whose speed moves: ``base`` holds each
    run's p50/p95/p99 per service-time draw at the predicted speed (runs, draws, 3);
    ``measure(run, draw, k)`` gives that run's schedule with that draw's service times at ``k``
    times the predicted batch times, and in draw ``d`` each run runs at
    ``exp(offsets[d] + run_sd * z)``."""
    base = np.asarray(base, float)
    if base.ndim != 3 or base.shape[1] != len(offsets) or base.shape[1] < 3:
        return None
    runs, draws = base.shape[:2]
    measured = np.array([[measure(r, d, math.exp(offsets[d] + run_sd * rng.standard_normal())) for r in range(runs)]
                         for d in range(draws)]).transpose(1, 0, 2)
    return exact_model_errors(base, measured)
