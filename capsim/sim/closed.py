"""Closed-loop clients: C clients that each send a request, wait for its answer, think, send again.

Arrivals depend on completions, so they cannot be generated up front: this engine runs the same
batcher, queue, instances and service model as :class:`capsim.sim.engine.SimPyEngine` (it
reuses its decision and dispatch code) and adds the clients around them.

Semantics (times in integer nanoseconds, like the reference engine):

- Client c sends its first request at a think-time draw (so with exponential think the clients
  start spread out; with constant think, or think 0, they all start together at Z).
- A request sent at t passes the pre-processing pool (FIFO workers) and enters the batcher's
  queue; batching, service time, contention and the post-processing pool are exactly as in the
  reference engine (post-processing serves finished requests by end time, then request index).
- The client gets its answer at done + overhead (the latency it sees), thinks for a fresh draw
  of the think time (exponential with mean ``think_ms`` or constant), then sends again.
- Requests are numbered in the order they are sent; the run stops sending after
  ``run.requests`` requests and the first ``run.warmup_requests`` are the warm-up.
- Nothing is ever dropped: queue caps, timeouts, per-source caps and strides are refused with
  closed-loop clients (a dropped request would need a retry policy the scenario cannot state).

Think times come from the generator passed as ``think_rng`` (the replication's arrival
stream), service draws from ``service_rng``: no global random state.
"""

from __future__ import annotations

import heapq

import numpy as np
import simpy

from capsim.arrivals import ArrivalStream
from capsim.config import Scenario
from capsim.errors import CapsimError
from capsim.sim.batcher import make_batcher
from capsim.sim.devices import InstancePool
from capsim.sim.engine import NS, INF, ReplicationTrace, SimPyEngine, _Run
from capsim.sim.queue import ContiguousQueue, Intake

_THINK_CHUNK = 4096


def closed_loop_refusals(sc: Scenario) -> list[str]:
    """Fields that closed-loop clients do not support, each as a one-line error."""
    q = sc.queue
    fix = "remove it (closed-loop clients never drop: their number bounds the queue)"
    checks = [
        ("queue.max_size", q.max_size > 0),
        ("queue.timeout_ms", q.timeout_ms > 0),
        ("queue.per_source_max_size", q.per_source_max_size > 0),
        ("queue.stride", q.stride != 1),
        ("queue.deadline_ms", q.deadline_ms > 0),
        ("queue.degrade", q.degrade is not None),
        ("queue.preprocess_latest", q.preprocess_latest),
        ("priority", sc.priority is not None),
        ("autoscale", sc.autoscale is not None),
        ("network", sc.network is not None),
    ]
    return [f"{name}: not supported with arrivals.process closed; {fix}" for name, used in checks if used]


class ClosedLoopEngine(SimPyEngine):
    """Runs one replication of a closed-loop scenario on SimPy."""

    name = "simpy"
    closed_loop = True

    def __init__(self, scenario: Scenario):
        problems = closed_loop_refusals(scenario)
        if problems:
            raise CapsimError(problems[0])
        super().__init__(scenario)

    def run(self, think_rng: np.random.Generator, service_rng: np.random.Generator) -> ReplicationTrace:
        return _ClosedRun(self, think_rng, service_rng).result()


class _GrowingQueue(ContiguousQueue):
    """The contiguous queue, filled as requests are sent rather than from a known arrival list.

    Requests enter in the order they were sent (the pre-processing pool is FIFO), so queue
    position == request index; an entry becomes known when its request is sent.
    """

    def __init__(self, capacity: int):
        self.order = np.arange(capacity, dtype=np.int64)
        self.entry_at: list[int] = []
        self.nxt = self.head = self.qlen = self.n = 0
        self.src_count = self.src_fifo = None

    def append(self, entry_ns: int) -> None:
        self.entry_at.append(entry_ns)
        self.n += 1


class _Pool:
    """A FIFO pool of ``workers`` identical workers taking ``service_ns`` each (0 workers: a pure delay)."""

    def __init__(self, service_ns: int, workers: int):
        self.s = service_ns
        self.free = [0] * workers if workers > 0 and service_ns > 0 else None

    def leave(self, t: int) -> int:
        """When a request entering at t (in FIFO order) leaves."""
        if self.free is None:
            return t + self.s
        start = max(t, self.free[0])
        heapq.heapreplace(self.free, start + self.s)
        return start + self.s


class _Urgent(simpy.events.Event):
    """An event that runs before the batch decisions (NORMAL wakes) of its instant, like a completion."""

    def __init__(self, env: simpy.Environment, delay: int, value: int):
        super().__init__(env)
        self._ok = True
        self._value = value
        env.schedule(self, simpy.core.URGENT, delay)


