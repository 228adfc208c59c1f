"""The server's batcher makes the simulator's decisions: driven by a fake clock through the same
arrivals and service times, every request starts at the same instant, in the same batch, on the
same instance, or is dropped for the same reason at the same time."""

from __future__ import annotations

import heapq

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capsim.config import parse_scenario
from capsim.service import ServiceCurve, contention_table
from capsim.sim.engine import SimPyEngine
from capsim.sim.queue import DROP_REASONS
from capsim.arrivals import ArrivalStream
from capsim.validate.batching import ServerBatcher


def drive(sc, entry_ns: np.ndarray, source: np.ndarray):
    """Run ServerBatcher on a fake ns clock the way the server's loop does, with the scenario's
    deterministic batch times; returns per-request (start, batch size, instance, drop reason, drop time)."""
    b, q = sc.batching, sc.queue
    curve = ServiceCurve(sc.service.curve_ms(), b.max_batch_size)
    mean_ns = curve.seconds * 1e9
    cont = contention_table(sc.service, sc.instances)
    bt = ServerBatcher(b.max_batch_size, round(b.max_queue_delay_ms * 1e6), sc.instances, b.preferred_batch_sizes,
                       q.max_size, q.per_source_max_size, q.on_full, round(q.timeout_ms * 1e6), tick=1)
    n = len(entry_ns)
    start = np.full(n, -1, np.int64)
    size = np.zeros(n, np.int64)
    inst = np.full(n, -1, np.int64)
    reason = [""] * n
    drop_t = np.full(n, -1, np.int64)
    events: list = []  # (time, kind, payload): kind 0 completion, 1 arrival, 2 wake
    for i, t in enumerate(entry_ns):
        heapq.heappush(events, (int(t), 1, i))
    busy = 0

    def record_drops(ps, t):
        for p in ps:
            reason[p.key] = p.dropped
            drop_t[p.key] = p.entered + bt.timeout if p.dropped == "timeout" else t

    while events:
        now = events[0][0]
        while events and events[0][0] == now:  # everything at this instant: completions, arrivals, wakes
            _, kind, payload = heapq.heappop(events)
            if kind == 0:
                bt.release(payload, now)
                busy -= 1
            elif kind == 1:
                record_drops(bt.expire(now), now)
                record_drops(bt.offer(payload, int(source[payload]), now), now)
        expired, batches = bt.take(now)
        record_drops(expired, now)
        for instance, batch in batches:
            busy += 1
            dt = int(np.rint(mean_ns[len(batch)] * cont[busy]))
            for p in batch:
                start[p.key], size[p.key], inst[p.key] = now, len(batch), instance
            heapq.heappush(events, (now + dt, 0, instance))
        wake = bt.next_wake(now)
        if wake is not None and wake > now:
            heapq.heappush(events, (int(wake), 2, None))
    return start, size, inst, reason, drop_t


def compare(sc, times: np.ndarray, source: np.ndarray):
    arr = ArrivalStream(times, source.astype(np.int32), np.arange(len(times)), int(source.max()) + 1)
    ref = SimPyEngine(sc).run(arr, np.random.default_rng(0))
    entry_ns = np.rint(times * 1e9).astype(np.int64)
    start, size, inst, reason, drop_t = drive(sc, entry_ns, source)
    want_start = np.where(np.isnan(ref.start), -1, np.rint(ref.start * 1e9)).astype(np.int64)
    np.testing.assert_array_equal(start, want_start)
    np.testing.assert_array_equal(size, ref.batch_size)
    np.testing.assert_array_equal(inst, ref.instance)
    assert reason == [DROP_REASONS[c] for c in ref.drop_reason]
    want_drop = np.where(np.isnan(ref.drop_t), -1, np.rint(ref.drop_t * 1e9)).astype(np.int64)
    np.testing.assert_array_equal(drop_t, want_drop)
    return ref


def _sc(**kw):
    base = {"arrivals": {"process": "poisson", "rate_rps": 10},
            "service": {"batch_latency_ms": {1: 10, 2: 14, 4: 20}},
            "batching": {"max_batch_size": 4, "max_queue_delay_ms": 5},
            "run": {"requests": 1000, "warmup_requests": 0, "replications": 1}}
    for k, v in kw.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return parse_scenario(base)


