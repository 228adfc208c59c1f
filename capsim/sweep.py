"""capsim sweep: every combination of grid values and offered rates, simulated, one flat row each.

A point is one config (a value for each ``--grid`` field) at one offered rate. Every point runs
with the scenario's own seed, so configs are compared on the same arrival streams (common random
numbers) and a point's row does not depend on where or in which order it ran: the local process
pool and a Dask cluster give identical tables.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import yaml

from capsim.config import Scenario, apply_overrides, parse_scenario
from capsim.errors import CapsimError, ScenarioError
from capsim.metrics import _pname

EXECUTORS = ("local", "dask")
MAX_POINTS = 1_000_000


@dataclass(frozen=True)
class Axis:
    """One ``--grid PATH=V1,V2,...``: a scenario field and the values it takes."""

    path: str
    values: tuple


def parse_grid(spec: str) -> Axis:
    """``batching.max_batch_size=1,2,4`` -> Axis; values are read as YAML scalars, like ``--set``."""
    if "=" not in spec:
        raise CapsimError(f"--grid {spec}: must look like PATH=V1,V2,..., e.g. batching.max_batch_size=1,4,8")
    path, raw = (x.strip() for x in spec.split("=", 1))
    if not path:
        raise CapsimError(f"--grid {spec}: the field path is empty")
    values = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            raise CapsimError(f"--grid {path}: empty value in {raw!r}; separate values with single commas")
        try:
            values.append(yaml.safe_load(item))
        except yaml.YAMLError:
            values.append(item)
    if len(set(map(repr, values))) != len(values):
        raise CapsimError(f"--grid {path}: a value is repeated in {raw!r}")
    return Axis(path, tuple(values))


def parse_rates(spec: str) -> list[float]:
    """``START:STOP:STEP`` (STOP included when the steps land on it) or ``R1,R2,...``, in requests/s."""
    def num(text: str, what: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise CapsimError(f"--rates: {what} {text!r} is not a number; use START:STOP:STEP or R1,R2") from None
        if not math.isfinite(v) or v <= 0:
            raise CapsimError(f"--rates: {what} must be a rate > 0 rps, got {text}")
        return v

    spec = spec.strip()
    if ":" in spec:
        parts = spec.split(":")
        if len(parts) != 3:
            raise CapsimError(f"--rates {spec}: a range is START:STOP:STEP, e.g. 40:200:20")
        start, stop, step = (num(p, w) for p, w in zip(parts, ("START", "STOP", "STEP")))
        if stop < start:
            raise CapsimError(f"--rates {spec}: STOP {stop:g} is below START {start:g}")
        count = int(math.floor((stop - start) / step + 1e-9)) + 1
        if count > 10_000:
            raise CapsimError(f"--rates {spec}: {count} rates; use a larger STEP")
        return [round(start + i * step, 9) for i in range(count)]
    rates = [num(p.strip(), "rate") for p in spec.split(",") if p.strip()]
    if not rates:
        raise CapsimError("--rates: give START:STOP:STEP or R1,R2,...")
    if len(set(rates)) != len(rates):
        raise CapsimError(f"--rates {spec}: a rate is repeated")
    return rates


@dataclass
class Config:
    """One combination of grid values, validated into a scenario."""

    values: dict          # grid path -> value
    scenario: Scenario


def build_configs(data: dict, base_dir: str, axes: list[Axis]) -> list[Config]:
    """Every combination of the axes' values, each validated (a bad value fails before anything runs)."""
    paths = [a.path for a in axes]
    if len(set(paths)) != len(paths):
        raise CapsimError("--grid: the same field is given twice; put all its values in one --grid")
    combos = list(itertools.product(*(a.values for a in axes))) if axes else [()]
    configs = []
    for combo in combos:
        overrides = [f"{p}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                     for p, v in zip(paths, combo)]
        try:
            sc = parse_scenario(apply_overrides(copy.deepcopy(data), overrides), base_dir)
        except ScenarioError as exc:
            where = ", ".join(f"{p}={v}" for p, v in zip(paths, combo))
            raise ScenarioError([f"{line} (--grid point {where})" for line in str(exc).splitlines()]) from None
        for p in paths:
            _check_path_exists(sc, p)
        configs.append(Config(dict(zip(paths, combo)), sc))
    return configs


def _check_path_exists(sc: Scenario, path: str) -> None:
    """A grid path must name a scenario field (apply_overrides would happily invent one)."""
    node = sc.to_dict()
    for k in path.split("."):
        if isinstance(node, list) and k.isdigit() and int(k) < len(node):
            node = node[int(k)]
        elif isinstance(node, dict) and (k in node or (k.isdigit() and int(k) in node)):
            node = node[k] if k in node else node[int(k)]
        else:
            raise CapsimError(f"--grid {path}: no such scenario field; see capsim scenarios fields")


@dataclass(frozen=True)
class Point:
    index: int
    config: int
    rate_rps: float | None   # None: the scenario's own rate


def make_points(n_configs: int, rates: list[float] | None) -> list[Point]:
    points, i = [], 0
    for c in range(n_configs):
        for r in (rates or [None]):
            points.append(Point(i, c, r))
            i += 1
    return points


# --------------------------------------------------------------------------- one point -> one row


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested result data as flat columns: ``latency_ms.p95``; two-element intervals as ``.lo``/``.hi``."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple)) and len(v) == 2:
            out[key + ".lo"], out[key + ".hi"] = v
        elif isinstance(v, (list, tuple)):
            out[key] = ";".join(str(x) for x in v)
        else:
            out[key] = v
    return out


def run_point(sc: Scenario, rate: float | None, engine: str) -> dict:
    """Simulate one point and return its flat row (the JSON of ``capsim simulate``, flattened)."""
    from capsim.plain import finite
    from capsim.plan import with_rate
    from capsim.simulate import simulate

    target = with_rate(sc, rate) if rate is not None else sc
    d = finite(simulate(target, engine=engine).to_dict())
    # Unstable runs have no intervals; keep their .lo/.hi columns (empty) so every row has the same ones.
    d["latency_ci_ms"] = {k: v or [None, None] for k, v in d["latency_ci_ms"].items()}
    if d.get("slo") and d["slo"]["ci_ms"] is None:
        d["slo"]["ci_ms"] = [None, None]
    return flatten(d)


def run_chunk(scenarios: dict[int, Scenario], points: list[Point], engine: str) -> list[tuple[int, dict]]:
    """Rows for a list of points (what one worker task does)."""
    from capsim.allocator import keep_freed_memory

    keep_freed_memory()  # a Dask worker is not started by capsim: set it here (once per process)
    return [(p.index, run_point(scenarios[p.config], p.rate_rps, engine)) for p in points]


def _chunks(points: list[Point], workers: int) -> list[list[Point]]:
    """Points grouped by config, split so every worker gets several tasks (progress and balance)."""
    size = max(1, min(16, len(points) // max(1, workers * 8)))
    return [points[i:i + size] for i in range(0, len(points), size)]


# --------------------------------------------------------------------------- executors


def _ignore_sigint() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle


class LocalExecutor:
    """A process pool over this machine's cores (one worker runs the points in-process)."""

    def __init__(self, workers: int | None = None):
        import os

        self.workers = workers or os.cpu_count() or 1

    def map(self, configs: list[Config], chunks: list[list[Point]], engine: str) -> Iterator[list[tuple[int, dict]]]:
        scenarios = {i: c.scenario for i, c in enumerate(configs)}
        if self.workers == 1:
            for ch in chunks:
                yield run_chunk(scenarios, ch, engine)
            return
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # fork: workers start at once with capsim and the compiled engine already loaded.
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_ignore_sigint)
        try:
            futures = [pool.submit(run_chunk, {p.config: scenarios[p.config] for p in ch}, ch, engine)
                       for ch in chunks]
            for fut in as_completed(futures):
                yield fut.result()
        except KeyboardInterrupt:
            # Stop the workers now rather than after their current points: the rows so far are kept.
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.terminate()
            raise
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


class DaskExecutor:
    """Tasks on a dask.distributed scheduler, or on a LocalCluster of worker processes when none is given."""

    def __init__(self, scheduler: str | None = None, workers: int | None = None):
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError:
            raise CapsimError("--executor dask: needs dask.distributed; pip install 'capsim[distributed]'") from None
        import os

        self.cluster = None
        if scheduler:
            try:
                self.client = Client(scheduler, timeout="10s")
            except (OSError, TimeoutError) as exc:
                raise CapsimError(f"--scheduler {scheduler}: cannot reach the Dask scheduler ({exc}); "
                                  "check the address or leave --scheduler out for a local cluster") from None
        else:
            n = workers or os.cpu_count() or 1
            self.cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                        dashboard_address=None, silence_logs=40)
            self.client = Client(self.cluster)
        self.workers = len(self.client.scheduler_info()["workers"]) or workers or 1

    def map(self, configs: list[Config], chunks: list[list[Point]], engine: str) -> Iterator[list[tuple[int, dict]]]:
        from dask.distributed import as_completed

        # Each task carries only the scenarios its points use.
        futures = [self.client.submit(run_chunk, {p.config: configs[p.config].scenario for p in ch}, ch, engine,
                                      pure=False) for ch in chunks]
        try:
            for fut in as_completed(futures):
                yield fut.result()
        finally:
            self.client.cancel(futures)

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


# --------------------------------------------------------------------------- the sweep


@dataclass
class SweepResult:
    """The table: one row per point in point order, and whether Ctrl-C cut it short."""

    axes: list[Axis]
    rows: list[dict]
    total: int
    interrupted: bool = False
    latency_key: str = "latency_ms.p95"
    columns: list[str] = field(default_factory=list)


def sweep(data: dict, base_dir: str, axes: list[Axis], rates: list[float] | None = None, engine: str = "auto",
          executor: str = "local", workers: int | None = None, scheduler: str | None = None,
          progress: Callable[[int, int], None] | None = None) -> SweepResult:
    """Simulate every grid combination at every rate and return the flat table with its Pareto column."""
    if executor not in EXECUTORS:
        raise CapsimError(f"--executor: must be local or dask, got {executor!r}")
    if workers is not None and workers < 1:
        raise CapsimError(f"--workers: must be >= 1, got {workers}")
    if scheduler and executor != "dask":
        raise CapsimError("--scheduler: only used with --executor dask")
    configs = build_configs(data, base_dir, axes)
    if rates is not None:
        from capsim.plan import with_rate

        with_rate(configs[0].scenario, rates[0])  # a trace cannot be rescaled: say so before running
    points = make_points(len(configs), rates)
    if len(points) > MAX_POINTS:
        raise CapsimError(f"--grid/--rates: {len(points):,} points is more than {MAX_POINTS:,}; split the sweep")
    slo = configs[0].scenario.slo
    key = "latency_ms." + _pname(slo.percentile if slo else 95)

    runner = DaskExecutor(scheduler, workers) if executor == "dask" else LocalExecutor(workers)
    rows: dict[int, dict] = {}
    interrupted = False
    try:
        for batch in runner.map(configs, _chunks(points, runner.workers), engine):
            for index, row in batch:
                rows[index] = row
            if progress:
                progress(len(rows), len(points))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if isinstance(runner, DaskExecutor):
            runner.close()

    table = []
    for p in points:
        if p.index not in rows:
            continue
        cfg = configs[p.config]
        head = {"point": p.index, **cfg.values,
                "rate_rps": p.rate_rps if p.rate_rps is not None else cfg.scenario.arrivals.offered_rps()}
        table.append({**head, "pareto": False, **rows[p.index]})
    mark_pareto(table, key)
    cols = columns(table)
    # Every row gets every column: a batch size a run never formed counted 0 times.
    table = [{c: r.get(c, 0 if c.startswith("batch_size_histogram.") else None) for c in cols} for r in table]
    return SweepResult(axes, table, len(points), interrupted, key, cols)


def mark_pareto(rows: list[dict], latency_key: str) -> None:
    """Set ``pareto`` on the rows no other row beats: higher or equal throughput with lower or equal
    latency, one of them strictly. Unstable rows and rows without the latency never qualify."""
    cands = [r for r in rows if r.get("stable") and r.get(latency_key) is not None]
    cands.sort(key=lambda r: (-r["throughput_rps"], r[latency_key]))
    best, best_thr = math.inf, None
    for r in cands:  # highest throughput first: on the front when no faster row has a lower latency
        lat = r[latency_key]
        if lat < best or (lat == best and r["throughput_rps"] == best_thr):
            r["pareto"] = True
            best, best_thr = lat, r["throughput_rps"]


def columns(rows: Iterable[dict]) -> list[str]:
    """Columns as first seen; the batch-size histogram's columns together, by batch size."""
    seen: dict[str, None] = {}
    for r in rows:
        for k in r:
            seen.setdefault(k, None)
    hist_prefix = "batch_size_histogram."
    cols = [c for c in seen if not c.startswith(hist_prefix)]
    hist = sorted((c for c in seen if c.startswith(hist_prefix)), key=lambda c: int(c[len(hist_prefix):]))
    if hist:
        at = cols.index("utilization") if "utilization" in cols else len(cols)
        cols = cols[:at] + hist + cols[at:]
    return cols


def write_table(result: SweepResult, path: str) -> None:
    """CSV (any other extension) or Parquet (``.parquet``, needs pyarrow)."""
    cols, filled = result.columns, result.rows
    if path.lower().endswith(".parquet"):
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise CapsimError(f"--out {path}: Parquet needs pyarrow; pip install pyarrow, or write .csv") from None
        table = pa.Table.from_pylist(filled) if filled else pa.table({c: [] for c in cols})
        try:
            pq.write_table(table, path)
        except OSError as exc:
            raise CapsimError(f"--out: cannot write {path}: {exc}") from None
        return
    import csv

    try:
        fh = open(path, "w", newline="")
    except OSError as exc:
        raise CapsimError(f"--out: cannot write {path}: {exc.strerror}") from None
    with fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in filled:
            w.writerow({k: ("" if v is None else repr(v) if isinstance(v, float) else v) for k, v in r.items()})
