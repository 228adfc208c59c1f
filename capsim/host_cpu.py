"""A CPU model slowed by the server's own work on the same cores (``service.cpu_sharing``).

On a CPU server the model's runtime threads share the cores with JPEG decoding, HTTP handling and
batching bookkeeping. That work arrives with the requests, so at an offered rate lambda it keeps
``L = lambda x host_ms`` cores busy on average, spread over time (lambda at most what the
pre-processing pool can decode: frames shed before it cost next to nothing). Each batch then runs
``slowdown(b)`` times slower than its curve value:

- fluid (the default): the batch wants ``model_cores`` and gets what ``L`` leaves of ``cores``,
  ``max(1, model_cores / (cores - L))``;
- measured (``slowdown_per_core``, what ``capsim validate`` fits in the real server): ``1 + k(b) L``,
  with ``k`` by batch size, interpolated in log batch size. Runtimes whose threads meet at a
  barrier after every operator lose more than their fair share when one core is taken, and more
  so for big batches: the fluid formula is then a lower bound.

With ``overlap.model_speed`` measured, the sharing between pre-processing and the model is
simulated moment to moment instead (:mod:`capsim.sim.shared_cores`): a batch runs at its own
speed, or at ``model_speed(b)`` while a pre-processing worker is busy beside it, and the worker
at ``preprocess_speed``. Only the rest of the host's work, ``host_ms - preprocess.ms`` per request,
is then spread evenly as above. The analytic figures (capacity, napkin) use the average of that
overlap: a batch overlaps pre-processing for the share of time the pool is busy (an
approximation: a longer batch meets more arrivals than the time average says).

Once ``L`` reaches ``cores`` the host's own work saturates them and nothing is sustainable.
Because the slowdown grows with the rate, the highest sustainable rate is a fixed point
(:func:`sustainable_rps`).
"""

from __future__ import annotations

import math

from capsim.sim.spells import machine_throughput_factor

# A host that is saturated by its own work leaves the model nothing: the batch is this many
# times slower, which the simulator reports as an unbounded queue (unstable), never a latency.
SATURATED = 1e6


def active(sc) -> bool:
    """Whether the scenario models CPU sharing at all."""
    return sc.service.cpu_sharing.cores > 0


def decoded_rps(sc, rate: float) -> float:
    """Of ``rate`` offered, the requests per second that cost the host its per-request work: no
    more than the pre-processing pool can decode."""
    pre = sc.service.preprocess
    if pre.workers > 0 and pre.ms > 0:
        return min(rate, pre.workers * 1000.0 / pre.ms)
    return rate


def host_rate_rps(sc) -> float:
    """:func:`decoded_rps` of the scenario's offered rate."""
    return decoded_rps(sc, sc.arrivals.offered_rps() or 0.0)


def moment_to_moment(sc) -> bool:
    """Whether pre-processing and batches share the cores event by event (``overlap.model_speed``)."""
    return active(sc) and bool(sc.service.cpu_sharing.overlap.model_speed)


def spread_ms(sc) -> float:
    """CPU per request spread evenly over time: all of ``host_ms``, or with moment-to-moment
    sharing its part beyond pre-processing (which is then simulated as it happens)."""
    cs = sc.service.cpu_sharing
    if moment_to_moment(sc):
        return max(0.0, cs.host_ms - sc.service.preprocess.ms)
    return cs.host_ms


def host_load_cores(sc) -> float:
    """Cores the server's own evenly spread per-request work keeps busy at the offered rate."""
    return host_rate_rps(sc) * spread_ms(sc) / 1000.0


def preprocess_speed(ov, b: int) -> float:
    """The speed of a pre-processing worker beside a batch of ``b`` (``cpu_sharing.overlap``)."""
    return log_interp(ov.preprocess_speed_by_batch, b) if ov.preprocess_speed_by_batch else ov.preprocess_speed


def pre_busy_share(sc, rate: float, b: int = 1) -> float:
    """Share of time a batch of ``b`` has pre-processing running beside it at ``rate``: the pool's
    busy workers (each slowed while it overlaps), at most 1 (an upper bound with several workers)."""
    pre, ov = sc.service.preprocess, sc.service.cpu_sharing.overlap
    return busy_share(decoded_rps(sc, rate), pre.ms, preprocess_speed(ov, b))


def busy_share(decoded_rps_: float, preprocess_ms: float, preprocess_speed: float) -> float:
    """Pre-processing's busy share at a decoded rate (each decode slowed while it overlaps), at most 1."""
    return min(1.0, decoded_rps_ * preprocess_ms / 1000.0 / preprocess_speed)


def overlap_factor(sc, rate: float, b: int) -> float:
    """Mean slowdown of a batch of ``b`` from overlapping pre-processing at ``rate`` (1 without
    moment-to-moment sharing): its speed is ``model_speed(b)`` for the busy share of its time."""
    if not moment_to_moment(sc):
        return 1.0
    ov = sc.service.cpu_sharing.overlap
    return overlap_slowdown(pre_busy_share(sc, rate, b), log_interp(ov.model_speed, b))


def overlap_slowdown(busy_share: float, model_speed: float) -> float:
    """Mean slowdown of a batch that runs at ``model_speed`` for ``busy_share`` of its time."""
    return 1.0 / (1.0 - min(1.0, busy_share) * (1.0 - model_speed))


