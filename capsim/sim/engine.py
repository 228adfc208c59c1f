"""The reference engine: a SimPy discrete-event model of batcher, queue and instances.

Time is kept in integer nanoseconds so that equal instants compare equal exactly. Arrivals are
generated up front and admitted lazily: the engine schedules a SimPy event only when a batch
decision can change (an instance finishes, a batch fills, a queue delay runs out), not per
request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import simpy

from capsim.arrivals import ArrivalStream
from capsim.config import Scenario, busy_per_device, max_instances
from capsim import host_cpu
from capsim.service import ServiceCurve, contention_table, empirical_ratios, variability_sampler
from capsim.sim import lanes
from capsim.sim.autoscale import Autoscaler
from capsim.sim.batcher import make_batcher
from capsim.sim.devices import InstancePool
from capsim.sim.network import queue_entry, respond
from capsim.sim.shared_cores import PreprocessPool, SharedCores
from capsim.sim.queue import (
    DROPPED, STALE, STRIDE, Admission, ContiguousQueue, Intake, QueueTimeout, RequestQueue,
)
from capsim.sim.spells import machine_windows
from capsim.sim.stages import fifo_pool, fifo_pool_each, overhead_draws_ms, stage_draws_ns

NS = 1_000_000_000
INF = float("inf")
_DRAW_CHUNK = 4096


@dataclass
class ReplicationTrace:
    """Per-request and per-batch outcome of one replication (times in seconds)."""

    arrival: np.ndarray       # arrival at the service (before pre-processing)
    source: np.ndarray
    entry: np.ndarray         # entry into the batcher's queue (after pre-processing)
    dispatch: np.ndarray      # batch formed / closed (NaN when dropped)
    start: np.ndarray         # service start on an instance
    end: np.ndarray           # service end
    done: np.ndarray          # response leaves the server (after post-processing)
    latency_ms: np.ndarray    # done - arrival + the request's overhead (NaN when dropped)
    formation_ms: np.ndarray  # part of the queue wait spent holding for the batch to fill
    batch_size: np.ndarray    # 0 when dropped
    instance: np.ndarray      # -1 when dropped
    drop_reason: np.ndarray   # index into capsim.sim.queue.DROP_REASONS, 0 = completed
    drop_t: np.ndarray        # when it was dropped (NaN when completed)
    warmup: np.ndarray        # bool: excluded from statistics
    batch_start: np.ndarray   # per batch
    batch_end: np.ndarray
    batch_size_by_batch: np.ndarray
    batch_instance: np.ndarray
    instances: int
    overhead_ms: float        # the mean overhead (service.overhead_ms)
    # Per-policy data of this replication (e.g. each request's priority level, instance counts
    # over time), keyed by policy; empty when the scenario uses none.
    extras: dict = field(default_factory=dict)

    @property
    def completed(self) -> np.ndarray:
        return self.drop_reason == 0


class _Completion(simpy.events.Event):
    """An instance finishing its batch. Scheduled URGENT, so that at one instant every completion
    runs before any batch decision (decision wakes are NORMAL timeouts): the decision then sees
    every instance that is idle at that instant, and the lowest-index one gets the batch."""

    def __init__(self, env: simpy.Environment, delay: int, inst: int):
        super().__init__(env)
        self._ok = True
        self._value = inst
        env.schedule(self, simpy.core.URGENT, delay)


class SimPyEngine:
    """Runs one replication of a scenario on SimPy."""

    name = "simpy"

    def __init__(self, scenario: Scenario):
        self.sc = scenario
        self.curve = ServiceCurve(host_cpu.engine_curve_ms(scenario), scenario.batching.max_batch_size)
        # Python lists: read once per batch on the hot path, where numpy scalars are slow.
        self.mean_ns = (self.curve.seconds * NS).tolist()
        # Indexed by the busy instances on the batch's device (the most there can be: busy_per_device).
        self.contention = contention_table(scenario.service, busy_per_device(scenario)).tolist()
        self.sampler = variability_sampler(scenario.service.variability)
        idle = scenario.service.after_idle
        self.idle_extra_ns, self.idle_tau_ns = idle.extra_ms * 1e6, idle.tau_ms * 1e6
        self.held_ns = round(scenario.service.batch_overhead_ms * 1e6)  # per batch, beyond the model's run
        self.empirical = None
        if scenario.service.variability.distribution == "empirical":
            self.empirical = empirical_ratios(scenario.service.loaded_profile.samples_ms(), self.curve)

    def run(self, arrivals: ArrivalStream, service_rng: np.random.Generator) -> ReplicationTrace:
        return _Run(self, arrivals, service_rng).result()


class _Run:
    """State of one replication (kept apart from the engine so nothing leaks between runs)."""

    shared = False  # cores shared moment to moment (set in __init__; subclasses that set up their own state keep False)
    overhead = None  # each request's own overhead in ms (set in __init__; None: every request takes overhead_ms)
    spells = None    # the machine's slow spells in this run (set in __init__; None: none)

    def __init__(self, eng: SimPyEngine, arr: ArrivalStream, rng: np.random.Generator):
        sc = eng.sc
        self.eng, self.arr, self.rng = eng, arr, rng
        n = len(arr)
        self.env = simpy.Environment()
        self.status = np.zeros(n, np.int8)
        self.drop_reason = np.zeros(n, np.int8)
        self.drop_t = np.full(n, -1, np.int64)
        self.batch_of = np.full(n, -1, np.int64)

        arrival_ns = np.rint(arr.times * NS).astype(np.int64)
        self.arrival_ns = arrival_ns
        stride = sc.queue.stride
        kept = np.ones(n, bool) if stride == 1 else (arr.frame % stride == 0)
        skipped = ~kept
        self.status[skipped] = DROPPED
        self.drop_reason[skipped] = STRIDE
        self.drop_t[skipped] = arrival_ns[skipped]
        order = np.flatnonzero(kept)

        entry = np.full(n, -1, np.int64)
        self.shared = host_cpu.moment_to_moment(sc)
        pre = sc.service.preprocess
        # each request's own overhead: drawn first, so that it is the same stream in every engine
        self.overhead = overhead_draws_ms(sc.service, n, rng)
        # each request's own pre-processing time, from a stream of its own (the service draws stay as they were)
        self.pre_ns = stage_draws_ns(pre, n, rng.spawn(1)[0]) if pre.cv > 0 else None
        if sc.service.slow_spells.every_s or sc.service.speed_swings.cv:
            # a stream of its own, drawn last, so that every other draw stays as it was
            horizon = 2 * int(arrival_ns.max(initial=0)) + 100 * NS   # draining may outlast the arrivals
            self.spells = machine_windows(sc.service, horizon, rng.spawn(1)[0])
        if self.shared:  # pre-processing runs in the event loop, beside the batches: entries come later
            e, server, stale = np.full(len(order), -1, np.int64), None, None
        elif self.pre_ns is not None or (self.spells is not None and pre.ms > 0):  # no network or latest-frame line
            own = self.pre_ns[order] if self.pre_ns is not None else np.full(len(order), round(pre.ms * 1e6))
            e, server, stale = fifo_pool_each(arrival_ns[order], own, pre.workers, self.spells), None, None
            if pre.workers != 1:  # a short decode overtakes a long one: the queue sees them as they finish
                by_entry = np.argsort(e, kind="stable")
                order, e = order[by_entry], e[by_entry]
        else:
            e, server, stale = queue_entry(sc, arrival_ns[order], arr.source[order], arr.n_sources)  # network, preprocess
        self.server_ns = None
        if server is not None:
            self.server_ns = np.full(n, -1, np.int64)
            self.server_ns[order] = server
        if stale is not None:  # superseded before pre-processing: dropped, never queued
            gone = stale >= 0
            idx = order[gone]
            self.status[idx] = DROPPED
            self.drop_reason[idx] = STALE
            self.drop_t[idx] = stale[gone]
            order, e = order[~gone], e[~gone]
        entry[order] = e
        self.entry = entry

        self.extras = {}
        if lanes.uses_queue_policies(sc):  # priority lanes, deadlines, adaptive stride
            self.q, self.intake, self.batcher, self.extras = lanes.build(
                sc, arr, order, entry, arrival_ns, self.status, self.drop_reason, self.drop_t)
        else:
            qc = sc.queue
            per_source = qc.per_source_max_size > 0
            admission = Admission(qc.max_size, qc.per_source_max_size, qc.on_full) \
                if (qc.max_size or per_source) else None
            timeout = QueueTimeout(int(round(qc.timeout_ms * 1e6))) if qc.timeout_ms > 0 else None
            queue_cls = ContiguousQueue if admission is None and timeout is None else RequestQueue
            self.q = queue_cls(order, entry, arr.source, arr.n_sources, self.status, self.drop_reason,
                               self.drop_t, track_sources=per_source)
            self.intake = Intake(self.q, admission, timeout)

            self.batcher = make_batcher(sc.batching, self.intake.simple)
        if self.shared:
            self._share_cores(order)

        N = sc.instances
        self.pool = InstancePool(sc, N)  # idle instances, the dispatch policy, busy per device
        self.idle_since = [0] * max_instances(sc)
        self.scaler = Autoscaler(sc.autoscale, self, N) if sc.autoscale is not None else None
        self.busy = 0
        self.wake_pending = INF
        # Per-batch records, appended as batches start.
        self.b_dispatch: list[int] = []
        self.b_end: list[int] = []
        self.b_size: list[int] = []
        self.b_inst: list[int] = []
        self.b_mark: list[int] = []  # when the instance became idle (triton) / the batch closed (timer)
        self.draws = np.empty(0)
        self.draw_pos = 0

    def _share_cores(self, order: np.ndarray) -> None:
        """Set up moment-to-moment sharing: every entry time is unknown until its pre-processing ends."""
        sc = self.eng.sc
        self.q.entry_at = [INF] * len(order)
        # queue positions are filled as pre-processing ends, which with several workers and each
        # request's own time need not be the order they arrived in (set in _on_shared_done)
        self.q.order = order.copy()
        ov = sc.service.cpu_sharing.overlap
        speeds = [1.0] + [host_cpu.log_interp(ov.model_speed, b) for b in range(1, sc.batching.max_batch_size + 1)]
        pre_speeds = [1.0] + [host_cpu.preprocess_speed(ov, b) for b in range(1, sc.batching.max_batch_size + 1)]
        self.cores = SharedCores(self.env, speeds, pre_speeds, self._on_shared_done)
        pre = sc.service.preprocess
        self.pre_start = np.full(len(self.arrival_ns), -1, np.int64)
        work = pre.ms * 1e6 if self.pre_ns is None else self.pre_ns.astype(np.float64)
        self.pre_pool = PreprocessPool(self.cores, pre.workers, work, self.pre_start, self.spells)
        self.pre_order = order
        self.pre_next = 0      # next arrival (position in order) not yet at the pool
        self.entered = 0       # queue positions whose pre-processing has ended

    def _next_arrival(self) -> None:
        p = self.pre_next
        if p < len(self.pre_order):
            delay = int(self.arrival_ns[self.pre_order[p]]) - self.env.now
            self.env.timeout(delay).callbacks.append(self._on_arrival)

    def _on_arrival(self, _ev) -> None:
        # every arrival due at this instant joins the pool, in order
        order, now = self.pre_order, self.env.now
        while self.pre_next < len(order) and self.arrival_ns[order[self.pre_next]] <= now:
            self.pre_pool.arrive(int(order[self.pre_next]))
            self.pre_next += 1
        self._next_arrival()

    def _on_shared_done(self, keys: list) -> None:
        now = self.env.now
        for key in keys:
            if key[0] == "p":  # pre-processed: the request enters the queue now, at the next position
                i = key[1]
                self.entry[i] = now
                self.q.order[self.entered] = i
                self.q.entry_at[self.entered] = now
                self.entered += 1
                self.pre_pool.finished()
            else:
                self.b_end[key[1]] = now
                self._finished(key[2])
        self._decide()

    # -- SimPy callbacks
    def _wake_at(self, t: float) -> None:
        if t < self.wake_pending and t != INF:
            self.wake_pending = t
            ev = self.env.timeout(int(t) - self.env.now)
            ev.callbacks.append(self._on_wake)

    def _on_wake(self, _ev) -> None:
        if self.env.now >= self.wake_pending:
            self.wake_pending = INF
        self._decide()

    def _finished(self, inst: int) -> None:
        """``inst`` finished its batch: it is idle again (or retired)."""
        self.busy -= 1
        if self.pool.release(inst):
            self.idle_since[inst] = self.env.now
        else:
            self.scaler.gone(inst, self.env.now)

    def _on_done(self, ev) -> None:
        self._finished(ev.value)
        # When another event falls on this very instant (a second instance finishing, or a wake),
        # decide in a NORMAL wake, which runs after every (URGENT) completion of this instant.
        if self.env.peek() == self.env.now:
            self._wake_at(self.env.now)
        else:
            self._decide()

    # -- decisions
    def _decide(self) -> None:
        now = self.env.now
        batcher, q = self.batcher, self.q
        batcher.advance(self.intake, now)
        pool = self.pool
        while pool.idle:
            idx = batcher.ready(q, now)
            if idx is None:
                break
            self._dispatch(idx, *pool.take(), now)
        if pool.idle and (q.qlen or q.nxt < q.n):
            self._wake_at(batcher.next_look(q, now))

    def _multiplier(self) -> float:
        if self.eng.sampler is None:
            return 1.0
        if self.draw_pos >= len(self.draws):
            self.draws = self.eng.sampler(self.rng, _DRAW_CHUNK)
            self.draw_pos = 0
        m = self.draws[self.draw_pos]
        self.draw_pos += 1
        return float(m)

    def drained(self) -> bool:
        """Every request has been admitted and served or dropped: nothing is left to do."""
        q = self.q
        return q.nxt >= q.n and not q.qlen and not self.busy

    def _dispatch(self, batch: np.ndarray | int, inst: int, on_device: int, now: int) -> None:
        """Start a batch (request indices, or just its size when the queue is contiguous) on ``inst``,
        whose device now has ``on_device`` busy instances (this one included)."""
        if type(batch) is int:
            b = batch
        else:
            b = len(batch)
            self.batch_of[batch] = len(self.b_end)
        self.busy += 1
        eng = self.eng
        if eng.sampler is None:
            dt = round(eng.mean_ns[b] * eng.contention[on_device])
        else:
            m = self._multiplier()
            if eng.empirical is not None:  # m is a uniform draw: pick a measured sample of this size
                ratios = eng.empirical[b]
                m = ratios[int(m * len(ratios))]
            dt = round(eng.mean_ns[b] * m * eng.contention[on_device])
        if eng.idle_extra_ns:  # the instance's threads and caches went cold while it waited
            dt += round(eng.idle_extra_ns * (1.0 - math.exp(-(now - self.idle_since[inst]) / eng.idle_tau_ns)))
        if self.spells is not None:  # the machine's speed now: a slow spell or a swing
            dt = round(dt * self.spells.factor(now))
        work = dt  # the model's run; the instance is held the batch overhead besides
        dt += eng.held_ns
        self.b_dispatch.append(now)
        self.b_end.append(-1 if self.shared else now + dt)  # shared cores: known when it ends
        self.b_size.append(b)
        self.b_inst.append(inst)
        if self.batcher.mode == "timer":
            self.b_mark.append(self.batcher.close_times[-1])
        else:
            self.b_mark.append(self.idle_since[inst])
        if self.shared:  # its work alone; the speed it runs at changes as pre-processing comes and goes
            key = ("b", len(self.b_end) - 1, inst)
            if eng.held_ns:  # the hand-over to the instance's thread comes first and takes no share of the cores
                self.env.timeout(eng.held_ns).callbacks.append(lambda _ev: self.cores.start(key, work, b))
            else:
                self.cores.start(key, work, b)
            return
        if self.scaler is not None:
            self.scaler.batch(inst, now, now + dt)
        _Completion(self.env, dt, inst).callbacks.append(self._on_done)

    # -- run and collect
    def result(self) -> ReplicationTrace:
        if self.shared:
            self._next_arrival()
        elif self.q.n:
            self._wake_at(self.q.next_entry(1))
        if self.scaler is not None:
            self.scaler.start()
        self.env.run()
        return self._collect()

    def _collect(self) -> ReplicationTrace:
        sc, arr = self.eng.sc, self.arr
        n = len(arr)
        s = 1.0 / NS
        bid = self.batch_of
        if self.q.contiguous:
            # Batches took consecutive queue positions, in dispatch order.
            sizes = np.asarray(self.b_size, np.int64)
            bid[self.q.order[: sizes.sum()]] = np.repeat(np.arange(len(sizes)), sizes)
        served = bid >= 0
        b_dispatch = np.asarray(self.b_dispatch, np.int64)
        b_end = np.asarray(self.b_end, np.int64)
        b_size = np.asarray(self.b_size, np.int64)
        b_inst = np.asarray(self.b_inst, np.int64)
        b_mark = np.asarray(self.b_mark, np.int64)
        sb = bid[served]

        nan = np.full(n, np.nan)
        dispatch, start, end, done = nan.copy(), nan.copy(), nan.copy(), nan.copy()
        start[served] = b_dispatch[sb] * s
        end[served] = b_end[sb] * s
        if sc.batching.mode == "timer":
            dispatch[served] = b_mark[sb] * s      # the batch closed
            formation = (b_mark[sb] - self.entry[served]) * s
        else:
            dispatch[served] = start[served]
            formation = (b_dispatch[sb] - np.maximum(self.entry[served], b_mark[sb])) * s
        formation_ms = nan.copy()
        formation_ms[served] = formation * 1000.0

        post = sc.service.postprocess
        served_idx = np.flatnonzero(served)
        if len(served_idx):
            fifo = served_idx[np.lexsort((served_idx, end[served_idx]))]
            done[fifo] = fifo_pool(end[fifo], post.ms / 1000.0, post.workers)
        arrival = self.arrival_ns * s  # the engine's own (nanosecond) clock
        extras = {}
        if self.server_ns is not None:
            extras["network"] = respond(sc, done, self.server_ns, arrival)
        if self.scaler is not None:
            extras["autoscale"] = self.scaler.extras()
        if self.shared:  # the pre-processing time itself varies with what ran beside it
            extras["preprocess_start"] = np.where(self.pre_start >= 0, self.pre_start * s, np.nan)
        latency = (done - arrival) * 1000.0 + (sc.service.overhead_ms if self.overhead is None else self.overhead)

        batch_size = np.zeros(n, np.int64)
        batch_size[served] = b_size[sb]
        instance = np.full(n, -1, np.int64)
        instance[served] = b_inst[sb]
        entry = np.where(self.entry >= 0, self.entry * s, np.nan)
        drop_t = np.where(self.drop_t >= 0, self.drop_t * s, np.nan)
        warm = np.zeros(n, bool)
        warm[: min(sc.run.warmup_requests, n)] = True
        return ReplicationTrace(
            arrival=arrival, source=arr.source, entry=entry, dispatch=dispatch, start=start, end=end, done=done,
            latency_ms=latency, formation_ms=formation_ms, batch_size=batch_size, instance=instance,
            drop_reason=self.drop_reason.copy(), drop_t=drop_t, warmup=warm,
            batch_start=b_dispatch * s, batch_end=b_end * s, batch_size_by_batch=b_size, batch_instance=b_inst,
            instances=sc.instances, overhead_ms=sc.service.overhead_ms, extras={**self._extras(), **extras},
        )

    def _extras(self) -> dict:
        out = dict(self.extras)
        if "degrade" in out:
            out["degrade"] = lanes.stride_extras(out["degrade"], self.arr.n_sources)
        return out