def test_hand_computed_timeline():
    # B=4, D=5 ms, 10/14/20 ms per batch of 1/2/4, one instance. Arrivals (ms): 0, 1, 2, 8, 9, 30.
    # t=0: idle, 1 queued, not due -> wake at 5. t=5: 3 queued (0,1,2), due -> batch of 3 (c3, PCHIP
    # between 14 and 20 ms). 8 and 9 queue behind it and are due when it ends: a batch of 2 (14 ms).
    # 30 arrives while that runs and starts alone when it ends (its own delay ran out at 35 < end).
    times = np.array([0, 1, 2, 8, 9, 30]) / 1000.0
    sc = _sc()
    ref = compare(sc, times, np.zeros(6, np.int64))
    c3 = ServiceCurve(sc.service.curve_ms(), 4).seconds[3]
    assert list(ref.batch_size) == [3, 3, 3, 2, 2, 1]
    end1 = 0.005 + c3
    assert ref.start[0] == pytest.approx(0.005) and ref.start[3] == pytest.approx(end1)
    assert ref.start[5] == pytest.approx(end1 + 0.014) and end1 + 0.014 > 0.035


def test_caps_timeouts_and_per_source_caps_match_the_simulator():
    rng = np.random.default_rng(1)
    times = np.sort(rng.uniform(0, 0.5, 300))
    src = rng.integers(0, 4, 300)
    for q in ({"max_size": 3, "on_full": "reject"}, {"max_size": 3, "on_full": "drop_oldest"},
              {"timeout_ms": 12}, {"per_source_max_size": 1, "on_full": "drop_oldest"},
              {"per_source_max_size": 2, "on_full": "reject", "max_size": 5, "timeout_ms": 25}):
        ref = compare(_sc(queue=q, instances=2, service={"contention": {2: 1.4}}), times, src)
        assert (ref.drop_reason > 0).any(), q


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(B=st.integers(1, 8), D=st.sampled_from([0.0, 1.0, 2.5, 10.0]), N=st.integers(1, 3),
       rate=st.sampled_from([50.0, 200.0, 600.0]), cap=st.sampled_from([0, 2, 6]),
       pcap=st.sampled_from([0, 1, 3]), timeout=st.sampled_from([0.0, 4.0, 15.0]),
       on_full=st.sampled_from(["reject", "drop_oldest"]), grid=st.booleans(),
       pref=st.lists(st.integers(1, 8), max_size=2), seed=st.integers(0, 10_000))
def test_random_configs_match_the_simulator(B, D, N, rate, cap, pcap, timeout, on_full, grid, pref, seed):
    rng = np.random.default_rng(seed)
    n = 400
    if grid:  # arrivals on a 1 ms grid: many exact ties with deadlines and completions
        times = np.sort(rng.integers(0, int(n / rate * 1000) + 1, n)) / 1000.0
    else:
        times = np.cumsum(rng.exponential(1 / rate, n))
    src = rng.integers(0, 3, n)
    sc = _sc(batching={"max_batch_size": B, "max_queue_delay_ms": D, "preferred_batch_sizes": [p for p in pref if p <= B]},
             service={"batch_latency_ms": {1: 2.0, 8: 9.0}, "contention": {2: 1.3, 3: 1.7}}, instances=N,
             queue={"max_size": cap, "per_source_max_size": pcap, "timeout_ms": timeout, "on_full": on_full})
    compare(sc, times, src)


# --------------------------------------------------------------------------- production policies
# Hand-computed timelines on an integer fake clock (1 unit = 1 ms, tick 1): every decision is exact.

from capsim.validate.batching import LevelPolicy  # noqa: E402


def _keys(ps):
    return [p.key for p in ps]


def _reasons(ps):
    return [(p.key, p.dropped) for p in ps]