def log_interp(table: dict[int, float], b: int) -> float:
    """The value at batch size ``b`` of a table by batch size: linear in log batch size between
    its points, flat outside them."""
    sizes = sorted(table)
    if b <= sizes[0]:
        return table[sizes[0]]
    if b >= sizes[-1]:
        return table[sizes[-1]]
    hi = next(s for s in sizes if s >= b)
    lo = max(s for s in sizes if s <= b)
    if hi == lo:
        return table[lo]
    w = (math.log(b) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return table[lo] + w * (table[hi] - table[lo])


def factor(cs, load_cores: float, b: int = 1) -> float:
    """The slowdown of a batch of ``b`` with ``load_cores`` of host work (see the module)."""
    if load_cores >= cs.cores:
        return SATURATED
    if cs.slowdown_per_core:
        return 1.0 + log_interp(cs.slowdown_per_core, b) * load_cores
    return max(1.0, (cs.model_cores or cs.cores) / (cs.cores - load_cores))


def spread_slowdowns(sc) -> dict[int, float]:
    """Slowdown from the evenly spread host work at the offered rate, by batch size of the curve."""
    curve = sc.service.curve_ms()
    if not active(sc):
        return {b: 1.0 for b in curve}
    load = host_load_cores(sc)
    return {b: factor(sc.service.cpu_sharing, load, b) for b in curve}


def slowdowns(sc) -> dict[int, float]:
    """Mean slowdown at the scenario's offered rate for each batch size of its curve (with
    moment-to-moment sharing, the spread part times the mean overlap)."""
    ks = spread_slowdowns(sc)
    if not moment_to_moment(sc):
        return ks
    rate = sc.arrivals.offered_rps() or 0.0
    return {b: k * overlap_factor(sc, rate, b) for b, k in ks.items()}


def effective_curve_ms(sc) -> dict[int, float]:
    """The mean compute time by batch size: the curve, slowed by shared cores (the analytic figures)."""
    curve = sc.service.curve_ms()
    if not active(sc):
        return curve
    ks = slowdowns(sc)
    return {b: ms * ks[b] for b, ms in curve.items()}


def engine_curve_ms(sc) -> dict[int, float]:
    """The compute time by batch size the engines run with: the curve slowed by the spread host
    work; with moment-to-moment sharing the engine adds the overlap itself, event by event."""
    curve = sc.service.curve_ms()
    if not active(sc):
        return curve
    ks = spread_slowdowns(sc)
    return {b: ms * ks[b] for b, ms in curve.items()}


def sustainable_rps(sc, bound_at) -> float:
    """Highest offered rate the model keeps up with when it shares the cores (and with the
    machine's speed over time: ``service.slow_spells`` take a share of its throughput,
    ``service.speed_swings`` of mean 1 add a little).

    ``bound_at(curve)`` is the model's throughput bound (requests/s) for a curve of the time an
    instance is held per batch (the compute time and ``service.batch_overhead_ms``); the answer is
    the rate where that bound, with the compute slowed at that rate, equals the rate (found by
    bisection: the bound only falls as the rate rises)."""
    return machine_throughput_factor(sc.service) * _sustainable_rps(sc, bound_at)


def _sustainable_rps(sc, bound_at) -> float:
    curve = sc.service.curve_ms()
    held = sc.service.batch_overhead_ms
    own = bound_at({b: ms + held for b, ms in curve.items()})  # the model's own bound
    if not active(sc):
        return own
    cs = sc.service.cpu_sharing

    def bound(rate: float) -> float:
        load = decoded_rps(sc, rate) * spread_ms(sc) / 1000.0
        return bound_at({b: ms * factor(cs, load, b) * overlap_factor(sc, rate, b) + held for b, ms in curve.items()})

    lo, hi = 0.0, own  # never above the model's own bound
    if bound(hi) >= hi:
        return hi
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if bound(mid) >= mid else (lo, mid)
    return lo


def describe(sc) -> str | None:
    """One line for reports: the slowdown and why, or None without sharing."""
    if not active(sc):
        return None
    cs = sc.service.cpu_sharing
    load = host_load_cores(sc)
    ks = slowdowns(sc)
    if max(ks.values()) >= SATURATED:
        return f"the server's own work ({load:.2f} cores) saturates the {cs.cores} cores: the model gets none"
    lo, hi = min(ks.values()), max(ks.values())
    span = f"x{lo:.3f}" if math.isclose(lo, hi) else f"x{lo:.3f}-{hi:.3f}"
    if moment_to_moment(sc):
        ov = cs.overlap
        speeds = ", ".join(f"b{b} x{v:g}" for b, v in sorted(ov.model_speed.items()))
        worker = (", ".join(f"b{b} x{v:g}" for b, v in sorted(ov.preprocess_speed_by_batch.items()))
                  if ov.preprocess_speed_by_batch else f"x{ov.preprocess_speed:g}")
        return (f"pre-processing and batches share the {cs.cores} cores moment to moment (a batch beside "
                f"pre-processing runs at {speeds} of its speed, the worker at {worker}); "
                f"the rest of the server's work keeps {load:.2f} cores busy; on average the model runs {span} slower")
    return f"the server's own work keeps {load:.2f} of {cs.cores} cores busy; the model runs {span} slower"
