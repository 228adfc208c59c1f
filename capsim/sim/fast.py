"""A compiled (numba) engine that reproduces the SimPy reference engine request for request.

The event loop below is a line-by-line port of :mod:`capsim.sim.engine`, :mod:`capsim.sim.batcher`
and :mod:`capsim.sim.queue` onto numpy arrays: the same lazy admission, the same SimPy event
order (a heap keyed on (time, priority, scheduling order), as SimPy keys its own queue), the same
``wake_pending`` bookkeeping, so that every per-request field comes out identical, ties included.

Supported: everything the scenario model has today: one queue, triton batching (with
``preferred_batch_sizes``) and timer batching, N instances with contention, queue caps (reject /
drop_oldest, overall and per source), queue timeouts, stride, per-request overhead, pre/post
stages and service variability (none, exponential, gamma, lognormal, empirical: the draws are
made up front from the service generator in the SimPy engine's chunks of 4096 and consumed in
batch-dispatch order), and the production policies of :mod:`capsim.sim.lanes` and
:mod:`capsim.sim.devices`: priority lanes, deadlines (stale drops), several devices with
per-device contention and the dispatch policies. Triton batching with nothing dropped in the
queue and no lanes skips the event queue altogether (:func:`_triton_direct`). A feature listed by :func:`unsupported_features` makes
:class:`FastEngine` hand the scenario to :class:`~capsim.sim.engine.SimPyEngine` (or refuse it
with ``fallback=False``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from capsim.arrivals import ArrivalStream
from capsim.config import Scenario, busy_per_device
from capsim import host_cpu
from capsim.service import ServiceCurve, contention_table, empirical_ratios, variability_sampler
from capsim.sim.engine import _DRAW_CHUNK, NS, ReplicationTrace, SimPyEngine
from capsim.sim.network import queue_entry, respond
from capsim.sim.stages import fifo_pool, overhead_draws_ms

# Request status, as in capsim.sim.queue.
_PENDING, _QUEUED, _DISPATCHED, _DROPPED = 0, 1, 2, 3
# Drop reasons, as in capsim.sim.queue.DROP_REASONS.
_REJECTED, _DROPPED_OLDEST, _TIMEOUT, _STRIDE, _STALE = 1, 2, 3, 4, 5
# Dispatch policies (capsim.sim.devices), by code.
_DISPATCH = {"lowest_index": 0, "round_robin": 1, "least_loaded": 2}


def unsupported_features(sc: Scenario) -> list[str]:
    """What in ``sc`` the fast engine cannot run (empty when it can); those scenarios run on the
    SimPy engine."""
    q = sc.queue
    checks = [
        ("queue.degrade", q.degrade is not None),
        ("closed-loop clients (arrivals.process closed)", sc.arrivals.process == "closed"),
        ("autoscale", sc.autoscale is not None),
        ("service.cpu_sharing.overlap (cores shared moment to moment)", host_cpu.moment_to_moment(sc)),
        ("service.after_idle", sc.service.after_idle.extra_ms > 0),
        ("service.preprocess.cv", sc.service.preprocess.cv > 0),
        ("service.slow_spells", sc.service.slow_spells.every_s > 0),
        ("service.speed_swings", sc.service.speed_swings.cv > 0),
    ]
    return [name for name, used in checks if used]


# --------------------------------------------------------------------------- the compiled loop


@njit(cache=True, inline="always")
def _hless(ht, he, a, b):
    """Heap entry a comes before b: earlier time, then lower priority offset + eid."""
    return ht[a] < ht[b] or (ht[a] == ht[b] and he[a] < he[b])


@njit(cache=True, inline="always")
def _hswap(ht, he, hv, a, b):
    ht[a], ht[b] = ht[b], ht[a]
    he[a], he[b] = he[b], he[a]
    hv[a], hv[b] = hv[b], hv[a]


@njit(cache=True)
def _hpush(ht, he, hv, size, t, e, v):
    """Push (t, e) -> v on a binary min-heap keyed on (time, e), e = priority offset + eid; grows the
    arrays when full and returns them with the new size."""
    if size >= len(ht):  # full: double the heap's arrays
        ht2 = np.empty(2 * len(ht), np.int64)
        he2 = np.empty(2 * len(ht), np.int64)
        hv2 = np.empty(2 * len(ht), np.int64)
        ht2[:size] = ht[:size]
        he2[:size] = he[:size]
        hv2[:size] = hv[:size]
        ht, he, hv = ht2, he2, hv2
    i = size
    ht[i] = t
    he[i] = e
    hv[i] = v
    while i > 0:
        p = (i - 1) >> 1
        if _hless(ht, he, p, i):
            break
        _hswap(ht, he, hv, p, i)
        i = p
    return ht, he, hv, size + 1


@njit(cache=True)
def _hpop(ht, he, hv, size):
    """Remove the root (the caller read it first); returns the new size."""
    size -= 1
    ht[0] = ht[size]
    he[0] = he[size]
    hv[0] = hv[size]
    i = 0
    while True:
        l = 2 * i + 1
        if l >= size:
            break
        m = l
        r = l + 1
        if r < size and _hless(ht, he, r, l):
            m = r
        if _hless(ht, he, i, m):
            break
        _hswap(ht, he, hv, m, i)
        i = m
    return size


@njit(cache=True)
def _oldest(status, head):
    """Position of the oldest queued request (the queue must be non-empty), scanning from ``head``."""
    h = head
    while status[h] != 1:
        h += 1
    return h


@njit(cache=True)
def _open_batch(status, open_pos, nxt):
    """Timer batcher: how many of the open batch's requests are still queued, and the first of them."""
    cnt = 0
    first = -1
    for p in range(open_pos, nxt):
        if status[p] == 1:
            if cnt == 0:
                first = p
            cnt += 1
    return cnt, first


