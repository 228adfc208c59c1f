"""What each production policy costs in simulation speed, as ratios to the plain SimPy run.

Run from the repository root::

    python benchmarks/bench_policies.py            # 100,000 requests per run, best of 3
    python benchmarks/bench_policies.py --requests 20000

Every row is the mini-challenge scenario (120 rps, B=8, D=2 ms) with one policy switched on,
one replication of ``--requests`` requests (arrival generation, the engine, no summary), on the
engine ``--engine auto`` picks for it. The baseline rows (the plain scenario on the SimPy engine
and on the fast engine) are measured in the same run, so the ratios compare like with like on
this machine whatever its load.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from capsim.allocator import keep_freed_memory  # noqa: E402
from capsim.config import load_scenario  # noqa: E402
from capsim.simulate import make_engine, run_replication  # noqa: E402

# (label, --set overrides); mini-challenge's curve has batch sizes up to 16.
CASES = [
    ("priority, 2 lanes (20/80)", ["priority.levels=[{share: 0.2}, {share: 0.8, max_size: 64}]"]),
    ("deadline 150 ms", ["queue.deadline_ms=150"]),
    ("adaptive stride, 6 cameras", ["arrivals.rate_rps=null", "arrivals.process=streams",
                                    "arrivals.streams=[{count: 6, fps: 20}]", "queue.per_source_max_size=2",
                                    "queue.on_full=drop_oldest", "queue.degrade={threshold: 1, max_stride: 3}"]),
    ("devices 2 x 2, round robin", ["devices.count=2", "devices.instances_per_device=2", "dispatch=round_robin",
                                    "arrivals.rate_rps=300"]),
    ("autoscale 1..4, 5 s window", ["autoscale.min_instances=1", "autoscale.max_instances=4",
                                    "autoscale.window_s=5", "autoscale.warmup_s=2", "arrivals.rate_rps=200"]),
    ("network 1 Gbit/s, jpeg", ["network.bandwidth_mbps=1000", "network.payload=jpeg"]),
    ("rate schedule 60/150 rps", ["arrivals.rate_rps=null",
                                  "arrivals.rate_schedule={steps: [{at_s: 0, rate_rps: 60}, "
                                  "{at_s: 30, rate_rps: 150}], period_s: 60}"]),
    ("closed loop, 16 clients", ["arrivals.rate_rps=null", "arrivals.process=closed", "arrivals.concurrency=16",
                                 "arrivals.think_ms=50"]),
]


def rate(overrides: list[str], requests: int, engine: str, repeats: int) -> tuple[float, str]:
    """Requests per second of one replication (best of ``repeats``) and the engine that ran it."""
    sc = load_scenario("mini-challenge", [f"run.requests={requests}", "run.warmup_requests=0",
                                          "run.replications=1", *overrides])
    eng = make_engine(sc, engine)
    run_replication(sc, 0, eng)  # compile / warm caches outside the timing
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        run_replication(sc, 0, eng)
        best = min(best, time.perf_counter() - t)
    return requests / best, type(eng).__name__


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    keep_freed_memory()
    print(f"capsim policy benchmark: python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"{args.requests:,} requests per run, best of {args.repeats}")
    simpy_base, _ = rate([], args.requests, "simpy", args.repeats)
    fast_base, _ = rate([], args.requests, "fast", args.repeats)
    print(f"{'scenario':34s} {'engine':18s} {'req/s':>12s} {'vs SimPy':>9s} {'vs fast':>8s}")
    print(f"{'plain (baseline)':34s} {'SimPyEngine':18s} {simpy_base:12,.0f} {1.0:9.2f} {simpy_base / fast_base:8.3f}")
    print(f"{'plain (baseline)':34s} {'FastEngine':18s} {fast_base:12,.0f} {fast_base / simpy_base:9.2f} {1.0:8.3f}")
    for label, overrides in CASES:
        r, name = rate(overrides, args.requests, "auto", args.repeats)
        print(f"{label:34s} {name:18s} {r:12,.0f} {r / simpy_base:9.2f} {r / fast_base:8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
