"""Wall time of the planner and of a big sweep, as users run them (the ``capsim`` command).

Run from the repository root::

    python benchmarks/bench_plan_sweep.py            # plan x3, then the 2,400-point sweep
    python benchmarks/bench_plan_sweep.py --quick    # a 240-point sweep instead

It prints, measured in this run on this machine:

(a) ``capsim plan mini-challenge``: wall time of the whole command (start-up, search, full-length
    verdict run, max-rate bisection), best and median of 3, against issue 4's target of 3 s;
(b) ``capsim sweep mini-challenge`` over 240 configs (max batch 1,2,4,8 x max delay 0,2,5,10,20 x
    instances 1-4 x queue cap 0,32,128) x 10 rates (40..220 rps) with 100,000 requests per point
    (one replication each), on the local process pool over all cores: wall time against the 60 s
    target, points per second, and simulated requests per second;
(c) the same sweep's first 24 points run one at a time in this process (``capsim.sweep.run_point``),
    as the per-point baseline, so the pool's speed-up is a ratio measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PLAN_TARGET_S = 3.0
SWEEP_TARGET_S = 60.0
GRID = ["batching.max_batch_size=1,2,4,8", "batching.max_queue_delay_ms=0,2,5,10,20", "instances=1,2,3,4",
        "queue.max_size=0,32,128"]
RATES = "40:220:20"
POINT = ["run.requests=100000", "run.replications=1"]


def capsim(*argv: str) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "capsim.cli", *argv], capture_output=True, text=True, env=env,
                       timeout=1800)
    wall = time.perf_counter() - t
    if r.returncode not in (0, 1):
        raise SystemExit(f"capsim {' '.join(argv)} failed ({r.returncode}):\n{r.stderr}")
    return wall, r


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="sweep 24 configs x 10 rates instead of 240 x 10")
    args = p.parse_args(argv)
    print(f"capsim plan/sweep benchmark: python {sys.version.split()[0]}, {os.cpu_count()} CPUs")

    walls = []
    for _ in range(3):
        wall, r = capsim("plan", "mini-challenge", "--quiet")
        walls.append(wall)
    verdict = r.stdout.splitlines()[1]
    best, med = min(walls), statistics.median(walls)
    print(f"\n(a) capsim plan mini-challenge: best {best:.2f} s, median {med:.2f} s of 3   target < {PLAN_TARGET_S:g} s "
          f"{'MET' if med < PLAN_TARGET_S else 'NOT MET'}")
    print(f"    {verdict}")

    grid = GRID if not args.quick else ["batching.max_batch_size=4,8", "batching.max_queue_delay_ms=0,2,5",
                                        "instances=1,2,3,4"]
    n_configs = 1
    for g in grid:
        n_configs *= len(g.split("=", 1)[1].split(","))
    n_points = n_configs * 10
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "sweep.csv")
        argv_sweep = ["sweep", "mini-challenge", *sum((["--grid", g] for g in grid), []), "--rates", RATES,
                      *sum((["--set", s] for s in POINT), []), "--out", out, "--quiet"]
        wall, r = capsim(*argv_sweep)
        rows = sum(1 for _ in open(out)) - 1
    assert rows == n_points, (rows, n_points)
    print(f"\n(b) capsim sweep: {n_configs} configs x 10 rates = {n_points} points x 100,000 requests, "
          f"local pool of {os.cpu_count()}")
    print(f"    wall {wall:.1f} s   target < {SWEEP_TARGET_S:g} s {'MET' if wall < SWEEP_TARGET_S else 'NOT MET'}"
          f"{'' if not args.quick else ' (quick: the target is for 2,400 points)'}")
    print(f"    {n_points / wall:.1f} points/s, {n_points * 100_000 / wall / 1e6:.1f}M simulated requests/s")

    # (c) the per-point baseline in this process
    from capsim.allocator import keep_freed_memory
    from capsim.config import scenario_data
    from capsim.sweep import build_configs, make_points, parse_grid, parse_rates, run_point

    keep_freed_memory()
    data, base = scenario_data("mini-challenge", POINT)
    configs = build_configs(data, str(base), [parse_grid(g) for g in grid])
    points = make_points(len(configs), parse_rates(RATES))
    step = max(1, len(points) // 24)
    sample = points[::step][:24]
    run_point(configs[0].scenario, 40.0, "auto")  # compiled code loaded outside the timing
    t = time.perf_counter()
    for pt in sample:
        run_point(configs[pt.config].scenario, pt.rate_rps, "auto")
    per_point = (time.perf_counter() - t) / len(sample)
    serial = per_point * n_points
    print(f"\n(c) one process, 24 points spread over the grid: {per_point * 1000:.1f} ms per point "
          f"-> {serial:.0f} s for the whole sweep serially; the pool ran {serial / wall:.2f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
