"""Property tests: invariants of every simulation, over random valid scenarios.

Each example draws a scenario (arrival process, batch curve, batcher, instances, queue caps
and drop policies, pre/post stages, variability, contention) with a small request count and
checks, on the raw per-request and per-batch traces, what must hold whatever the numbers:

- conservation: every arrival ends exactly one way, completed or dropped with a reason that
  the configuration allows; the summary's counts add up;
- causality: arrival <= entry <= start < end <= done, pre/post stages behave as FIFO pools;
- batches: never larger than B, their sizes equal the requests that carry them, an instance
  never runs two at once, triton and timer batches follow the documented closing rules;
- queue caps hold at every admission and rejections only happen at a full queue; timeouts
  fire exactly at entry + timeout and a served request never waited longer;
- reproducibility: the same seed gives identical traces, another seed different ones (where
  anything is random), and no global random state is read or changed.

The expected behaviour comes from /work/shared/design.md ("Batching semantics", "Queue and
drop policies") and the docstrings of capsim.sim.batcher and capsim.sim.queue.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capsim.config import parse_scenario
from capsim.simulate import run_replication, simulate
from capsim.sim.queue import DROP_REASONS

NS = 1_000_000_000
REASON = {name: code for code, name in enumerate(DROP_REASONS)}
COMPLETED, REJECTED, DROPPED_OLDEST, TIMEOUT, STRIDE = (
    0, REASON["rejected"], REASON["dropped_oldest"], REASON["timeout"], REASON["stride"])
SIZES = (1, 2, 3, 4, 6, 8, 12, 16)

PROPS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- strategies


def _finite(lo, hi):
    """A float in [lo, hi], often a round number: round numbers make events coincide (ties)."""
    rounds = [v for v in (0, 1, 2, 2.5, 4, 5, 8, 10, 12.5, 20, 25, 40, 50, 100, 200, 250, 400, 500) if lo <= v <= hi]
    floats = st.floats(lo, hi, allow_nan=False, allow_infinity=False)
    return st.one_of(st.sampled_from(rounds), floats) if rounds else floats


@st.composite
def arrivals(draw, capacity_rps):
    """An arrival process whose mean rate is a random fraction (up to 1.5x) of the capacity."""
    process = draw(st.sampled_from(["poisson", "constant", "bursty", "streams"]))
    load = draw(st.one_of(st.sampled_from([0.5, 0.9, 1.0, 1.2]), _finite(0.05, 1.5)))
    rate = max(load * capacity_rps, 1.0)
    if process in ("poisson", "constant"):
        return {"process": process, "rate_rps": rate}
    if process == "bursty":
        return {"process": "bursty", "rate_rps": rate / 2, "burst_rate_rps": rate * draw(_finite(1, 5)),
                "mean_burst_s": draw(_finite(0.01, 0.5)), "mean_calm_s": draw(_finite(0.05, 2.0))}
    groups = draw(st.lists(st.fixed_dictionaries({
        "count": st.integers(1, 6), "jitter_ms": st.one_of(st.just(0.0), _finite(0, 5))}), min_size=1, max_size=3))
    cams = sum(g["count"] for g in groups)
    for g in groups:
        g["fps"] = max(rate / cams, 0.5)
    return {"process": "streams", "streams": groups}


@st.composite
def scenarios(draw, **fixed):
    """A random valid scenario as plain data (``fixed`` overrides top-level sections)."""
    sizes = sorted(set(draw(st.lists(st.sampled_from(SIZES[1:]), min_size=draw(st.sampled_from([0, 1, 1, 1])),
                                     max_size=4))) | {1})
    base = draw(_finite(0.5, 40))
    curve, ms = {}, base
    for b in sizes:
        curve[b] = round(ms, 3)
        ms += draw(_finite(0, 8)) * (b if b > 1 else 0)  # non-decreasing, like real hardware
    if draw(st.booleans()) and len(sizes) > 1:  # and sometimes a curve that is not monotone
        b = draw(st.sampled_from(sizes[1:]))
        curve[b] = round(draw(_finite(0.5, 60)), 3)

    dist = draw(st.sampled_from(["none", "none", "exponential", "lognormal", "gamma"]))
    cv = {"none": 0.0, "exponential": 1.0}.get(dist) if dist in ("none", "exponential") else draw(_finite(0.05, 1.5))
    instances = draw(st.integers(1, 3))
    contention = {}
    if instances > 1 and draw(st.booleans()):
        contention = {k: round(draw(_finite(1.0, 2.0)), 3) for k in range(2, instances + 1)}

    def stage():
        return {"ms": draw(st.one_of(st.just(0.0), _finite(0, 10))), "workers": draw(st.integers(0, 3))}

    mode = draw(st.sampled_from(["triton", "timer"]))
    B = draw(st.one_of(st.just(max(curve)), st.integers(1, max(curve))))
    preferred = []
    if mode == "triton" and B > 1 and draw(st.booleans()):
        preferred = draw(st.lists(st.integers(1, B), max_size=3, unique=True))
    batching = {"mode": mode, "max_batch_size": B,
                "max_queue_delay_ms": draw(st.one_of(st.just(0.0), _finite(0, 30))),
                "preferred_batch_sizes": preferred}

    queue = {
        "max_size": draw(st.one_of(st.just(0), st.integers(1, 40))),
        "timeout_ms": draw(st.one_of(st.just(0.0), _finite(1, 200))),
        "on_full": draw(st.sampled_from(["reject", "drop_oldest"])),
        "per_source_max_size": draw(st.one_of(st.just(0), st.integers(1, 5))),
        "stride": draw(st.sampled_from([1, 1, 2, 3])),
    }
    requests = draw(st.integers(300, 2000))
    capacity = instances * B / curve.get(B, max(curve.values())) * 1000.0
    data = {
        "name": "property",
        "arrivals": draw(arrivals(capacity)),
        "service": {"batch_latency_ms": curve, "variability": {"distribution": dist, "cv": cv},
                    "overhead_ms": draw(st.one_of(st.just(0.0), _finite(0, 20))),
                    "preprocess": stage(), "postprocess": stage(), "contention": contention},
        "batching": batching,
        "instances": instances,
        "queue": queue,
        "run": {"requests": requests, "warmup_requests": draw(st.integers(0, 100)),
                "replications": draw(st.integers(1, 2)), "seed": draw(st.integers(0, 2**32 - 1))},
    }
    for k, v in fixed.items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k] = {**data[k], **v}
        else:
            data[k] = v
    return data


def plain_queue():
    return {"max_size": 0, "timeout_ms": 0.0, "per_source_max_size": 0, "stride": 1}


# --------------------------------------------------------------------------- helpers


def ns(t):
    """Seconds (as the trace stores them, from an integer-nanosecond clock) back to nanoseconds (NaN -> -1)."""
    t = np.asarray(t, dtype=np.float64)
    return np.where(np.isnan(t), -1, np.rint(np.nan_to_num(t) * NS)).astype(np.int64)


def batch_of_request(tr):
    """Index of the batch each completed request ran in, matched on (instance, start time)."""
    key = {(int(i), int(s)): k for k, (i, s) in enumerate(zip(tr.batch_instance, ns(tr.batch_start)))}
    assert len(key) == len(tr.batch_start), "two batches share an instance and a start time"
    out = np.full(len(tr.arrival), -1, np.int64)
    for r in np.flatnonzero(tr.completed):
        out[r] = key[(int(tr.instance[r]), int(ns(tr.start[r])))]
    return out


def fifo_pool_reference(times, service_s, workers):
    """Departures of a FIFO pool of identical workers, simulated one request at a time."""
    if workers == 0 or service_s == 0:
        return np.asarray(times, dtype=np.float64) + service_s
    free = [0.0] * workers
    out = []
    for a in times:
        w = min(range(workers), key=lambda i: free[i])
        start = max(a, free[w])
        free[w] = start + service_s
        out.append(free[w])
    return np.asarray(out)


def queued_leave(tr):
    """When each request left the batcher's queue: service start, or its drop."""
    return np.where(tr.completed, tr.start, tr.drop_t)


