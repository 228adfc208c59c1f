"""What the server's batch-1 calibration runs fit: how strongly the overlap with the decode shows
inside the server, and how widely the model's own batch times spread there.

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
    k = host_cpu.overlap_slowdown(host_cpu.busy_share(rate, pre_ms, corun["preprocess_speed"]),
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
    host["overlap_strength"] = s
    ov["model_speed"] = {int(b): round(scaled_speed(v, s), 4) for b, v in host["corun"]["model_speed"].items()}
    host["calibration_slowdown"] = sharing_slowdown(host, overhead, s, host["rate_rps"])  # as share_cores reports it
    host["compute_ratio_alone"] = math.sqrt(host["compute_ratio"] / k_hi * host["compute_ratio_light"] / k_lo)


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
