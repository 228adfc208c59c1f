"""Hand-computed timelines for the SimPy engine.

Every expected time below is worked out by hand from the documented semantics
(/work/shared/design.md "Batching semantics" and "Queue and drop policies", and the
docstrings of capsim.sim.batcher / queue / stages), never copied from engine output.

Conventions used in the comments: times are in ms, ``rK`` is the K-th arrival (index K in
the arrays), ``[a, b]`` is a batch's service interval on an instance, ``inst i`` is
instance i. Service is deterministic (variability ``none``) and every batch size used is a
measured point of the curve, so no interpolation is involved.
"""

from __future__ import annotations

import numpy as np
import pytest

from capsim.arrivals import ArrivalStream
from capsim.config import parse_scenario
from capsim.sim.engine import SimPyEngine
from capsim.sim.queue import DROP_REASONS
from capsim.sim.stages import fifo_pool

CURVE = {1: 10, 2: 12, 3: 14, 4: 16}  # ms per batch size, every size measured

# Queue settings that do not change any outcome of these timelines but switch the engine
# onto its general path (admission / timeout bookkeeping instead of the "simple" fast path).
# The documented semantics are the same, so every plain timeline must hold on each.
INERT_QUEUES = {
    "plain": {},
    "big_cap": {"max_size": 1000},
    "long_timeout": {"timeout_ms": 10_000},
}


def scenario(batching: dict, *, instances: int = 1, queue: dict | None = None, service: dict | None = None):
    svc = {"batch_latency_ms": dict(CURVE)}
    svc.update(service or {})
    return parse_scenario({
        "arrivals": {"process": "poisson", "rate_rps": 1},
        "service": svc,
        "batching": batching,
        "instances": instances,
        "queue": queue or {},
        "run": {"requests": 200, "warmup_requests": 0, "replications": 1},
    })


def run(sc, times_ms, source=None, frame=None):
    times = np.asarray(times_ms, dtype=np.float64) / 1000.0
    n = len(times)
    source = np.zeros(n, np.int32) if source is None else np.asarray(source, np.int32)
    if frame is None:  # per-source frame counter
        frame = np.zeros(n, np.int64)
        for s in np.unique(source):
            m = source == s
            frame[m] = np.arange(m.sum())
    arr = ArrivalStream(times=times, source=source, frame=np.asarray(frame, np.int64),
                        n_sources=int(source.max()) + 1 if n else 1)
    return SimPyEngine(sc).run(arr, np.random.default_rng(0))


def ms(values):
    """Expected times in ms (None = must be NaN) as an approx over seconds."""
    return pytest.approx([np.nan if v is None else v / 1000.0 for v in values], abs=1e-9, nan_ok=True)


def lat(values):
    """Expected latencies in ms (None = NaN)."""
    return pytest.approx([np.nan if v is None else float(v) for v in values], abs=1e-9, nan_ok=True)


def reasons(tr):
    return [DROP_REASONS[r] for r in tr.drop_reason]


# =========================================================================== triton mode


# B=4, D=5, N=1.
# t=0: r0 queued, inst 0 idle, 1 < B and 0 < t0+D=5 -> wait. r1 (1), r2 (2) join.
# t=5: now >= t0+D -> dispatch the 3 queued -> [5, 19] (size 3 = 14 ms).
# r3 arrives at 12 while busy. t=19: inst idle, t0=12, 19 >= 12 + 5 = 17 -> dispatch r3
#   alone at 19 -> [19, 29].
# r4 at 30: inst idle, t0=30 -> wait; r5 at 33 joins; t=35 = t0+D -> {r4, r5} [35, 47].
@pytest.mark.parametrize("queue", INERT_QUEUES.values(), ids=INERT_QUEUES.keys())
def test_triton_partial_batch_released_at_t0_plus_delay(queue):
    sc = scenario({"mode": "triton", "max_batch_size": 4, "max_queue_delay_ms": 5}, queue=queue)
    tr = run(sc, [0, 1, 2, 12, 30, 33])
    assert tr.start.tolist() == ms([5, 5, 5, 19, 35, 35])
    assert tr.dispatch.tolist() == ms([5, 5, 5, 19, 35, 35])  # triton: formed = started
    assert tr.end.tolist() == ms([19, 19, 19, 29, 47, 47])
    assert tr.batch_size.tolist() == [3, 3, 3, 1, 2, 2]
    assert tr.latency_ms.tolist() == lat([19, 18, 17, 17, 17, 14])
    assert tr.instance.tolist() == [0] * 6
    assert reasons(tr) == [""] * 6


# B=4, D=5, N=1.
# r0..r3 at 0,1,2,3: the 4th arrival makes the queue hold B -> dispatch at 3 -> [3, 19].
# r4 at 4 waits (busy). t=19: t0=4, 19 >= 9 -> r4 alone [19, 29].
# r5 at 29 (the instant inst 0 frees) is enqueued first: q=1, t0=29 -> wait for 34 or B.
#   r6, r7, r8 at 30, 31, 32: r8 is the B-th queued -> {r5..r8} at 32 -> [32, 48].
@pytest.mark.parametrize("queue", INERT_QUEUES.values(), ids=INERT_QUEUES.keys())
def test_triton_full_batch_released_on_bth_arrival(queue):
    sc = scenario({"mode": "triton", "max_batch_size": 4, "max_queue_delay_ms": 5}, queue=queue)
    tr = run(sc, [0, 1, 2, 3, 4, 29, 30, 31, 32])
    assert tr.start.tolist() == ms([3, 3, 3, 3, 19, 32, 32, 32, 32])
    assert tr.end.tolist() == ms([19, 19, 19, 19, 29, 48, 48, 48, 48])
    assert tr.batch_size.tolist() == [4, 4, 4, 4, 1, 4, 4, 4, 4]


