"""Student's t distribution for the interval arithmetic, without importing scipy.stats.

scipy.stats costs about a second at start-up, more than a whole ``capsim plan`` search takes;
the intervals only need integer degrees of freedom, where the CDF has a closed form.
"""

from __future__ import annotations

import functools
import math


def t_cdf(x: float, df: int) -> float:
    """P(T <= x) for Student's t with integer ``df`` >= 1 (closed form of Abramowitz & Stegun 26.7.3/4)."""
    if df < 1 or int(df) != df:
        raise ValueError(f"df must be a positive integer, got {df}")
    if math.isinf(x):
        return 1.0 if x > 0 else 0.0
    theta = math.atan2(abs(x), math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    c2 = c * c
    if df % 2 == 1:
        # A = (2/pi) (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...)), df - 2 terms after theta
        term, total = 1.0, 0.0
        if df > 1:
            total = 1.0
            for k in range(1, (df - 3) // 2 + 1):
                term *= c2 * (2 * k) / (2 * k + 1)
                total += term
            total *= s * c
        a = 2.0 / math.pi * (theta + total)
    else:
        # A = sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...), df/2 terms
        term, total = 1.0, 1.0
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        a = s * total
    a = min(max(a, 0.0), 1.0)
    return 0.5 + 0.5 * a if x >= 0 else 0.5 - 0.5 * a


@functools.lru_cache(maxsize=512)
def t_ppf(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with integer ``df`` (bisection on :func:`t_cdf` to 1e-12)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_ppf(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)