# --------------------------------------------------------------------------- the invariants


def check_trace(sc, tr):  # noqa: C901 - one place for every per-trace invariant
    n = len(tr.arrival)
    q, b, svc = sc.queue, sc.batching, sc.service
    done = tr.completed
    dropped = ~done
    reason = tr.drop_reason

    # --- conservation: exactly one outcome each, and every arrival accounted for
    assert n == sc.run.requests
    assert set(np.unique(reason)) <= set(range(len(DROP_REASONS)))
    assert done.sum() + dropped.sum() == n
    assert np.all(tr.batch_size[done] >= 1) and np.all(tr.batch_size[dropped] == 0)
    assert np.all(tr.instance[done] >= 0) and np.all(tr.instance[dropped] == -1)
    for name in ("start", "end", "done", "dispatch", "latency_ms"):
        a = getattr(tr, name)
        assert np.all(np.isfinite(a[done])), name
        assert np.all(np.isnan(a[dropped])), name
    assert np.all(np.isnan(tr.drop_t[done])) and np.all(np.isfinite(tr.drop_t[dropped]))
    assert tr.batch_size_by_batch.sum() == done.sum()
    assert np.array_equal(tr.warmup, np.arange(n) < sc.run.warmup_requests)

    # --- drop reasons only where the configuration allows them
    capped = q.max_size > 0 or q.per_source_max_size > 0
    if not (capped and q.on_full == "reject"):
        assert not np.any(reason == REJECTED)
    if not (capped and q.on_full == "drop_oldest"):
        assert not np.any(reason == DROPPED_OLDEST)
    if q.timeout_ms == 0:
        assert not np.any(reason == TIMEOUT)
    if q.stride == 1:
        assert not np.any(reason == STRIDE)

    # --- causality: no negative waits anywhere
    strided = reason == STRIDE
    admitted = ~strided & (reason != REJECTED)
    assert np.all(np.isnan(tr.entry[strided]))
    assert np.all(tr.entry[~strided] >= tr.arrival[~strided])
    assert np.all(tr.arrival[1:] >= tr.arrival[:-1])
    assert np.all(tr.start[done] >= tr.entry[done])
    assert np.all(tr.dispatch[done] <= tr.start[done])
    assert np.all(tr.dispatch[done] >= tr.entry[done])
    assert np.all(tr.end[done] >= tr.start[done])
    if svc.variability.distribution == "none":
        assert np.all(tr.end[done] > tr.start[done])
    assert np.all(tr.done[done] >= tr.end[done])
    assert np.all(tr.drop_t[dropped] >= tr.arrival[dropped])
    np.testing.assert_allclose(tr.latency_ms[done], (tr.done[done] - tr.arrival[done]) * 1000 + svc.overhead_ms,
                               rtol=0, atol=1e-6)
    assert np.all(tr.latency_ms[done] >= svc.overhead_ms)

    # --- pre/post stages: FIFO pools of identical workers (or pure delays)
    kept = np.flatnonzero(~strided)
    np.testing.assert_allclose(
        tr.entry[kept], fifo_pool_reference(tr.arrival[kept], svc.preprocess.ms / 1000, svc.preprocess.workers),
        rtol=0, atol=1e-6)  # the engine's clock is in whole nanoseconds: allow rounding, not a wrong pool
    served = np.flatnonzero(done)
    served = served[np.lexsort((served, tr.end[served]))]
    np.testing.assert_allclose(
        tr.done[served], fifo_pool_reference(tr.end[served], svc.postprocess.ms / 1000, svc.postprocess.workers),
        rtol=0, atol=1e-6)

    # --- stride: exactly every k-th frame of each source is kept
    if q.stride > 1:
        if sc.arrivals.process != "streams":
            assert np.array_equal(strided, np.arange(n) % q.stride != 0)
        else:
            for s in np.unique(tr.source):
                m = tr.source == s
                expect = m.sum() - (m.sum() + q.stride - 1) // q.stride
                assert abs(int(strided[m].sum()) - expect) <= 2  # jitter may reorder a frame at the ends

    # --- drop bookkeeping: rejected at entry, timeouts exactly at entry + timeout
    rej = reason == REJECTED
    assert np.array_equal(ns(tr.drop_t[rej]), ns(tr.entry[rej]))
    assert np.array_equal(ns(tr.drop_t[strided]), ns(tr.arrival[strided]))
    t_ns = int(round(q.timeout_ms * 1e6))
    if q.timeout_ms > 0:
        to = reason == TIMEOUT
        assert np.array_equal(ns(tr.drop_t[to]), ns(tr.entry[to]) + t_ns)
        # Nobody is served after waiting past the timeout (dispatch at exactly the deadline is allowed).
        assert np.all(ns(tr.start[done]) - ns(tr.entry[done]) <= t_ns)
    ev = reason == DROPPED_OLDEST
    if ev.any():
        assert np.all(tr.drop_t[ev] >= tr.entry[ev])
        # An eviction happens when another request enters the queue.
        assert np.all(np.isin(ns(tr.drop_t[ev]), ns(tr.entry[admitted])))

    # --- batches
    nb = len(tr.batch_start)
    assert len(tr.batch_end) == len(tr.batch_size_by_batch) == len(tr.batch_instance) == nb
    assert np.all(tr.batch_size_by_batch >= 1) and np.all(tr.batch_size_by_batch <= b.max_batch_size)
    assert np.all((tr.batch_instance >= 0) & (tr.batch_instance < sc.instances))
    assert np.all(tr.batch_end >= tr.batch_start)
    assert np.all(np.diff(tr.batch_start) >= 0), "batches are recorded in dispatch order"
    bid = batch_of_request(tr)
    counts = np.bincount(bid[done], minlength=nb)
    assert np.array_equal(counts, tr.batch_size_by_batch)
    assert np.array_equal(tr.batch_size[done], tr.batch_size_by_batch[bid[done]])
    assert np.array_equal(ns(tr.end[done]), ns(tr.batch_end[bid[done]]))
    # One instance runs one batch at a time.
    for i in range(sc.instances):
        m = tr.batch_instance == i
        s_, e_ = ns(tr.batch_start[m]), ns(tr.batch_end[m])
        assert np.all(s_[1:] >= e_[:-1]), f"instance {i} runs two batches at once"
    check_lowest_idle_instance(sc, tr)

    # --- deterministic service: duration = curve(b) x contention(busy instances), at measured sizes
    if svc.variability.distribution == "none":
        check_durations(sc, tr)

    # --- queue caps hold at every admission; rejections only at a full queue
    if capped:
        check_caps(sc, tr, admitted)

    # --- FIFO: the requests served start service in entry order (same-batch ones share a start);
    # drops remove requests from the queue but never reorder it.
    order = served[np.argsort(tr.entry[served], kind="stable")]
    assert np.all(np.diff(tr.start[order]) >= 0), "service does not start in FIFO order"

    if b.mode == "triton":
        check_triton(sc, tr, bid, admitted)
    else:
        # Timer mode, whatever drops: a batch closes after its members entered and no later than
        # its oldest member's entry + D (the oldest one present when it closed may have been older).
        D = int(round(b.max_queue_delay_ms * 1e6))
        close, ent = ns(tr.dispatch), ns(tr.entry)
        for k in range(nb):
            members = np.flatnonzero(bid == k)
            assert np.all(close[members] == close[members[0]])
            assert ent[members].max() <= close[members[0]] <= ent[members].min() + D, k
        if not capped and q.timeout_ms == 0:
            check_timer(sc, tr, bid)


