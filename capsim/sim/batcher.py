"""Dynamic batchers: when a batch is formed and how large it is.

Times are integer nanoseconds. ``B`` = max_batch_size, ``D`` = max_queue_delay, N instances.

*triton* mode (default; mirrors Triton's dynamic batcher): a batch is formed only when an
instance is idle. At any instant when at least one instance is idle and the queue is
non-empty, let t0 be the enqueue time of the oldest queued request. If the queue holds >= B
requests, or now >= t0 + D, the oldest min(B, queue length) requests are dispatched at once
to the idle instance with the lowest index; otherwise the batcher waits for the next arrival
or for t0 + D, whichever comes first. Arrivals at the same instant as a dispatch decision are
enqueued before the decision. With D = 0 an idle instance takes whatever is queued
immediately. ``preferred_batch_sizes``, when given, dispatch as soon as the largest reachable
preferred size is queued: with q requests queued (q < B), an idle instance and the delay not
yet run out, the largest preferred size p <= q is dispatched at once; once now >= t0 + D the
usual rule (all min(B, q)) applies.

*timer* mode: a batch closes when it reaches B requests or when its oldest request has waited
D, independent of instance availability; closed batches wait FIFO for the next idle instance.
An arrival at the very instant t0 + D still joins the closing batch. Requests in a closed batch
are still queued (caps and timeouts apply to them); a closed batch whose requests were all
dropped is skipped.

Both batchers only say *what* is ready and *when* to look again; the engine owns time, the
queue and the instances. Looking again too early is harmless: decisions are idempotent.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque

import numpy as np

from capsim.sim.queue import QUEUED, Intake, RequestQueue

INF = float("inf")


class TritonBatcher:
    """Forms a batch only when an instance is idle (see the module docstring)."""

    mode = "triton"

    def __init__(self, max_batch: int, delay_ns: int, preferred: list[int]):
        self.B = max_batch
        self.D = delay_ns
        self.preferred = sorted(set(preferred), reverse=True)

    def advance(self, intake: Intake, now: int) -> None:
        """Bring the queue up to ``now``: arrivals and drops."""
        intake.until(now)

    def due(self, q: RequestQueue, now: int) -> int | None:
        """Size of the batch due now (None when none is)."""
        n = q.qlen
        if n == 0:
            return None
        if n >= self.B:
            return self.B
        if now >= q.oldest_entry() + self.D:
            return n
        for p in self.preferred:  # largest first: dispatch early, before the delay runs out
            if p <= n:
                return p
        return None

    def ready(self, q: RequestQueue, now: int) -> np.ndarray | int | None:
        """Take and return the next batch (request indices, or its size from a contiguous queue) if one is due now."""
        k = self.due(q, now)
        return None if k is None else q.take(k)

    def next_look(self, q: RequestQueue, now: int) -> float:
        """The earliest future instant at which a batch could become due (idle instance assumed)."""
        n = q.qlen
        t0 = q.oldest_entry() if n else q.next_entry(1)
        t = min(t0 + self.D, q.next_entry(self.B - n))
        if self.preferred and self.preferred[-1] > n:
            t = min(t, q.next_entry(self.preferred[-1] - n))
        return t


class TimerBatcher:
    """Closes batches on size or age, whatever the instances do (see the module docstring)."""

    mode = "timer"

    def __init__(self, max_batch: int, delay_ns: int, simple: bool):
        self.B = max_batch
        self.D = delay_ns
        self.simple = simple          # no caps or timeouts: closures follow from arrival times alone
        self.open_pos = 0             # queue position where the open batch starts
        self.closed: deque = deque()  # (close time, request indices), oldest first
        self.close_times: list[int] = []

    # -- the open batch
    def _open_members(self, q: RequestQueue) -> list[int]:
        st, order = q.status, q.order
        return [int(order[p]) for p in range(self.open_pos, q.nxt) if st[order[p]] == QUEUED]

    def _close(self, q: RequestQueue, t: int, members) -> None:
        self.closed.append((t, members))
        self.open_pos = q.nxt

    def advance(self, intake: Intake, now: int) -> None:
        """Admit arrivals up to ``now``, closing batches and dropping requests in time order."""
        q = intake.q
        if intake.simple:
            self._advance_simple(q, now)
            return
        B, D = self.B, self.D
        while True:
            a = q.next_entry(1)
            members = self._open_members(q)
            c = (int(q.entry[members[0]]) + D) if members else INF
            d = intake.next_deadline()
            if d < a and d < c and d < now:   # at one instant: arrival, closure, then timeout
                intake.expire(int(d) + 1)
                continue
            if c < a and c <= now:
                self._close(q, int(c), members)
                continue
            if a <= now:
                intake.one()
                members = self._open_members(q)
                if len(members) >= B:
                    self._close(q, int(a), members)
                continue
            return

    def _advance_simple(self, q: RequestQueue, now: int) -> None:
        B, D, at = self.B, self.D, q.entry_at
        while True:
            p = self.open_pos
            if p >= q.n or at[p] > now:
                break
            full_at = at[p + B - 1] if p + B - 1 < q.n else INF
            if full_at <= at[p] + D:
                c, end = int(full_at), p + B
            else:
                c = int(at[p] + D)
                end = bisect_right(at, c, p)
            if c > now:
                break
            q.push_until(c)
            self.closed.append((c, end - p))  # a contiguous queue: the batch is the next end - p requests
            self.open_pos = end
        q.push_until(now)

    def ready(self, q: RequestQueue, now: int) -> np.ndarray | int | None:
        while self.closed:
            t, members = self.closed.popleft()
            idx = q.take(members) if self.simple else q.take_indices(members)
            if self.simple or len(idx):
                self.close_times.append(t)
                return idx
        return None

    def next_look(self, q: RequestQueue, now: int) -> float:
        if self.closed:
            return now
        if self.simple:
            n = q.nxt - self.open_pos
            t0 = q.entry_at[self.open_pos] if n else q.next_entry(1)
        else:
            members = self._open_members(q)
            n = len(members)
            t0 = q.entry[members[0]] if n else q.next_entry(1)
        return min(t0 + self.D, q.next_entry(self.B - n))


def make_batcher(b, simple: bool) -> TritonBatcher | TimerBatcher:
    """The batcher of ``batching`` section ``b`` (times in ns); ``simple``: the queue never drops,
    so the timer batcher may count positions instead of tracking members."""
    delay_ns = int(round(b.max_queue_delay_ms * 1e6))
    if b.mode == "triton":
        return TritonBatcher(b.max_batch_size, delay_ns, b.preferred_batch_sizes)
    return TimerBatcher(b.max_batch_size, delay_ns, simple)
