"""Autoscaling: a periodic check of the serving instances' utilization that adds or retires one.

At the end of every window (t = W, 2W, ...; W = ``window_s``) the utilization of that window is
busy instance-time / serving instance-time, both measured inside the window (with a constant
count that is busy / (serving instances x W)). A batch counts as busy time in every window it
overlaps. Then:

- above ``scale_up_utilization``, no start pending and fewer than ``max_instances`` instances:
  start one instance (the lowest free index, so with devices new instances fill devices in
  order). It is *provisioning* for ``warmup_s`` (cold start: it neither serves nor counts as
  serving capacity) and then serves. At most one start is pending at a time: while one
  provisions, further scale-up decisions are skipped (the next window sees its effect first).
- below ``scale_down_utilization`` with more than ``min_instances`` serving (not counting one
  already retiring): retire one, the highest-index idle serving instance; if none is idle, the
  busy one that finishes first (ties: lowest index), which leaves when its batch ends and counts
  as serving until then.

Contention stays a per-device table sized for the most instances that can be busy on a device
(``busy_per_device``): a changing count only changes how many are busy, never the table.
The run's reported utilization is busy time / serving instance-time (provisioning excluded).
"""

from __future__ import annotations

import numpy as np

from capsim.config import Autoscale

NS = 1_000_000_000


class Autoscaler:
    """Decides, window by window, to start or retire an instance; records what it did.

    ``run`` is the engine's replication state; it gives the pool (``run.pool``), the clock
    (``run.env``), ``run._wake_at`` (to let a newly serving instance take queued work) and
    ``run.drained()`` (nothing left to serve: the periodic check stops).
    """

    def __init__(self, cfg: Autoscale, run, instances: int):
        self.cfg, self.run = cfg, run
        self.W = int(round(cfg.window_s * NS))
        self.warm = int(round(cfg.warmup_s * NS))
        self.serving: set[int] = set(range(instances))
        self.pending: int | None = None
        self.busy_end: dict[int, int] = {}      # instance -> end of its running batch
        self.busy_win: dict[int, int] = {}      # window index -> busy ns inside it
        self.cap_acc = 0                        # serving instance-ns since the window began
        self.cap_since = 0
        self.series: list[tuple[int, int, int]] = [(0, instances, 0)]  # (t, serving, provisioning)
        self.events: list[tuple[int, str, int]] = []                  # (t, action, instance)
        self.cold: list[tuple[int, int]] = []                         # provisioning intervals

    def start(self) -> None:
        self.run.env.process(self._loop())

    # -- engine hooks
    def batch(self, inst: int, start: int, end: int) -> None:
        """A batch runs on ``inst`` over [start, end): its busy time goes to the windows it overlaps."""
        self.busy_end[inst] = end
        W = self.W
        k = start // W
        while k * W < end:
            lo, hi = max(start, k * W), min(end, (k + 1) * W)
            if hi > lo:
                self.busy_win[k] = self.busy_win.get(k, 0) + hi - lo
            k += 1

    def gone(self, inst: int, now: int) -> None:
        """A retiring instance finished its last batch and left."""
        self._count(now)
        self.serving.discard(inst)
        self.events.append((now, "retired", inst))
        self._record(now)

    # -- the periodic check
    def _loop(self):
        env = self.run.env
        k = 0
        while True:
            yield env.timeout(self.W)
            now = env.now
            busy = self.busy_win.pop(k, 0)
            k += 1
            self._count(now)
            cap, self.cap_acc = self.cap_acc, 0
            u = busy / cap if cap else 0.0
            self._decide(u, now)
            if self.run.drained():
                return

    def _decide(self, u: float, now: int) -> None:
        cfg, pool = self.cfg, self.run.pool
        if u > cfg.scale_up_utilization and self.pending is None and len(self.serving) < cfg.max_instances:
            inst = min(set(range(len(self.serving) + 1)) - self.serving)
            self.pending = inst
            self.cold.append((now, now + self.warm))
            self.events.append((now, "start", inst))
            self._record(now)
            self.run.env.timeout(self.warm).callbacks.append(self._ready)
        elif u < cfg.scale_down_utilization and len(self.serving) - len(pool.retiring) > cfg.min_instances:
            idle = [i for i in pool.idle if i in self.serving]
            if idle:
                inst = max(idle)
                pool.chooser.remove(inst)
                self._count(now)
                self.serving.discard(inst)
                self.events.append((now, "retired", inst))
                self._record(now)
            else:
                inst = min((self.busy_end[i], i) for i in self.serving if i not in pool.retiring)[1]
                pool.retiring.add(inst)
                self.events.append((now, "retire", inst))

    def _ready(self, _ev) -> None:
        now, inst = self.run.env.now, self.pending
        self._count(now)
        self.pending = None
        self.serving.add(inst)
        self.run.pool.chooser.add(inst)
        self.run.idle_since[inst] = now
        self.events.append((now, "ready", inst))
        self._record(now)
        self.run._wake_at(now)  # a decision after this instant's completions: queued work may start

    def _count(self, now: int) -> None:
        self.cap_acc += len(self.serving) * (now - self.cap_since)
        self.cap_since = now

    def _record(self, now: int) -> None:
        self.series.append((now, len(self.serving), 0 if self.pending is None else 1))

    def extras(self) -> dict:
        """Plain data for ReplicationTrace.extras["autoscale"] (times in seconds)."""
        s = 1.0 / NS
        return {"t": [t * s for t, _, _ in self.series], "serving": [a for _, a, _ in self.series],
                "provisioning": [p for _, _, p in self.series],
                "events": [[t * s, action, inst] for t, action, inst in self.events],
                "cold": [[a * s, b * s] for a, b in self.cold]}