def check_lowest_idle_instance(sc, tr):
    """A batch goes to the idle instance with the lowest index: every lower one is busy then.

    An instance whose batch ends at the very instant of the dispatch is idle at that instant
    (the engine decides after every event of an instant, design.md "Batching semantics").
    """
    s_, e_, inst = ns(tr.batch_start), ns(tr.batch_end), tr.batch_instance
    for k in range(len(s_)):
        t, i = s_[k], int(inst[k])
        for j in range(i):
            running = (inst[:k] == j) & (s_[:k] <= t) & (e_[:k] > t)
            assert running.any(), f"batch {k} went to instance {i} at t={t} ns while instance {j} was idle"


def check_durations(sc, tr):
    curve = sc.service.batch_latency_ms
    factor = {1: 1.0, **sc.service.contention}
    s_, e_ = ns(tr.batch_start), ns(tr.batch_end)
    for k in range(len(s_)):
        size = int(tr.batch_size_by_batch[k])
        if size not in curve:
            continue
        # Batches dispatched before this one and still running; one ending at this very instant
        # may or may not have been seen as finished (same-instant ordering), so both are accepted.
        lo = 1 + int(np.sum(e_[:k] > s_[k]))
        hi = 1 + int(np.sum(e_[:k] >= s_[k]))
        allowed = {round(curve[size] * 1e6 * factor.get(busy, 1.0)) for busy in range(lo, hi + 1)}
        assert int(e_[k] - s_[k]) in allowed, (k, size, lo, hi, int(e_[k] - s_[k]), allowed)


