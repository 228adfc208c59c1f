"""``capsim serve --autoscale-max``: the simulator's autoscaling rule (capsim/sim/autoscale.py) on live instances.

At the end of every window (t0 + W, t0 + 2W, ... on the server clock) the window's utilization is
busy instance-time / serving instance-time, both measured since the previous check (a batch counts
as busy time in every window it overlaps; with a constant count it is busy / (serving x W)). Then:

- above ``up``, no start pending and fewer than ``max`` instances: start one, the lowest index that
  is not serving. It is *provisioning* until its model session is loaded and has run a first
  warm-up batch (the real cold start); only then the batcher may dispatch to it. At most one start
  is pending: while one provisions, further scale-up decisions are skipped.
- below ``down`` with more than ``min`` serving (not counting retirements already owed): retire the
  highest-index idle serving instance at once; if none is idle, the first of the instances busy at
  the decision to finish its batch retires when that batch ends (it counts as serving until then).

A plain state machine with an explicit clock, like :class:`~capsim.validate.batching.ServerBatcher`:
the server feeds it real time, the tests a fake clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

START, READY, RETIRE = "start", "ready", "retire"


@dataclass
class ScaleEvent:
    """One scale event: ``t`` on the server clock, the instance, and a one-line reason."""

    t: float
    action: str
    instance: int
    detail: str = ""


@dataclass
class ServerAutoscaler:
    instances: int                    # the starting count (instances 0 .. instances-1 serve)
    min_instances: int
    max_instances: int
    up: float                         # scale-up utilization
    down: float                       # scale-down utilization
    window: float                     # in the clock's unit
    t0: float = 0.0                   # the clock at the start: checks at t0 + W, t0 + 2W, ...
    events: list[ScaleEvent] = field(default_factory=list)

    def __post_init__(self):
        self.serving: set[int] = set(range(self.instances))
        self.pending: int | None = None          # the instance provisioning, if any
        self.pending_since = 0.0
        self.owed: list[set[int]] = []           # per owed retirement: the instances that may take it
        self.running: dict[int, float] = {}      # instance -> start of its batch's not-yet-counted part
        self.busy = 0.0                          # busy instance-time since the last check
        self.cap = 0.0                           # serving instance-time since the last check
        self.since = self.t0
        self.checks = 0
        self.last_utilization: float | None = None
        self.last_cold_start: float | None = None

    @property
    def next_check(self) -> float:
        return self.t0 + (self.checks + 1) * self.window

    # -- the batches

    def batch_start(self, instance: int, now: float) -> None:
        self.running[instance] = now

    def batch_end(self, instance: int, now: float) -> bool:
        """``instance`` finished its batch; True when it retires now (do not give it back to the batcher)."""
        self.busy += now - self.running.pop(instance, now)
        for k, cands in enumerate(self.owed):
            if instance in cands:
                del self.owed[k]
                for c in self.owed:
                    c.discard(instance)
                self._leave(instance, now, "finished its batch")
                return True
        return False

    # -- the periodic check

    def check(self, now: float, idle) -> tuple[str, int] | None:
        """The end-of-window decision at ``now``; ``idle``: the instances idle in the batcher.
        Returns (START, instance) to load, (RETIRE, instance) retired at once, or None."""
        self.checks += 1
        for i in self.running:  # running batches: the part inside this window is busy time
            self.busy += now - self.running[i]
            self.running[i] = now
        self._count(now)
        u = self.busy / self.cap if self.cap > 0 else 0.0
        self.busy = self.cap = 0.0
        self.last_utilization = u
        if u > self.up and self.pending is None and len(self.serving) < self.max_instances:
            inst = min(set(range(len(self.serving) + 1)) - self.serving)
            self.pending, self.pending_since = inst, now
            self.events.append(ScaleEvent(now, START, inst, f"utilization {u:.2f} > {self.up:g}"))
            return START, inst
        if u < self.down and len(self.serving) - len(self.owed) > self.min_instances:
            owed = set().union(*self.owed) if self.owed else set()
            idle = [i for i in idle if i in self.serving and i not in owed]
            if idle:
                inst = max(idle)
                self._leave(inst, now, f"utilization {u:.2f} < {self.down:g}; idle")
                return RETIRE, inst
            cands = {i for i in self.serving if i not in owed}
            self.owed.append(cands)
        return None

    def ready(self, instance: int, now: float) -> None:
        """The pending instance finished its cold start: it serves from now."""
        self._count(now)
        self.pending = None
        self.serving.add(instance)
        self.last_cold_start = now - self.pending_since
        self.events.append(ScaleEvent(now, READY, instance, f"cold start {self.last_cold_start:.3f} s"))

    def failed(self, instance: int, now: float, reason: str) -> None:
        """The pending start could not load its model: nothing serves from it."""
        self.pending = None
        self.events.append(ScaleEvent(now, "failed", instance, reason))

    def _leave(self, instance: int, now: float, why: str) -> None:
        self._count(now)
        self.serving.discard(instance)
        self.events.append(ScaleEvent(now, RETIRE, instance, why))

    def _count(self, now: float) -> None:
        self.cap += len(self.serving) * (now - self.since)
        self.since = now
