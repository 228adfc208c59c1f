"""Engine throughput and memory benchmark for capsim's SimPy engine and its compiled fast engine.

Run from the repository root::

    python benchmarks/bench_engine.py                 # 200,000 requests, best of 3
    python benchmarks/bench_engine.py --requests 50000 --repeat 1 --memory-requests 200000

It prints, measured in this run on this machine:

(a) simulated requests per second of capsim's engine (``capsim.simulate.run_replication``: arrival
    generation, the SimPy run and the per-request trace) on the built-in ``mini-challenge``;
(b) the same figure for a naive SimPy model of the same scenario written below: one SimPy process
    per request, spawned by an arrival generator at the request's arrival time, a
    ``simpy.Resource`` standing for the model instance(s), and Triton-style dynamic batching done
    the natural per-request way (each request appends itself to the batcher's queue, wakes the
    batcher and waits on its own completion event). Both engines are fed the same arrival times
    (the naive generator still waits ``env.timeout(gap)`` per request), so their p50/p95 must agree;
(c) the speed-up over that naive model (target >= 5x) and whether the 150,000 req/s target is met;
(d) the peak memory of simulating 1,000,000 mini-challenge requests in a fresh subprocess (peak
    ``ru_maxrss`` minus the same process's peak after importing everything) against 500 MB;
(e) the compiled fast engine's requests per second on the same run (identical per-request
    latencies asserted), against issue 4's targets: >= 20,000,000 req/s and >= 100x the SimPy engine.

Like the ``capsim`` command, the benchmark first calls ``capsim.allocator.keep_freed_memory()``
(glibc keeps freed arrays for the next run instead of page-faulting fresh memory in each time).

Figures depend on the machine and its load; the ratio to the naive baseline, measured in the same
run, is the portable number.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported late, inside the timed child processes
    import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# numpy, scipy, simpy and capsim are imported inside the functions, after the memory run: on Linux a
# child's ru_maxrss starts at its parent's resident size (it survives fork and exec), so the memory
# subprocess is started while this process is still small. See measure_memory().

SCENARIO = "mini-challenge"
TARGET_RPS = 150_000
TARGET_SPEEDUP = 5.0
TARGET_MB = 500.0
TARGET_FAST_RPS = 20_000_000
TARGET_FAST_RATIO = 100.0


# --------------------------------------------------------------------------- the naive model


def naive_service_seconds(batch_latency_ms: dict[int, float], max_batch: int) -> list[float]:
    """Mean batch time (s) for sizes 0..max_batch: monotone PCHIP through the measured points."""
    from scipy.interpolate import PchipInterpolator

    sizes = sorted(batch_latency_ms)
    ms = [batch_latency_ms[b] for b in sizes]
    if len(sizes) == 1:
        return [float("nan")] + [ms[0] / 1000.0] * max_batch
    f = PchipInterpolator(sizes, ms, extrapolate=False)
    return [float("nan")] + [float(f(b)) / 1000.0 for b in range(1, max_batch + 1)]


def naive_simulate(sc, arrival_times: np.ndarray) -> np.ndarray:
    """Latency (ms) of every request in a per-request SimPy model of ``sc`` (triton batching).

    Supports what mini-challenge uses: triton mode, deterministic service (variability none), no
    contention, unlimited queue, no pre/post stages, a fixed overhead.
    """
    import numpy as np
    import simpy

    b, s = sc.batching, sc.service
    assert b.mode == "triton" and not b.preferred_batch_sizes
    assert s.variability.distribution == "none" and not sc.queue.max_size and not sc.queue.timeout_ms
    assert s.preprocess.ms == 0 and s.postprocess.ms == 0
    B, D = b.max_batch_size, b.max_queue_delay_ms / 1000.0
    service = naive_service_seconds(s.batch_latency_ms, B)
    overhead_s = s.overhead_ms / 1000.0

    env = simpy.Environment()
    instances = simpy.Resource(env, capacity=sc.instances)
    queue: list[tuple[int, float, simpy.Event]] = []  # (request id, enqueue time, completion event)
    latency = np.full(len(arrival_times), np.nan)
    state = {"arrived": env.event()}  # fired on every arrival, replaced after each

    def request(env, i):
        t = env.now
        done = env.event()
        queue.append((i, t, done))
        ev, state["arrived"] = state["arrived"], env.event()
        if not ev.triggered:
            ev.succeed()
        yield done
        latency[i] = (env.now - t + overhead_s) * 1000.0

    def serve(env, slot, batch):
        yield env.timeout(service[len(batch)])
        instances.release(slot)
        for _, _, done in batch:
            done.succeed()

    def batcher(env):
        while True:
            slot = instances.request()
            yield slot  # an idle instance
            while True:  # triton: dispatch when B are queued or the oldest has waited D
                if not queue:
                    yield state["arrived"]
                    continue
                if len(queue) >= B or env.now >= queue[0][1] + D:
                    break
                yield state["arrived"] | env.timeout(queue[0][1] + D - env.now)
            batch = queue[:B]
            del queue[:B]
            env.process(serve(env, slot, batch))

    def arrivals(env):
        prev = 0.0
        for i, t in enumerate(arrival_times.tolist()):
            yield env.timeout(t - prev)
            prev = t
            env.process(request(env, i))

    env.process(arrivals(env))
    env.process(batcher(env))
    env.run()
    return latency


# --------------------------------------------------------------------------- measurements


def best_of(fn, repeat: int) -> tuple[float, object]:
    """Shortest wall time of ``repeat`` calls, and the last call's result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