def check_caps(sc, tr, admitted):
    q = sc.queue
    entry, leave = ns(tr.entry), ns(queued_leave(tr))
    reason = tr.drop_reason
    idx = np.flatnonzero(reason != STRIDE)
    idx = idx[np.argsort(entry[idx], kind="stable")]
    for pos, r in enumerate(idx):
        t = entry[r]
        before = idx[:pos]
        before = before[admitted[before]]
        if admitted[r]:
            # Right after r is admitted: everyone admitted so far who has not left yet (evictions
            # and dispatches at this instant come after the admission, so they count as left).
            inq = np.concatenate([before[leave[before] > t], [r]])
            if q.max_size:
                assert len(inq) <= q.max_size, "queue cap exceeded"
            if q.per_source_max_size:
                assert np.sum(tr.source[inq] == tr.source[r]) <= q.per_source_max_size, "per-source cap exceeded"
        else:
            # A rejection: the queue (or this source's queue) was full when r arrived. Requests
            # dispatched or timed out at this instant were still queued at the admission.
            still = (leave[before] > t) | ((leave[before] == t) & (reason[before] != DROPPED_OLDEST))
            inq = before[still]
            full = bool(q.max_size and len(inq) >= q.max_size)
            src_full = bool(q.per_source_max_size
                            and np.sum(tr.source[inq] == tr.source[r]) >= q.per_source_max_size)
            assert full or src_full, "rejected although the queue had room"


