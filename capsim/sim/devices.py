"""Instances on devices: which idle instance gets the next batch, and contention per device.

Instance ``i`` lives on device ``i // K`` (K = instances per device; without a ``devices``
section every instance shares one device). A batch's slowdown factor is the contention table's
value for the number of busy instances on *its* device when it starts, itself included.

Dispatch policies (``Scenario.dispatch``), each a small class that keeps the idle instances and
picks one:

- ``lowest_index``: the idle instance with the lowest index (design.md's rule, the default);
- ``round_robin``: the idle instance that comes next, cyclically, after the last one dispatched
  to (the first batch goes to the lowest idle index);
- ``least_loaded``: an idle instance on the device with the fewest busy instances; ties go to the
  lowest index.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right, insort

import numpy as np

from capsim.config import Scenario, busy_per_device


class LowestIndex:
    """Idle instances in a heap: the lowest index first."""

    def __init__(self):
        self.idle: list[int] = []

    def add(self, inst: int) -> None:
        heapq.heappush(self.idle, inst)

    def remove(self, inst: int) -> None:
        self.idle.remove(inst)
        heapq.heapify(self.idle)

    def pick(self, pool: InstancePool) -> int:
        return heapq.heappop(self.idle)


class RoundRobin:
    """Idle instances sorted; picks the first one after the last instance dispatched to, wrapping."""

    def __init__(self):
        self.idle: list[int] = []
        self.last = -1

    def add(self, inst: int) -> None:
        insort(self.idle, inst)

    def remove(self, inst: int) -> None:
        self.idle.remove(inst)

    def pick(self, pool: InstancePool) -> int:
        k = bisect_right(self.idle, self.last)
        inst = self.idle.pop(k if k < len(self.idle) else 0)
        self.last = inst
        return inst


class LeastLoaded:
    """Picks an idle instance on the device with the fewest busy instances (ties: lowest index)."""

    def __init__(self):
        self.idle: list[int] = []

    def add(self, inst: int) -> None:
        insort(self.idle, inst)

    def remove(self, inst: int) -> None:
        self.idle.remove(inst)

    def pick(self, pool: InstancePool) -> int:
        busy, K = pool.busy_on, pool.per_device
        best = min(range(len(self.idle)), key=lambda j: (busy[self.idle[j] // K], self.idle[j]))
        return self.idle.pop(best)


POLICIES = {"lowest_index": LowestIndex, "round_robin": RoundRobin, "least_loaded": LeastLoaded}


class InstancePool:
    """The instances that can serve: which are idle, and how many are busy on each device.

    ``retiring`` instances (autoscaling) finish their batch and then leave instead of going idle.
    """

    def __init__(self, sc: Scenario, instances: int):
        self.per_device = busy_per_device(sc)  # K; without devices every instance is on device 0
        devices = sc.devices.count if sc.devices is not None else 1
        self.busy_on = [0] * devices
        self.chooser = POLICIES[sc.dispatch]()
        self.retiring: set[int] = set()
        for i in range(instances):
            self.chooser.add(i)

    @property
    def idle(self) -> list[int]:
        return self.chooser.idle

    def take(self) -> tuple[int, int]:
        """Pick an idle instance for a batch; returns it and the number now busy on its device."""
        inst = self.chooser.pick(self)
        d = inst // self.per_device
        self.busy_on[d] += 1
        return inst, self.busy_on[d]

    def release(self, inst: int) -> bool:
        """The instance finished its batch: back to idle (True), or gone when it was retiring (False)."""
        self.busy_on[inst // self.per_device] -= 1
        if inst in self.retiring:
            self.retiring.discard(inst)
            return False
        self.chooser.add(inst)
        return True


def device_summary(sc: Scenario, traces: list) -> dict:
    """Per-device utilization (busy instance-time / (instances on it x window)) and batch counts
    over the measurement window, averaged over replications."""
    K, G = sc.devices.instances_per_device, sc.devices.count
    util = np.zeros(G)
    batches = np.zeros(G)
    for tr in traces:
        measured = tr.arrival[~tr.warmup]
        t0, t1 = float(measured[0]), float(measured[-1])
        dev = tr.batch_instance // K
        busy = np.clip(np.minimum(tr.batch_end, t1) - np.maximum(tr.batch_start, t0), 0.0, None)
        util += np.bincount(dev, weights=busy, minlength=G)[:G] / (K * max(t1 - t0, 1e-12))
        batches += np.bincount(dev[tr.batch_start >= t0], minlength=G)[:G]
    n = max(len(traces), 1)
    return {"count": G, "instances_per_device": K,
            "utilization": (util / n).tolist(), "batches": (batches / n).tolist()}