# B=4, D=5, N=1: more than B queued when the instance frees -> the oldest B go, the rest wait.
# r0 at 0 -> wait to 5 -> [5, 15]. r1..r5 at 6..10 queue (5 requests).
# t=15: q=5 >= B -> {r1..r4} [15, 31]; r5 left, t0=10, 31 >= 15 -> r5 alone [31, 41].
def test_triton_oldest_b_dispatched_when_more_queued():
    sc = scenario({"mode": "triton", "max_batch_size": 4, "max_queue_delay_ms": 5})
    tr = run(sc, [0, 6, 7, 8, 9, 10])
    assert tr.start.tolist() == ms([5, 15, 15, 15, 15, 31])
    assert tr.end.tolist() == ms([15, 31, 31, 31, 31, 41])


# B=4, D=0, N=1: an idle instance takes whatever is queued at once.
# r0 at 0 -> [0, 10]. r1, r2, r3 at 1, 2, 3 queue. t=10 -> {r1, r2, r3} [10, 24].
# r4 at 12 queues. t=24 -> {r4} [24, 34]. r5 at 40 (idle) -> [40, 50].
@pytest.mark.parametrize("queue", INERT_QUEUES.values(), ids=INERT_QUEUES.keys())
def test_triton_zero_delay_takes_whatever_is_queued(queue):
    sc = scenario({"mode": "triton", "max_batch_size": 4, "max_queue_delay_ms": 0}, queue=queue)
    tr = run(sc, [0, 1, 2, 3, 12, 40])
    assert tr.start.tolist() == ms([0, 10, 10, 10, 24, 40])
    assert tr.end.tolist() == ms([10, 24, 24, 24, 34, 50])
    assert tr.batch_size.tolist() == [1, 3, 3, 3, 1, 1]


# Arrivals at the instant of a decision are enqueued before it.
# B=4, D=5, N=1. r0 at 0 -> decision due at t0+D = 5. r1, r2 arrive at exactly 5: they are
#   enqueued first, so the batch is {r0, r1, r2} [5, 19], not {r0} alone.
# r3 at 10 queues (busy). r4, r5 at 19 = the instant inst 0 frees: enqueued before the
#   decision; t0 = 10, 19 >= 15 -> {r3, r4, r5} [19, 33].
# Four simultaneous arrivals at 40 -> the queue holds B at 40 -> {r6..r9} [40, 56].
@pytest.mark.parametrize("queue", INERT_QUEUES.values(), ids=INERT_QUEUES.keys())
def test_triton_same_instant_arrivals_enqueued_before_decision(queue):
    sc = scenario({"mode": "triton", "max_batch_size": 4, "max_queue_delay_ms": 5}, queue=queue)
    tr = run(sc, [0, 5, 5, 10, 19, 19, 40, 40, 40, 40])
    assert tr.start.tolist() == ms([5, 5, 5, 19, 19, 19, 40, 40, 40, 40])
    assert tr.end.tolist() == ms([19, 19, 19, 33, 33, 33, 56, 56, 56, 56])
    assert tr.batch_size.tolist() == [3, 3, 3, 3, 3, 3, 4, 4, 4, 4]


# Same rule with D = 0 at the instant an instance frees: r0 at 0 -> [0, 10]; r1 at 5 queues;
# r2 at exactly 10 is enqueued before the decision at 10 -> {r1, r2} [10, 22].
def test_triton_zero_delay_arrival_at_completion_instant_joins_batch():
    sc = scenario({"mode": "triton", "max_batch_size": 4, "max_queue_delay_ms": 0})
    tr = run(sc, [0, 5, 10])
    assert tr.start.tolist() == ms([0, 10, 10])
    assert tr.end.tolist() == ms([10, 22, 22])
    assert tr.batch_size.tolist() == [1, 2, 2]


# Two instances, B=2, D=0: the lowest-index idle instance gets the batch, even when another
# instance has been idle longer.
# t=0: r0, r1, r2 queued. Both idle: inst 0 gets the oldest B = {r0, r1} [0, 12]; inst 1
#   gets {r2} [0, 10] (D = 0: take what is queued).
# inst 1 idle from 10, inst 0 from 12. r3 at 15 -> inst 0 (lowest index) [15, 25].
# r4 at 16 -> inst 0 busy -> inst 1 [16, 26].
def test_triton_two_instances_lowest_index_idle_gets_batch():
    sc = scenario({"mode": "triton", "max_batch_size": 2, "max_queue_delay_ms": 0}, instances=2)
    tr = run(sc, [0, 0, 0, 15, 16])
    assert tr.instance.tolist() == [0, 0, 1, 0, 1]
    assert tr.start.tolist() == ms([0, 0, 0, 15, 16])
    assert tr.end.tolist() == ms([12, 12, 10, 25, 26])


# Two instances finishing at the same instant: the lowest index gets the batch, whatever order
# the two completions are processed in.
# B=2, D=0, N=2.
# t=0: r0, r1, r2 -> inst 0 {r0, r1} [0, 12]; inst 1 {r2} [0, 10].
# t=10: inst 1 frees; r3, r4 arrive at 10 (enqueued first) -> inst 1 {r3, r4} [10, 22].
# t=12: inst 0 frees; r5 at 12 -> inst 0 {r5} [12, 22].
#   (inst 1's completion at 22 was scheduled first, at t=10, so it is seen first at t=22.)
# r6 at 15 queues (both busy). t=22: both free at once -> r6 to inst 0 [22, 32].
# r7 at 23 -> inst 1 (inst 0 busy) [23, 33].
@pytest.mark.parametrize("queue", INERT_QUEUES.values(), ids=INERT_QUEUES.keys())
def test_triton_two_instances_simultaneous_completion_lowest_index(queue):
    sc = scenario({"mode": "triton", "max_batch_size": 2, "max_queue_delay_ms": 0}, instances=2, queue=queue)
    tr = run(sc, [0, 0, 0, 10, 10, 12, 15, 23])
    assert tr.instance.tolist() == [0, 0, 1, 1, 1, 0, 0, 1]
    assert tr.start.tolist() == ms([0, 0, 0, 10, 10, 12, 22, 23])
    assert tr.end.tolist() == ms([12, 12, 10, 22, 22, 22, 32, 33])


