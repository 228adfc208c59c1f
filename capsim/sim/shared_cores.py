"""Pre-processing and batches sharing CPU cores moment to moment (``cpu_sharing.overlap``).

On a CPU server a JPEG decode that runs while a batch computes slows both: the runtime's threads
meet at a barrier after every operator, so one core taken by the decoder stalls the whole batch.
Measured on a 2-core host, resnet18 ran at about half its speed beside a decode and the decode at
about 0.7 of its own. Those slowdowns fall exactly when a queue builds (arrivals bunch up, so
decodes overlap batches), which is what makes the latency tail: a mean slowdown spread over time
predicts too thin a tail.

:class:`SharedCores` holds the jobs running now (one request's pre-processing, or one batch),
each with its remaining work in nanoseconds of its time alone. A batch progresses at 1, or at
``model_speed(b)`` while any pre-processing job runs; a pre-processing job at 1, or while
batches run at the lowest ``preprocess_speed(b)`` of their sizes (a runtime's threads take more
of the cores from a decode beside some batch sizes than others). Whenever a job starts or ends every remaining amount
is brought up to date and the next completion is scheduled again.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

# Work left below this (ns of work alone) counts as done: completions are scheduled on the
# engine's integer-nanosecond clock, so a job may end with a fraction of a nanosecond left.
_DONE_NS = 1.0


class SharedCores:
    """The jobs on the shared cores and their speeds; ``on_done(keys)`` gets the keys that ended
    at one instant (pre-processing jobs are ``("p", request)``, batches ``("b", batch, instance)``)."""

    def __init__(self, env, model_speed: list[float], preprocess_speed: list[float], on_done):
        self.env = env
        self.model_speed = model_speed    # by batch size
        self.pre_speeds = preprocess_speed  # by the size of the batch beside it
        self.on_done = on_done
        self.jobs: dict[tuple, list] = {}  # key -> [work left (ns alone), batch size (0: pre-processing)]
        self.n_pre = 0
        self.n_batch = 0
        self.pre_speed = 1.0  # pre-processing's speed now: 1, or the slowest beside the batches running
        self.last = 0
        self.gen = 0                       # a scheduled completion is stale once a newer one exists

    def _speed(self, b: int) -> float:
        if b:
            return self.model_speed[b] if self.n_pre else 1.0
        return self.pre_speed

    def _advance(self) -> None:
        dt = self.env.now - self.last
        if dt:
            for job in self.jobs.values():
                job[0] -= dt * self._speed(job[1])
        self.last = self.env.now

    def start(self, key: tuple, work_ns: float, batch_size: int = 0) -> None:
        """Start a job now: ``batch_size`` 0 for pre-processing, else a batch of that size."""
        self._advance()
        self.jobs[key] = [float(work_ns), batch_size]
        if batch_size:
            self.n_batch += 1
            self._batches_changed()
        else:
            self.n_pre += 1
        self._schedule()

    def _batches_changed(self) -> None:
        sizes = [b for _, b in self.jobs.values() if b]
        self.pre_speed = min((self.pre_speeds[b] for b in sizes), default=1.0)

    def _schedule(self) -> None:
        self.gen += 1
        if not self.jobs:
            return
        dt = min(max(0.0, w) / self._speed(b) for w, b in self.jobs.values())
        gen = self.gen
        self.env.timeout(math.ceil(dt)).callbacks.append(lambda _ev: self._fire(gen))

    def _fire(self, gen: int) -> None:
        if gen != self.gen:
            return
        self._advance()
        done = sorted(k for k, (w, _) in self.jobs.items() if w < _DONE_NS)
        ended_batch = False
        for k in done:
            if self.jobs.pop(k)[1]:
                self.n_batch -= 1
                ended_batch = True
            else:
                self.n_pre -= 1
        if ended_batch:
            self._batches_changed()
        self._schedule()
        self.on_done(done)


class PreprocessPool:
    """A FIFO pool of ``workers`` pre-processing workers whose work runs on :class:`SharedCores`.

    Every request takes the same work alone, or its own (``work_ns`` per request). All running
    pre-processing jobs share one speed, so with the same work they leave in the order they
    arrived; with their own, a short one can overtake a long one."""

    def __init__(self, cores: SharedCores, workers: int, work_ns, start_ns: np.ndarray, spells=None):
        self.cores = cores
        self.spells = spells  # the machine's slow spells (capsim.sim.spells.SpellWindows), or None
        self.start_ns = start_ns  # per request: when its pre-processing started (filled as it runs)
        self.workers = workers
        self.work_ns = work_ns
        self.waiting: deque = deque()
        self.busy = 0

    def arrive(self, i: int) -> None:
        if self.busy < self.workers:
            self._start(i)
        else:
            self.waiting.append(i)

    def finished(self) -> None:
        """One worker is free: it takes the oldest waiting request."""
        self.busy -= 1
        if self.waiting:
            self._start(self.waiting.popleft())

    def _start(self, i: int) -> None:
        self.busy += 1
        now = self.cores.env.now
        self.start_ns[i] = now
        work = self.work_ns if np.isscalar(self.work_ns) else self.work_ns[i]
        self.cores.start(("p", i), work if self.spells is None else work * self.spells.factor(now))
