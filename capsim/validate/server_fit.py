"""What the server's batch-1 calibration runs fit: how strongly the overlap with the decode shows
inside the server, how much a batch slows the decode there, and how widely the model's own batch
times spread there.

**Overlap strength.** The co-run (:mod:`capsim.validate.corun`) times a batch beside a decode
that never pauses, the worst case. Inside the server the overlaps are shorter and more broken up,
and three recorded validations on a 2-core VM measured batch-1 compute nearly flat from 0.3 to
0.85 of capacity (+8 %) where the co-run's speeds predicted +20 %: the prediction was too fast at
light load. So the server's batch-1 calibration runs at two rates. At each rate the mean slowdown
the simulation would give a batch is known in closed form (the overlap with the decode's busy
share, the evenly spread host work, the after-idle extra); the strength ``s`` scales the co-run's
extra time ``1 / speed - 1`` so that the ratio of the two slowdowns matches the ratio of the two
measured compute times. ``s = 1`` is the co-run as measured, ``s = 0`` no overlap slowdown. The
model's speed alone then follows from either rate; the geometric mean of the two is kept, which
is the same number when ``s`` is not clamped. It is opt-in (``capsim validate --overlap-fit``):
once the in-server times were read by their mean, the two rates differed on the 2-core VM by
less than the machine drifts, and the fit came out 1.00 before the cells and 0.00 after them.

**Decode speed.** The co-run times the decode beside a busy batch of each size, in a quiet
process. Inside the server it ran slower: record p's batch-1 calibration measured 12.2 ms per
decode against 7.3 ms alone, where the co-run's x0.78 (beside batch 8, the only size it then
timed) gives about 8.7, and every cell's decode was predicted 10-26 % short, more at higher load.
Timed inside the server (12.7 rps, B=1), decodes with no batch beside them took 8.0 ms and those
wholly beside a batch 13.8 ms: x0.5. So the decode's speed beside a batch is the one that makes
the simulated decode at the calibration rate take as long as the measured one. The simulated
decode takes ``alone x (1 + u (1 / speed - 1))`` on average, ``u`` the share of it beside a batch;
each round reads ``u`` off the last simulation and solves for the speed, which converges in two or
three rounds (``u`` moves little). One speed for every batch size: the co-run's shape by size is
noise on this machine (beside batch 1 it came out x0.51 in record q and x0.76 in record r, beside
batch 8 x0.63 in both, while the fitted speed was x0.55 and x0.56), and in the cells the decode
took as long beside B=8's batches as beside B=1's. Re-predicting q and r
(``calibration/validate/compare_decode_fit.py``), the cells' decode means were off by a median
2.0 % with one fitted speed, 3.0-3.2 % with the co-run's sizes scaled to it by one factor (an
interim variant), 6.8-13.0 % with the co-run as measured.

**Own spread.** With the cores shared moment to moment the engine makes part of the spread of
batch times itself (a batch that overlaps a decode runs slower). The rest, the model's own
spread, was the co-run's (the model alone in a quiet process); in the server other threads
interrupt it too, and with a weaker overlap the engine's share of the spread shrinks. So the
own spread is the one that makes the simulated batch-1 times at the calibration rate spread as
the measured ones did (coefficient of variation), found by subtracting variances in a few rounds.
"""

from __future__ import annotations

import math

import numpy as np

from capsim import host_cpu
from capsim.config import CpuSharing
from capsim.validate import idle

ITERATIONS = 40     # bisection steps on s in [0, 1]: 1e-12, far below the measurement
SPREAD_ROUNDS = 4   # variance subtraction converges in 2-3 rounds; each is one short simulation
DECODE_ROUNDS = 3   # the decode speed's fixed point: the share beside a batch moves little per round
MIN_DECODE_SPEED = 0.1  # a decode 10x slower beside a batch is past anything measured: a bad run


def scaled_speed(speed: float, strength: float) -> float:
    """A co-run speed with its extra time ``1 / speed - 1`` scaled by ``strength``."""
    return 1.0 / (1.0 + strength * (1.0 / speed - 1.0))