# preferred_batch_sizes [2], B=4, D=20, N=1: with q < B queued, an idle instance and the
# queue delay not yet run out, the largest preferred size p <= q goes at once.
# r0 at 0: q=1, no preferred size <= 1, 0 < 20 -> wait. r1 at 1: q=2 -> {r0, r1} [1, 13].
# r2, r3, r4 at 2, 3, 4 queue. t=13: q=3, t0 + D = 22 not reached; largest preferred <= 3
#   is 2 -> {r2, r3} [13, 25].
# t=25: q=1 (r4, t0 = 4), 25 >= 24 -> {r4} [25, 35].
@pytest.mark.parametrize("queue", INERT_QUEUES.values(), ids=INERT_QUEUES.keys())
def test_triton_preferred_batch_size_dispatches_at_once(queue):
    sc = scenario({"mode": "triton", "max_batch_size": 4, "max_queue_delay_ms": 20, "preferred_batch_sizes": [2]},
                  queue=queue)
    tr = run(sc, [0, 1, 2, 3, 4])
    assert tr.start.tolist() == ms([1, 1, 13, 13, 25])
    assert tr.end.tolist() == ms([13, 13, 25, 25, 35])
    assert tr.batch_size.tolist() == [2, 2, 2, 2, 1]


# preferred_batch_sizes [2, 3], B=4, D=20, N=1: the *largest* reachable preferred size.
# r0 at 0 waits; r1 at 1 -> q=2 -> {r0, r1} [1, 13]. r2, r3, r4 at 2, 3, 4.
# t=13: q=3 (due only at 22) -> largest preferred <= 3 is 3 -> {r2, r3, r4} [13, 27].
# r5 at 30 -> q=1 -> wait to 50 (t0+D) -> [50, 60].
# r6..r9 at 60, 61, 62, 63: r6 alone waits; q reaches 2 at 61 -> {r6, r7} [61, 73];
#   r8, r9 queued; t=73: q=2 (due at 82) -> preferred 2 -> {r8, r9} [73, 85].
@pytest.mark.parametrize("queue", INERT_QUEUES.values(), ids=INERT_QUEUES.keys())
def test_triton_preferred_batch_sizes_largest_reachable(queue):
    sc = scenario({"mode": "triton", "max_batch_size": 4, "max_queue_delay_ms": 20,
                   "preferred_batch_sizes": [3, 2]}, queue=queue)
    tr = run(sc, [0, 1, 2, 3, 4, 30, 60, 61, 62, 63])
    assert tr.start.tolist() == ms([1, 1, 13, 13, 13, 50, 61, 61, 73, 73])
    assert tr.end.tolist() == ms([13, 13, 27, 27, 27, 60, 73, 73, 85, 85])
    assert tr.batch_size.tolist() == [2, 2, 3, 3, 3, 1, 2, 2, 2, 2]


# preferred_batch_sizes only add a reason to dispatch early; once the queue delay has run out
# the main rule applies: "now >= t0 + D -> the oldest min(B, queue length) are dispatched"
# (design.md; Triton likewise sends everything pending once the delay is exceeded).
# preferred [2], B=4, D=10, N=1.
# r0 at 0, r1 at 1 -> preferred 2 reached -> {r0, r1} [1, 13]. r2, r3, r4 at 2, 3, 4.
# t=13: t0 = 2, 13 >= 12 -> the delay has run out -> {r2, r3, r4} [13, 27].
def test_triton_preferred_batch_size_does_not_shrink_a_due_batch():
    sc = scenario({"mode": "triton", "max_batch_size": 4, "max_queue_delay_ms": 10, "preferred_batch_sizes": [2]})
    tr = run(sc, [0, 1, 2, 3, 4])
    assert tr.start.tolist() == ms([1, 1, 13, 13, 13])
    assert tr.end.tolist() == ms([13, 13, 27, 27, 27])
    assert tr.batch_size.tolist() == [2, 2, 3, 3, 3]


# Same rule with D = 0, where the design says "an idle instance takes whatever is queued
# immediately". preferred [2], B=4, D=0, N=1.
# r0 at 0 -> [0, 10]. r1, r2, r3 at 1, 2, 3 queue. t=10: q=3, D=0 -> all three go ->
#   {r1, r2, r3} [10, 24].
def test_triton_preferred_batch_size_zero_delay_takes_all_queued():
    sc = scenario({"mode": "triton", "max_batch_size": 4, "max_queue_delay_ms": 0, "preferred_batch_sizes": [2]})
    tr = run(sc, [0, 1, 2, 3])
    assert tr.start.tolist() == ms([0, 10, 10, 10])
    assert tr.end.tolist() == ms([10, 24, 24, 24])
    assert tr.batch_size.tolist() == [1, 3, 3, 3]


# Two instances with D > 0: a partial batch due at t0 + D goes to the lowest-index idle one.
# B=2, D=5, N=2.
# r0, r1 at 0 -> q=B -> inst 0 [0, 12]. r2 at 1 -> inst 1 idle, waits to 6 -> inst 1 [6, 16].
# r3 at 13: inst 0 idle (since 12), q=1, t0=13 -> wait to 18. inst 1 frees at 16.
# t=18: both idle -> inst 0 [18, 28].
def test_triton_two_instances_partial_batch_to_lowest_index():
    sc = scenario({"mode": "triton", "max_batch_size": 2, "max_queue_delay_ms": 5}, instances=2)
    tr = run(sc, [0, 0, 1, 13])
    assert tr.instance.tolist() == [0, 0, 1, 0]
    assert tr.start.tolist() == ms([0, 0, 6, 18])
    assert tr.end.tolist() == ms([12, 12, 16, 28])