def check_triton(sc, tr, bid, admitted):
    """Triton: each batch is min(B, queued) once due, or earlier the largest reachable preferred size.

    From the capsim.sim.batcher docstring: with q queued and an idle instance, q >= B dispatches
    B; once now >= t0 + D (t0 the oldest entry) all min(B, q) go; before that, the largest
    preferred size p <= q goes at once; otherwise the batcher waits.
    """
    b = sc.batching
    B, D = b.max_batch_size, int(round(b.max_queue_delay_ms * 1e6))
    pref = sorted(set(b.preferred_batch_sizes))
    assert np.array_equal(tr.dispatch[tr.completed], tr.start[tr.completed])
    entry, start, drop_t = ns(tr.entry), ns(tr.start), ns(tr.drop_t)
    reason = tr.drop_reason
    cand = np.flatnonzero(admitted | (reason == TIMEOUT) | (reason == DROPPED_OLDEST))
    for k, t in enumerate(ns(tr.batch_start)):
        c = cand[entry[cand] <= t]
        r = reason[c]
        # Still queued at the decision: served by this or a later batch, or dropped later (a
        # timeout at this very instant fires after the decision, an eviction before it).
        still = ((r == COMPLETED) & (bid[c] >= k)) | ((r == TIMEOUT) & (drop_t[c] >= t)) | \
            ((r == DROPPED_OLDEST) & (drop_t[c] > t))
        n = int(still.sum())
        size = int(tr.batch_size_by_batch[k])
        due = t >= entry[c[still]].min() + D
        reach = [p for p in pref if p <= n]
        if n >= B:
            assert size == B, (k, n, size)
        elif due:
            assert size == n, (k, n, size, "due")
        else:
            assert reach, (k, n, size, "a partial batch left before its delay ran out")
            assert size == max(reach), (k, n, size, pref)
        members = bid == k
        assert np.all(start[members] == t)

    # With D = 0 the batcher is work-conserving: no request waits while an instance is idle.
    if D == 0:
        waits = np.flatnonzero(tr.completed & (start > entry))
        if len(waits):
            gaps = []
            for i in range(sc.instances):
                m = tr.batch_instance == i
                s_, e_ = ns(tr.batch_start[m]), ns(tr.batch_end[m])
                gaps += list(zip(np.concatenate([[0], e_]), np.concatenate([s_, [np.iinfo(np.int64).max]])))
            g0, g1 = np.array(gaps).T
            a, z = entry[waits][:, None], start[waits][:, None]
            overlap = np.minimum(z, g1[None, :]) > np.maximum(a, g0[None, :])
            assert not overlap.any(), "a request waited while an instance was idle (D = 0)"


