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