# Batch sizes between measured points: {1: 10, 2: 12, 4: 16} has equal secant slopes
# (2 ms per request on both intervals), so the PCHIP derivatives are all 2 and the curve is
# the straight line 8 + 2b: a batch of 3 takes 14 ms.
# triton B=4, D=5, N=1: r0, r1, r2 at 0, 1, 2 -> due at 5 -> [5, 19].
def test_triton_interpolated_batch_size():
    sc = scenario({"mode": "triton", "max_batch_size": 4, "max_queue_delay_ms": 5},
                  service={"batch_latency_ms": {1: 10, 2: 12, 4: 16}})  # replaces CURVE
    tr = run(sc, [0, 1, 2])
    assert tr.start.tolist() == ms([5, 5, 5])
    assert tr.end.tolist() == ms([19, 19, 19])


# =========================================================================== timer mode


# timer, B=2, D=5, N=1: batches close on size or age whatever the instance does.
# r0 at 0, r1 at 1 -> closes at 1 (B reached) -> inst idle -> [1, 13].
# r2 at 2 opens a batch (t0 = 2); nothing else by 7 -> closes at 7 with {r2} alone, waits.
# r3 at 8 opens a batch; r4 at 9 fills it -> closes at 9, waits behind {r2}.
# t=13: FIFO -> {r2} [13, 23]; then {r3, r4} [23, 35].
# (triton would have sent {r2, r3} at 13.)
# r5 at 40 with the instance idle: the batch stays open until 45 -> [45, 55].
# tr.dispatch is the closing time in timer mode.
@pytest.mark.parametrize("queue", INERT_QUEUES.values(), ids=INERT_QUEUES.keys())
def test_timer_closes_on_size_or_age_and_waits_fifo(queue):
    sc = scenario({"mode": "timer", "max_batch_size": 2, "max_queue_delay_ms": 5}, queue=queue)
    tr = run(sc, [0, 1, 2, 8, 9, 40])
    assert tr.dispatch.tolist() == ms([1, 1, 7, 9, 9, 45])
    assert tr.start.tolist() == ms([1, 1, 13, 23, 23, 45])
    assert tr.end.tolist() == ms([13, 13, 23, 35, 35, 55])
    assert tr.batch_size.tolist() == [2, 2, 1, 2, 2, 1]
    assert tr.latency_ms.tolist() == lat([13, 12, 21, 27, 26, 15])


# timer, B=4, D=5, N=1: an arrival at exactly t0 + D joins the closing batch.
# r0 at 0, r1 at exactly 5 -> {r0, r1} closes at 5 -> [5, 17].
# r2 at 6 opens a batch (t0 = 6); r3 at 11 = t0 + D joins it -> closes at 11, waits;
#   t=17 -> {r2, r3} [17, 29].
@pytest.mark.parametrize("queue", INERT_QUEUES.values(), ids=INERT_QUEUES.keys())
def test_timer_arrival_at_deadline_joins_closing_batch(queue):
    sc = scenario({"mode": "timer", "max_batch_size": 4, "max_queue_delay_ms": 5}, queue=queue)
    tr = run(sc, [0, 5, 6, 11])
    assert tr.dispatch.tolist() == ms([5, 5, 11, 11])
    assert tr.start.tolist() == ms([5, 5, 17, 17])
    assert tr.end.tolist() == ms([17, 17, 29, 29])
    assert tr.batch_size.tolist() == [2, 2, 2, 2]


# timer, B=2, D=0, N=2: closed batches go FIFO to whichever instance frees next.
# r0, r1 at 0 -> closes at 0 (size 2) -> inst 0 [0, 12].
# r2 at 1 -> closes at 1 (D = 0) -> inst 1 [1, 11].
# r3 at 2 closes at 2, r4 at 3 closes at 3: both wait.
# t=11: inst 1 frees -> oldest closed batch {r3} [11, 21].
# t=12: inst 0 frees -> {r4} [12, 22].
@pytest.mark.parametrize("queue", INERT_QUEUES.values(), ids=INERT_QUEUES.keys())
def test_timer_closed_batches_fifo_to_next_idle_instance(queue):
    sc = scenario({"mode": "timer", "max_batch_size": 2, "max_queue_delay_ms": 0}, instances=2, queue=queue)
    tr = run(sc, [0, 0, 1, 2, 3])
    assert tr.dispatch.tolist() == ms([0, 0, 1, 2, 3])
    assert tr.instance.tolist() == [0, 0, 1, 1, 0]
    assert tr.start.tolist() == ms([0, 0, 1, 11, 12])
    assert tr.end.tolist() == ms([12, 12, 11, 21, 22])


# timer, B=3, D=5, N=1: a batch fills to B at one instant with extra simultaneous arrivals;
# the extras open the next batch with t0 = that instant.
# r0 at 0; r1, r2, r3 at 2: the batch {r0, r1, r2} closes at 2 -> [2, 16].
# r3 opens a batch (t0 = 2) -> closes at 7 alone -> waits -> [16, 26].
def test_timer_overflow_at_one_instant_opens_next_batch():
    sc = scenario({"mode": "timer", "max_batch_size": 3, "max_queue_delay_ms": 5})
    tr = run(sc, [0, 2, 2, 2])
    assert tr.dispatch.tolist() == ms([2, 2, 2, 7])
    assert tr.start.tolist() == ms([2, 2, 2, 16])
    assert tr.end.tolist() == ms([16, 16, 16, 26])


# =========================================================================== drop policies


# max_size 2, on_full reject; triton B=1, D=0, N=1 (10 ms per request).
# r0 at 0 -> [0, 10]; queue empty again. r1 at 1, r2 at 2 -> queue [r1, r2] (full).
# r3 at 3 -> full -> rejected at 3.
# t=10: r1 [10, 20]; queue [r2]. r4 at 11 -> [r2, r4]. r5 at 12 -> rejected at 12.
# t=20: r2 [20, 30]; t=30: r4 [30, 40].
def test_queue_cap_reject():
    sc = scenario({"mode": "triton", "max_batch_size": 1, "max_queue_delay_ms": 0},
                  queue={"max_size": 2, "on_full": "reject"})
    tr = run(sc, [0, 1, 2, 3, 11, 12])
    assert reasons(tr) == ["", "", "", "rejected", "", "rejected"]
    assert tr.drop_t.tolist() == ms([None, None, None, 3, None, 12])
    assert tr.start.tolist() == ms([0, 10, 20, None, 30, None])
    assert tr.end.tolist() == ms([10, 20, 30, None, 40, None])
    assert np.isnan(tr.latency_ms[[3, 5]]).all()