def check_timer(sc, tr, bid):
    """Timer mode without caps or timeouts: batches are consecutive runs closed on size or age."""
    b = sc.batching
    B, D = b.max_batch_size, int(round(b.max_queue_delay_ms * 1e6))
    served = np.flatnonzero(tr.completed)
    order = served[np.argsort(ns(tr.entry[served]), kind="stable")]
    ent = ns(tr.entry[order])
    closes = ns(tr.dispatch)
    starts = ns(tr.start)
    pos = 0
    prev_close = prev_start = -1
    free = [0] * sc.instances
    ends = ns(tr.batch_end)
    for k in range(len(tr.batch_start)):
        size = int(tr.batch_size_by_batch[k])
        members = order[pos:pos + size]
        assert np.all(bid[members] == k), "timer batches are not consecutive runs of arrivals"
        first = ent[pos]
        last = ent[pos + size - 1]
        nxt = ent[pos + size] if pos + size < len(ent) else None
        assert last <= first + D, "a request joined a batch after it closed"
        if size < B:
            assert nxt is None or nxt > first + D, "a batch closed early"
            close = first + D
        else:
            close = min(first + D, last)
        assert np.all(closes[members] == close), (k, close, closes[members])
        # Closed batches wait FIFO for the next idle instance.
        assert close >= prev_close
        t = starts[members[0]]
        expect = max(close, prev_start, min(free))
        assert t == expect, (k, t, expect)
        inst = int(tr.batch_instance[k])
        assert free[inst] <= t
        free[inst] = ends[k]
        prev_close, prev_start = close, t
        pos += size
    assert pos == len(order)


def check_result(sc, res):
    reps = sc.run.replications
    measured = reps * (sc.run.requests - sc.run.warmup_requests)
    assert res.completed + res.dropped == measured
    assert sum(res.drops_by_reason.values()) == res.dropped
    assert set(res.drops_by_reason) == set(DROP_REASONS[1:])
    assert 0.0 <= res.drop_rate <= 1.0
    assert len(res.traces) == reps
    assert sum(res.batch_size_histogram.values()) > 0 or res.completed == 0
    assert all(1 <= k <= sc.batching.max_batch_size for k in res.batch_size_histogram)
    if res.completed:
        lat = res.latency_ms
        eps = 1e-9 * lat["max"]  # the mean of equal latencies may round one ulp above them
        assert lat["p50"] <= lat["p90"] + eps <= lat["p95"] + 2 * eps <= lat["p99"] + 3 * eps <= lat["max"] + 4 * eps
        assert lat["mean"] <= lat["max"] + eps
        assert 1 <= res.mean_batch_size <= sc.batching.max_batch_size
    assert 0.0 <= res.utilization <= 1.0 + 1e-9