def test_priority_lanes_timeline():
    # B=4, D=10, one instance. Level 0: cap 2, reject; level 1: cap 3, drop_oldest.
    bt = ServerBatcher(4, 10, 1, tick=1, levels=[LevelPolicy(2, "reject"), LevelPolicy(3, "drop_oldest")])
    for t, key, lv in ((0, "a", 1), (2, "b", 1), (4, "x", 0)):
        assert bt.offer(key, 0, t, lv) == []
        assert bt.take(t) == ([], [])
    # the delay runs from the oldest request of ANY level: a (t=0, level 1), not x (t=4, level 0)
    assert bt.next_wake(4) == 10
    _, batches = bt.take(10)
    assert [(i, _keys(b)) for i, b in batches] == [(0, ["x", "a", "b"])]  # level 0 first, then level 1 FIFO
    # while the instance is busy: level 1 fills its cap of 3 and evicts its own oldest (c), not y
    for t, key, lv in ((11, "c", 1), (12, "y", 0), (13, "d", 1), (14, "e", 1)):
        assert bt.offer(key, 0, t, lv) == []
    assert _reasons(bt.offer("f", 0, 15, 1)) == [("c", "dropped_oldest")]
    assert bt.offer("z", 0, 16, 0) == []
    assert _reasons(bt.offer("w", 0, 17, 0)) == [("w", "rejected")]  # level 0 is at its cap of 2
    assert bt.qlen == 5 and bt.llen == [2, 3]
    assert bt.take(20) == ([], []) and bt.next_wake(20) is None  # no idle instance: nothing to wait for
    bt.release(0, 30)
    _, batches = bt.take(30)  # 5 queued >= B: the 4 taken are both of level 0, then level 1's oldest two
    assert [_keys(b) for _, b in batches] == [["y", "z", "d", "e"]]
    bt.release(0, 50)
    _, batches = bt.take(50)  # f waited since 15 > D
    assert [_keys(b) for _, b in batches] == [["f"]] and bt.qlen == 0


def test_priority_lane_timeouts_timeline():
    # B=1, D=0, one instance; level 1 times out after 5, level 0 never.
    bt = ServerBatcher(1, 0, 1, tick=1, levels=[LevelPolicy(), LevelPolicy(timeout=5)])
    bt.offer("a", 0, 0, 0)
    assert [_keys(b) for _, b in bt.take(0)[1]] == [["a"]]
    for t, key, lv in ((1, "b", 1), (2, "c", 0), (3, "d", 1)):
        bt.offer(key, 0, t, lv)
        assert bt.take(t) == ([], [])
    assert bt.next_wake(3) == 1 + 5 + 1  # b may still start at 6; it is dropped at 7
    dropped, _ = bt.take(7)
    assert _reasons(dropped) == [("b", "timeout")] and bt.next_wake(7) == 9
    assert _reasons(bt.take(9)[0]) == [("d", "timeout")] and bt.next_wake(9) is None  # c (level 0) has no timeout
    bt.release(0, 20)
    assert [_keys(b) for _, b in bt.take(20)[1]] == [["c"]]


def test_one_level_is_the_plain_queue():
    # levels=None and one explicit lane with the same policy make the same decisions
    a = ServerBatcher(2, 3, 1, max_size=2, on_full="drop_oldest", timeout=4, tick=1)
    b = ServerBatcher(2, 3, 1, tick=1, levels=[LevelPolicy(2, "drop_oldest", 4)])
    for bt in (a, b):
        out = []
        for t in range(12):
            out.append(_reasons(bt.offer(t, 0, t)))
            if t in (5, 9):
                bt.release(0, t)
            dropped, batches = bt.take(t)
            out.append((_reasons(dropped), [_keys(x) for _, x in batches], bt.next_wake(t)))
        bt.out = out
    assert a.out == b.out