# max_size 1, reject, at the very instant an instance frees. B=1, D=0, N=1.
# r0 at 0 -> [0, 10]. r1 at 5 -> queue [r1] (full).
# r2 at exactly 10: arrivals at a decision's instant are enqueued (admitted) before the
#   decision, so r2 meets a full queue -> rejected at 10. Then r1 [10, 20].
def test_queue_cap_reject_at_completion_instant():
    sc = scenario({"mode": "triton", "max_batch_size": 1, "max_queue_delay_ms": 0},
                  queue={"max_size": 1, "on_full": "reject"})
    tr = run(sc, [0, 5, 10])
    assert reasons(tr) == ["", "", "rejected"]
    assert tr.drop_t.tolist() == ms([None, None, 10])
    assert tr.start.tolist() == ms([0, 10, None])


# max_size 2, on_full drop_oldest; same arrivals as the reject test.
# r0 [0, 10]. r1, r2 queue. r3 at 3 -> full -> evicts the oldest queued, r1, at 3 -> [r2, r3].
# t=10: r2 [10, 20]; queue [r3]. r4 at 11 -> [r3, r4]. r5 at 12 -> evicts r3 at 12 -> [r4, r5].
# t=20: r4 [20, 30]; t=30: r5 [30, 40].
def test_queue_cap_drop_oldest():
    sc = scenario({"mode": "triton", "max_batch_size": 1, "max_queue_delay_ms": 0},
                  queue={"max_size": 2, "on_full": "drop_oldest"})
    tr = run(sc, [0, 1, 2, 3, 11, 12])
    assert reasons(tr) == ["", "dropped_oldest", "", "dropped_oldest", "", ""]
    assert tr.drop_t.tolist() == ms([None, 3, None, 12, None, None])
    assert tr.start.tolist() == ms([0, None, 10, None, 20, 30])
    assert tr.end.tolist() == ms([10, None, 20, None, 30, 40])
    assert tr.latency_ms.tolist() == lat([10, None, 18, None, 19, 28])


# drop_oldest in timer mode: requests in a closed batch are still queued, so they count
# against the cap and can be evicted. timer B=2, D=5, N=1, max_size 2.
# r0 at 0, r1 at 1 -> closes at 1 -> [1, 13]; queue empty.
# r2 at 2, r3 at 3 -> closes at 3 (size 2), waits; queue [r2, r3] (full).
# r4 at 4 -> evicts r2 at 4; r4 opens a batch (t0 = 4), closes at 9 alone.
# t=13: closed batch {r2, r3} now holds only r3 -> [13, 23]; then {r4} [23, 33].
def test_timer_drop_oldest_evicts_from_closed_batch():
    sc = scenario({"mode": "timer", "max_batch_size": 2, "max_queue_delay_ms": 5},
                  queue={"max_size": 2, "on_full": "drop_oldest"})
    tr = run(sc, [0, 1, 2, 3, 4])
    assert reasons(tr) == ["", "", "dropped_oldest", "", ""]
    assert tr.drop_t.tolist() == ms([None, None, 4, None, None])
    assert tr.start.tolist() == ms([1, 1, None, 13, 23])
    assert tr.end.tolist() == ms([13, 13, None, 23, 33])
    assert tr.batch_size.tolist() == [2, 2, 0, 1, 1]


# timeout_ms 15; triton B=1, D=0, N=1 (10 ms per request).
# r0 at 0 -> [0, 10]. r1 at 1 (deadline 16), r2 at 2 (17), r3 at 4 (19), r4 at 5 (20) queue.
# t=10: r1 [10, 20] (queued 9 ms; its 19 ms total latency is not a timeout: only queued
#   time counts).
# t=20: r2 (deadline 17) and r3 (19) are past due -> dropped at 17 and 19. r4's deadline is
#   exactly 20: a request dispatched at exactly entry + timeout is still served -> [20, 30].
@pytest.mark.parametrize("mode", ["triton", "timer"])
def test_queue_timeout(mode):
    sc = scenario({"mode": mode, "max_batch_size": 1, "max_queue_delay_ms": 0}, queue={"timeout_ms": 15})
    tr = run(sc, [0, 1, 2, 4, 5])
    assert reasons(tr) == ["", "", "timeout", "timeout", ""]
    assert tr.drop_t.tolist() == ms([None, None, 17, 19, None])
    assert tr.start.tolist() == ms([0, 10, None, None, 20])
    assert tr.end.tolist() == ms([10, 20, None, None, 30])
    assert tr.latency_ms.tolist() == lat([10, 19, None, None, 25])


# A request whose deadline passes while the instance waits for a batch to fill is dropped
# and no longer counts towards B. triton B=2, D=20, timeout 10, N=1.
# r0 at 0 (deadline 10) waits for a partner or t=20; it is dropped at 10.
# r1 at 15: the queue holds only r1 (t0 = 15). r2 at 16 -> q=2=B -> {r1, r2} [16, 28].
def test_queue_timeout_while_waiting_for_batch():
    sc = scenario({"mode": "triton", "max_batch_size": 2, "max_queue_delay_ms": 20}, queue={"timeout_ms": 10})
    tr = run(sc, [0, 15, 16])
    assert reasons(tr) == ["timeout", "", ""]
    assert tr.drop_t.tolist() == ms([10, None, None])
    assert tr.start.tolist() == ms([None, 16, 16])
    assert tr.end.tolist() == ms([None, 28, 28])


