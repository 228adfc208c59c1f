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

Once ``L`` reaches ``cores`` the host's own work saturates them and nothing is sustainable.
Because the slowdown grows with the rate, the highest sustainable rate is a fixed point
(:func:`sustainable_rps`).
"""

from __future__ import annotations

import math

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


def host_load_cores(sc) -> float:
    """Cores the server's own per-request work keeps busy at the offered rate."""
    return host_rate_rps(sc) * sc.service.cpu_sharing.host_ms / 1000.0


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


def slowdowns(sc) -> dict[int, float]:
    """Slowdown at the scenario's offered rate for each batch size of its curve."""
    curve = sc.service.curve_ms()
    if not active(sc):
        return {b: 1.0 for b in curve}
    load = host_load_cores(sc)
    return {b: factor(sc.service.cpu_sharing, load, b) for b in curve}


def effective_curve_ms(sc) -> dict[int, float]:
    """The compute time by batch size the engines run with: the curve, slowed by shared cores."""
    curve = sc.service.curve_ms()
    if not active(sc):
        return curve
    ks = slowdowns(sc)
    return {b: ms * ks[b] for b, ms in curve.items()}


def sustainable_rps(sc, bound_at) -> float:
    """Highest offered rate the model keeps up with when it shares the cores.

    ``bound_at(curve)`` is the model's throughput bound (requests/s) for a compute curve; the
    answer is the rate where that bound, with the curve slowed at that rate, equals the rate
    (found by bisection: the bound only falls as the rate rises)."""
    curve = sc.service.curve_ms()
    if not active(sc):
        return bound_at(curve)
    cs = sc.service.cpu_sharing

    def bound(rate: float) -> float:
        load = decoded_rps(sc, rate) * cs.host_ms / 1000.0
        return bound_at({b: ms * factor(cs, load, b) for b, ms in curve.items()})

    lo, hi = 0.0, bound_at(curve)  # never above the model's own bound
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
    return f"the server's own work keeps {load:.2f} of {cs.cores} cores busy; the model runs {span} slower"