def sharing_slowdown(host: dict, overhead: dict, strength: float, rate: float) -> float:
    """Mean slowdown of a batch of 1 from the host's work at a Poisson ``rate``: the overlap with
    the decode's busy share (the co-run's speed at ``strength``) times the rest of the host's
    work spread evenly (``host['sharing']``, ``host['corun']`` as :func:`validate.share_cores` sets them)."""
    sh, corun = host["sharing"], host["corun"]
    cs = CpuSharing(cores=sh["cores"], model_cores=sh["model_cores"], host_ms=sh["host_ms"])
    pre_ms = overhead["preprocess_ms"]
    v1 = host_cpu.log_interp({int(b): v for b, v in corun["model_speed"].items()}, 1)
    pre_speed = decode_speed_b1(sh["overlap"]) if sh.get("overlap") else corun["preprocess_speed"]
    k = host_cpu.overlap_slowdown(host_cpu.busy_share(rate, pre_ms, pre_speed),
                                  scaled_speed(v1, strength))
    return k * host_cpu.factor(cs, rate * max(0.0, cs.host_ms - pre_ms) / 1000.0)


def slowdown(host: dict, overhead: dict, strength: float, rate: float, compute_ms: float) -> float:
    """Mean slowdown of a batch of 1 in a B=1 server at a Poisson ``rate`` beside the host's work,
    with the overlap at ``strength``: what its measured compute time holds besides the model alone
    (:func:`sharing_slowdown` and the after-idle extra)."""
    k = sharing_slowdown(host, overhead, strength, rate)
    a = host.get("after_idle")
    if a:
        k *= 1.0 + idle.mean_extra(a["extra_ms"], a["tau_ms"], rate, compute_ms) / compute_ms
    return k


def fit(host: dict, overhead: dict) -> None:
    """Fit ``host['overlap_strength']`` from the batch-1 compute times at two rates and scale the
    co-run's model speeds in ``host['sharing']['overlap']`` by it; ``compute_ratio_alone`` and
    ``calibration_slowdown`` follow. Needs a co-run (:func:`validate.share_cores`) and the light
    rate's measurement; without them ``host`` is left as it is."""
    ov = (host.get("sharing") or {}).get("overlap")
    if not ov or "compute_ratio_light" not in host:
        return
    hi, lo = (host["rate_rps"], host["compute_b1_ms"]), (host["rate_light_rps"], host["compute_b1_light_ms"])

    def gap(s: float) -> float:  # log of the modelled ratio of the two slowdowns over the measured one
        return (math.log(slowdown(host, overhead, s, *hi) / slowdown(host, overhead, s, *lo))
                - math.log(host["compute_ratio"] / host["compute_ratio_light"]))

    if gap(0.0) >= 0.0:
        s = 0.0
    elif gap(1.0) <= 0.0:
        s = 1.0
    else:
        a, b = 0.0, 1.0
        for _ in range(ITERATIONS):
            m = (a + b) / 2.0
            a, b = (m, b) if gap(m) < 0.0 else (a, m)
        s = (a + b) / 2.0
    k_hi, k_lo = slowdown(host, overhead, s, *hi), slowdown(host, overhead, s, *lo)
    _scale_speeds(host, s)
    host["calibration_slowdown"] = sharing_slowdown(host, overhead, s, host["rate_rps"])  # as share_cores reports it
    host["compute_ratio_alone"] = math.sqrt(host["compute_ratio"] / k_hi * host["compute_ratio_light"] / k_lo)


def set_strength(host: dict, overhead: dict, strength: float) -> None:
    """Scale the co-run's model speeds in ``host['sharing']['overlap']`` by a given overlap
    ``strength`` (not fitted), with the batch-1 ratio's sharing slowdown taken again at it; the
    after-idle share already taken out stays out. Without a co-run ``host`` is left as it is."""
    ov = (host.get("sharing") or {}).get("overlap")
    if not ov or "corun" not in host:
        return
    k_old = host["calibration_slowdown"]
    _scale_speeds(host, strength)
    host["overlap_strength_given"] = True
    k_new = sharing_slowdown(host, overhead, strength, host["rate_rps"])
    host["compute_ratio_alone"] *= k_old / k_new
    host["calibration_slowdown"] = k_new


def _scale_speeds(host: dict, strength: float) -> None:
    """``host['overlap_strength']`` and the overlap's model speeds: the co-run's at that strength."""
    host["overlap_strength"] = strength
    host["sharing"]["overlap"]["model_speed"] = {int(b): round(scaled_speed(v, strength), 4)
                                                 for b, v in host["corun"]["model_speed"].items()}