# drop_oldest at the very instant an instance frees: max_size 1, B=1, D=0, N=1.
# r0 at 0 -> [0, 10]. r1 at 5 -> queue [r1] (full).
# r2 at exactly 10 is admitted before the decision: it evicts r1 at 10; then r2 [10, 20].
def test_queue_cap_drop_oldest_at_completion_instant():
    sc = scenario({"mode": "triton", "max_batch_size": 1, "max_queue_delay_ms": 0},
                  queue={"max_size": 1, "on_full": "drop_oldest"})
    tr = run(sc, [0, 5, 10])
    assert reasons(tr) == ["", "dropped_oldest", ""]
    assert tr.drop_t.tolist() == ms([None, 10, None])
    assert tr.start.tolist() == ms([0, None, 10])
    assert tr.end.tolist() == ms([10, None, 20])


# At one instant arrivals are enqueued first, then the batcher decides, then timeouts fire.
# B=2, D=20, timeout 10, N=1. r0 at 0 (deadline 10). r1 at exactly 10: enqueued first, the
# batch is then full (triton: q=B; timer: the open batch reaches B) and dispatched at 10,
# before r0's timeout could fire -> {r0, r1} [10, 22].
@pytest.mark.parametrize("mode", ["triton", "timer"])
def test_queue_timeout_same_instant_arrival_fills_batch_first(mode):
    sc = scenario({"mode": mode, "max_batch_size": 2, "max_queue_delay_ms": 20}, queue={"timeout_ms": 10})
    tr = run(sc, [0, 10])
    assert reasons(tr) == ["", ""]
    assert tr.start.tolist() == ms([10, 10])
    assert tr.end.tolist() == ms([22, 22])


# triton: a partial batch due at t0 + D where t0 + D is exactly the oldest's deadline is
# served. B=4, D=10, timeout 10, N=1: r0 at 0 -> due at 10 = deadline -> [10, 20].
# r1 at 30, r2 at 31: due at 40, r1's deadline 40 -> {r1, r2} [40, 52].
def test_queue_timeout_equal_to_queue_delay_is_served():
    sc = scenario({"mode": "triton", "max_batch_size": 4, "max_queue_delay_ms": 10}, queue={"timeout_ms": 10})
    tr = run(sc, [0, 30, 31])
    assert reasons(tr) == ["", "", ""]
    assert tr.start.tolist() == ms([10, 40, 40])
    assert tr.end.tolist() == ms([20, 52, 52])


# A request still queued at its deadline instant still holds its place in the queue when an
# arrival at that same instant is admitted (arrivals first, timeouts last).
# max_size 1, reject, timeout 5; triton B=1, D=0, N=1.
# r0 at 0 -> [0, 10]. r1 at 1 -> queued (deadline 6). r2 at 6: the queue is still full ->
#   rejected at 6; r1 then times out, dropped at 6. r3 at 8 -> queue empty -> queued
#   (deadline 13) -> t=10: r3 [10, 20].
def test_timeout_fires_after_admission_at_same_instant():
    sc = scenario({"mode": "triton", "max_batch_size": 1, "max_queue_delay_ms": 0},
                  queue={"max_size": 1, "on_full": "reject", "timeout_ms": 5})
    tr = run(sc, [0, 1, 6, 8])
    assert reasons(tr) == ["", "timeout", "rejected", ""]
    assert tr.drop_t.tolist() == ms([None, 6, 6, None])
    assert tr.start.tolist() == ms([0, None, None, 10])


# Evicting the oldest request moves t0 to the next oldest: triton B=4, D=5, N=1,
# max_size 1, drop_oldest. r0 at 0 (due at 5). r1 at 3 evicts r0 at 3; now t0 = 3, so
# nothing is due at 5; r1 goes at 3 + 5 = 8 -> [8, 18].
def test_drop_oldest_moves_t0():
    sc = scenario({"mode": "triton", "max_batch_size": 4, "max_queue_delay_ms": 5},
                  queue={"max_size": 1, "on_full": "drop_oldest"})
    tr = run(sc, [0, 3])
    assert reasons(tr) == ["dropped_oldest", ""]
    assert tr.drop_t.tolist() == ms([3, None])
    assert tr.start.tolist() == ms([None, 8])
    assert tr.end.tolist() == ms([None, 18])


# timer mode: timeouts apply to requests in a closed batch; a closed batch whose requests
# were all dropped is skipped. timer B=2, D=5, N=1, timeout 10.
# r0 at 0, r1 at 1 -> closes at 1 -> [1, 13].
# r2 at 2 -> closes at 7 alone (deadline 12). r3 at 8, r4 at 9 -> closes at 9 (deadlines
#   18, 19).
# t=13: r2 was still queued past 12 -> dropped at 12; its batch is empty -> skipped;
#   {r3, r4} [13, 25].
def test_timer_timeout_in_closed_batch_skips_empty_batch():
    sc = scenario({"mode": "timer", "max_batch_size": 2, "max_queue_delay_ms": 5}, queue={"timeout_ms": 10})
    tr = run(sc, [0, 1, 2, 8, 9])
    assert reasons(tr) == ["", "", "timeout", "", ""]
    assert tr.drop_t.tolist() == ms([None, None, 12, None, None])
    assert tr.start.tolist() == ms([1, 1, None, 13, 13])
    assert tr.end.tolist() == ms([13, 13, None, 25, 25])


# timer mode: a request dispatched at exactly entry + timeout is still served.
# timer B=2, D=5, N=1, timeout 11. r0, r1 at 0 -> closes at 0 (size 2) -> [0, 12].
# r2 at 1 (deadline 12) opens a batch; r3 at 2 (deadline 13) fills it -> closes at 2, waits.
# t=12: {r2, r3} starts at exactly r2's deadline -> still served -> [12, 24].
def test_timer_dispatch_at_exact_timeout_served():
    sc = scenario({"mode": "timer", "max_batch_size": 2, "max_queue_delay_ms": 5}, queue={"timeout_ms": 11})
    tr = run(sc, [0, 0, 1, 2])
    assert reasons(tr) == ["", "", "", ""]
    assert tr.dispatch.tolist() == ms([0, 0, 2, 2])
    assert tr.start.tolist() == ms([0, 0, 12, 12])
    assert tr.end.tolist() == ms([12, 12, 24, 24])