@njit(cache=True)
def _expire_before(status, drop_reason, drop_t, entry, head, qlen, timeout, t, src, src_count, pcap):
    """QueueTimeout.expire_before: drop queued requests whose deadline is strictly before ``t``.

    Returns the new (head, qlen).
    """
    while qlen > 0:
        head = _oldest(status, head)
        dl = entry[head] + timeout
        if dl >= t:
            break
        status[head] = 3
        drop_reason[head] = 3
        drop_t[head] = dl
        qlen -= 1
        if pcap > 0:
            src_count[src[head]] -= 1
    return head, qlen


@njit(cache=True)
def _admit(status, drop_reason, drop_t, nxt, qlen, head, a, max_size, drop_oldest, capped,
           src, src_count, pcap, src_pos, src_head):
    """Admission.admit_next: the arrival at position ``nxt`` (time ``a``) through the per-source
    cap ``pcap`` (0: none), then the overall cap.

    ``src_pos`` lists each source's positions in order; ``src_head[s]`` is where the search for
    source s's oldest queued request resumes. Returns the new (nxt, qlen, head).
    """
    if pcap > 0:
        sid = src[nxt]
        if src_count[sid] >= pcap:
            if drop_oldest:  # evict the source's oldest queued request
                o = _oldest_of(status, src_pos, src_head, sid)
                status[o] = 3
                drop_reason[o] = 2
                drop_t[o] = a
                qlen -= 1
                src_count[sid] -= 1
            else:
                status[nxt] = 3
                drop_reason[nxt] = 1
                drop_t[nxt] = a
                return nxt + 1, qlen, head
    if capped and qlen >= max_size:
        if drop_oldest:  # evict the oldest queued request
            head = _oldest(status, head)
            status[head] = 3
            drop_reason[head] = 2
            drop_t[head] = a
            qlen -= 1
            if pcap > 0:
                src_count[src[head]] -= 1
        else:  # reject the arrival
            status[nxt] = 3
            drop_reason[nxt] = 1
            drop_t[nxt] = a
            return nxt + 1, qlen, head
    status[nxt] = 1
    if pcap > 0:
        src_count[src[nxt]] += 1
    return nxt + 1, qlen + 1, head


@njit(cache=True)
def _due(status, entry, head, qlen, B, D, preferred, now):
    """TritonBatcher.due: the size of the batch due now (0: none); returns it and the new head."""
    if qlen == 0:
        return 0, head
    if qlen >= B:
        return B, head
    head = _oldest(status, head)
    if now >= entry[head] + D:
        return qlen, head
    for j in range(preferred.shape[0]):
        if preferred[j] <= qlen:
            return preferred[j], head
    return 0, head


@njit(cache=True)
def _purge(status, drop_reason, drop_t, arr_q, head, qlen, deadline, now, src, src_count, pcap, lvl, lane_count):
    """StaleDrop.purge: drop queued requests with arrival + deadline < now, oldest first.

    Returns the new (head, qlen) and how many were dropped.
    """
    k = 0
    while qlen > 0:
        head = _oldest(status, head)
        if arr_q[head] + deadline >= now:
            break
        _unqueue(status, drop_reason, drop_t, head, 5, now, src, src_count, pcap, lvl, lane_count)
        qlen -= 1
        k += 1
    return head, qlen, k