class _ClosedRun(_Run):
    """State of one closed-loop replication; batch decisions and dispatch are the reference engine's."""

    def __init__(self, eng: ClosedLoopEngine, think_rng: np.random.Generator, rng: np.random.Generator):
        sc = eng.sc
        self.eng, self.rng, self.think_rng = eng, rng, think_rng
        self.extras = {}  # the queue-side policies are refused with closed loops: none to report
        a = sc.arrivals
        self.clients = a.concurrency
        self.total = n = sc.run.requests
        self.think_mean_ns = a.think_ms * 1e6
        self.think_const = a.think_distribution == "constant"
        self.thinks = np.empty(0)
        self.think_pos = 0
        self.env = simpy.Environment()
        self.sent = 0
        self.arrival_ns = np.zeros(n, np.int64)
        self.entry = np.zeros(n, np.int64)
        self.client = np.zeros(n, np.int32)
        self.done_ns = np.full(n, -1, np.int64)
        self.status = np.zeros(n, np.int8)
        self.drop_reason = np.zeros(n, np.int8)
        self.drop_t = np.full(n, -1, np.int64)
        self.batch_of = np.full(n, -1, np.int64)
        s = sc.service
        self.pre = _Pool(int(round(s.preprocess.ms * 1e6)), s.preprocess.workers)
        self.post = _Pool(int(round(s.postprocess.ms * 1e6)), s.postprocess.workers)
        self.overhead_ns = int(round(s.overhead_ms * 1e6))

        self.q = _GrowingQueue(n)
        self.intake = Intake(self.q, None, None)
        self.batcher = make_batcher(sc.batching, True)
        N = sc.instances
        self.pool = InstancePool(sc, N)  # devices and the dispatch policy as in the reference engine
        self.idle_since = [0] * N
        self.scaler = None
        self.server_ns = None
        self.busy = 0
        self.wake_pending = INF
        self.b_dispatch: list[int] = []
        self.b_end: list[int] = []
        self.b_size: list[int] = []
        self.b_inst: list[int] = []
        self.b_mark: list[int] = []
        self.draws = np.empty(0)
        self.draw_pos = 0
        self.taken = 0                       # queue positions dispatched so far
        self.running = [(0, 0)] * N          # (first request, size) of each instance's batch

    # -- clients
    def _think(self) -> int:
        if self.think_const:
            return int(round(self.think_mean_ns))
        if self.think_pos >= len(self.thinks):
            self.thinks = self.think_rng.exponential(self.think_mean_ns, _THINK_CHUNK)
            self.think_pos = 0
        z = self.thinks[self.think_pos]
        self.think_pos += 1
        return int(round(z))

    def _schedule_send(self, delay: int, client: int) -> None:
        _Urgent(self.env, delay, client).callbacks.append(self._on_send)

    def _on_send(self, ev) -> None:
        if self.sent >= self.total:
            return
        i, now = self.sent, self.env.now
        self.sent += 1
        self.arrival_ns[i] = now
        self.client[i] = ev.value
        e = self.pre.leave(now)
        self.entry[i] = e
        self.q.append(e)
        # Decide in a NORMAL wake, after every send and completion of the entry instant.
        self._wake_at(e)

    # -- instances
    def _dispatch(self, batch, inst: int, on_device: int, now: int) -> None:
        super()._dispatch(batch, inst, on_device, now)
        self.running[inst] = (self.taken, batch)
        self.taken += batch

    def _on_done(self, ev) -> None:
        inst, now = ev.value, self.env.now
        first, size = self.running[inst]
        for i in range(first, first + size):  # request order: the post pool is FIFO by (end, index)
            d = self.post.leave(now)
            self.done_ns[i] = d
            self._schedule_send(d - now + self.overhead_ns + self._think(), int(self.client[i]))
        super()._on_done(ev)

    # -- run and collect
    def result(self) -> ReplicationTrace:
        for c in range(min(self.clients, self.total)):
            self._schedule_send(self._think(), c)
        self.env.run()
        return self._collect()

    def _collect(self) -> ReplicationTrace:
        n = self.sent
        for name in ("arrival_ns", "entry", "client", "done_ns", "status", "drop_reason", "drop_t", "batch_of"):
            setattr(self, name, getattr(self, name)[:n])
        self.arr = ArrivalStream(self.arrival_ns / NS, self.client, np.zeros(n, np.int64), self.clients)
        tr = super()._collect()
        # The reference collector recomputes the post stage from end times in floating point; the
        # clients already used these integer completion times, so the trace carries them.
        tr.done = self.done_ns * (1.0 / NS)
        tr.latency_ms = (tr.done - tr.arrival) * 1000.0 + self.eng.sc.service.overhead_ms
        tr.extras["closed_loop"] = {"clients": self.clients, "think_ms": self.eng.sc.arrivals.think_ms}
        return tr
