"""The batcher's request queue and the policies that drop requests from it.

Requests enter in order of their entry time. The queue keeps them as positions in that
order and removes lazily: a request dispatched or dropped out of order leaves a hole that
is skipped when it reaches the head, so the common case (no drops) stays a pointer move.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque

import numpy as np

PENDING, QUEUED, DISPATCHED, DROPPED = 0, 1, 2, 3

# Drop reasons, as stored per request (index into this tuple; 0 = not dropped).
# New reasons go at the end so that stored indices keep their meaning.
DROP_REASONS = ("", "rejected", "dropped_oldest", "timeout", "stride", "stale")
REJECTED, DROPPED_OLDEST, TIMEOUT, STRIDE, STALE = 1, 2, 3, 4, 5


class RequestQueue:
    """FIFO of request indices with lazy removal, per-source counts and drop bookkeeping."""

    contiguous = False

    def __init__(self, order: np.ndarray, entry: np.ndarray, source: np.ndarray, n_sources: int,
                 status: np.ndarray, drop_reason: np.ndarray, drop_t: np.ndarray, track_sources: bool):
        self.order = order                       # position -> request index, in entry order
        # Entry time by position, as a list: scalar reads and bisect on it are much cheaper than numpy's.
        self.entry_at = entry[order].tolist()
        self.entry = entry
        self.source = source
        self.status = status
        self.drop_reason = drop_reason
        self.drop_t = drop_t
        self.nxt = 0                             # first position not yet arrived
        self.head = 0                            # first position that may still be queued
        self.qlen = 0
        self.n = len(order)
        self.src_count = np.zeros(n_sources, np.int64) if track_sources else None
        self.src_fifo = [deque() for _ in range(n_sources)] if track_sources else None

    # -- arrivals
    def next_entry(self, k: int = 1) -> float:
        """Entry time of the k-th arrival still to come (inf when there is none)."""
        p = self.nxt + k - 1
        return self.entry_at[p] if p < self.n else float("inf")

    def push_next(self) -> int:
        """Enqueue the next arrival; returns its request index."""
        i = int(self.order[self.nxt])
        self.nxt += 1
        self.status[i] = QUEUED
        self.qlen += 1
        if self.src_count is not None:
            s = self.source[i]
            self.src_count[s] += 1
            self.src_fifo[s].append(i)
        return i

    def reject_next(self, reason: int, t: float) -> None:
        """The next arrival is turned away at time t."""
        i = int(self.order[self.nxt])
        self.nxt += 1
        self.status[i] = DROPPED
        self.drop_reason[i] = reason
        self.drop_t[i] = t

    # -- the queued requests
    def oldest(self) -> int:
        """Request index of the oldest queued request (queue must be non-empty)."""
        st, order, h = self.status, self.order, self.head
        while st[order[h]] != QUEUED:
            h += 1
        self.head = h
        return int(order[h])

    def oldest_entry(self) -> float:
        return float(self.entry[self.oldest()])

    def oldest_of(self, s: int) -> int:
        """Request index of source ``s``'s oldest queued request (it must have one)."""
        return self._oldest_in(self.src_fifo[s])

    def _oldest_in(self, fifo: deque) -> int:
        """The oldest still-queued request of a group's FIFO; requests that left are dropped from its front."""
        while self.status[fifo[0]] != QUEUED:
            fifo.popleft()
        return fifo[0]

    def _left(self, i: int) -> None:
        self.qlen -= 1
        if self.src_count is not None:
            self.src_count[self.source[i]] -= 1

    def drop(self, i: int, reason: int, t: float) -> None:
        """Drop queued request i at time t."""
        self.status[i] = DROPPED
        self.drop_reason[i] = reason
        self.drop_t[i] = t
        self._left(i)

    def take(self, k: int) -> np.ndarray:
        """Remove and return the oldest k queued requests (k <= qlen), marked dispatched."""
        self.oldest()  # move the head past holes so the contiguous case is recognised
        if self.nxt - self.head == self.qlen:  # no holes: a contiguous run of positions
            idx = self.order[self.head:self.head + k]
            self.head += k
        else:
            out, st, order, p = [], self.status, self.order, self.head
            while len(out) < k:
                i = order[p]
                if st[i] == QUEUED:
                    out.append(i)
                p += 1
            idx = np.asarray(out, dtype=order.dtype)
        return self._taken(idx)

    def _taken(self, idx: np.ndarray) -> np.ndarray:
        """Mark the requests ``idx`` (all queued) dispatched and take them off the counts."""
        self.status[idx] = DISPATCHED
        self.qlen -= len(idx)
        if self.src_count is not None:
            np.subtract.at(self.src_count, self.source[idx], 1)
        return idx

    def take_indices(self, idx: list[int]) -> np.ndarray:
        """Remove the given requests (those still queued) and return them, marked dispatched."""
        arr = np.asarray(idx, dtype=self.order.dtype)
        arr = arr[self.status[arr] == QUEUED]
        self.status[arr] = DISPATCHED
        self.qlen -= len(arr)
        if self.src_count is not None:
            np.subtract.at(self.src_count, self.source[arr], 1)
        return arr


