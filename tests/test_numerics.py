"""The hand-written numerics that replace slow imports agree with the reference libraries."""

import numpy as np
import pytest
from scipy import stats
from scipy.interpolate import PchipInterpolator

from capsim.backlog import backlog_trend
from capsim.service import pchip
from capsim.tdist import t_cdf, t_ppf


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 9, 10, 29, 100])
def test_t_distribution_matches_scipy(df):
    for x in np.linspace(-15, 15, 61):
        assert t_cdf(x, df) == pytest.approx(stats.t.cdf(x, df), abs=1e-12)
    for p in (0.025, 0.5, 0.8, 0.95, 0.975, 0.999):
        assert t_ppf(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-10, abs=1e-12)


def test_t_distribution_rejects_bad_arguments():
    with pytest.raises(ValueError):
        t_cdf(1.0, 0)
    with pytest.raises(ValueError):
        t_ppf(1.0, 3)


def test_pchip_matches_scipy_on_random_curves():
    rng = np.random.default_rng(7)
    at = np.arange(1, 65, dtype=float)
    for trial in range(300):
        x = np.unique(rng.choice(np.arange(1, 65), rng.integers(2, 8), replace=False)).astype(float)
        if len(x) < 2:
            continue
        y = rng.uniform(1, 100, len(x))
        if trial % 2:
            y = np.sort(y)  # the usual case: compute time grows with batch size
        if trial % 5 == 0:
            y[1] = y[0]  # a flat step
        ours, ref = pchip(x, y, at), PchipInterpolator(x, y, extrapolate=False)(at)
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
        np.testing.assert_allclose(ours[~np.isnan(ours)], ref[~np.isnan(ref)], rtol=1e-12)


def test_backlog_trend_matches_brute_force():
    rng = np.random.default_rng(3)
    for growth in (0.0, 0.3):
        n = 5000
        arrival = np.cumsum(rng.exponential(1.0, n))
        leave = arrival + rng.exponential(2.0, n) + growth * np.arange(n)
        leave[rng.random(n) < 0.01] = np.nan  # never left
        first = 700
        backlog = np.array([i + 1 - np.sum(leave <= arrival[i]) for i in range(first, n)], dtype=float)
        slope = np.polyfit(np.arange(len(backlog)), backlog, 1)[0]
        got_slope, got_last = backlog_trend(arrival, leave, first)
        assert got_slope == pytest.approx(slope, rel=1e-9, abs=1e-12)
        assert got_last == backlog[-1]
