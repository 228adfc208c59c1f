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

Production policies (all off by default, and then the decisions above are unchanged):

- **priority lanes**: one FIFO per level (0 = highest), each with its own cap, on_full and
  timeout (:class:`LevelPolicy`; with one level it is the overall cap). The per-source cap
  comes first and uses the arriving request's level's on_full (drop_oldest evicts that
  source's oldest queued request, of any level); then the level's cap (drop_oldest evicts the
  oldest of the same level). The triton rule sees t0 = the oldest queued request of any level
  and q = all queued; a batch takes the oldest of the highest non-empty level first, then the
  next level, up to min(B, q); preferred sizes count the total.
- **deadlines**: when the rule says a batch is due, every queued request whose
  arrival + deadline is strictly before now is first dropped as ``stale``, and the rule is
  applied again to what is left (which may then not be due).
- **stride / graceful degradation** per source: each source has a stride starting at
  ``stride``. When a frame enters and its source already has >= ``degrade_threshold`` frames
  queued, the source's stride rises by one (at most ``degrade_max_stride``); when it enters
  with its source's queue empty, it falls by one (at least ``stride``). Then a frame whose
  index is not a multiple of the source's current stride is dropped as ``stride``. A frame's
  index is the count of frames that entered from its source before it, unless the caller gives one.

It is a plain state machine with an explicit clock: the asyncio server feeds it real time,
the tests feed it a fake clock and compare its decisions with the simulator's.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

REJECTED, DROPPED_OLDEST, TIMEOUT, STALE, STRIDE = "rejected", "dropped_oldest", "timeout", "stale", "stride"
ON_FULL = ("reject", "drop_oldest")


@dataclass
class Pending:
    """A request waiting in the queue."""

    key: object           # the caller's handle (request id, future, ...)
    source: int
    entered: float        # when it entered the queue (after pre-processing)
    dropped: str = ""     # set when it leaves the queue without running
    taken: bool = False
    level: int = 0        # priority level, 0 = highest
    arrived: float = 0.0  # when the server received it (deadlines count from here)
    deadline: float = 0.0  # 0: none; else stale once arrived + deadline < now at a batch decision


@dataclass
class LevelPolicy:
    """One priority lane's queue policy (0 = no cap / no timeout)."""

    max_size: int = 0
    on_full: str = "reject"
    timeout: float = 0.0


@dataclass
class ServerBatcher:
    max_batch: int
    delay: float                      # max queue delay, in the clock's unit
    instances: int
    preferred: list[int] = field(default_factory=list)
    max_size: int = 0                 # 0: no overall cap (one level only; with levels, each has its own)
    per_source_max_size: int = 0      # 0: no per-source cap
    on_full: str = "reject"           # or "drop_oldest"
    timeout: float = 0.0              # 0: none
    tick: float = 1e-6                # the clock's smallest step: a timeout drop is due one tick after the deadline
    levels: list[LevelPolicy] | None = None  # priority lanes; None: one lane from max_size/on_full/timeout
    deadline: float = 0.0             # default deadline of a request (0: none); offer(deadline=) overrides
    stride: int = 1                   # base stride per source (1: every frame)
    degrade_threshold: int = 0        # 0: the stride stays at `stride`
    degrade_max_stride: int = 0

    def __post_init__(self):
        if self.levels is None:
            self.levels = [LevelPolicy(self.max_size, self.on_full, self.timeout)]
        for lv in self.levels:
            if lv.on_full not in ON_FULL:
                raise ValueError(f"on_full must be reject or drop_oldest, got {lv.on_full!r}")
        if self.on_full not in ON_FULL:
            raise ValueError(f"on_full must be reject or drop_oldest, got {self.on_full!r}")
        self.preferred = sorted({p for p in self.preferred if p <= self.max_batch}, reverse=True)
        self.queues: list[deque[Pending]] = [deque() for _ in self.levels]  # FIFO per level; drops removed lazily
        self.llen = [0] * len(self.levels)
        self.qlen = 0
        self.by_source: dict[int, deque[Pending]] = {}
        self.src_count: dict[int, int] = {}    # queued per source (kept when a cap or degrade needs it)
        self._count_sources = bool(self.per_source_max_size or self.degrade_threshold)
        self.with_deadline = 0                 # queued requests that carry a deadline
        self.stride_of: dict[int, int] = {}    # current stride per source (stride / degrade on)
        self.frames: dict[int, int] = {}       # frames that entered per source
        self.idle = list(range(self.instances))  # heap: lowest number first
        self.idle_since = [0.0] * self.instances

    @property
    def strided(self) -> bool:
        """Whether frames can be dropped by stride."""
        return self.stride > 1 or bool(self.degrade_threshold)

    # -- the queue

    def _head_of(self, level: int) -> Pending | None:
        q = self.queues[level]
        while q and (q[0].dropped or q[0].taken):
            q.popleft()
        return q[0] if q else None

    def _head(self) -> Pending | None:
        """The oldest queued request of any level."""
        if len(self.queues) == 1:
            return self._head_of(0)
        best = None
        for lv in range(len(self.queues)):
            h = self._head_of(lv)
            if h is not None and (best is None or h.entered < best.entered):
                best = h
        return best

    def _gone(self, p: Pending) -> None:
        self.qlen -= 1
        self.llen[p.level] -= 1
        if self._count_sources:
            self.src_count[p.source] -= 1
        if p.deadline:
            self.with_deadline -= 1

    def _drop(self, p: Pending, reason: str) -> Pending:
        p.dropped = reason
        self._gone(p)
        return p

    def _oldest_of(self, source: int) -> Pending:
        q = self.by_source[source]
        while q[0].dropped or q[0].taken:
            q.popleft()
        return q[0]

    def _stride_check(self, p: Pending, frame: int | None) -> bool:
        """Update the source's stride as this frame enters; True when the frame is to be dropped."""
        s = p.source
        n = self.frames.get(s, 0)
        self.frames[s] = n + 1
        stride = self.stride_of.get(s, self.stride)
        if self.degrade_threshold:
            queued = self.src_count.get(s, 0)
            if queued >= self.degrade_threshold:
                stride = min(stride + 1, self.degrade_max_stride)
            elif queued == 0:
                stride = max(stride - 1, self.stride)
        self.stride_of[s] = stride
        return (n if frame is None else frame) % stride != 0

    def offer(self, key: object, source: int, now: float, level: int = 0, arrived: float | None = None,
              deadline: float | None = None, frame: int | None = None) -> list[Pending]:
        """Admit a request that enters the queue at ``now``; returns the requests dropped by it
        (the arrival itself when rejected or off-stride, or the queued ones it displaced).
        ``arrived``: when the server received it (default ``now``); ``deadline``: overrides the
        batcher's; ``frame``: the frame index (default: the source's count of frames so far)."""
        p = Pending(key, source, now, level=level, arrived=now if arrived is None else arrived,
                    deadline=self.deadline if deadline is None else deadline)
        if self.strided and self._stride_check(p, frame):
            p.dropped = STRIDE
            return [p]
        pol = self.levels[level]
        dropped = []
        if self.per_source_max_size and self.src_count.get(source, 0) >= self.per_source_max_size:
            if pol.on_full == "reject":
                p.dropped = REJECTED
                return [p]
            dropped.append(self._drop(self._oldest_of(source), DROPPED_OLDEST))
        if pol.max_size and self.llen[level] >= pol.max_size:
            if pol.on_full == "reject":
                p.dropped = REJECTED
                return dropped + [p]
            dropped.append(self._drop(self._head_of(level), DROPPED_OLDEST))
        self.queues[level].append(p)
        self.qlen += 1
        self.llen[level] += 1
        if p.deadline:
            self.with_deadline += 1
        if self.per_source_max_size:
            self.by_source.setdefault(source, deque()).append(p)
        if self._count_sources:
            self.src_count[source] = self.src_count.get(source, 0) + 1
        return dropped

    def expire(self, now: float) -> list[Pending]:
        """Drop queued requests whose timeout (entry + its level's timeout) is strictly before ``now``."""
        out = []
        for lv, pol in enumerate(self.levels):
            if not pol.timeout:
                continue
            while self.llen[lv]:
                h = self._head_of(lv)
                if h.entered + pol.timeout >= now:
                    break
                out.append(self._drop(h, TIMEOUT))
        return out

    def _drop_stale(self, now: float) -> list[Pending]:
        """Drop every queued request with arrival + deadline strictly before ``now``."""
        out = []
        if not self.with_deadline:
            return out
        for q in self.queues:
            for p in q:
                if not (p.dropped or p.taken) and p.deadline and p.arrived + p.deadline < now:
                    out.append(self._drop(p, STALE))
        return out

    # -- instances

    def release(self, instance: int, now: float) -> None:
        """``instance`` finished its batch at ``now``."""
        heapq.heappush(self.idle, instance)
        self.idle_since[instance] = now

    def add_instance(self, instance: int, now: float) -> None:
        """A new instance serves from ``now`` (autoscaling: after its cold start)."""
        if instance >= len(self.idle_since):
            self.idle_since += [now] * (instance + 1 - len(self.idle_since))
        self.instances = max(self.instances, instance + 1)
        self.release(instance, now)

    def remove_idle(self, instance: int) -> None:
        """An idle instance leaves (autoscaling retired it): it gets no more batches."""
        self.idle.remove(instance)
        heapq.heapify(self.idle)

    def _take(self, k: int) -> list[Pending]:
        out = []
        lv = 0
        while len(out) < k:
            h = self._head_of(lv)
            if h is None:  # this level is empty: the next one down
                lv += 1
                continue
            h.taken = True
            self.queues[lv].popleft()
            self._gone(h)
            out.append(h)
        return out

    def _due(self, now: float) -> int:
        """The batch size the rule dispatches now (0: none is due)."""
        n = self.qlen
        if n >= self.max_batch:
            return self.max_batch
        if now >= self._head().entered + self.delay:
            return n
        return next((p for p in self.preferred if p <= n), 0)

    def take(self, now: float) -> tuple[list[Pending], list[tuple[int, list[Pending]]]]:
        """Expire, then dispatch every batch that is due at ``now``: (dropped, [(instance, batch)]);
        dropped holds the timeouts and the requests found stale when a batch was due."""
        dropped = self.expire(now)
        batches = []
        while self.idle and self.qlen:
            k = self._due(now)
            if not k:
                break
            stale = self._drop_stale(now)
            if stale:  # the decision is taken again on what is left
                dropped += stale
                continue
            batches.append((heapq.heappop(self.idle), self._take(k)))
        return dropped, batches

    def next_wake(self, now: float) -> float | None:
        """When to look again without a new arrival or a finished batch: the oldest request's delay
        running out (if an instance is idle to take it) or the next timeout deadline."""
        t = None
        if self.qlen:
            if self.idle:
                t = self._head().entered + self.delay
            for lv, pol in enumerate(self.levels):
                if pol.timeout and self.llen[lv]:
                    # a request may still start at its deadline; it is dropped the instant after
                    d = self._head_of(lv).entered + pol.timeout + self.tick
                    t = d if t is None else min(t, d)
        return t