# --------------------------------------------------------------------------- the tests


@PROPS
@given(scenarios())
def test_invariants_hold_for_random_scenarios(data):
    sc = parse_scenario(data)
    res = simulate(sc)
    check_result(sc, res)
    for tr in res.traces:
        check_trace(sc, tr)


@PROPS
@given(scenarios(queue=plain_queue()))
def test_invariants_without_caps(data):
    """The same invariants where the exact FIFO / timer-closing checks always apply."""
    sc = parse_scenario(data)
    res = simulate(sc)
    check_result(sc, res)
    for tr in res.traces:
        check_trace(sc, tr)
        assert tr.completed.all(), "nothing may be dropped without caps, timeouts or stride"


@PROPS
@given(scenarios(batching={"mode": "timer", "preferred_batch_sizes": []}, queue=plain_queue()))
def test_timer_mode_serves_in_fifo_order(data):
    sc = parse_scenario(data)
    tr = run_replication(sc, 0)
    check_trace(sc, tr)
    order = np.argsort(tr.entry, kind="stable")
    assert np.all(np.diff(tr.start[order]) >= 0)
    assert np.all(np.diff(tr.dispatch[order]) >= 0)


def _random_inputs(sc, tr) -> bool:
    """Whether anything in this replication was drawn from the seed (service draws need a batch)."""
    return sc.arrivals.process != "constant" or (
        sc.service.variability.distribution != "none" and len(tr.batch_start) > 0)


TRACE_FIELDS = ("arrival", "source", "entry", "dispatch", "start", "end", "done", "latency_ms", "batch_size",
                "instance", "drop_reason", "drop_t", "batch_start", "batch_end", "batch_size_by_batch",
                "batch_instance")


def traces_equal(a, b) -> bool:
    return all(np.array_equal(getattr(a, f), getattr(b, f), equal_nan=getattr(a, f).dtype.kind == "f")
               for f in TRACE_FIELDS)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.integers(0, 2**32 - 1))
