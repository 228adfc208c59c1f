"""Queue-side production policies: priority lanes, deadlines (stale frames) and graceful
degradation (an adaptive stride per camera). Each is a small class with one job, plugged into
the queue, the admission or the batcher of :mod:`capsim.sim.engine`.

Times are integer nanoseconds, as in the engine.

*Priority lanes* (``priority.levels``, level 0 highest): one FIFO per level. An arrival is
admitted through its own level's cap (``max_size``; the per-source cap, when set, first), with
that level's ``on_full`` (``drop_oldest`` evicts the oldest queued request of the SAME level)
and that level's ``timeout_ms``. The triton rule is unchanged but counts every level: t0 = the
enqueue time of the oldest queued request of ANY level, q = the total queued; a batch of
min(B, q) (or the preferred size p, which counts the total) takes the oldest requests of the
highest non-empty level first, then of the next level, and so on. Timer mode is refused with
priority (config).

*Deadlines* (``queue.deadline_ms``): at each batch decision, i.e. when a batch is about to be
formed (triton: the rule says a batch is due now and an instance is idle; timer: a closed batch
is about to start on an idle instance), every queued request (any level) with
arrival + deadline < now (arrival at the service, before pre-processing; strictly before: a
request exactly at its deadline is still computed) is dropped with reason ``stale``, recorded
at now. The decision then proceeds on what is left: triton applies its rule again to the
remaining queue (which may now wait), timer starts the closed batch's remaining members (or
skips the batch when none is left). Entry order follows arrival order (the pre-processing pool
is FIFO), so the stale requests are always the oldest ones.

*Graceful degradation* (``queue.degrade``): each camera s has a stride, starting at
``queue.stride``. When a frame of s enters the queue (after pre-processing), s's stride first
adapts: +1 (at most ``max_stride``) if s already has >= ``threshold`` frames queued, -1 (at
least ``queue.stride``) if s has none queued. The frame is then dropped with reason ``stride``
unless its per-source frame index is a multiple of s's stride (the new one); survivors go
through the caps as usual. Frames dropped by the base ``queue.stride`` before pre-processing
never reach the queue and change nothing.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from capsim.config import Scenario
from capsim.sim.batcher import TimerBatcher, TritonBatcher, make_batcher
from capsim.sim.queue import (
    ON_FULL_POLICIES, QUEUED, REJECTED, STALE, STRIDE, TIMEOUT, Admission, Intake, QueueTimeout, RequestQueue,
)

INF = float("inf")


def uses_queue_policies(sc: Scenario) -> bool:
    """Whether ``sc`` uses any policy of this module."""
    return sc.priority is not None or sc.queue.deadline_ms > 0 or sc.queue.degrade is not None


class LaneQueue(RequestQueue):
    """The request queue with one FIFO per priority level on top of the global entry order.

    ``oldest()`` stays the oldest of any level (what t0 and timeouts need); ``take`` serves the
    highest non-empty level first.
    """

    def __init__(self, *args, level: np.ndarray, levels: int, **kw):
        super().__init__(*args, **kw)
        self.level = level
        self.lane_count = [0] * levels
        self.lane_fifo = [deque() for _ in range(levels)]

    def push_next(self) -> int:
        i = super().push_next()
        lv = self.level[i]
        self.lane_count[lv] += 1
        self.lane_fifo[lv].append(i)
        return i

    def oldest_in_lane(self, lv: int) -> int:
        """Request index of the oldest queued request of level ``lv`` (which must have one)."""
        return self._oldest_in(self.lane_fifo[lv])

    def _left(self, i: int) -> None:
        super()._left(i)
        self.lane_count[self.level[i]] -= 1

    def take(self, k: int) -> np.ndarray:
        out = []
        for lv, fifo in enumerate(self.lane_fifo):
            while len(out) < k and self.lane_count[lv]:
                i = fifo.popleft()
                if self.status[i] == QUEUED:
                    out.append(i)
                    self.lane_count[lv] -= 1
            if len(out) == k:
                break
        return self._taken(np.asarray(out, dtype=self.order.dtype))

    def take_indices(self, idx: list[int]) -> np.ndarray:
        arr = super().take_indices(idx)
        for i in arr.tolist():
            self.lane_count[self.level[i]] -= 1
        return arr


class LaneAdmission:
    """Admits one arrival through the per-source cap, then its own level's cap, each with the
    level's ``on_full`` (``drop_oldest`` evicts the oldest of the same source / the same level)."""

    def __init__(self, levels, per_source_max_size: int):
        self.caps = [lv.max_size for lv in levels]
        self.policies = [ON_FULL_POLICIES[lv.on_full]() for lv in levels]
        self.per_source = per_source_max_size

    def admit_next(self, q: LaneQueue, t: float) -> None:
        i = int(q.order[q.nxt])
        lv = q.level[i]
        policy = self.policies[lv]
        if self.per_source and q.src_count[q.source[i]] >= self.per_source:
            if not policy.make_room(q, q.oldest_of(q.source[i]), t):
                q.reject_next(REJECTED, t)
                return
        cap = self.caps[lv]
        if cap and q.lane_count[lv] >= cap:
            if not policy.make_room(q, q.oldest_in_lane(lv), t):
                q.reject_next(REJECTED, t)
                return
        q.push_next()


class LaneTimeout:
    """Each level's ``timeout_ms``: a request still queued after entry + its level's timeout is
    dropped, recorded at that instant (as :class:`~capsim.sim.queue.QueueTimeout`)."""

    def __init__(self, timeouts_ns: list[int]):
        self.timeouts = timeouts_ns

    def expire_before(self, q: LaneQueue, t: float) -> None:
        for lv, timeout in enumerate(self.timeouts):
            if not timeout:
                continue
            while q.lane_count[lv]:
                i = q.oldest_in_lane(lv)
                deadline = q.entry[i] + timeout
                if deadline >= t:
                    break
                q.drop(i, TIMEOUT, deadline)

    def next_deadline(self, q: LaneQueue) -> float:
        return min((q.entry[q.oldest_in_lane(lv)] + to for lv, to in enumerate(self.timeouts)
                    if to and q.lane_count[lv]), default=INF)


