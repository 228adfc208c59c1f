"""Service-time curves: mean batch compute time by batch size, variability, contention."""

from __future__ import annotations

import functools

import numpy as np

from capsim.config import Service, Variability


class ServiceCurve:
    """Mean compute time (seconds) of a batch of each size 1..max_batch, from measured points.

    Between measured sizes the curve is interpolated monotonically (PCHIP), so it never
    overshoots the measured values; sizes above the largest measured one are refused at
    scenario load time.
    """

    def __init__(self, batch_latency_ms: dict[int, float], max_batch: int):
        sizes = tuple(sorted(int(b) for b in batch_latency_ms))
        if max_batch > sizes[-1]:
            raise ValueError(f"batch size {max_batch} is above the largest measured size {sizes[-1]}")
        # Index by batch size directly: seconds[b]; index 0 unused.
        self.seconds = _curve_seconds(sizes, tuple(float(batch_latency_ms[b]) for b in sizes), max_batch)
        self.max_batch = max_batch

    def mean_s(self, b: int) -> float:
        return float(self.seconds[b])

    def capacity_rps(self, instances: int = 1, b: int | None = None, contention: float = 1.0) -> float:
        """Throughput bound with every instance always busy on batches of size b (default: the largest)."""
        b = b or self.max_batch
        return instances * b / (self.seconds[b] * contention)


@functools.lru_cache(maxsize=256)
def _curve_seconds(sizes: tuple[int, ...], ms: tuple[float, ...], max_batch: int) -> np.ndarray:
    """Seconds per batch size 0..max_batch (read-only; cached because sweeps and plans rebuild the
    same curve for every config they try)."""
    b = np.arange(1, max_batch + 1, dtype=float)
    if len(sizes) == 1:
        values = np.full(len(b), ms[0])
    else:
        values = pchip(np.array(sizes, float), np.array(ms), b)
    out = np.concatenate(([np.nan], values / 1000.0))
    out.setflags(write=False)
    return out


def _pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Derivatives at the knots that keep the Hermite cubic monotone (Fritsch-Butland, as scipy's PCHIP)."""
    h = np.diff(x)
    m = np.diff(y) / h
    if len(x) == 2:
        return np.array([m[0], m[0]])
    d = np.zeros_like(y)
    w1, w2 = 2 * h[1:] + h[:-1], h[1:] + 2 * h[:-1]
    same = (np.sign(m[:-1]) == np.sign(m[1:])) & (m[:-1] != 0) & (m[1:] != 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = (w1 / m[:-1] + w2 / m[1:]) / (w1 + w2)
        d[1:-1] = np.where(same, 1.0 / inv, 0.0)

    def edge(h0, h1, m0, m1):  # one-sided three-point estimate, clipped to stay monotone
        e = ((2 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
        if np.sign(e) != np.sign(m0):
            return 0.0
        if np.sign(m0) != np.sign(m1) and abs(e) > 3 * abs(m0):
            return 3 * m0
        return e

    d[0] = edge(h[0], h[1], m[0], m[1])
    d[-1] = edge(h[-1], h[-2], m[-1], m[-2])
    return d


def pchip(x: np.ndarray, y: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Monotone piecewise-cubic interpolation of (x, y) at ``at`` (NaN outside [x0, xn]).

    The same curve as scipy's PchipInterpolator, written out because importing
    scipy.interpolate costs about a second of every command's start-up.
    """
    d = _pchip_slopes(x, y)
    k = np.clip(np.searchsorted(x, at, side="right") - 1, 0, len(x) - 2)
    h = x[k + 1] - x[k]
    t = (at - x[k]) / h
    t2, t3 = t * t, t * t * t
    out = ((2 * t3 - 3 * t2 + 1) * y[k] + (t3 - 2 * t2 + t) * h * d[k]
           + (-2 * t3 + 3 * t2) * y[k + 1] + (t3 - t2) * h * d[k + 1])
    out[(at < x[0]) | (at > x[-1])] = np.nan
    return out


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