def test_same_seed_same_trace_other_seed_other_trace(data, other_seed):
    data["run"]["replications"] = 2
    data["run"]["requests"] = min(data["run"]["requests"], 800)
    sc = parse_scenario(data)
    first = simulate(sc)
    again = simulate(parse_scenario(data))
    for a, b in zip(first.traces, again.traces):
        assert traces_equal(a, b)
    assert first.to_dict() == again.to_dict() or np.isnan(first.latency_ms["mean"])
    # A replication is reproducible on its own, from the scenario's seed and its index.
    assert traces_equal(run_replication(sc, 1), first.traces[1])

    if other_seed == sc.run.seed:
        other_seed += 1
    other = parse_scenario({**data, "run": {**data["run"], "seed": other_seed}})
    moved = simulate(other)
    if _random_inputs(sc, first.traces[0]):
        assert not traces_equal(first.traces[0], moved.traces[0])
        # Replications are independent draws, not copies.
        assert not traces_equal(first.traces[0], first.traces[1])
    elif not _random_inputs(sc, moved.traces[0]):
        assert traces_equal(first.traces[0], moved.traces[0])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_no_global_random_state_used(data):
    sc = parse_scenario(data)
    np_state = np.random.get_state()
    py_state = random.getstate()
    try:
        np.random.seed(12345)
        random.seed(12345)
        expect_np = np.random.random()
        expect_py = random.random()
        np.random.seed(12345)
        random.seed(12345)
        first = simulate(sc)
        assert np.random.random() == expect_np, "the simulation drew from numpy's global generator"
        assert random.random() == expect_py, "the simulation drew from Python's global generator"
        # ... and global seeding does not change what the simulation produces.
        np.random.seed(999)
        random.seed(999)
        second = simulate(sc)
        for a, b in zip(first.traces, second.traces):
            assert traces_equal(a, b)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def test_strategy_reaches_drops_of_every_kind():
    """Guard against a vacuous strategy: the drop checks above see every drop reason."""
    sc = parse_scenario({
        "arrivals": {"process": "streams", "streams": [{"count": 4, "fps": 50}]},
        "service": {"batch_latency_ms": {1: 30}},
        "queue": {"max_size": 3, "per_source_max_size": 1, "on_full": "drop_oldest", "stride": 2},
        "run": {"requests": 1000, "warmup_requests": 0, "replications": 1, "seed": 3},
    })
    tr = run_replication(sc, 0)
    check_trace(sc, tr)
    assert {DROPPED_OLDEST, STRIDE} <= set(np.unique(tr.drop_reason))
    sc2 = parse_scenario({
        "arrivals": {"process": "poisson", "rate_rps": 200},
        "service": {"batch_latency_ms": {1: 10}},
        "queue": {"max_size": 2, "timeout_ms": 15, "on_full": "reject"},
        "run": {"requests": 1000, "warmup_requests": 0, "replications": 1, "seed": 3},
    })
    tr2 = run_replication(sc2, 0)
    check_trace(sc2, tr2)
    assert {REJECTED, TIMEOUT} <= set(np.unique(tr2.drop_reason))


# --------------------------------------------------------------------------- the checks can fail


def _mutants():
    """Ways of breaking a trace that the invariants above must each catch."""
    def start_before_entry(tr):
        i = int(np.flatnonzero(tr.completed & (tr.start > tr.entry))[0])
        tr.start[i] = tr.entry[i] - 1e-3

    def oversize_batch(tr):
        k = int(np.argmax(tr.batch_size_by_batch))
        tr.batch_size_by_batch[k] += 4

    def overlapping_batches(tr):
        inst = tr.batch_instance
        k = int(np.flatnonzero(inst[1:] == inst[:-1])[0])  # two consecutive batches on one instance
        tr.batch_end[k] = tr.batch_start[k + 1] + 1e-3

    def lost_request(tr):
        i = int(np.flatnonzero(tr.completed)[-1])
        tr.drop_reason[i] = REASON["timeout"]  # "dropped" though served, and no timeout configured

    def out_of_order(tr):
        i, j = (int(x) for x in np.flatnonzero(tr.completed & (tr.batch_size == 1))[[10, 11]])
        tr.entry[i], tr.entry[j] = tr.entry[j], tr.entry[i]
        tr.arrival[i], tr.arrival[j] = tr.arrival[j], tr.arrival[i]

    def early_partial_batch(tr):
        # Pretend every request entered 0.1 ms before its batch started: partial batches then
        # left long before the 5 ms delay ran out.
        m = tr.completed
        tr.entry[m] = tr.start[m] - 1e-4

    return [start_before_entry, oversize_batch, overlapping_batches, lost_request, out_of_order,
            early_partial_batch]


@pytest.mark.parametrize("mutate", _mutants(), ids=lambda f: f.__name__)
def test_the_invariants_catch_a_broken_trace(mutate):
    sc = parse_scenario({
        "arrivals": {"process": "poisson", "rate_rps": 300},
        "service": {"batch_latency_ms": {1: 5, 4: 8}},
        "batching": {"max_batch_size": 4, "max_queue_delay_ms": 5},
        "instances": 2,
        "run": {"requests": 2000, "warmup_requests": 0, "replications": 1, "seed": 5},
    })
    tr = run_replication(sc, 0)
    check_trace(sc, tr)  # the real trace passes
    mutate(tr)
    with pytest.raises(AssertionError):
        check_trace(sc, tr)