def fit_decode_speed(host: dict, overhead: dict, simulated_decode_ms) -> None:
    """Set the overlap's decode speed beside a batch in ``host['sharing']`` (and
    ``host['decode_speed']``) to the one, for every batch size, that makes
    ``simulated_decode_ms(host)`` (the simulated mean decode at the batch-1 calibration's rate, ms)
    match the measured ``host['decode_ms']``, starting from the co-run's speed beside batch 1. A
    slower decode overlaps more batches, so the mean slowdown the batch-1 ratio was divided by
    (``calibration_slowdown``) is taken again at the new speed. Needs a co-run; without one
    ``host`` is left as it is."""
    ov = (host.get("sharing") or {}).get("overlap")
    if not ov or "decode_ms" not in host:
        return
    alone, target = overhead["preprocess_ms"], host["decode_ms"]
    speed = host_cpu.log_interp(corun_decode_speeds(host["corun"]), 1)
    if target <= alone:  # no slower than alone: the decode is never slowed
        speed = 1.0
    else:
        for _ in range(DECODE_ROUNDS):
            _set_decode_speed(host, overhead, speed)
            extra = 1.0 / speed - 1.0
            share = (simulated_decode_ms(host) / alone - 1.0) / extra if extra > 0 else 0.0  # u: the part beside a batch
            if share <= 0.0:
                break   # no decode ever ran beside a batch: the speed does not show
            speed = max(1.0 / (1.0 + (target / alone - 1.0) / share), MIN_DECODE_SPEED)
    _set_decode_speed(host, overhead, speed)
    host["decode_speed"] = speed


def corun_decode_speeds(corun: dict) -> dict[int, float]:
    """The co-run's decode speed by the size of the batch beside it (older co-runs timed it beside
    the largest batch only: that speed for every size)."""
    by = corun.get("preprocess_speed_by_batch") or {1: corun["preprocess_speed"]}
    return {int(b): float(v) for b, v in by.items()}


def _set_decode_speed(host: dict, overhead: dict, speed: float) -> None:
    """The overlap's decode speed (every batch size), with the batch-1 ratio's sharing slowdown taken again."""
    k_old = host["calibration_slowdown"]
    ov = host["sharing"]["overlap"]
    ov.pop("preprocess_speed_by_batch", None)
    ov["preprocess_speed"] = round(speed, 4)
    k_new = sharing_slowdown(host, overhead, host.get("overlap_strength", 1.0), host["rate_rps"])
    host["compute_ratio_alone"] *= k_old / k_new
    host["calibration_slowdown"] = k_new


def decode_speed_b1(overlap: dict) -> float:
    """The decode's speed beside a batch of 1 in a ``cpu_sharing.overlap`` section (as a dict)."""
    by = overlap.get("preprocess_speed_by_batch")
    if by:
        return host_cpu.log_interp({int(b): v for b, v in by.items()}, 1)
    return overlap.get("preprocess_speed", 1.0)


def cv(times) -> float:
    """Coefficient of variation of batch times, the slowest 1 % left out (one stall is not spread)."""
    t = trimmed(times)
    return float(np.std(t) / np.mean(t))


def trimmed(times) -> np.ndarray:
    """Batch times without the slowest 1 %."""
    t = np.asarray(times, dtype=float)
    return t[t <= np.quantile(t, 0.99)]


def fit_spread(host: dict, service_times) -> None:
    """Set ``host['own_cv']``, the model's own spread in the server: the variability whose
    simulated batch-1 times at ``host['rate_rps']`` (``service_times(host)``, in ms) spread as
    the measured ones (``host['compute_cv']``). Never below the co-run's spread of the model
    alone. Needs a co-run; without one ``host`` is left as it is."""
    if not (host.get("sharing") or {}).get("overlap") or "compute_cv" not in host:
        return
    floor = host["corun"]["alone_cv"]
    own = floor
    for _ in range(SPREAD_ROUNDS):
        host["own_cv"] = own
        simulated = cv(service_times(host))
        own = math.sqrt(max(floor ** 2, own ** 2 + host["compute_cv"] ** 2 - simulated ** 2))
    host["own_cv"] = own