@njit(cache=True)
def _pick(idle, busy_on, K, dispatch, last):
    """The idle instance that gets the next batch (capsim.sim.devices): 0 lowest index, 1 round
    robin (the next idle one after ``last``, cyclically), 2 least loaded (fewest busy on its
    device, ties: lowest index)."""
    N = idle.shape[0]
    if dispatch == 1:
        for j in range(1, N + 1):
            i = (last + j) % N
            if idle[i]:
                return i
    elif dispatch == 2:
        best = -1
        for i in range(N):
            if idle[i] and (best < 0 or busy_on[i // K] < busy_on[best // K]):
                best = i
        return best
    i = 0
    while not idle[i]:
        i += 1
    return i


@njit(cache=True)
def _oldest_of(status, pos, head, k):
    """Position of the oldest queued request of group ``k`` (a level or a source; it must have one):
    ``pos`` lists each group's positions in order, ``head[k]`` is where the scan resumes."""
    h = head[k]
    while status[pos[h]] != 1:
        h += 1
    head[k] = h
    return pos[h]


@njit(cache=True)
def _unqueue(status, drop_reason, drop_t, o, reason, t, src, src_count, pcap, lvl, lane_count):
    """Drop queued request ``o`` at ``t`` with ``reason`` and take it off the per-source and
    per-level counts (the caller lowers qlen)."""
    status[o] = 3
    drop_reason[o] = reason
    drop_t[o] = t
    if pcap > 0:
        src_count[src[o]] -= 1
    if lane_count.shape[0] > 0:
        lane_count[lvl[o]] -= 1


@njit(cache=True)
def _make_room(status, drop_reason, drop_t, nxt, a, evict, pos, head, k, src, src_count, pcap, lvl, lane_count):
    """A full cap at arrival ``nxt`` (time ``a``): with ``evict`` (drop_oldest) drop the oldest
    queued request of group ``k`` in (pos, head) and return True (the arrival goes in; the caller
    lowers qlen); otherwise reject the arrival and return False."""
    if evict:
        o = _oldest_of(status, pos, head, k)
        _unqueue(status, drop_reason, drop_t, o, 2, a, src, src_count, pcap, lvl, lane_count)
        return True
    status[nxt] = 3
    drop_reason[nxt] = 1
    drop_t[nxt] = a
    return False


@njit(cache=True)
def _admit_lane(status, drop_reason, drop_t, nxt, qlen, a, src, src_count, pcap, src_pos, src_head,
                lvl, lane_count, lane_pos, lane_head, lcap, ldrop):
    """LaneAdmission.admit_next: the per-source cap, then the arrival's own level's cap, each with
    that level's on_full. Returns the new (nxt, qlen)."""
    lv = lvl[nxt]
    # the source's oldest queued request (any level), then the oldest of the same level
    if pcap > 0 and src_count[src[nxt]] >= pcap:
        if not _make_room(status, drop_reason, drop_t, nxt, a, ldrop[lv], src_pos, src_head, src[nxt], src,
                          src_count, pcap, lvl, lane_count):
            return nxt + 1, qlen
        qlen -= 1
    if lcap[lv] > 0 and lane_count[lv] >= lcap[lv]:
        if not _make_room(status, drop_reason, drop_t, nxt, a, ldrop[lv], lane_pos, lane_head, lv, src, src_count,
                          pcap, lvl, lane_count):
            return nxt + 1, qlen
        qlen -= 1
    status[nxt] = 1
    if pcap > 0:
        src_count[src[nxt]] += 1
    lane_count[lv] += 1
    return nxt + 1, qlen + 1


@njit(cache=True)
def _expire_lanes(status, drop_reason, drop_t, entry, qlen, t, src, src_count, pcap, lvl, lane_count, lane_pos,
                  lane_head, lto):
    """LaneTimeout.expire_before: per level (0 first), drop queued requests whose level's deadline
    is strictly before ``t``, recorded at that deadline. Returns the new qlen."""
    for lv in range(lto.shape[0]):
        to = lto[lv]
        if to == 0:
            continue
        while lane_count[lv] > 0:
            o = _oldest_of(status, lane_pos, lane_head, lv)
            dl = entry[o] + to
            if dl >= t:
                break
            _unqueue(status, drop_reason, drop_t, o, 3, dl, src, src_count, pcap, lvl, lane_count)
            qlen -= 1
    return qlen


@njit(cache=True)
def _simulate(entry, timer, B, D, preferred, max_size, drop_oldest, timeout, N, mean_ns, held_ns, contention,
              mult, use_mult, emp, emp_len, status, drop_reason, drop_t, batch_of,
              b_dispatch, b_end, b_size, b_inst, b_mark, src, pcap, n_src, arr_q, deadline, dispatch, K, n_dev,
              lvl, lcap, ldrop, lto):
    """Run the whole replication; fills the per-request and per-batch arrays, returns the batch count.

    ``entry``: entry time (ns) of each request, in queue (position) order; ``timeout`` < 0: none;
    ``max_size`` 0: no cap; ``preferred``: preferred batch sizes, largest first; ``emp``: measured
    service-time ratios per batch size (row b, first ``emp_len[b]`` entries; empty: not empirical);
    ``src``: each position's source, ``pcap``: the per-source cap (0: none); ``arr_q``: each
    position's arrival time, ``deadline`` < 0: none; ``dispatch``: :func:`_pick`'s policy code,
    ``K`` instances per device (``n_dev`` devices); priority lanes (triton only; none when ``lcap``
    is empty): ``lvl`` each position's level, per level ``lcap`` the cap (0: none), ``ldrop``
    on_full drop_oldest, ``lto`` the timeout (0: none).
    """
    INF = np.int64(1) << np.int64(62)
    # per-source bookkeeping (only used with a per-source cap)
    src_count = np.zeros(n_src, np.int64)
    src_start = np.zeros(n_src + 1, np.int64)
    src_pos = np.empty(entry.shape[0] if pcap > 0 else 0, np.int64)
    if pcap > 0:
        for p in range(entry.shape[0]):
            src_start[src[p] + 1] += 1
        for k in range(n_src):
            src_start[k + 1] += src_start[k]
        fill = src_start[:n_src].copy()
        for p in range(entry.shape[0]):
            src_pos[fill[src[p]]] = p
            fill[src[p]] += 1
    src_head = src_start[:n_src].copy()
    # priority lanes: each level's positions in order, where its search resumes, how many queued
    n_lev = lcap.shape[0]
    lane_count = np.zeros(n_lev, np.int64)
    lane_head = np.zeros(n_lev, np.int64)
    lane_pos = np.empty(entry.shape[0] if n_lev > 0 else 0, np.int64)
    if n_lev > 0:
        for p in range(entry.shape[0]):
            if lvl[p] + 1 < n_lev:
                lane_head[lvl[p] + 1] += 1
        for k in range(1, n_lev):
            lane_head[k] += lane_head[k - 1]
        fill = lane_head.copy()
        for p in range(entry.shape[0]):
            lane_pos[fill[lvl[p]]] = p
            fill[lvl[p]] += 1
    has_lto = False
    for lv in range(n_lev):
        if lto[lv] > 0:
            has_lto = True
    n = entry.shape[0]
    has_timeout = timeout >= 0
    simple_cap = max_size > 0
    npref = preferred.shape[0]

    # the queue
    nxt = 0
    head = 0
    qlen = 0
    # timer batcher: the open batch starts at open_pos; closed batches are position ranges
    open_pos = 0
    c_t = np.empty(n + 1, np.int64)
    c_lo = np.empty(n + 1, np.int64)
    c_hi = np.empty(n + 1, np.int64)
    c_first = 0
    c_last = 0
    # instances
    idle = np.ones(N, np.bool_)
    n_idle = N
    idle_since = np.zeros(N, np.int64)
    busy_on = np.zeros(n_dev, np.int64)
    last = -1
    wake_pending = INF
    nb = 0
    mpos = 0
    # SimPy's event queue: (time, priority, eid) -> -1 (a wake) or the instance that finishes.
    # Completions are URGENT and wakes NORMAL in the SimPy engine: wakes get WAKE added to their key.
    WAKE = np.int64(1) << np.int64(50)
    cap = 2 * N + 64
    ht = np.empty(cap, np.int64)
    he = np.empty(cap, np.int64)
    hv = np.empty(cap, np.int64)
    size = 0
    eid = 0

    if n > 0:  # _wake_at(q.next_entry(1))
        t = entry[0]
        if t < wake_pending and t < INF:
            wake_pending = t
            ht, he, hv, size = _hpush(ht, he, hv, size, t, eid + WAKE, -1)
            eid += 1

    while size > 0:
        now = ht[0]
        v = hv[0]
        size = _hpop(ht, he, hv, size)
        if v < 0:  # _on_wake
            if now >= wake_pending:
                wake_pending = INF
        else:  # _on_done
            busy_on[v // K] -= 1
            idle[v] = True
            n_idle += 1
            idle_since[v] = now
            if size > 0 and ht[0] == now:
                if now < wake_pending:  # _wake_at(now)
                    wake_pending = now
                    ht, he, hv, size = _hpush(ht, he, hv, size, now, eid + WAKE, -1)
                    eid += 1
                continue

        # ---- _decide: advance the batcher (arrivals, closures, drops) up to now
        if timer:
            while True:
                a = entry[nxt] if nxt < n else INF
                cnt, first = _open_batch(status, open_pos, nxt)
                c = entry[first] + D if cnt > 0 else INF
                d = INF
                if has_timeout and qlen > 0:
                    head = _oldest(status, head)
                    d = entry[head] + timeout
                if d < a and d < c and d < now:  # expire(d + 1)
                    head, qlen = _expire_before(status, drop_reason, drop_t, entry, head, qlen, timeout, d + 1,
                                                  src, src_count, pcap)
                    continue
                if c < a and c <= now:  # close the open batch at c
                    c_t[c_last] = c
                    c_lo[c_last] = open_pos
                    c_hi[c_last] = nxt
                    c_last += 1
                    open_pos = nxt
                    continue
                if a <= now:
                    # intake.one(): admit the next arrival through the cap
                    nxt, qlen, head = _admit(status, drop_reason, drop_t, nxt, qlen, head, a, max_size, drop_oldest,
                                             simple_cap, src, src_count, pcap, src_pos, src_head)
                    cnt = 0
                    for p in range(open_pos, nxt):
                        if status[p] == 1:
                            cnt += 1
                    if cnt >= B:
                        c_t[c_last] = a
                        c_lo[c_last] = open_pos
                        c_hi[c_last] = nxt
                        c_last += 1
                        open_pos = nxt
                    continue
                break
        else:
            # intake.until(now)
            while nxt < n and entry[nxt] <= now:
                a = entry[nxt]
                if has_timeout:  # expire(a): deadlines strictly before a
                    head, qlen = _expire_before(status, drop_reason, drop_t, entry, head, qlen, timeout, a,
                                                  src, src_count, pcap)
                if n_lev > 0:
                    if has_lto:
                        qlen = _expire_lanes(status, drop_reason, drop_t, entry, qlen, a, src, src_count, pcap,
                                             lvl, lane_count, lane_pos, lane_head, lto)
                    nxt, qlen = _admit_lane(status, drop_reason, drop_t, nxt, qlen, a, src, src_count, pcap,
                                            src_pos, src_head, lvl, lane_count, lane_pos, lane_head, lcap, ldrop)
                else:
                    nxt, qlen, head = _admit(status, drop_reason, drop_t, nxt, qlen, head, a, max_size,
                                             drop_oldest, simple_cap, src, src_count, pcap, src_pos, src_head)
            if has_timeout:  # expire(now)
                head, qlen = _expire_before(status, drop_reason, drop_t, entry, head, qlen, timeout, now,
                                              src, src_count, pcap)
            if has_lto:
                qlen = _expire_lanes(status, drop_reason, drop_t, entry, qlen, now, src, src_count, pcap,
                                     lvl, lane_count, lane_pos, lane_head, lto)

        # ---- dispatch while an instance is idle and a batch is ready
        while n_idle > 0:
            k = 0
            mark = 0
            if timer:
                if deadline >= 0 and c_first < c_last:  # StaleTimerBatcher.ready
                    head, qlen, _ = _purge(status, drop_reason, drop_t, arr_q, head, qlen, deadline, now,
                                           src, src_count, pcap, lvl, lane_count)
                while c_first < c_last:
                    lo = c_lo[c_first]
                    hi = c_hi[c_first]
                    ct = c_t[c_first]
                    c_first += 1
                    for p in range(lo, hi):
                        if status[p] == 1:
                            status[p] = 2
                            batch_of[p] = nb
                            k += 1
                            if pcap > 0:
                                src_count[src[p]] -= 1
                    if k > 0:
                        qlen -= k
                        mark = ct
                        break
            else:
                if qlen > 0:
                    want, head = _due(status, entry, head, qlen, B, D, preferred, now)
                    while deadline >= 0 and want > 0:  # StaleTritonBatcher.ready: purge, then the rule again
                        head, qlen, dropped = _purge(status, drop_reason, drop_t, arr_q, head, qlen, deadline, now,
                                                     src, src_count, pcap, lvl, lane_count)
                        if dropped == 0:
                            break
                        want, head = _due(status, entry, head, qlen, B, D, preferred, now)
                    if want > 0 and n_lev > 0:  # LaneQueue.take: the highest level first, FIFO within
                        for lv in range(n_lev):
                            while k < want and lane_count[lv] > 0:
                                p = _oldest_of(status, lane_pos, lane_head, lv)
                                status[p] = 2
                                batch_of[p] = nb
                                k += 1
                                lane_count[lv] -= 1
                                if pcap > 0:
                                    src_count[src[p]] -= 1
                            if k == want:
                                break
                        qlen -= k
                    elif want > 0:
                        head = _oldest(status, head)
                        p = head
                        while k < want:
                            if status[p] == 1:
                                status[p] = 2
                                batch_of[p] = nb
                                k += 1
                                if pcap > 0:
                                    src_count[src[p]] -= 1
                            p += 1
                        qlen -= k
            if k == 0:
                break
            inst = _pick(idle, busy_on, K, dispatch, last)
            last = inst
            idle[inst] = False
            n_idle -= 1
            busy_on[inst // K] += 1
            busy = busy_on[inst // K]
            if use_mult:
                m = mult[mpos]
                mpos += 1
                if emp.shape[0] > 0:  # m is a uniform draw: pick a measured sample of this size
                    m = emp[k, int(m * emp_len[k])]
                dt = np.int64(np.rint(mean_ns[k] * m * contention[busy])) + held_ns
            else:
                dt = np.int64(np.rint(mean_ns[k] * contention[busy])) + held_ns
            b_dispatch[nb] = now
            b_end[nb] = now + dt
            b_size[nb] = k
            b_inst[nb] = inst
            b_mark[nb] = mark if timer else idle_since[inst]
            nb += 1
            ht, he, hv, size = _hpush(ht, he, hv, size, now + dt, eid, inst)
            eid += 1

        # ---- look again when a batch could next become due
        if n_idle > 0 and (qlen > 0 or nxt < n):
            if timer:
                if c_first < c_last:
                    t = now
                else:
                    cnt, first = _open_batch(status, open_pos, nxt)
                    t0 = entry[first] if cnt > 0 else (entry[nxt] if nxt < n else INF)
                    pk = nxt + B - cnt - 1
                    t = min(t0 + D, entry[pk] if pk < n else INF)
            else:
                if qlen > 0:
                    head = _oldest(status, head)
                    t0 = entry[head]
                else:
                    t0 = entry[nxt] if nxt < n else INF
                pk = nxt + B - qlen - 1
                t = min(t0 + D, entry[pk] if pk < n else INF)
                if npref > 0 and preferred[npref - 1] > qlen:
                    pk = nxt + preferred[npref - 1] - qlen - 1
                    t = min(t, entry[pk] if pk < n else INF)
            if t < wake_pending and t < INF:  # _wake_at(t)
                wake_pending = t
                ht, he, hv, size = _hpush(ht, he, hv, size, t, eid + WAKE, -1)
                eid += 1
    return nb


@njit(cache=True)
def _triton_direct(entry, B, D, preferred, N, mean_ns, held_ns, contention, mult, use_mult, emp, emp_len,
                   batch_of, b_dispatch, b_end, b_size, b_inst, b_mark, dispatch, K, n_dev):
    """_simulate for triton batching with no queue cap and no timeout, without an event queue.

    Nothing is dropped then, so the queue is every request from the head on, and the batch headed
    by request h is ready at R = min(entry[h] + D, entry[h + B - 1], entry[h + pmin - 1]) (due,
    full, smallest preferred size). It starts at the first instant T >= R at which an instance is
    idle, never before the previous dispatch: the moment the event loop would decide it. At T the
    dispatch policy picks among the instances idle at T (:func:`_pick`), its contention counts the
    busy instances on its device, and the batch takes what _simulate's decision takes.
    Returns the batch count, or -1 when a batch would take 0 ns (an instance that is free again in
    the same instant it started is ordered by the event queue; _simulate handles that).
    """
    n = entry.shape[0]
    npref = preferred.shape[0]
    pmin = preferred[npref - 1] if npref > 0 else 0
    free = np.zeros(N, np.int64)  # when each instance last became idle (0: from the start)
    idle = np.empty(N, np.bool_)
    busy_on = np.zeros(n_dev, np.int64)
    prev = -1
    h = 0
    nb = 0
    mpos = 0
    last = np.int64(0)
    while h < n:
        r = entry[h] + D
        f = h + B - 1
        if f < n and entry[f] < r:
            r = entry[f]
        if pmin > 0:
            f = h + pmin - 1
            if f < n and entry[f] < r:
                r = entry[f]
        t = free[0]
        for i in range(1, N):
            if free[i] < t:
                t = free[i]
        if r > t:
            t = r
        if last > t:
            t = last
        q = 0
        while q < B and h + q < n and entry[h + q] <= t:
            q += 1
        if q >= B:
            k = B
        elif t >= entry[h] + D:
            k = q
        else:
            k = 0
            for j in range(npref):
                if preferred[j] <= q:
                    k = preferred[j]
                    break
        for i in range(N):  # idle at t: free again at or before t
            idle[i] = free[i] <= t
        if dispatch == 2:
            busy_on[:] = 0
            for i in range(N):
                if not idle[i]:
                    busy_on[i // K] += 1
        inst = _pick(idle, busy_on, K, dispatch, prev)
        prev = inst
        d = inst // K
        busy = 1
        for i in range(d * K, min(d * K + K, N)):
            if free[i] > t:
                busy += 1
        if use_mult:
            m = mult[mpos]
            mpos += 1
            if emp.shape[0] > 0:
                m = emp[k, int(m * emp_len[k])]
            dt = np.int64(np.rint(mean_ns[k] * m * contention[busy])) + held_ns
        else:
            dt = np.int64(np.rint(mean_ns[k] * contention[busy])) + held_ns
        if dt <= 0:
            return -1
        b_dispatch[nb] = t
        b_end[nb] = t + dt
        b_size[nb] = k
        b_inst[nb] = inst
        b_mark[nb] = free[inst]
        for p in range(h, h + k):
            batch_of[p] = nb
        free[inst] = t + dt
        h += k
        nb += 1
        last = t
    return nb


@njit(cache=True)
def _gather(batch_of, arrival_ns, entry, drop_t, b_dispatch, b_end, b_size, b_inst, b_mark, timer, s,
            post_delay_s, overhead_ms):
    """Every per-request field of the trace in one pass, with the SimPy engine's float operations.

    ``post_delay_s`` < 0: post-processing is a worker pool, so ``done`` and the latency are left
    NaN for the caller to fill in completion order.
    """
    n = batch_of.shape[0]
    arrival = np.empty(n)
    entry_s = np.empty(n)
    dispatch = np.empty(n)
    start = np.empty(n)
    end = np.empty(n)
    done = np.empty(n)
    latency = np.empty(n)
    formation_ms = np.empty(n)
    drop_t_s = np.empty(n)
    batch_size = np.zeros(n, np.int64)
    instance = np.empty(n, np.int64)
    nan = np.nan
    for i in range(n):
        arrival[i] = arrival_ns[i] * s
        entry_s[i] = entry[i] * s if entry[i] >= 0 else nan
        drop_t_s[i] = drop_t[i] * s if drop_t[i] >= 0 else nan
        k = batch_of[i]
        if k < 0:
            dispatch[i] = nan
            start[i] = nan
            end[i] = nan
            done[i] = nan
            latency[i] = nan
            formation_ms[i] = nan
            instance[i] = -1
            continue
        start[i] = b_dispatch[k] * s
        end[i] = b_end[k] * s
        if timer:
            dispatch[i] = b_mark[k] * s
            formation = (b_mark[k] - entry[i]) * s
        else:
            dispatch[i] = start[i]
            formation = (b_dispatch[k] - max(entry[i], b_mark[k])) * s
        formation_ms[i] = formation * 1000.0
        batch_size[i] = b_size[k]
        instance[i] = b_inst[k]
        if post_delay_s >= 0.0:
            done[i] = end[i] + post_delay_s
            latency[i] = (done[i] - arrival[i]) * 1000.0 + overhead_ms
        else:
            done[i] = nan
            latency[i] = nan
    return arrival, entry_s, dispatch, start, end, done, latency, formation_ms, drop_t_s, batch_size, instance


@njit(cache=True)
def _to_ns(times, ns, pre_ns):
    """Arrival times in integer ns (rounded as np.rint does) and, for a pure pre-processing delay,
    the queue entry times."""
    n = times.shape[0]
    arrival_ns = np.empty(n, np.int64)
    entry = np.empty(n, np.int64)
    for i in range(n):
        a = np.int64(np.rint(times[i] * ns))
        arrival_ns[i] = a
        entry[i] = a + pre_ns
    return arrival_ns, entry


# --------------------------------------------------------------------------- the engine


class FastEngine:
    """Runs one replication of a scenario with the compiled event loop (same results as SimPyEngine).

    Scenarios with features the fast engine lacks (:func:`unsupported_features`) run on the SimPy
    engine instead, or raise ``ValueError`` when ``fallback=False``.
    """

    name = "fast"

    def __init__(self, scenario: Scenario, fallback: bool = True):
        self.sc = scenario
        self.unsupported = unsupported_features(scenario)
        self.fallback = None
        if self.unsupported:
            if not fallback:
                raise ValueError("the fast engine does not support: " + ", ".join(self.unsupported))
            self.fallback = SimPyEngine(scenario)
            return
        b = scenario.batching
        self.curve = ServiceCurve(host_cpu.effective_curve_ms(scenario), b.max_batch_size)
        self.mean_ns = np.ascontiguousarray(self.curve.seconds * NS, dtype=np.float64)
        self.held_ns = np.int64(round(scenario.service.batch_overhead_ms * 1e6))  # per batch, beyond the model's run
        # Indexed by the busy instances on the batch's device, as in the SimPy engine.
        self.contention = np.ascontiguousarray(contention_table(scenario.service, busy_per_device(scenario)),
                                               dtype=np.float64)
        self.per_device = busy_per_device(scenario)  # K; without devices every instance is on device 0
        self.n_dev = scenario.devices.count if scenario.devices is not None else 1
        self.dispatch = _DISPATCH[scenario.dispatch]
        self.sampler = variability_sampler(scenario.service.variability)
        self.emp = np.empty((0, 0), np.float64)  # measured service-time ratios (variability: empirical)
        self.emp_len = np.empty(0, np.int64)
        if scenario.service.variability.distribution == "empirical":
            table = empirical_ratios(scenario.service.loaded_profile.samples_ms(), self.curve)
            self.emp_len = np.array([0] + [len(r) for r in table[1:]], np.int64)
            self.emp = np.zeros((len(table), int(self.emp_len.max())), np.float64)
            for k, r in enumerate(table[1:], start=1):
                self.emp[k, : len(r)] = r
        self.delay_ns = int(round(b.max_queue_delay_ms * 1e6))
        self.preferred = np.array(sorted(set(b.preferred_batch_sizes), reverse=True), dtype=np.int64)
        qc = scenario.queue
        self.timeout_ns = int(round(qc.timeout_ms * 1e6)) if qc.timeout_ms > 0 else -1
        self.deadline_ns = int(round(qc.deadline_ms * 1e6)) if qc.deadline_ms > 0 else -1
        levels = scenario.priority.levels if scenario.priority is not None else []
        self.lcap = np.array([lv.max_size for lv in levels], np.int64)
        self.ldrop = np.array([lv.on_full == "drop_oldest" for lv in levels], np.bool_)
        self.lto = np.array([int(round(lv.timeout_ms * 1e6)) for lv in levels], np.int64)
        # Triton batching where nothing in the queue is ever dropped runs without the event queue
        # (_triton_direct); stride drops happen before the queue, so they do not count. Deadlines
        # drop at batch decisions: the event loop's path.
        self.direct = (b.mode == "triton" and qc.max_size == 0 and self.timeout_ns < 0
                       and qc.per_source_max_size == 0 and self.deadline_ns < 0 and not levels)

    def run(self, arrivals: ArrivalStream, service_rng: np.random.Generator) -> ReplicationTrace:
        if self.fallback is not None:
            return self.fallback.run(arrivals, service_rng)
        sc = self.sc
        qc, b = sc.queue, sc.batching
        n = len(arrivals)
        overhead = overhead_draws_ms(sc.service, n, service_rng)  # first, as the SimPy engine draws it
        pre = sc.service.preprocess
        pre_ns = int(round(pre.ms * 1e6))
        # A FIFO pool of workers (not a pure delay), or the network stage: entry times from queue_entry.
        pool = (pre.workers > 0 and pre_ns > 0) or sc.network is not None
        arrival_ns, entry = _to_ns(np.ascontiguousarray(arrivals.times, dtype=np.float64), float(NS),
                                   0 if pool else pre_ns)
        # Stride: frames not kept never reach the queue; the engine runs on the kept ones only.
        order = np.flatnonzero(arrivals.frame % qc.stride == 0) if qc.stride > 1 else None
        entry_q = entry if order is None else entry[order]
        server_ns = None
        stale_idx = stale_t = None
        if pool:
            arr_q = arrival_ns if order is None else arrival_ns[order]
            src_q = arrivals.source if order is None else arrivals.source[order]
            entry_q, server_q, stale_q = queue_entry(sc, arr_q, src_q, arrivals.n_sources)
            if server_q is not None:
                server_ns = np.full(n, -1, np.int64)
                server_ns[slice(None) if order is None else order] = server_q
            if stale_q is not None:  # superseded before pre-processing: dropped, never queued
                base = np.arange(n) if order is None else order
                gone = stale_q >= 0
                stale_idx, stale_t = base[gone], stale_q[gone]
                order, entry_q = base[~gone], entry_q[~gone]
        nq = len(entry_q)

        if self.sampler is not None and nq:
            chunks = -(-nq // _DRAW_CHUNK)  # at most one draw per batch, and batches <= requests
            mult = np.concatenate([np.asarray(self.sampler(service_rng, _DRAW_CHUNK), dtype=np.float64)
                                   for _ in range(chunks)])
        else:
            mult = np.ones(1, np.float64)

        drop_reason = np.zeros(nq, np.int8)
        drop_t = np.full(nq, -1, np.int64)
        batch_of = np.full(nq, -1, np.int64)
        b_dispatch = np.empty(nq, np.int64)
        b_end = np.empty(nq, np.int64)
        b_size = np.empty(nq, np.int64)
        b_inst = np.empty(nq, np.int64)
        b_mark = np.empty(nq, np.int64)
        entry_q = np.ascontiguousarray(entry_q)
        nb = -1
        if self.direct:
            nb = _triton_direct(entry_q, b.max_batch_size, self.delay_ns, self.preferred, sc.instances, self.mean_ns,
                                self.held_ns, self.contention, mult, self.sampler is not None, self.emp, self.emp_len,
                                batch_of, b_dispatch, b_end, b_size, b_inst, b_mark, self.dispatch,
                                self.per_device, self.n_dev)
            if nb < 0:
                batch_of[:] = -1
        if nb < 0:
            status = np.zeros(nq, np.int8)
            pcap = qc.per_source_max_size
            src = arrivals.source.astype(np.int64) if order is None else arrivals.source[order].astype(np.int64)
            arr_q = np.ascontiguousarray(arrival_ns if order is None else arrival_ns[order])
            lvl = (arrivals.priority if order is None else arrivals.priority[order]).astype(np.int64)
            nb = _simulate(entry_q, b.mode == "timer", b.max_batch_size, self.delay_ns,
                           self.preferred, qc.max_size, qc.on_full == "drop_oldest", self.timeout_ns,
                           sc.instances, self.mean_ns, self.held_ns, self.contention, mult, self.sampler is not None,
                           self.emp, self.emp_len, status, drop_reason, drop_t, batch_of,
                           b_dispatch, b_end, b_size, b_inst, b_mark, src, pcap, max(arrivals.n_sources, 1),
                           arr_q, self.deadline_ns, self.dispatch, self.per_device, self.n_dev,
                           lvl, self.lcap, self.ldrop, self.lto)
        if order is not None:  # back to every request: the skipped ones are stride drops at arrival
            skipped = np.ones(n, bool)
            skipped[order] = False
            full_entry = np.full(n, -1, np.int64)
            full_entry[order] = entry_q
            full_batch = np.full(n, -1, np.int64)
            full_batch[order] = batch_of
            full_reason = np.zeros(n, np.int8)
            full_reason[skipped] = _STRIDE
            full_reason[order] = drop_reason
            full_drop_t = np.full(n, -1, np.int64)
            full_drop_t[skipped] = arrival_ns[skipped]
            full_drop_t[order] = drop_t
            if stale_idx is not None:
                full_reason[stale_idx] = _STALE
                full_drop_t[stale_idx] = stale_t
            entry, batch_of, drop_reason, drop_t = full_entry, full_batch, full_reason, full_drop_t
        else:
            entry = entry_q

        b_dispatch, b_end, b_size, b_inst, b_mark = (x[:nb] for x in (b_dispatch, b_end, b_size, b_inst, b_mark))
        return self._collect(arrivals, arrival_ns, entry, batch_of, drop_reason, drop_t,
                             b_dispatch, b_end, b_size, b_inst, b_mark, server_ns, overhead)

    def _collect(self, arr, arrival_ns, entry, batch_of, drop_reason, drop_t, b_dispatch, b_end, b_size, b_inst,
                 b_mark, server_ns=None, overhead=None) -> ReplicationTrace:
        """The trace, computed as :meth:`capsim.sim.engine._Run._collect` does (same float operations)."""
        sc = self.sc
        n = len(arr)
        s = 1.0 / NS
        post = sc.service.postprocess
        pool = post.workers > 0 and post.ms != 0.0
        (arrival, entry_s, dispatch, start, end, done, latency, formation_ms, drop_t_s, batch_size,
         instance) = _gather(batch_of, arrival_ns, entry, drop_t, b_dispatch, b_end, b_size, b_inst, b_mark,
                             sc.batching.mode == "timer", s, -1.0 if pool else post.ms / 1000.0,
                             float(sc.service.overhead_ms))
        if pool:  # FIFO by end time, ties by request index (a stable sort of ascending indices)
            served_idx = np.flatnonzero(batch_of >= 0)
            fifo = served_idx[np.argsort(end[served_idx], kind="stable")]
            done[fifo] = fifo_pool(end[fifo], post.ms / 1000.0, post.workers)
            latency = (done - arrival) * 1000.0 + sc.service.overhead_ms
        extras = {}
        if sc.priority is not None:  # each request's level, as the SimPy engine keeps it
            extras["priority"] = arr.priority
        if server_ns is not None:  # the response crosses the link back: as the SimPy engine does
            extras["network"] = respond(sc, done, server_ns, arrival)
            latency = (done - arrival) * 1000.0 + sc.service.overhead_ms
        if overhead is not None:  # each request's own overhead (the same float operations as the SimPy engine)
            latency = (done - arrival) * 1000.0 + overhead
        warm = np.zeros(n, bool)
        warm[: min(sc.run.warmup_requests, n)] = True
        return ReplicationTrace(
            arrival=arrival, source=arr.source, entry=entry_s, dispatch=dispatch, start=start, end=end, done=done,
            latency_ms=latency, formation_ms=formation_ms, batch_size=batch_size, instance=instance,
            drop_reason=drop_reason, drop_t=drop_t_s, warmup=warm,
            batch_start=b_dispatch * s, batch_end=b_end * s, batch_size_by_batch=b_size, batch_instance=b_inst,
            instances=sc.instances, overhead_ms=sc.service.overhead_ms, extras=extras,
        )
