"""Service-time curves: mean batch compute time by batch size, variability, contention."""

from __future__ import annotations

import numpy as np

from capsim.config import Service, Variability


class ServiceCurve:
    """Mean compute time (seconds) of a batch of each size 1..max_batch, from measured points.

    Between measured sizes the curve is interpolated monotonically (PCHIP), so it never
    overshoots the measured values; sizes above the largest measured one are refused at
    scenario load time.
    """

    def __init__(self, batch_latency_ms: dict[int, float], max_batch: int):
        sizes = np.array(sorted(batch_latency_ms), dtype=float)
        ms = np.array([batch_latency_ms[int(b)] for b in sizes], dtype=float)
        if max_batch > sizes[-1]:
            raise ValueError(f"batch size {max_batch} is above the largest measured size {int(sizes[-1])}")
        b = np.arange(1, max_batch + 1, dtype=float)
        if len(sizes) == 1:
            values = np.full(len(b), ms[0])
        else:
            from scipy.interpolate import PchipInterpolator  # here: it costs ~1 s of start-up

            values = PchipInterpolator(sizes, ms, extrapolate=False)(b)
        # Index by batch size directly: seconds[b]; index 0 unused.
        self.seconds = np.concatenate(([np.nan], values / 1000.0))
        self.max_batch = max_batch

    def mean_s(self, b: int) -> float:
        return float(self.seconds[b])

    def capacity_rps(self, instances: int = 1, b: int | None = None, contention: float = 1.0) -> float:
        """Throughput bound with every instance always busy on batches of size b (default: the largest)."""
        b = b or self.max_batch
        return instances * b / (self.seconds[b] * contention)


def variability_sampler(v: Variability):
    """A function ``(rng, k) -> k multipliers`` with mean 1 and the configured coefficient of variation.

    For ``empirical`` it draws k uniforms in [0, 1); :func:`empirical_ratios` turns each into a
    measured sample of the batch's size.
    """
    cv = v.cv
    if v.distribution == "none":
        return None
    if v.distribution == "empirical":
        return lambda rng, k: rng.random(k)
    if v.distribution == "exponential":
        return lambda rng, k: rng.exponential(1.0, k)
    if v.distribution == "gamma":
        shape = 1.0 / cv**2
        return lambda rng, k: rng.gamma(shape, 1.0 / shape, k)
    if v.distribution == "lognormal":
        sigma2 = np.log1p(cv**2)
        mu, sigma = -sigma2 / 2.0, np.sqrt(sigma2)
        return lambda rng, k: rng.lognormal(mu, sigma, k)
    raise ValueError(v.distribution)


def variability_moments(v: Variability) -> tuple[float, float]:
    """Mean and variance of the multiplier (mean is 1 by construction)."""
    if v.distribution == "none":
        return 1.0, 0.0
    if v.distribution == "exponential":
        return 1.0, 1.0
    return 1.0, v.cv**2


def contention_table(service: Service, instances: int) -> np.ndarray:
    """Slowdown factor indexed by the number of busy instances on the device (index 0 unused).

    Counts between measured ones are interpolated linearly; one busy instance is 1.0.
    """
    points = {1: 1.0, **service.contention}
    ks = sorted(points)
    table = np.ones(instances + 1)
    table[1:] = np.interp(np.arange(1, instances + 1), ks, [points[k] for k in ks])
    return table


def empirical_ratios(samples_ms: dict[int, np.ndarray], curve: ServiceCurve) -> list[np.ndarray | None]:
    """For each batch size b (index b), measured samples divided by the curve's value at b.

    Sizes that were not measured borrow the relative spread of the nearest measured size below
    (above for sizes under the smallest), so the curve sets the mean level and the samples the shape.
    """
    measured = sorted(samples_ms)
    table: list[np.ndarray | None] = [None]
    for b in range(1, curve.max_batch + 1):
        below = [m for m in measured if m <= b]
        m = below[-1] if below else measured[0]
        s = np.sort(samples_ms[m])
        table.append(s / np.median(s))
    return table