class AdaptiveStride:
    """Graceful degradation: a per-camera stride that rises while the camera's frames pile up and
    falls when its queue is empty (see the module docstring), applied at queue entry before the
    caps (``inner``). Records every stride change as (time ns, camera, new stride)."""

    def __init__(self, inner, frame: np.ndarray, n_sources: int, base: int, threshold: int, max_stride: int):
        self.inner = inner
        self.frame = frame
        self.base, self.threshold, self.max_stride = base, threshold, max_stride
        self.stride = [base] * n_sources
        self.changes: list[tuple[int, int, int]] = []

    def admit_next(self, q: RequestQueue, t: float) -> None:
        i = int(q.order[q.nxt])
        s = int(q.source[i])
        queued = q.src_count[s]
        k = self.stride[s]
        if queued >= self.threshold and k < self.max_stride:
            k += 1
        elif queued == 0 and k > self.base:
            k -= 1
        if k != self.stride[s]:
            self.stride[s] = k
            self.changes.append((int(t), s, k))
        if self.frame[i] % k:
            q.reject_next(STRIDE, t)
        elif self.inner is None:
            q.push_next()
        else:
            self.inner.admit_next(q, t)


class StaleDrop:
    """Deadlines: drops every queued request with arrival + deadline < now (the oldest ones)."""

    def __init__(self, arrival_ns: np.ndarray, deadline_ns: int):
        self.arrival = arrival_ns
        self.deadline = deadline_ns

    def purge(self, q: RequestQueue, now: int) -> int:
        """Drop the stale requests at ``now``; returns how many."""
        k = 0
        while q.qlen:
            i = q.oldest()
            if self.arrival[i] + self.deadline >= now:
                break
            q.drop(i, STALE, now)
            k += 1
        return k


class StaleTritonBatcher(TritonBatcher):
    """The triton rule, with stale requests dropped each time a batch is due, then the rule again."""

    def __init__(self, max_batch: int, delay_ns: int, preferred: list[int], stale: StaleDrop):
        super().__init__(max_batch, delay_ns, preferred)
        self.stale = stale

    def ready(self, q, now):
        k = self.due(q, now)
        while k is not None and self.stale.purge(q, now):
            k = self.due(q, now)
        return None if k is None else q.take(k)


class StaleTimerBatcher(TimerBatcher):
    """Timer batching, with stale requests dropped when a closed batch is about to start."""

    def __init__(self, max_batch: int, delay_ns: int, stale: StaleDrop):
        super().__init__(max_batch, delay_ns, simple=False)
        self.stale = stale

    def ready(self, q, now):
        if self.closed:
            self.stale.purge(q, now)
        return super().ready(q, now)


def build(sc: Scenario, arr, order: np.ndarray, entry: np.ndarray, arrival_ns: np.ndarray, status: np.ndarray,
          drop_reason: np.ndarray, drop_t: np.ndarray):
    """The queue, intake and batcher of a scenario that uses these policies, plus the policy
    data to keep in the trace's ``extras``."""
    qc, b, pr = sc.queue, sc.batching, sc.priority
    track = qc.per_source_max_size > 0 or qc.degrade is not None
    common = (order, entry, arr.source, arr.n_sources, status, drop_reason, drop_t)
    extras = {}
    if pr is not None:
        q = LaneQueue(*common, track_sources=track, level=arr.priority, levels=len(pr.levels))
        admission = LaneAdmission(pr.levels, qc.per_source_max_size)
        timeouts = [int(round(lv.timeout_ms * 1e6)) for lv in pr.levels]
        timeout = LaneTimeout(timeouts) if any(timeouts) else None
        extras["priority"] = arr.priority
    else:
        q = RequestQueue(*common, track_sources=track)
        admission = Admission(qc.max_size, qc.per_source_max_size, qc.on_full) \
            if (qc.max_size or qc.per_source_max_size) else None
        timeout = QueueTimeout(int(round(qc.timeout_ms * 1e6))) if qc.timeout_ms > 0 else None
    stride = None
    if qc.degrade is not None:
        stride = AdaptiveStride(admission, arr.frame, arr.n_sources, qc.stride, qc.degrade.threshold,
                                qc.degrade.max_stride)
        admission = stride
        extras["degrade"] = stride  # its stride changes are read once the run is over
    intake = Intake(q, admission, timeout, simple=False)
    delay_ns = int(round(b.max_queue_delay_ms * 1e6))
    stale = StaleDrop(arrival_ns, int(round(qc.deadline_ms * 1e6))) if qc.deadline_ms > 0 else None
    if stale is None:
        batcher = make_batcher(b, False)
    elif b.mode == "triton":
        batcher = StaleTritonBatcher(b.max_batch_size, delay_ns, b.preferred_batch_sizes, stale)
    else:
        batcher = StaleTimerBatcher(b.max_batch_size, delay_ns, stale)
    return q, intake, batcher, extras


def stride_extras(stride: AdaptiveStride, n_sources: int) -> dict:
    """The degrade policy's per-replication data: stride changes in seconds, base stride, cameras."""
    ch = np.asarray(stride.changes, np.int64).reshape(-1, 3)
    return {"t": ch[:, 0] / 1e9, "source": ch[:, 1], "stride": ch[:, 2], "base": stride.base,
            "n_sources": n_sources}
