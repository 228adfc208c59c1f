"""The seed's worked examples, as built-in scenarios, give the answers the seed argues for.

Every expected number here is derived from the scenario's own parameters (batch times, rates,
caps) by hand or by queueing theory, never copied from a simulation. Runs are shortened with
``run.requests`` overrides; the statistical tolerances leave room for that.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from capsim import analytic
from capsim.cli import napkin_note
from capsim.config import load_scenario
from capsim.simulate import simulate
from capsim.sim.queue import DROP_REASONS

REASONS = set(DROP_REASONS[1:])


@functools.lru_cache(maxsize=None)
def run(name, *overrides):
    return simulate(load_scenario(name, list(overrides)))


def measured(res):
    sc = res.scenario
    return sc.run.replications * (sc.run.requests - sc.run.warmup_requests)


def assert_conserved(res):
    """Every measured arrival is completed or dropped with a reason; per replication everything is."""
    assert res.completed + res.dropped == measured(res)
    assert set(res.drops_by_reason) == REASONS
    assert sum(res.drops_by_reason.values()) == res.dropped
    assert res.drop_rate == pytest.approx(res.dropped / measured(res))
    for tr in res.traces:
        n = len(tr.arrival)
        assert n == res.scenario.run.requests
        assert int(tr.completed.sum()) + int((tr.drop_reason > 0).sum()) == n
        assert int(tr.batch_size_by_batch.sum()) == int(tr.completed.sum())


# --------------------------------------------------------------------------- example 1: single-image API on one GPU


EX1 = "example-1-single-image-gpu"
EX1_RUN = ("run.requests=20000",)


def test_example_1_meets_p95_120ms_at_100_rps():
    res = run(EX1, *EX1_RUN)
    assert_conserved(res)
    assert res.stable and res.dropped == 0
    assert res.offered_rps == pytest.approx(100, rel=0.02)
    assert res.throughput_rps == pytest.approx(100, rel=0.02)
    assert res.latency_ms["p95"] <= 120
    lo, hi = res.latency_ci_ms["p95"]
    assert lo <= res.latency_ms["p95"] <= hi and hi <= 120
    assert res.slo["met"] is True and res.slo["verdict"] == "met"
    assert res.slo["throughput_met"] is True
    # Micro-batching does happen at this load (batches of more than one on average), capped at 4.
    assert 1 < res.mean_batch_size <= 4
    assert max(res.batch_size_histogram) <= 4
    # Every latency includes the 10 ms overhead (6 ms pre/post + 4 ms network) and at least one
    # batch-of-one compute time (18 ms).
    assert min(tr.latency_ms[tr.completed].min() for tr in res.traces) >= 10 + 18 - 1e-6


def test_example_1_napkin_is_reported_beside_the_simulation_and_is_not_the_truth():
    res = run(EX1, *EX1_RUN)
    nap = res.napkin
    # The seed's napkin: 10 ms max wait + 6 ms pre/post + 4 ms network + 24 ms compute at b=4 = 44 ms.
    assert nap.latency_ms == pytest.approx(10 + 6 + 4 + 24)
    assert nap.capacity_rps == pytest.approx(4 / 0.024)
    assert "44" in nap.formula
    d = res.to_dict()
    assert d["napkin"]["latency_ms"] == pytest.approx(44)
    assert d["latency_ms"]["p95"] == res.latency_ms["p95"]
    # Queueing (utilization well above 0.5) pushes the tail above the napkin figure.
    assert res.utilization > 0.5
    assert res.breakdown_ms["queue_wait"] > 0
    assert res.latency_ms["p95"] > nap.latency_ms
    assert res.latency_ms["p99"] > nap.latency_ms
    note = napkin_note(res)
    assert "above" in note and "queueing" in note
    assert f"{nap.latency_ms:.1f}" in note and f"{res.latency_ms['p95']:.1f}" in note


def test_example_1_napkin_note_explains_a_simulation_below_the_napkin():
    # At 5 rps nothing queues and batches rarely fill: the tail is below the 44 ms napkin figure,
    # which assumes the full 10 ms wait and a full batch of 4.
    res = run(EX1, "run.requests=5000", "run.warmup_requests=200", "arrivals.rate_rps=5")
    assert res.stable
    assert res.latency_ms["p95"] < res.napkin.latency_ms
    assert res.mean_batch_size < 1.2
    note = napkin_note(res)
    assert "below" in note and "batch" in note


# --------------------------------------------------------------------------- example 2: multi-camera


EX2 = "example-2-multi-camera"
EX2_RUN = ("run.requests=20000",)


def test_example_2_keeps_p95_under_150ms_and_reports_drops():
    res = run(EX2, *EX2_RUN)
    assert_conserved(res)
    assert res.stable
    assert res.latency_ms["p95"] < 150
    assert res.slo["met"] is True
    assert res.offered_rps == pytest.approx(6 * 25, rel=0.01)
    # Drops are part of the result, by reason, even when there are none.
    d = res.to_dict()
    assert set(d["drops_by_reason"]) == REASONS
    assert d["dropped"] == sum(d["drops_by_reason"].values())
    # With a per-camera cap of 1 and drop_oldest, only evictions can drop frames here.
    assert d["drops_by_reason"]["rejected"] == d["drops_by_reason"]["timeout"] == 0
    assert d["drops_by_reason"]["stride"] == 0
    assert res.throughput_rps == pytest.approx(150 * (1 - res.drop_rate), rel=0.01)
    # Batches: at most 8, and each holds at most one frame per camera (the per-camera cap).
    for tr in res.traces:
        assert tr.batch_size_by_batch.max() <= 8
        done = tr.completed
        key = np.rint(tr.start[done] * 1e9).astype(np.int64) * 8 + tr.instance[done]
        pairs = np.unique(np.stack([key, tr.source[done]]), axis=1)
        assert pairs.shape[1] == done.sum(), "a batch holds two frames of one camera"


def test_example_2_overloaded_drops_oldest_frames_and_stays_stable():
    # A slower model (40 ms alone, 70 ms at batch 8) cannot serve 150 frames/s: capacity is
    # 8 / 0.070 = 114 fps. The per-camera cap (1 frame) bounds the queue, so frames are
    # evicted (drop_oldest), counted, and the run stays stable with bounded latency.
    res = run(EX2, *EX2_RUN, "service.batch_latency_ms={1: 40, 2: 45, 4: 55, 8: 70, 16: 110}")
    assert_conserved(res)
    assert res.stable
    cap = 8 / 0.070
    assert res.dropped > 0
    assert res.drops_by_reason["dropped_oldest"] == res.dropped
    # What is not dropped is served at no more than capacity, and the drop rate is at least the excess.
    assert res.throughput_rps <= cap * 1.05  # lognormal cv 0.2 service: a little above the mean-based bound
    assert res.drop_rate >= 1 - cap * 1.05 / 150
    # Bounded queue, bounded latency: at most 6 frames queued (one per camera) ahead of a frame,
    # one batch in service: ~2 batches of compute + pre-processing, far below an unbounded queue.
    assert res.latency_ms["max"] < 1000
    for tr in res.traces:
        ev = tr.drop_reason == DROP_REASONS.index("dropped_oldest")
        assert np.all(tr.drop_t[ev] >= tr.entry[ev])
        assert np.all(np.isnan(tr.start[ev]))
        # Each camera has at most one frame waiting at any entry instant.
        leave = np.where(tr.completed, tr.start, tr.drop_t)
        sample = np.flatnonzero(~np.isnan(tr.entry))[::97]
        for i in sample:
            t, s = tr.entry[i], tr.source[i]
            waiting = (tr.source == s) & (tr.entry <= t) & (leave > t)
            assert waiting.sum() <= 1


def test_example_2_stride_drops_are_counted_as_stride():
    res = run(EX2, *EX2_RUN, "queue.stride=2")
    assert_conserved(res)
    assert res.drops_by_reason["stride"] > 0
    # Half of every camera's frames are skipped (to within one frame per camera per replication).
    assert res.drops_by_reason["stride"] == pytest.approx(measured(res) / 2, abs=6 * res.replications + 2)
    assert res.throughput_rps == pytest.approx(75, rel=0.02)


# --------------------------------------------------------------------------- example 3: edge CPU


def test_example_3_edge_cpu_meets_its_slo_with_batches_of_one():
    res = run("example-3-edge-cpu", "run.requests=5000")
    assert_conserved(res)
    assert res.stable and res.dropped == 0
    # Frames are 100 ms apart: a frame never finds a second one within the 5 ms max delay, so
    # every batch is a single frame that waited the full delay: 8 ms pre + 5 ms wait + 12 ms compute.
    assert res.batch_size_histogram.keys() == {1}
    assert res.breakdown_ms["batch_formation"] == pytest.approx(5.0, abs=1e-6)
    assert res.latency_ms["mean"] == pytest.approx(8 + 5 + 12, rel=0.01)
    assert res.latency_ms["p95"] <= 200 and res.slo["met"]
    assert res.throughput_rps == pytest.approx(10, rel=0.01)


# --------------------------------------------------------------------------- example 4: Little's law and saturation


EX4 = "example-4-littles-law"
EX4_RUN = ("run.requests=20000",)


def test_example_4_napkin_capacity_and_in_flight():
    res = run(EX4, *EX4_RUN)
    assert res.napkin.capacity_rps == pytest.approx(2 / 0.040)  # 50 rps
    assert analytic.capacity_rps(res.scenario) == pytest.approx(50)
    # Little's law as the seed uses it: in flight = rate x latency budget = 40 x 0.2 s = 8.
    assert res.napkin.littles_in_flight == pytest.approx(40 * 0.200)
    ll = res.littles_law
    assert ll.rel_error < 0.02
    assert ll.L == pytest.approx(ll.lam_rps * ll.W_ms / 1000, rel=0.02)
    assert ll.lam_rps == pytest.approx(40, rel=0.03)
    # Mean in flight is below the budget-based figure: the mean latency is below the 200 ms budget.
    assert ll.L < res.napkin.littles_in_flight


def test_example_4_at_40_rps_agrees_with_mdc_approximation():
    """M/D/2 at rho 0.8: Allen-Cunneen, Wq(M/D/c) ~ Wq(M/M/c) (ca^2 + cs^2) / 2 = Wq(M/M/c) / 2."""
    res = run(EX4, *EX4_RUN)
    lam, mu, c = 40.0, 25.0, 2
    wq_mmc = analytic.erlang_c(c, lam / mu) / (c * mu - lam) * 1000  # 71.1 ms
    wq_sim = res.latency_ms["mean"] - 40.0
    assert wq_sim == pytest.approx(wq_mmc / 2, rel=0.15)
    assert res.breakdown_ms["service"] == pytest.approx(40.0)
    assert res.latency_ms["p95"] <= 200 and res.slo["met"]


def test_example_4_stable_with_bounded_latency_at_45_rps():
    res = run(EX4, *EX4_RUN, "arrivals.rate_rps=45")
    assert_conserved(res)
    assert res.stable
    d = res.to_dict()
    assert d["stable"] is True and d["unstable_reason"] is None
    assert all(v is not None and math.isfinite(v) for v in d["latency_ms"].values())
    assert res.throughput_rps == pytest.approx(45, rel=0.02)
    assert res.utilization == pytest.approx(45 / 50, rel=0.03)
    # Bounded: M/D/2 at rho 0.9 waits about half of M/M/2's Wq (~190 ms / 2); far from a growing queue.
    wq_mmc = analytic.erlang_c(2, 45 / 25) / (50 - 45) * 1000
    assert res.latency_ms["mean"] < 40 + wq_mmc
    assert abs(res.backlog_growth) < 0.005


def test_example_4_saturates_near_50_rps():
    res = run(EX4, *EX4_RUN, "arrivals.rate_rps=55")
    assert_conserved(res)
    assert not res.stable
    d = res.to_dict()
    assert d["stable"] is False
    assert all(v is None for v in d["latency_ms"].values())
    assert all(v is None for v in d["latency_ci_ms"].values())
    assert "50.0" in d["unstable_reason"] and "capacity" in d["unstable_reason"]
    # The service runs flat out at its capacity of 50 rps; the queue grows by the other 5 rps.
    assert res.utilization == pytest.approx(1.0, abs=0.01)
    assert res.throughput_rps == pytest.approx(50, rel=0.02)
    assert res.backlog_growth == pytest.approx(1 - 50 / 55, abs=0.02)
    assert res.slo["met"] is False and res.slo["verdict"] == "not met"
    assert "does not" in napkin_note(res)


def test_saturated_throughput_is_the_capacity():
    # Example 1 at 250 rps with an unlimited queue: the GPU is always busy with full batches of
    # 4 in 24 ms, so it completes exactly 4 / 0.024 = 166.7 requests per second.
    res = run(EX1, *EX1_RUN, "arrivals.rate_rps=250")
    assert not res.stable
    assert res.utilization == pytest.approx(1.0, abs=1e-3)
    assert res.mean_batch_size == pytest.approx(4.0, abs=0.01)
    assert res.throughput_rps == pytest.approx(4 / 0.024, rel=0.01)


# --------------------------------------------------------------------------- overload: unbounded vs capped queue


@pytest.mark.parametrize("on_full", ["reject", "drop_oldest"])
def test_overload_is_unstable_unbounded_and_stable_with_a_queue_cap(on_full):
    cap = 4 / 0.024  # example 1's capacity: full batches of 4 in 24 ms
    unbounded = run(EX1, *EX1_RUN, "arrivals.rate_rps=250")
    assert not unbounded.stable
    assert unbounded.to_dict()["latency_ms"]["p95"] is None
    assert unbounded.dropped == 0  # nothing is dropped: the queue just grows
    assert unbounded.backlog_growth == pytest.approx(1 - cap / 250, abs=0.03)

    capped = run(EX1, *EX1_RUN, "arrivals.rate_rps=250", "queue.max_size=100", f"queue.on_full={on_full}")
    assert_conserved(capped)
    assert capped.stable
    reason = "rejected" if on_full == "reject" else "dropped_oldest"
    assert capped.dropped > 0 and capped.drops_by_reason[reason] == capped.dropped
    # Drops take the excess over capacity.
    assert capped.drop_rate == pytest.approx(1 - cap / 250, abs=0.02)
    d = capped.to_dict()
    assert d["stable"] is True and d["latency_ms"]["p95"] is not None
    # A request admitted with at most 99 ahead waits at most for the batch in service and 25 full
    # batches of 4 (24 ms each) including its own, plus the 10 ms overhead.
    bound = 24 * (1 + math.ceil(100 / 4)) + 10
    assert capped.latency_ms["max"] <= bound + 1e-6
    if on_full == "reject":
        # FIFO with rejection: admitted requests find a nearly full queue, so wait near the bound.
        assert capped.latency_ms["p50"] > 0.8 * bound


# --------------------------------------------------------------------------- the mini challenge


def test_mini_challenge_one_gpu_serves_120_rps_within_p95_140ms():
    res = run("mini-challenge", "run.requests=20000")
    assert_conserved(res)
    assert res.stable and res.dropped == 0
    assert res.throughput_rps == pytest.approx(120, rel=0.02)
    assert res.latency_ms["p95"] <= 140
    assert res.slo["met"] and res.slo["throughput_met"]
    # Batch 1 alone (25 ms -> 40 rps) could not: batching is what makes 120 rps possible.
    assert res.mean_batch_size > 120 * 0.025
    no_batching = run("mini-challenge", "run.requests=5000", "run.warmup_requests=500", "batching.max_batch_size=1")
    assert not no_batching.stable
    assert no_batching.slo["met"] is False
    # Napkin: 10 wait + 10 overhead + 48 compute(b=8) = 68 ms, capacity 8 / 0.048 = 166.7 rps.
    assert res.napkin.latency_ms == pytest.approx(68)
    assert res.napkin.capacity_rps == pytest.approx(8 / 0.048)