def serving_seconds(tr, t0: float, t1: float) -> float:
    """Serving instance-seconds in [t0, t1]: instances x span, or the autoscaled count's integral."""
    ex = tr.extras.get("autoscale")
    if ex is None:
        return tr.instances * (t1 - t0)
    t = np.append(np.asarray(ex["t"], float), np.inf)
    lo, hi = np.clip(t[:-1], t0, t1), np.clip(t[1:], t0, t1)
    return float(np.sum(np.asarray(ex["serving"], float) * (hi - lo)))


def in_cold_start(tr) -> np.ndarray:
    """Per request: it arrived while an instance was provisioning."""
    out = np.zeros(len(tr.arrival), bool)
    for a, b in tr.extras["autoscale"]["cold"]:
        out |= (tr.arrival >= a) & (tr.arrival < b)
    return out


def autoscale_summary(sc, traces: list) -> dict:
    """Instance counts over time and scale events (first replication), and the cold-start cost:
    p95 latency of requests that arrived while an instance was provisioning vs the rest (all
    replications, measured completed requests)."""
    ex = traces[0].extras["autoscale"]
    cold, rest = [], []
    for tr in traces:
        ok = ~tr.warmup & tr.completed
        c = in_cold_start(tr)
        cold.append(tr.latency_ms[ok & c])
        rest.append(tr.latency_ms[ok & ~c])
    cold_l, rest_l = np.concatenate(cold), np.concatenate(rest)

    def p95(x):
        return float(np.percentile(x, 95)) if len(x) else None

    return {"serving": {"t": ex["t"], "count": ex["serving"]},
            "provisioning": {"t": ex["t"], "count": ex["provisioning"]},
            "events": ex["events"],
            "cold_start": {"p95_ms_while_provisioning": p95(cold_l), "p95_ms_otherwise": p95(rest_l),
                           "requests_while_provisioning": int(len(cold_l)), "requests_otherwise": int(len(rest_l))},
            "scale_ups": sum(1 for e in ex["events"] if e[1] == "start"),
            "scale_downs": sum(1 for e in ex["events"] if e[1] == "retired")}
