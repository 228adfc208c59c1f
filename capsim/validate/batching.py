"""The server's dynamic batcher: the simulator's triton-mode rule applied to live requests.

The rule is :class:`capsim.sim.batcher.TritonBatcher`'s (see its module docstring and
design.md): whenever an instance is idle and requests are queued, dispatch the oldest
min(B, queued) when B are queued or the oldest has waited D, else the largest preferred size
that is queued, to the idle instance with the lowest number; otherwise look again when the
oldest's D runs out (or a request arrives, or an instance frees). Admission is the simulator's
too: the per-source cap first, then the overall cap, each either rejecting the arrival or
dropping the oldest queued request (of that source, or overall); a request still queued after
entry + timeout is dropped. At one instant the caller admits arrivals, frees instances, then
calls :meth:`take` (which first expires deadlines strictly before now).

It is a plain state machine with an explicit clock: the asyncio server feeds it real time,
the tests feed it a fake clock and compare its decisions with the simulator's.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

REJECTED, DROPPED_OLDEST, TIMEOUT = "rejected", "dropped_oldest", "timeout"


@dataclass
class Pending:
    """A request waiting in the queue."""

    key: object           # the caller's handle (request id, future, ...)
    source: int
    entered: float        # when it entered the queue (after pre-processing)
    dropped: str = ""     # set when it leaves the queue without running
    taken: bool = False


@dataclass
class ServerBatcher:
    max_batch: int
    delay: float                      # max queue delay, in the clock's unit
    instances: int
    preferred: list[int] = field(default_factory=list)
    max_size: int = 0                 # 0: no overall cap
    per_source_max_size: int = 0      # 0: no per-source cap
    on_full: str = "reject"           # or "drop_oldest"
    timeout: float = 0.0              # 0: none
    tick: float = 1e-6                # the clock's smallest step: a timeout drop is due one tick after the deadline

    def __post_init__(self):
        if self.on_full not in ("reject", "drop_oldest"):
            raise ValueError(f"on_full must be reject or drop_oldest, got {self.on_full!r}")
        self.preferred = sorted({p for p in self.preferred if p <= self.max_batch}, reverse=True)
        self.queue: deque[Pending] = deque()   # FIFO; dropped entries removed lazily
        self.qlen = 0
        self.by_source: dict[int, deque[Pending]] = {}
        self.src_count: dict[int, int] = {}
        self.idle = list(range(self.instances))  # heap: lowest number first
        self.idle_since = [0.0] * self.instances

    # -- the queue

    def _head(self) -> Pending | None:
        while self.queue and (self.queue[0].dropped or self.queue[0].taken):
            self.queue.popleft()
        return self.queue[0] if self.queue else None

    def _drop(self, p: Pending, reason: str) -> Pending:
        p.dropped = reason
        self.qlen -= 1
        if self.per_source_max_size:
            self.src_count[p.source] -= 1
        return p

    def _oldest_of(self, source: int) -> Pending:
        q = self.by_source[source]
        while q[0].dropped or q[0].taken:
            q.popleft()
        return q[0]

    def offer(self, key: object, source: int, now: float) -> list[Pending]:
        """Admit a request that enters the queue at ``now``; returns the requests dropped by it
        (the arrival itself when rejected, or the oldest queued one it displaced)."""
        p = Pending(key, source, now)
        dropped = []
        if self.per_source_max_size and self.src_count.get(source, 0) >= self.per_source_max_size:
            if self.on_full == "reject":
                p.dropped = REJECTED
                return [p]
            dropped.append(self._drop(self._oldest_of(source), DROPPED_OLDEST))
        if self.max_size and self.qlen >= self.max_size:
            if self.on_full == "reject":
                p.dropped = REJECTED
                return dropped + [p]
            dropped.append(self._drop(self._head(), DROPPED_OLDEST))
        self.queue.append(p)
        self.qlen += 1
        if self.per_source_max_size:
            self.by_source.setdefault(source, deque()).append(p)
            self.src_count[source] = self.src_count.get(source, 0) + 1
        return dropped

    def expire(self, now: float) -> list[Pending]:
        """Drop queued requests whose deadline (entry + timeout) is strictly before ``now``."""
        out = []
        if not self.timeout:
            return out
        while self.qlen:
            h = self._head()
            if h.entered + self.timeout >= now:
                break
            out.append(self._drop(h, TIMEOUT))
        return out

    # -- instances

    def release(self, instance: int, now: float) -> None:
        """``instance`` finished its batch at ``now``."""
        heapq.heappush(self.idle, instance)
        self.idle_since[instance] = now

    def _take(self, k: int) -> list[Pending]:
        out = []
        while len(out) < k:
            h = self._head()
            h.taken = True
            self.queue.popleft()
            self.qlen -= 1
            if self.per_source_max_size:
                self.src_count[h.source] -= 1
            out.append(h)
        return out

    def take(self, now: float) -> tuple[list[Pending], list[tuple[int, list[Pending]]]]:
        """Expire, then dispatch every batch that is due at ``now``: (expired, [(instance, batch)])."""
        expired = self.expire(now)
        batches = []
        while self.idle and self.qlen:
            n = self.qlen
            if n >= self.max_batch:
                k = self.max_batch
            elif now >= self._head().entered + self.delay:
                k = n
            else:
                k = next((p for p in self.preferred if p <= n), 0)
            if not k:
                break
            batches.append((heapq.heappop(self.idle), self._take(k)))
        return expired, batches

    def next_wake(self, now: float) -> float | None:
        """When to look again without a new arrival or a finished batch: the oldest request's delay
        running out (if an instance is idle to take it) or the next timeout deadline."""
        t = None
        if self.qlen:
            head = self._head()
            if self.idle:
                t = head.entered + self.delay
            if self.timeout:
                # a request may still start at its deadline; it is dropped the instant after
                d = head.entered + self.timeout + self.tick
                t = d if t is None else min(t, d)
        return t