MEMORY_CHILD = textwrap.dedent("""
    import json, resource, sys
    sys.path.insert(0, {repo!r})
    import numpy, scipy.stats, scipy.interpolate, simpy, yaml
    import capsim, capsim.simulate, capsim.metrics, capsim.analytic, capsim.sim.engine, capsim.arrivals
    from capsim.config import load_scenario
    from capsim.simulate import run_replication, simulate
    from capsim.allocator import keep_freed_memory
    keep_freed_memory()
    sc = load_scenario({scenario!r}, ["run.requests={n}", "run.replications=1"])
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if {mode!r} == "engine":
        run_replication(sc, 0)
    else:
        simulate(sc, engine="simpy")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({{"base_kb": base, "peak_kb": peak}}))
""")


def peak_memory_mb(n: int, mode: str) -> tuple[float, float, float, float]:
    """(after imports, peak, peak - after imports) ru_maxrss in MB of one fresh process simulating n
    requests, and its wall time in seconds."""
    code = MEMORY_CHILD.format(repo=str(REPO), scenario=SCENARIO, n=n, mode=mode)
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"memory subprocess failed:\n{r.stderr}")
    d = json.loads(r.stdout.strip().splitlines()[-1])
    unit = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0  # ru_maxrss: bytes on macOS, KiB on Linux
    base, peak = d["base_kb"] / unit, d["peak_kb"] / unit
    return base, peak, peak - base, time.perf_counter() - t


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=200_000, help="requests per timed run (default 200000)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per engine; the best counts (default 3)")
    p.add_argument("--naive-repeat", type=int, default=None, help="timed runs of the naive model (default --repeat)")
    p.add_argument("--memory-requests", type=int, default=1_000_000, help="requests in the memory run (default 1e6)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    p.add_argument("--memory-both", action="store_true",
                   help="also measure the engine alone (run_replication), not only simulate()")
    args = p.parse_args(argv)
    n = args.requests
    t_start = time.perf_counter()

    # (d) first, while this process is small (see the note at the imports); printed last.
    memory = []
    if not args.no_memory:
        parent_mb = _rss_mb()
        modes = (("engine", "run_replication (engine + trace)"), ("simulate", "simulate() (engine + summary)"))
        for mode, label in modes if args.memory_both else modes[1:]:
            memory.append((label, *peak_memory_mb(args.memory_requests, mode)))

    import numpy as np
    import simpy

    from capsim.allocator import keep_freed_memory
    from capsim.arrivals import generate
    from capsim.config import load_scenario
    from capsim.service import ServiceCurve
    from capsim.sim.engine import SimPyEngine
    from capsim.simulate import replication_seeds, run_replication

    allocator = keep_freed_memory()
    sc = load_scenario(SCENARIO, [f"run.requests={n}"])
    engine = SimPyEngine(sc)
    # The naive model's service times must be capsim's curve.
    ours = naive_service_seconds(sc.service.batch_latency_ms, sc.batching.max_batch_size)
    np.testing.assert_allclose(ours[1:], ServiceCurve(sc.service.batch_latency_ms,
                                                      sc.batching.max_batch_size).seconds[1:], rtol=1e-12)

    print(f"capsim engine benchmark: {SCENARIO}, {n:,} requests per run, best of {args.repeat}, "
          f"python {sys.version.split()[0]}, simpy {simpy.__version__}, numpy {np.__version__}, "
          f"{os.cpu_count()} CPUs, allocator tuned: {allocator}")
    print(f"  scenario: {sc.arrivals.process} {sc.arrivals.rate_rps:g} rps, {sc.batching.mode} batching, max batch "
          f"{sc.batching.max_batch_size}, max queue delay {sc.batching.max_queue_delay_ms:g} ms, {sc.instances} "
          f"instance, warm-up {sc.run.warmup_requests:,}")

    small = load_scenario(SCENARIO, ["run.requests=5000"])
    run_replication(small, 0)  # lazy imports, caches
    naive_simulate(small, generate(small.arrivals, 5000, np.random.default_rng(0)).times)
    t_capsim, trace = best_of(lambda: run_replication(sc, 0, engine), args.repeat)
    arr_ss, _ = replication_seeds(sc.run.seed, 1)[0]
    arrivals = generate(sc.arrivals, n, np.random.default_rng(arr_ss), sc.base_dir)
    assert np.abs(trace.arrival - arrivals.times).max() < 1e-9  # the same stream (capsim keeps nanoseconds)
    t_naive, naive_lat = best_of(lambda: naive_simulate(sc, arrivals.times), args.naive_repeat or args.repeat)

    keep = ~trace.warmup & trace.completed
    cap_lat = trace.latency_ms[keep]
    nv_lat = naive_lat[sc.run.warmup_requests:]
    assert not np.isnan(nv_lat).any(), "the naive model left requests unserved"

    from capsim.sim.fast import FastEngine

    fast = FastEngine(sc)
    run_replication(small, 0, FastEngine(small))  # JIT compile (or load the cache) outside the timing
    t_fast, fast_trace = best_of(lambda: run_replication(sc, 0, fast), max(args.repeat, 5))
    np.testing.assert_array_equal(fast_trace.latency_ms, trace.latency_ms)  # the same requests, to the ns

    rps_c, rps_n, rps_f = n / t_capsim, n / t_naive, n / t_fast
    rows = [("capsim FastEngine (numba)", t_fast, rps_f, fast_trace.latency_ms[keep]),
            ("capsim SimPyEngine", t_capsim, rps_c, cap_lat),
            ("naive SimPy (process/request)", t_naive, rps_n, nv_lat)]
    print()
    print(f"{'engine':32s}{'best s':>9s}{'req/s':>12s}{'vs naive':>10s}{'p50 ms':>9s}{'p95 ms':>9s}{'p99 ms':>9s}")
    for name, t, rps, lat in rows:
        p50, p95, p99 = np.percentile(lat, [50, 95, 99])
        print(f"{name:32s}{t:9.3f}{rps:12,.0f}{rps / rps_n:9.2f}x{p50:9.2f}{p95:9.2f}{p99:9.2f}")
    q = np.array([50, 95, 99])
    diff = np.abs(np.percentile(cap_lat, q) / np.percentile(nv_lat, q) - 1.0)
    agree = bool(diff.max() < 0.03)
    print(f"  p50/p95/p99 agree within {diff.max():.4%} (same arrival times; "
          f"{'OK' if agree else 'MISMATCH: the two models differ'})")

    speedup = rps_c / rps_n
    print(f"  fast engine: identical per-request latencies to the SimPy engine")
    print()
    print(f"speed-up over naive SimPy : {speedup:6.2f}x   target >= {TARGET_SPEEDUP:g}x   "
          f"{'MET' if speedup >= TARGET_SPEEDUP else 'NOT MET'}")
    print(f"capsim engine throughput  : {rps_c:,.0f} req/s   target >= {TARGET_RPS:,} req/s   "
          f"{'MET' if rps_c >= TARGET_RPS else 'NOT MET'} ({rps_c / TARGET_RPS:.2f}x the target)")

    ratio_f = rps_f / rps_c
    print(f"fast engine throughput    : {rps_f:,.0f} req/s   target >= {TARGET_FAST_RPS:,} req/s   "
          f"{'MET' if rps_f >= TARGET_FAST_RPS else 'NOT MET'}")
    print(f"fast engine vs SimPy      : {ratio_f:6.1f}x   target >= {TARGET_FAST_RATIO:g}x   "
          f"{'MET' if ratio_f >= TARGET_FAST_RATIO else 'NOT MET'}")

    if memory:
        print()
        print(f"peak memory, {args.memory_requests:,} {SCENARIO} requests, 1 replication, fresh subprocess "
              f"(ru_maxrss after the run - ru_maxrss after imports; launched from a {parent_mb:.0f} MB parent):")
        print(f"  {'what':36s}{'imports MB':>11s}{'peak MB':>9s}{'run MB':>8s}{'wall s':>8s}  target <= {TARGET_MB:g} MB")
        for label, base, peak, delta, wall in memory:
            print(f"  {label:36s}{base:11.0f}{peak:9.0f}{delta:8.0f}{wall:8.1f}  "
                  f"{'MET' if delta <= TARGET_MB else 'NOT MET'}")
    print(f"\nbenchmark wall time {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