class ContiguousQueue(RequestQueue):
    """The queue when nothing can leave it but a dispatch (no caps, no timeouts).

    Requests then leave strictly in entry order, so the queue is the position range
    [head, nxt) and a batch is the next k positions: no per-request bookkeeping at all.
    ``take`` returns the batch size; the engine maps batches back to requests at the end.
    """

    contiguous = True

    def push_until(self, t: float) -> None:
        """Enqueue every arrival with entry time <= t: a pointer move (bisect when several arrived)."""
        at, nxt = self.entry_at, self.nxt
        if nxt >= self.n or at[nxt] > t:
            return
        end = nxt + 1 if nxt + 1 >= self.n or at[nxt + 1] > t else bisect_right(at, t, nxt)
        self.qlen += end - nxt
        self.nxt = end

    def oldest(self) -> int:
        return int(self.order[self.head])

    def oldest_entry(self) -> float:
        return self.entry_at[self.head]

    def take(self, k: int) -> int:
        self.head += k
        self.qlen -= k
        return k


class RejectWhenFull:
    """``on_full: reject`` — an arrival to a full queue is turned away."""

    def make_room(self, q: RequestQueue, victim: int, t: float) -> bool:
        return False


class DropOldestWhenFull:
    """``on_full: drop_oldest`` — an arrival to a full queue evicts the oldest queued request."""

    def make_room(self, q: RequestQueue, victim: int, t: float) -> bool:
        q.drop(victim, DROPPED_OLDEST, t)
        return True


ON_FULL_POLICIES = {"reject": RejectWhenFull, "drop_oldest": DropOldestWhenFull}


class Admission:
    """Admits one arrival through the per-source cap, then the overall cap."""

    def __init__(self, max_size: int, per_source_max_size: int, on_full: str):
        self.max_size = max_size
        self.per_source = per_source_max_size
        self.policy = ON_FULL_POLICIES[on_full]()

    def admit_next(self, q: RequestQueue, t: float) -> None:
        i = int(q.order[q.nxt])
        if self.per_source and q.src_count[q.source[i]] >= self.per_source:
            if not self.policy.make_room(q, q.oldest_of(q.source[i]), t):
                q.reject_next(REJECTED, t)
                return
        if self.max_size and q.qlen >= self.max_size:
            if not self.policy.make_room(q, q.oldest(), t):
                q.reject_next(REJECTED, t)
                return
        q.push_next()


class QueueTimeout:
    """Drops a request still queued ``timeout`` seconds after it entered (Triton's REJECT action).

    A request may still be dispatched at exactly entry + timeout; it is dropped if it is still
    queued after that instant, and its drop is recorded at entry + timeout.
    """

    def __init__(self, timeout_s: float):
        self.timeout = timeout_s

    def expire_before(self, q: RequestQueue, t: float) -> None:
        """Drop every queued request whose deadline is strictly before t (oldest first)."""
        while q.qlen:
            i = q.oldest()
            deadline = q.entry[i] + self.timeout
            if deadline >= t:
                return
            q.drop(i, TIMEOUT, deadline)

    def next_deadline(self, q: RequestQueue) -> float:
        return q.oldest_entry() + self.timeout if q.qlen else float("inf")


class Intake:
    """Brings the queue up to a given time: arrivals through the caps, and timeouts, in time order.

    At one instant, arrivals are enqueued first, then the batcher decides, then timeouts fire:
    ``until(t)`` therefore drops only requests whose deadline is strictly before t.
    """

    def __init__(self, q: RequestQueue, admission: Admission | None, timeout: QueueTimeout | None,
                 simple: bool | None = None):
        self.q = q
        self.admission = admission
        self.timeout = timeout
        # Simple: nothing but a dispatch removes a request (a contiguous queue); a policy that drops
        # at a batch decision (deadlines) needs the general path even without caps or timeouts.
        self.simple = admission is None and timeout is None if simple is None else simple

    def one(self) -> None:
        """Admit the next arrival, at its entry time."""
        q = self.q
        if self.admission is None:
            q.push_next()
        else:
            self.admission.admit_next(q, q.entry_at[q.nxt])

    def expire(self, t: int) -> None:
        if self.timeout is not None:
            self.timeout.expire_before(self.q, t)

    def next_deadline(self) -> float:
        return self.timeout.next_deadline(self.q) if self.timeout is not None else float("inf")

    def until(self, t: int) -> None:
        q = self.q
        if self.simple:
            q.push_until(t)
            return
        at = q.entry_at
        while q.nxt < q.n and at[q.nxt] <= t:
            self.expire(int(at[q.nxt]))
            self.one()
        self.expire(t)