# The timeout counts from queue entry, i.e. after pre-processing.
# pre-processing 5 ms as a pure delay (workers 0); triton B=1, D=0, N=1; timeout 6.
# r0 at 0 -> entry 5 -> [5, 15]. r1 at 1 -> entry 6, deadline 12 -> t=15 -> dropped at 12.
# r2 at 4 -> entry 9, deadline 15 -> dispatched at exactly 15 -> served [15, 25].
def test_queue_timeout_counts_from_entry_after_preprocessing():
    sc = scenario({"mode": "triton", "max_batch_size": 1, "max_queue_delay_ms": 0},
                  queue={"timeout_ms": 6}, service={"preprocess": {"ms": 5, "workers": 0}})
    tr = run(sc, [0, 1, 4])
    assert tr.entry.tolist() == ms([5, 6, 9])
    assert reasons(tr) == ["", "timeout", ""]
    assert tr.drop_t.tolist() == ms([None, 12, None])
    assert tr.start.tolist() == ms([5, None, 15])


# Two cameras with per_source_max_size 1 and stride 2 (frames 0, 2, 4, ... of each source are
# kept; the others are dropped with reason "stride" at their arrival time). The victim of
# drop_oldest is the oldest queued request *of the arriving request's source*, which here is
# never the oldest in the whole queue.
# triton B=2, D=0, N=1.
#   k  t   src frame
#   0  0   0   0   kept -> idle instance -> {r0} [0, 10]
#   1  1   1   0   kept -> queued (src 1 holds r1)
#   2  2   0   1   stride -> dropped at 2
#   3  3   0   2   kept -> queued (src 0 holds r3); queue [r1, r3]
#   4  4   0   3   stride -> dropped at 4
#   5  5   0   4   kept; src 0 full:  drop_oldest -> evicts r3 (not r1) at 5 | reject -> r5 rejected at 5
#   6  6   1   1   stride -> dropped at 6
#   7  7   1   2   kept; src 1 full:  drop_oldest -> evicts r1 at 7           | reject -> r7 rejected at 7
#   t=10: queue [r5, r7] (drop_oldest) | [r1, r3] (reject) -> batch of 2 [10, 22]
#   8  12  1   3   stride -> dropped at 12
#   9  13  1   4   kept -> queued -> t=22: {r9} [22, 32]
# The whole queue never holds more than 2, so only the per-source caps act.
PER_SOURCE_TIMES = [0, 1, 2, 3, 4, 5, 6, 7, 12, 13]
PER_SOURCE_SRC = [0, 1, 0, 0, 0, 0, 1, 1, 1, 1]
PER_SOURCE_FRAME = [0, 0, 1, 2, 3, 4, 1, 2, 3, 4]


def test_per_source_cap_drop_oldest_with_stride():
    sc = scenario({"mode": "triton", "max_batch_size": 2, "max_queue_delay_ms": 0},
                  queue={"per_source_max_size": 1, "on_full": "drop_oldest", "stride": 2})
    tr = run(sc, PER_SOURCE_TIMES, PER_SOURCE_SRC, PER_SOURCE_FRAME)
    assert reasons(tr) == ["", "dropped_oldest", "stride", "dropped_oldest", "stride",
                           "", "stride", "", "stride", ""]
    assert tr.drop_t.tolist() == ms([None, 7, 2, 5, 4, None, 6, None, 12, None])
    assert tr.start.tolist() == ms([0, None, None, None, None, 10, None, 10, None, 22])
    assert tr.end.tolist() == ms([10, None, None, None, None, 22, None, 22, None, 32])
    assert tr.batch_size.tolist() == [1, 0, 0, 0, 0, 2, 0, 2, 0, 1]


def test_per_source_cap_reject_with_stride():
    sc = scenario({"mode": "triton", "max_batch_size": 2, "max_queue_delay_ms": 0},
                  queue={"per_source_max_size": 1, "on_full": "reject", "stride": 2})
    tr = run(sc, PER_SOURCE_TIMES, PER_SOURCE_SRC, PER_SOURCE_FRAME)
    assert reasons(tr) == ["", "", "stride", "", "stride", "rejected", "stride", "rejected", "stride", ""]
    assert tr.drop_t.tolist() == ms([None, None, 2, None, 4, 5, 6, 7, 12, None])
    assert tr.start.tolist() == ms([0, 10, None, 10, None, None, None, None, None, 22])
    assert tr.end.tolist() == ms([10, 22, None, 22, None, None, None, None, None, 32])


# Per-source caps and a global cap together: per_source_max_size 2, max_size 3, reject;
# triton B=1, D=0, N=1 (10 ms each). One camera alone cannot fill the global queue.
# r0 (src0) at 0 -> [0, 10]. r1 src0 at 1, r2 src0 at 2 -> src0 holds 2.
# r3 src0 at 3 -> src0 full -> rejected at 3.
# r4 src1 at 4 -> queue [r1, r2, r4] (3 = max_size).
# r5 src1 at 5 -> src1 holds 1 < 2, but the global queue is full -> rejected at 5.
# t=10: r1 [10, 20]; t=20: r2 [20, 30]; t=30: r4 [30, 40].
def test_per_source_and_global_caps():
    sc = scenario({"mode": "triton", "max_batch_size": 1, "max_queue_delay_ms": 0},
                  queue={"per_source_max_size": 2, "max_size": 3, "on_full": "reject"})
    tr = run(sc, [0, 1, 2, 3, 4, 5], [0, 0, 0, 0, 1, 1])
    assert reasons(tr) == ["", "", "", "rejected", "", "rejected"]
    assert tr.drop_t.tolist() == ms([None, None, None, 3, None, 5])
    assert tr.start.tolist() == ms([0, 10, 20, None, 30, None])


# =========================================================================== stages, overhead, contention