def test_deadline_timeline():
    # B=4, D=10, one instance, deadline 8 from arrival (arrival = 1 before entry: the decode).
    bt = ServerBatcher(4, 10, 1, tick=1, deadline=8)
    bt.offer("a", 0, 1, arrived=0)                  # stale once 0 + 8 < now
    bt.offer("b", 0, 4, arrived=3, deadline=0)      # this request has no deadline
    bt.offer("c", 0, 6, arrived=5, deadline=20)     # its own: stale once 25 < now
    for t in (1, 4, 6, 9):  # a is past its deadline at 9, but no batch is being formed: it stays
        assert bt.take(t) == ([], [])
    assert bt.qlen == 3 and bt.next_wake(9) == 11
    dropped, batches = bt.take(11)  # due (a waited D): a is stale; on what is left (b from 4) nothing is due
    assert _reasons(dropped) == [("a", "stale")] and batches == []
    assert bt.next_wake(11) == 14
    dropped, batches = bt.take(14)
    assert dropped == [] and [_keys(x) for _, x in batches] == [["b", "c"]]


def test_deadline_with_a_full_batch_and_a_busy_instance():
    # B=2, D=100: 3 queued behind a busy instance; at its release 2 are stale and 1 is left: not a full
    # batch, not due, so it waits; a later arrival fills the batch.
    bt = ServerBatcher(2, 100, 1, tick=1, deadline=10)
    bt.offer("a", 0, 0)
    bt.offer("a2", 0, 0)
    assert [_keys(x) for _, x in bt.take(0)[1]] == [["a", "a2"]]
    for t, key in ((1, "b"), (2, "c"), (15, "d")):
        bt.offer(key, 0, t)
    bt.release(0, 20)
    dropped, batches = bt.take(20)  # 1 + 10 < 20 and 2 + 10 < 20; d (15 + 10 = 25) is fresh
    assert _reasons(dropped) == [("b", "stale"), ("c", "stale")] and batches == []
    bt.offer("e", 0, 21)
    assert [_keys(x) for _, x in bt.take(21)[1]] == [["d", "e"]]


def test_fixed_stride():
    bt = ServerBatcher(8, 100, 1, tick=1, stride=2)
    got = [_reasons(bt.offer(i, 0, i)) for i in range(6)]  # frames 0..5 of camera 0
    assert got == [[], [(1, "stride")], [], [(3, "stride")], [], [(5, "stride")]]
    assert _reasons(bt.offer("x", 0, 6, frame=3)) == [("x", "stride")]  # an explicit index wins
    assert bt.offer("y", 0, 7, frame=4) == [] and bt.offer("z", 1, 8) == []  # camera 1 counts its own frames
    assert bt.frames == {0: 8, 1: 1} and bt.stride_of == {0: 2, 1: 2}


def test_degrade_stride_timeline():
    # stride 1, threshold 2, max 3; B=1, D=0, one instance busy 10 per frame. Camera 0 sends a burst.
    bt = ServerBatcher(1, 0, 1, tick=1, degrade_threshold=2, degrade_max_stride=3)
    strides, drops = [], []

    def frame(t, key, **kw):
        drops.extend(_reasons(bt.offer(key, 0, t, **kw)))
        strides.append(bt.stride_of[0])

    frame(0, "f0")
    assert [_keys(x) for _, x in bt.take(0)[1]] == [["f0"]]  # runs until 10
    for t in range(1, 7):
        frame(t, f"f{t}")
    # f1: 0 queued (stride stays 1); f2: 1 queued; f3: 2 queued -> stride 2, 3 % 2 -> dropped;
    # f4: still 2 queued -> 3, 4 % 3 -> dropped; f5: 3 (max), dropped; f6: 6 % 3 == 0 -> queued
    assert strides == [1, 1, 1, 2, 3, 3, 3]
    assert drops == [("f3", "stride"), ("f4", "stride"), ("f5", "stride")]
    for t in (10, 20, 30):
        bt.release(0, t)
        bt.take(t)
    assert bt.qlen == 0  # f1, f2, f6 ran; the instance is busy with f6 until 40
    frame(35, "f7")   # camera 0's queue is empty: the stride falls to 2; 7 % 2 -> dropped
    frame(36, "f8")   # empty again: falls to 1; queued
    frame(37, "f9")   # 1 queued: unchanged
    assert strides[-3:] == [2, 1, 1] and drops[-1] == ("f7", "stride") and bt.qlen == 2