# fifo_pool on its own: 2 workers, 4 ms each, entering at 0, 1, 2, 10.
# r0 on worker A [0, 4]; r1 on worker B [1, 5]; r2 waits for the first free worker (A at 4)
# [4, 8]; r3 at 10 finds both free [10, 14].
# 1 worker: [0, 4], [4, 8], [8, 12], and r3 (enters at 10) waits for it -> [12, 16].
# 0 workers: a pure delay of 4.
def test_fifo_pool_departures():
    a = np.array([0.0, 1.0, 2.0, 10.0])
    assert fifo_pool(a, 4.0, 2).tolist() == pytest.approx([4, 5, 8, 14], abs=1e-12)
    assert fifo_pool(a, 4.0, 1).tolist() == pytest.approx([4, 8, 12, 16], abs=1e-12)
    assert fifo_pool(a, 4.0, 0).tolist() == pytest.approx([4, 5, 6, 14], abs=1e-12)


# Pre-processing pool (4 ms, 1 worker), post-processing pool (3 ms, 1 worker), overhead 5 ms.
# triton B=4, D=0, N=1.
# pre: r0 [0, 4], r1 [4, 8], r2 [8, 12] -> queue entries 4, 8, 12.
# batcher: r0 at 4 -> [4, 14]; r1 (8), r2 (12) queue; t=14 -> {r1, r2} [14, 26].
# post, FIFO in service-end order: r0 [14, 17]; r1 [26, 29]; r2 [29, 32].
# latency = done - arrival + overhead: r0 17 - 0 + 5 = 22; r1 29 - 1 + 5 = 33;
#   r2 32 - 2 + 5 = 35.
def test_pre_and_post_processing_pools_and_overhead():
    sc = scenario({"mode": "triton", "max_batch_size": 4, "max_queue_delay_ms": 0},
                  service={"preprocess": {"ms": 4, "workers": 1}, "postprocess": {"ms": 3, "workers": 1},
                           "overhead_ms": 5})
    tr = run(sc, [0, 1, 2])
    assert tr.entry.tolist() == ms([4, 8, 12])
    assert tr.start.tolist() == ms([4, 14, 14])
    assert tr.end.tolist() == ms([14, 26, 26])
    assert tr.done.tolist() == ms([17, 29, 32])
    assert tr.latency_ms.tolist() == lat([22, 33, 35])


# Post-processing is FIFO in order of service end, not of arrival. N=2, triton B=2, D=0;
# post 3 ms, 1 worker.
# t=0: r0, r1, r2 -> inst 0 {r0, r1} [0, 12]; inst 1 {r2} [0, 10].
# post: r2 (end 10) [10, 13]; r0 (end 12) [13, 16]; r1 (end 12, after r0) [16, 19].
def test_postprocessing_fifo_in_service_end_order():
    sc = scenario({"mode": "triton", "max_batch_size": 2, "max_queue_delay_ms": 0}, instances=2,
                  service={"postprocess": {"ms": 3, "workers": 1}})
    tr = run(sc, [0, 0, 0])
    assert tr.end.tolist() == ms([12, 12, 10])
    assert tr.done.tolist() == ms([16, 19, 13])
    assert tr.latency_ms.tolist() == lat([16, 19, 13])


# Pre-processing with 2 workers (4 ms) feeding a triton batcher with D = 5: the queue delay
# counts from queue entry (after pre-processing).
# pre: r0 [0, 4], r1 [1, 5], r2 waits for a worker: [4, 8], r3 [5, 9] -> entries 4, 5, 8, 9.
# batcher B=4, D=5, N=1: t0 = 4 -> due at 9; r3 enters at exactly 9 -> q=4=B anyway ->
#   {r0..r3} [9, 25]. Post-processing 2 ms, 2 workers: r0, r1 [25, 27], r2, r3 [27, 29].
# latency: 27-0, 27-1, 29-2, 29-3 = 27, 26, 27, 26 (no overhead).
def test_preprocessing_two_workers_then_queue_delay():
    sc = scenario({"mode": "triton", "max_batch_size": 4, "max_queue_delay_ms": 5},
                  service={"preprocess": {"ms": 4, "workers": 2}, "postprocess": {"ms": 2, "workers": 2}})
    tr = run(sc, [0, 1, 2, 3])
    assert tr.entry.tolist() == ms([4, 5, 8, 9])
    assert tr.start.tolist() == ms([9, 9, 9, 9])
    assert tr.done.tolist() == ms([27, 27, 29, 29])
    assert tr.latency_ms.tolist() == lat([27, 26, 27, 26])


# Pre-processing as a pure delay shifts the queue delay: pre 3 ms, workers 0; triton B=4,
# D=5. r0 at 0 -> entry 3 -> due at 8 -> [8, 18]. Latency 18.
def test_preprocessing_delay_shifts_queue_delay():
    sc = scenario({"mode": "triton", "max_batch_size": 4, "max_queue_delay_ms": 5},
                  service={"preprocess": {"ms": 3, "workers": 0}})
    tr = run(sc, [0])
    assert tr.entry.tolist() == ms([3])
    assert tr.start.tolist() == ms([8])
    assert tr.latency_ms.tolist() == lat([18])


# Contention {2: 1.5}, N=2, triton B=1, D=0 (10 ms alone): a batch started while it makes
# 2 busy instances takes 15 ms; the factor is fixed at its start.
# r0 at 0 -> inst 0, 1 busy -> [0, 10].
# r1 at 2 -> inst 1, 2 busy -> 15 ms -> [2, 17].
# r2 at 10: inst 0 frees at 10 (r2 enqueued first, then the decision) -> inst 0, 2 busy
#   (inst 1 still on r1) -> [10, 25].
# r3 at 30: both idle -> inst 0, 1 busy -> [30, 40].
def test_contention_factor():
    sc = scenario({"mode": "triton", "max_batch_size": 1, "max_queue_delay_ms": 0}, instances=2,
                  service={"contention": {2: 1.5}})
    tr = run(sc, [0, 2, 10, 30])
    assert tr.instance.tolist() == [0, 1, 0, 0]
    assert tr.start.tolist() == ms([0, 2, 10, 30])
    assert tr.end.tolist() == ms([10, 17, 25, 40])
    assert tr.latency_ms.tolist() == lat([10, 15, 15, 10])
