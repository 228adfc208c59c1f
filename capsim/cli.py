"""The ``capsim`` command line."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

from capsim import scenarios
from capsim.config import load_scenario
from capsim.errors import CapsimError
from capsim.plain import finite as _finite

DEFAULT_SCENARIO = "mini-challenge"


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump) and exit status 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="capsim", description="Capacity planning for computer-vision inference services.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    s = sub.add_parser("simulate", help="simulate a scenario and report latency, throughput and drops")
    s.add_argument("scenario", nargs="?", default=DEFAULT_SCENARIO,
                   help=f"scenario file (YAML/TOML) or built-in name (default: {DEFAULT_SCENARIO})")
    s.add_argument("--requests", type=int, help="arrivals per replication (run.requests)")
    s.add_argument("--seed", type=int, help="root seed (run.seed)")
    s.add_argument("--replications", type=int, help="independent replications (run.replications)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override any scenario field, e.g. --set batching.max_batch_size=4 (repeatable)")
    s.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    s.add_argument("--trace-out", metavar="FILE.csv", help="write one row per request (warm-up flagged)")
    s.add_argument("--quiet", action="store_true", help="no progress on stderr")

    s.add_argument("--engine", choices=("auto", "simpy", "fast"), default="auto",
                   help="simpy: the reference engine; fast: compiled, identical results where supported; "
                        "auto (default): fast when the scenario allows it")
    s.add_argument("--allow-mismatch", action="store_true",
                   help="use a calibration profile even if its model/hardware differ from the scenario's")

    pl = sub.add_parser("plan", help="can this service meet the SLO at this rate, and with which settings?")
    pl.add_argument("scenario", nargs="?", default=DEFAULT_SCENARIO, help="scenario file or built-in name")
    pl.add_argument("--rps", type=float, help="target rate (default: the scenario's)")
    pl.add_argument("--slo", help='e.g. "p95<=140ms" (default: the scenario\'s slo)')
    pl.add_argument("--max-instances", type=int, default=4, help="largest instance count to try (default 4)")
    pl.add_argument("--batch-sizes", help="max batch sizes to try (default: powers of two up to the measured max)")
    pl.add_argument("--delays-ms", help="max queue delays to try (default 0,2,5,10,20)")
    pl.add_argument("--modes", default="triton", help="batching modes to try: triton, timer or triton,timer")
    pl.add_argument("--engine", choices=("auto", "simpy", "fast"), default="auto")
    pl.add_argument("--format", choices=("table", "json"), default="table")
    pl.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE")
    pl.add_argument("--quiet", action="store_true", help="no progress on stderr")

    sw = sub.add_parser("sweep", help="simulate a grid of configs x offered rates into one table (CSV/Parquet)")
    sw.add_argument("scenario", nargs="?", default=DEFAULT_SCENARIO, help="scenario file or built-in name")
    sw.add_argument("--grid", action="append", default=[], metavar="PATH=V1,V2,...",
                    help="a scenario field and its values, e.g. batching.max_batch_size=1,4,8 (repeatable)")
    sw.add_argument("--rates", help="offered rates: START:STOP:STEP or R1,R2,... (default: the scenario's rate)")
    sw.add_argument("--out", default="sweep.csv", help="table to write: .csv or .parquet (default sweep.csv)")
    sw.add_argument("--executor", choices=("local", "dask"), default="local",
                    help="local: a process pool on this machine; dask: a dask.distributed cluster")
    sw.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                    help="Dask scheduler address (default: start a LocalCluster)")
    sw.add_argument("--workers", type=int, help="worker processes (default: all cores)")
    sw.add_argument("--engine", choices=("auto", "simpy", "fast"), default="auto")
    sw.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                    help="override a field for every point, e.g. --set run.requests=100000")
    sw.add_argument("--quiet", action="store_true", help="no progress on stderr")

    rp = sub.add_parser("report", help="write a capacity report (HTML, Markdown or JSON) for a scenario")
    rp.add_argument("scenario", nargs="?", default=DEFAULT_SCENARIO, help="scenario file or built-in name")
    rp.add_argument("--plan", action="store_true", help="run the planner and report its answer and recommended config")
    rp.add_argument("--sweep", metavar="SWEEP.csv", help="add the Pareto front of a capsim sweep table")
    rp.add_argument("--out", required=True, help="report.html (self-contained), report.md (+ PNGs) or report.json")
    rp.add_argument("--engine", choices=("auto", "simpy", "fast"), default="auto")
    rp.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE")
    rp.add_argument("--quiet", action="store_true", help="no progress on stderr")

    ui = sub.add_parser("ui", help="open the what-if app in the browser (Streamlit)")
    ui.add_argument("--port", type=int, default=8501, help="port to serve on (default 8501)")
    ui.add_argument("--host", default="localhost", help="address to listen on (default localhost)")

    from capsim.validate import commands as validate_commands

    validate_commands.add_serve_parser(sub)
    validate_commands.add_load_parser(sub)
    validate_commands.add_validate_parser(sub)

    m = sub.add_parser("models", help="the built-in model zoo: list, or export one to ONNX/TorchScript")
    m.add_argument("action", choices=("list", "export"), nargs="?", default="list")
    m.add_argument("name", nargs="?", help="model to export")
    m.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    m.add_argument("--out", help="output file (default models/NAME.onnx or .pt)")

    c = sub.add_parser("calibrate", help="time a real model at each batch size and write a calibration profile")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="built-in model (capsim models list)")
    src.add_argument("--model-file", help="your own model.onnx or TorchScript .pt")
    src.add_argument("--from-perf-analyzer", nargs="+", metavar="CSV[@B]",
                     help="build the profile from Triton perf_analyzer CSV files instead of measuring")
    c.add_argument("--backend", choices=("onnxruntime", "torch"), default="onnxruntime")
    c.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    c.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32")
    c.add_argument("--batch-sizes", default="1,2,4,8", help="comma-separated batch sizes (default 1,2,4,8)")
    c.add_argument("--input-shape", help="CxHxW, e.g. 3x224x224 (default: the model's)")
    c.add_argument("--task", choices=("classification", "detection", "segmentation"),
                   help="post-processing to time for --model-file (default classification)")
    c.add_argument("--threads", type=int, help="intra-op threads (default: all logical CPUs)")
    c.add_argument("--instances", help="instance counts for the contention table, e.g. 1,2,3,4")
    c.add_argument("--max-seconds", type=float, default=20.0, help="time cap per batch size (default 20)")
    c.add_argument("--target-ci", type=float, default=2.0, help="stop when the median's 95%% CI is within this %%")
    c.add_argument("--no-prepost", action="store_true", help="skip timing JPEG decode and post-processing")
    c.add_argument("--model-name", help="model name recorded in an imported profile")
    c.add_argument("--hardware", help="hardware recorded in an imported profile")
    c.add_argument("--out", required=True, help="profile JSON to write, e.g. calibration/resnet18.json")
    c.add_argument("--quiet", action="store_true", help="no progress on stderr")

    pr = sub.add_parser("profile", help="show a calibration profile, or compare two")
    pr.add_argument("action", choices=("show", "compare"))
    pr.add_argument("files", nargs="+", help="profile JSON file(s)")
    pr.add_argument("--format", choices=("table", "json"), default="table")

    sc = sub.add_parser("scenarios", help="list the built-in scenarios, show one, or list every scenario field")
    sc.add_argument("action", nargs="?", choices=("list", "show", "fields"), default="list")
    sc.add_argument("name", nargs="?", help="scenario to show")

    one = sub.add_parser("scenario", help="create a scenario from another tool's config (from-triton)")
    imp = one.add_subparsers(dest="scenario_command", metavar="ACTION", parser_class=_Parser, required=True)
    tr = imp.add_parser("from-triton", help="import a Triton model config (config.pbtxt) as a scenario")
    tr.add_argument("config", help="Triton config.pbtxt, or the model folder holding it")
    tr.add_argument("--profile", metavar="X.json", help="calibration profile for the service times "
                    "(without it the scenario needs service times added before capsim simulate)")
    tr.add_argument("--rate", type=float, default=100.0, metavar="RPS",
                    help="Poisson arrival rate to start from; a Triton config holds no traffic (default 100)")
    tr.add_argument("--out", metavar="scenario.yaml", help="file to write (default: standard output)")
    return p


def main(argv: list[str] | None = None) -> int:
    from capsim.allocator import keep_freed_memory

    keep_freed_memory()  # see capsim/allocator.py: runs reuse memory instead of page-faulting it in
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "simulate":
            return cmd_simulate(args)
        if args.command == "scenarios":
            return cmd_scenarios(args)
        if args.command == "scenario":
            return cmd_scenario(args)
        if args.command == "plan":
            return cmd_plan(args)
        if args.command == "sweep":
            return cmd_sweep(args)
        if args.command in ("serve", "load", "validate"):
            from capsim.validate import commands

            return {"serve": commands.cmd_serve, "load": commands.cmd_load,
                    "validate": commands.cmd_validate}[args.command](args)
        if args.command == "report":
            return cmd_report(args)
        if args.command == "ui":
            return cmd_ui(args)
        if args.command == "models":
            return cmd_models(args)
        if args.command == "calibrate":
            return cmd_calibrate(args)
        if args.command == "profile":
            return cmd_profile(args)
        parser.print_help()
        return 2
    except CapsimError as exc:
        for line in str(exc).splitlines():
            print(f"capsim: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("capsim: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (capsim ... | head): stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


# --------------------------------------------------------------------------- scenarios


def cmd_scenarios(args) -> int:
    if args.action == "fields":
        print(fields_table())
        return 0
    if args.action == "show":
        if not args.name:
            print("capsim: error: name: give the scenario to show, e.g. capsim scenarios show mini-challenge",
                  file=sys.stderr)
            return 2
        if args.name not in scenarios.names():
            print(f"capsim: error: name: no built-in scenario {args.name!r}; "
                  f"choose one of {', '.join(scenarios.names())}", file=sys.stderr)
            return 2
        print(scenarios.text(args.name), end="")
        return 0
    for name in scenarios.names():
        desc = " ".join(str(scenarios.data(name).get("description", "")).split())
        print(f"{name:30s} {desc[:100]}{'...' if len(desc) > 100 else ''}")
    return 0


def cmd_scenario(args) -> int:
    """capsim scenario from-triton: warnings on stderr, the YAML to --out or stdout."""
    from capsim.triton import from_triton

    imp = from_triton(args.config, profile=args.profile, rate_rps=args.rate, out=args.out)
    for line in imp.notes:
        print(f"capsim: note: {line}", file=sys.stderr)
    for line in imp.warnings:
        print(f"capsim: warning: {line}", file=sys.stderr)
    text = imp.to_yaml()
    if args.out is None:
        sys.stdout.write(text)
        return 0
    try:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        raise CapsimError(f"--out: cannot write {args.out}: {exc.strerror}") from None
    then = f"capsim simulate {args.out}" if imp.has_service else "add service times, then capsim simulate"
    print(f"capsim: wrote {args.out} ({then})", file=sys.stderr)
    return 0


def fields_table() -> str:
    """Every scenario field with its unit, allowed values and meaning (from the scenario model)."""
    from capsim.config import iter_fields

    rows = ["| field | unit | allowed | meaning |", "|---|---|---|---|"]
    for path, spec, _ in iter_fields():
        allowed = []
        if spec.choices:
            allowed.append(" / ".join(spec.choices))
        for op, v in ((">", spec.gt), (">=", spec.ge), ("<", spec.lt), ("<=", spec.le)):
            if v is not None:
                allowed.append(f"{op} {v:g}")
        rows.append(f"| `{path}` | {spec.unit} | {', '.join(allowed)} | {spec.help} |")
    return "\n".join(rows)


# --------------------------------------------------------------------------- plan


def parse_slo(text: str):
    """``p95<=140ms`` -> SLO(percentile=95, latency_ms=140)."""
    import re

    from capsim.config import SLO

    m = re.fullmatch(r"\s*p(\d+(?:\.\d+)?)\s*<=?\s*(\d+(?:\.\d+)?)\s*ms\s*", text or "")
    if not m or not 0 < float(m.group(1)) < 100 or not float(m.group(2)) > 0:
        raise CapsimError(f"--slo: must look like p95<=140ms (percentile in (0, 100), latency > 0); got {text!r}")
    return SLO(percentile=float(m.group(1)), latency_ms=float(m.group(2)))


def _float_list(text: str, option: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CapsimError(f"{option}: must be numbers separated by commas, e.g. 0,2,5,10; got {text!r}") from None
    if not values or min(values) < 0:
        raise CapsimError(f"{option}: must be numbers >= 0, e.g. 0,2,5,10; got {text!r}")
    return values


def cmd_plan(args) -> int:
    from capsim.plan import plan

    sc = load_scenario(args.scenario, args.overrides)
    slo = parse_slo(args.slo) if args.slo else None
    if slo is not None and sc.slo is not None:
        slo.min_throughput_rps = sc.slo.min_throughput_rps
    if args.rps is not None and not args.rps > 0:
        raise CapsimError(f"--rps: must be > 0, got {args.rps:g}")
    if args.max_instances < 1:
        raise CapsimError(f"--max-instances: must be >= 1, got {args.max_instances}")
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    if not modes or any(m not in ("triton", "timer") for m in modes):
        raise CapsimError(f"--modes: must be triton, timer or triton,timer; got {args.modes!r}")
    show = not args.quiet and sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        if show:
            print(f"\rplanning {sc.name}: config {done}/{total}", end="\n" if done == total else "",
                  file=sys.stderr, flush=True)

    p = plan(sc, rps=args.rps, slo=slo, max_instances=args.max_instances,
             batch_sizes=_int_list(args.batch_sizes, "--batch-sizes") if args.batch_sizes else None,
             delays_ms=_float_list(args.delays_ms, "--delays-ms") if args.delays_ms else None,
             modes=modes, engine=args.engine, progress=progress)
    if args.format == "json":
        print(json.dumps(_finite(p.to_dict()), indent=2, allow_nan=False))
    else:
        print(plan_table(p))
    return 0 if p.verdict == "feasible" else 1


def plan_table(p) -> str:
    """The answer first, then the recommended config, the runners-up, what binds, the napkin."""
    q = p.question
    s = q["slo"]
    goal = f"p{s['percentile']:g} <= {s['latency_ms']:g} ms"
    out = [f"capsim plan: {q['scenario']} at {q['rps']:g} rps, {goal}"
           + (f", >= {s['min_throughput_rps']:g} rps" if s["min_throughput_rps"] else "")]
    r = p.recommended
    cfg = (f"{r.mode} batching, max batch {r.max_batch_size}, max queue delay {r.max_queue_delay_ms:g} ms, "
           f"{r.instances} instance{'s' if r.instances > 1 else ''}")
    verdict = {"feasible": "FEASIBLE", "infeasible": "INFEASIBLE", "inconclusive": "INCONCLUSIVE"}[p.verdict]
    out.append(f"verdict: {verdict}" + ("" if p.verdict == "infeasible" else f" with {cfg}"))
    if p.verdict == "infeasible":
        out.append(f"  closest config: {cfg}")
    if p.more_requests:
        out.append(f"  the interval straddles the target: about {p.more_requests:,} more simulated requests would "
                   "settle it (raise run.requests or run.replications)")
    d = r.to_dict()
    if r.observed_ms is not None:
        lo, hi = r.ci_ms
        out.append(f"  p{s['percentile']:g} {r.observed_ms:.1f} ms (95% CI [{lo:.1f}, {hi:.1f}]); "
                   f"p50 {d['latency_ms']['p50']:.1f}, p99 {d['latency_ms']['p99']:.1f} ms; throughput "
                   f"{d['throughput_rps']:.1f} rps, drops {d['drop_rate']:.2%}, utilization {d['utilization']:.0%}")
    else:
        out.append("  the config cannot keep up at this rate (queue grows without bound)")
    out.append(f"  highest sustainable rate for this config: {p.max_rate_rps:.1f} rps (headroom "
               f"{p.headroom_pct:+.0f}% over {q['rps']:g} rps)")
    out.append("binding: " + "; ".join(p.binding))
    n = p.napkin
    out.append(f"napkin: {n['formula']}; capacity bound {n['capacity_bound_rps']:.1f} rps"
               + (f"; Little's law: {n['littles_law_in_flight']:.1f} requests in flight"
                  if n["littles_law_in_flight"] is not None else ""))
    out.append(f"  {n['difference']}")
    out.append("")
    out.append(f"runners-up ({p.evaluated} configs screened, {p.engine} engine; rule: {_RULE_SHORT}; "
               "the search stops at the first instance count with a feasible config):")
    out.append(f"  {'mode':7s}{'batch':>6s}{'delay':>7s}{'inst':>5s}  {'verdict':13s}{'p' + format(s['percentile'], 'g'):>7s}"
               f"  {'95% CI':>16s}")
    for a in p.alternatives:
        ci = f"[{a.ci_ms[0]:.1f}, {a.ci_ms[1]:.1f}]" if a.ci_ms else (a.note or "unstable")
        obs = f"{a.observed_ms:.1f}" if a.observed_ms is not None else "-"
        out.append(f"  {a.mode:7s}{a.max_batch_size:6d}{a.max_queue_delay_ms:7g}{a.instances:5d}  {a.verdict:13s}"
                   f"{obs:>7s}  {ci:>16s}")
    return "\n".join(out)


_RULE_SHORT = "fewest instances, then most headroom"


# --------------------------------------------------------------------------- sweep


def cmd_sweep(args) -> int:
    import time

    from capsim.config import scenario_data
    from capsim.sweep import parse_grid, parse_rates, sweep, write_table

    axes = [parse_grid(g) for g in args.grid]
    rates = parse_rates(args.rates) if args.rates else None
    data, base = scenario_data(args.scenario, args.overrides)
    if not args.out.lower().endswith((".csv", ".parquet")):
        raise CapsimError(f"--out {args.out}: write a .csv or a .parquet file")
    show = not args.quiet
    tty = sys.stderr.isatty()
    t0 = time.perf_counter()
    state = {"shown": -1}

    def progress(done: int, total: int) -> None:
        if not show:
            return
        el = time.perf_counter() - t0
        eta = el / done * (total - done)
        if tty:
            bar = "#" * int(30 * done / total)
            print(f"\rsweep [{bar:30s}] {done}/{total} points  {el:.0f} s, eta {eta:.0f} s", end="",
                  file=sys.stderr, flush=True)
        elif done * 10 // total > state["shown"] or done == total:  # a log line every 10 %
            state["shown"] = done * 10 // total
            print(f"sweep: {done}/{total} points ({done / total:.0%}), {el:.1f} s, eta {eta:.0f} s",
                  file=sys.stderr, flush=True)

    res = sweep(data, str(base), axes, rates, engine=args.engine, executor=args.executor, workers=args.workers,
                scheduler=args.scheduler, progress=progress)
    if show and tty:
        print(file=sys.stderr)
    write_table(res, args.out)
    print(sweep_summary(res, args.out, time.perf_counter() - t0))
    if res.interrupted:
        print(f"interrupted: kept the {len(res.rows)} finished rows of {res.total} in {args.out}", file=sys.stderr)
        return 130
    return 0


def sweep_summary(res, out: str, seconds: float) -> str:
    """How much ran, and the Pareto front (throughput vs the SLO percentile) as a small table."""
    key = res.latency_key
    front = [r for r in res.rows if r["pareto"]]
    lines = [f"capsim sweep: {len(res.rows)}/{res.total} points in {seconds:.1f} s -> {out}",
             f"Pareto front (throughput up, {key.split('.', 1)[1]} down): {len(front)} rows"]
    grid = [a.path for a in res.axes]
    head = [*grid, "rate_rps", "throughput_rps", key, "drop_rate"]
    widths = [max(len(h), 10) for h in head]
    lines.append("  " + "  ".join(h.rjust(w) for h, w in zip(head, widths)))
    for r in sorted(front, key=lambda r: r["throughput_rps"])[:20]:
        vals = [r.get(h) for h in head]
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in vals]
        lines.append("  " + "  ".join(c.rjust(w) for c, w in zip(cells, widths)))
    if len(front) > 20:
        lines.append(f"  ... {len(front) - 20} more in the table (column pareto)")
    unstable = sum(1 for r in res.rows if not r.get("stable"))
    if unstable:
        lines.append(f"{unstable} points are unstable (offered load above capacity): their latency columns are empty")
    return "\n".join(lines)


# --------------------------------------------------------------------------- report, ui


def cmd_report(args) -> int:
    try:
        from capsim import report
        import plotly  # noqa: F401 - the charts need it; say so before simulating
    except ImportError:
        raise CapsimError("capsim report: needs plotly; pip install -e '.[ui]'") from None
    if not args.out.lower().endswith((".html", ".htm", ".md", ".json")):
        raise CapsimError(f"--out {args.out}: write a .html, .md or .json report")
    sc = load_scenario(args.scenario, args.overrides)
    show = not args.quiet

    def progress(msg: str) -> None:
        if show:
            print(f"report: {msg}", file=sys.stderr, flush=True)

    rep = report.build(sc, with_plan=args.plan, sweep_csv=args.sweep, engine=args.engine, progress=progress)
    files = report.write(rep, args.out)
    c = rep.content
    print(f"capsim report: {c['verdict'].upper()} — {report.answer(c)}")
    for f in files:
        print(f"  wrote {f}")
    return 0


def app_path():
    """app.py at the project root (beside the capsim package)."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "app.py"
    if not path.exists():
        raise CapsimError(f"capsim ui: {path} not found; run from a checkout installed with pip install -e '.[ui]'")
    return path


def cmd_ui(args) -> int:
    import importlib.util

    if importlib.util.find_spec("streamlit") is None:
        raise CapsimError("capsim ui: needs streamlit; pip install -e '.[ui]'")
    if not 0 < args.port < 65536:
        raise CapsimError(f"--port: must be 1..65535, got {args.port}")
    cmd = [sys.executable, "-m", "streamlit", "run", str(app_path()), "--server.port", str(args.port),
           "--server.address", args.host, "--browser.gatherUsageStats", "false"]
    print(f"capsim ui: http://{args.host}:{args.port}  (Ctrl-C stops it)", file=sys.stderr)
    sys.stderr.flush()
    # Become the server rather than its parent: a signal that stops `capsim ui` (kill, a service
    # manager) then stops streamlit too, instead of leaving it running as an orphan.
    os.execv(sys.executable, cmd)


# --------------------------------------------------------------------------- models, calibrate, profile


def cmd_models(args) -> int:
    from capsim.calibrate import require

    require("torch")
    from capsim.calibrate import zoo

    if args.action == "list":
        for name in zoo.names():
            spec = zoo.MODELS[name]
            shape = "x".join(map(str, spec.input_shape))
            print(f"{name:22s} {spec.task:15s} {shape:12s} {spec.description}")
        return 0
    if args.name not in zoo.MODELS:
        raise CapsimError(f"name: no built-in model {args.name!r}; choose one of {', '.join(zoo.names())}")
    from capsim.calibrate.export import export_onnx, export_torchscript

    out = args.out or f"models/{args.name}.{'onnx' if args.format == 'onnx' else 'pt'}"
    model, shape = zoo.build(args.name), zoo.MODELS[args.name].input_shape
    path = export_onnx(model, out, shape) if args.format == "onnx" else export_torchscript(model, out, shape)
    print(f"wrote {path} ({args.format}, dynamic batch axis, input {'x'.join(map(str, shape))})")
    return 0


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CapsimError(f"{option}: must be whole numbers separated by commas, e.g. 1,2,4,8; got {text!r}") \
            from None
    if not values or min(values) < 1:
        raise CapsimError(f"{option}: must be whole numbers >= 1, e.g. 1,2,4,8; got {text!r}")
    return values


def cmd_calibrate(args) -> int:
    from capsim.profile import from_perf_analyzer

    if args.from_perf_analyzer:
        data = from_perf_analyzer(args.from_perf_analyzer, model=args.model_name or "imported",
                                  hardware=args.hardware or "")
    else:
        from capsim.calibrate.run import calibrate

        shape = None
        if args.input_shape:
            try:
                shape = tuple(int(v) for v in args.input_shape.lower().split("x"))
            except ValueError:
                shape = ()
            if len(shape) != 3 or min(shape) < 1:
                raise CapsimError(f"--input-shape: must be CxHxW, e.g. 3x224x224; got {args.input_shape!r}")
        if args.max_seconds <= 0:
            raise CapsimError(f"--max-seconds: must be > 0, got {args.max_seconds:g}")
        if args.threads is not None and args.threads < 1:
            raise CapsimError(f"--threads: must be >= 1, got {args.threads}")
        show = not args.quiet

        def progress(msg: str) -> None:
            if show:
                print(f"\r\033[K[{args.model or args.model_file}] {msg}", end="", file=sys.stderr, flush=True)

        data = calibrate(model=args.model, model_file=args.model_file, backend=args.backend, device=args.device,
                         precision=args.precision, batch_sizes=_int_list(args.batch_sizes, "--batch-sizes"),
                         input_shape=shape, task=args.task, threads=args.threads,
                         instances=_int_list(args.instances, "--instances") if args.instances else None,
                         max_seconds=args.max_seconds, target_ci_pct=args.target_ci, prepost=not args.no_prepost,
                         progress=progress)
        if show:
            print(file=sys.stderr)
    from capsim.profile import Profile

    out = args.out
    try:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as fh:
            fh.write(Profile(data, out).to_json() + "\n")
    except OSError as exc:
        raise CapsimError(f"--out: cannot write {out}: {exc.strerror}") from None
    print(profile_table(Profile(data, out)))
    print(f"wrote {out}")
    return 0


def profile_table(prof) -> str:
    """The summary a person reads: fingerprint, then batch, median, p95, p99, CI, images/s, stable."""
    m, h = prof.model, prof.hardware
    out = [f"profile: {prof.label}",
           f"  model {m['name']} ({m.get('task')}, input {m.get('input_shape')}), {m['backend']} "
           f"{m.get('backend_version') or ''} {m.get('provider') or ''}, {m['precision']}",
           f"  hardware: {h.get('cpu_model')}, {h.get('logical_cpus')} logical CPUs, {h.get('threads_used')} threads"
           + (f"; GPU {h.get('gpu_name')} driver {h.get('gpu_driver')} CUDA {h.get('cuda_version')}"
              if h.get("gpu_name") and h.get("device") == "cuda" else "")
           + (f"; measured {prof.data.get('date')}" if prof.data.get("date") else ""),
           "", f"{'batch':>6s} {'median ms':>10s} {'p95 ms':>9s} {'p99 ms':>9s} {'95% CI of median':>20s} "
               f"{'images/s':>10s}  stable"]

    def f(v, w=9, d=3):
        return f"{v:{w}.{d}f}" if isinstance(v, (int, float)) else f"{'-':>{w}s}"

    for b in prof.batches:
        ci = b.get("ci_ms")
        ci_s = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-"
        stable = {True: "yes", False: "NO", None: "-"}[b.get("stable")]
        out.append(f"{b['batch_size']:6d} {f(b['median_ms'], 10)} {f(b.get('p95_ms'))} {f(b.get('p99_ms'))} "
                   f"{ci_s:>20s} {f(b.get('images_per_s'), 10, 1)}  {stable}")
    for fail in prof.data.get("failures") or []:
        out.append(f"{fail['batch_size']:6d} failed: {fail['error']}")
    for stage in ("preprocess", "postprocess"):
        st = prof.data.get(stage)
        if st:
            out.append(f"{stage}: median {st['median_ms']:.3f} ms, p95 {st.get('p95_ms', float('nan')):.3f} ms "
                       f"({st.get('what', 'per image')})")
    cont = prof.contention()
    if cont:
        c = prof.data["contention"]
        out.append(f"contention (batch {c.get('batch_size')}, {c.get('method')}): "
                   + ", ".join(f"{k} busy x{v:.2f}" for k, v in sorted(cont.items())))
    fid = prof.data.get("fidelity")
    if fid:
        out.append(f"fidelity vs FP32 (same weights, same inputs): top-1 agreement {fid['top1_agreement']:.1%}, "
                   f"cosine {fid['cosine_similarity']:.4f}, max |diff| {fid['max_abs_diff']:.4g}")
    return "\n".join(out)


def cmd_profile(args) -> int:
    from capsim.profile import load_profile

    profs = [load_profile(f) for f in args.files]
    if args.action == "show":
        if len(profs) != 1:
            raise CapsimError("files: profile show takes one file")
        p = profs[0]
        if args.format == "json":
            rows = [{k: b.get(k) for k in ("batch_size", "median_ms", "p95_ms", "p99_ms", "ci_ms", "stable")}
                    for b in p.batches]
            print(json.dumps(_finite({"model": p.model, "hardware": p.hardware, "batches": rows,
                                      "preprocess": p.data.get("preprocess"), "postprocess": p.data.get("postprocess"),
                                      "contention": p.data.get("contention"), "fidelity": p.data.get("fidelity")}),
                             indent=2))
        else:
            print(profile_table(p))
        return 0
    if len(profs) != 2:
        raise CapsimError("files: profile compare takes two files, A and B")
    a, b = profs
    ca, cb = a.curve_ms(), b.curve_ms()
    common = sorted(set(ca) & set(cb))
    if not common:
        raise CapsimError("files: the two profiles share no batch size")
    rows = [{"batch_size": k, "a_median_ms": ca[k], "b_median_ms": cb[k], "ratio_b_over_a": cb[k] / ca[k]}
            for k in common]
    if args.format == "json":
        print(json.dumps({"a": a.label, "b": b.label, "batches": rows}, indent=2))
        return 0
    print(f"A: {a.label}\nB: {b.label}\n")
    print(f"{'batch':>6s} {'A median ms':>12s} {'B median ms':>12s} {'B/A':>7s}  {'B faster by' :>11s}")
    for r in rows:
        print(f"{r['batch_size']:6d} {r['a_median_ms']:12.3f} {r['b_median_ms']:12.3f} {r['ratio_b_over_a']:7.3f}  "
              f"{1 / r['ratio_b_over_a']:10.2f}x")
    return 0


# --------------------------------------------------------------------------- simulate


def cmd_simulate(args) -> int:
    from capsim.simulate import simulate

    overrides = list(args.overrides)
    for flag, path in (("requests", "run.requests"), ("seed", "run.seed"), ("replications", "run.replications")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{path}={value}")
    if args.allow_mismatch:
        overrides.append("service.allow_mismatch=true")
    sc = load_scenario(args.scenario, overrides)
    show = not args.quiet and sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        if show:
            end = "\n" if done == total else ""
            print(f"\rsimulating {sc.name}: replication {done}/{total}", end=end, file=sys.stderr, flush=True)

    res = simulate(sc, progress=progress, engine=args.engine)
    if args.trace_out:
        write_trace(res, args.trace_out)
    if args.format == "json":
        print(json.dumps(_finite(res.to_dict()), indent=2, allow_nan=False))
    else:
        print(format_table(res))
    return 0


TRACE_COLUMNS = ("request_id", "source", "arrival_s", "dispatch_s", "start_s", "end_s", "latency_ms", "batch_size",
                 "instance", "dropped", "drop_reason", "replication", "warmup")


def write_trace(res, path: str) -> None:
    """One CSV row per request of every replication (warm-up included and flagged)."""
    from capsim.sim.queue import DROP_REASONS

    try:
        fh = open(path, "w", newline="")
    except OSError as exc:
        raise CapsimError(f"--trace-out: cannot write {path}: {exc.strerror}") from None
    with fh:
        w = csv.writer(fh)
        w.writerow(TRACE_COLUMNS)

        def col(a, fmt):
            return [("" if x != x else fmt % x) for x in a.tolist()]

        for rep, tr in enumerate(res.traces):
            n = len(tr.arrival)
            dropped = tr.drop_reason != 0
            w.writerows(zip(
                range(n), tr.source.tolist(), col(tr.arrival, "%.9f"), col(tr.dispatch, "%.9f"),
                col(tr.start, "%.9f"), col(tr.done, "%.9f"), col(tr.latency_ms, "%.6f"), tr.batch_size.tolist(),
                tr.instance.tolist(), dropped.astype(int).tolist(), [DROP_REASONS[c] for c in tr.drop_reason],
                [rep] * n, tr.warmup.astype(int).tolist(),
            ))


def _ms(v) -> str:
    return "n/a" if v is None or v != v else f"{v:.1f}"


def format_table(res) -> str:
    """The human-readable report: verdict first, then percentiles, throughput, drops and config."""
    sc = res.scenario
    d = res.to_dict()
    out = []
    out.append(f"capsim simulate: {sc.name}  ({res.engine} engine, {res.replications} replications x "
               f"{sc.run.requests:,} requests, {sc.run.warmup_requests:,} warm-up, seed {sc.run.seed})")
    if not res.stable:
        out.append(f"UNSTABLE: {res.unstable_reason}.")
        out.append("  Latency percentiles are not reported: they only grow with the run length. "
                   "Lower the rate or add capacity.")
    if res.slo:
        s = res.slo
        goal = f"p{s['percentile']:g} <= {s['target_ms']:g} ms"
        if s["min_throughput_rps"]:
            goal += f" at >= {s['min_throughput_rps']:g} rps"
        verdict = {"met": "MET", "not met": "NOT MET", "inconclusive": "INCONCLUSIVE"}[s["verdict"]]
        if res.stable:
            lo, hi = s["ci_ms"]
            detail = (f"p{s['percentile']:g} {s['observed_ms']:.1f} ms, 95% CI [{lo:.1f}, {hi:.1f}], "
                      f"confidence {s['confidence']:.0%}")
            if not s["throughput_met"]:
                detail += f"; sustains only {s['sustained_rps']:.1f} rps"
        else:
            detail = "the service cannot keep up"
        out.append(f"SLO {goal}: {verdict} ({detail})")
    out.append("")
    out.append(f"{'latency (ms)':16s}{'value':>10s}   95% CI")
    for k, v in d["latency_ms"].items():
        ci = d["latency_ci_ms"].get(k)
        ci_s = f"[{_ms(ci[0])}, {_ms(ci[1])}]" if ci else ""
        out.append(f"  {k:14s}{_ms(v):>10s}   {ci_s}".rstrip())
    out.append(f"{'throughput':16s}{res.throughput_rps:10.1f} rps  (offered {res.offered_rps:.1f} rps), "
               f"utilization {res.utilization:.1%}")
    drops = ", ".join(f"{k} {v}" for k, v in res.drops_by_reason.items() if v) or "none"
    out.append(f"{'drops':16s}{res.dropped:10d}      ({res.drop_rate:.2%}: {drops})")
    hist = " ".join(f"{b}:{c}" for b, c in res.batch_size_histogram.items())
    out.append(f"{'batch size':16s}{res.mean_batch_size:10.2f}      mean  (batches by size {hist})")
    bd = res.breakdown_ms
    out.append("breakdown (mean ms): " + ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in bd.items()))
    nap = res.napkin
    out.append(f"napkin estimate: {nap.formula}; capacity bound {nap.capacity_rps:.1f} rps")
    out.append(f"  {napkin_note(res)}")
    if "cpu_sharing" in res.policies:
        out.append(f"cpu sharing: {res.policies['cpu_sharing']['note']}")
    if res.theory_mean_ms is not None and res.stable:
        err = (res.latency_ms["mean"] - res.theory_mean_ms) / res.theory_mean_ms
        out.append(f"queueing theory: mean {res.theory_mean_ms:.1f} ms vs simulated {res.latency_ms['mean']:.1f} ms "
                   f"({err:+.1%})")
    if "rate_schedule" in res.policies:
        from capsim.rate_schedule import format_steps

        out.extend(format_steps(res.policies["rate_schedule"]))
    ll = res.littles_law
    out.append(f"Little's law: L {ll.L:.2f} in system vs lambda x W {ll.lam_rps * ll.W_ms / 1000:.2f} "
               f"({ll.rel_error:.2%} apart)")
    b, q = sc.batching, sc.queue
    cap = f"cap {q.max_size} ({q.on_full})" if q.max_size else "unlimited"
    extra = []
    if q.per_source_max_size:
        extra.append(f"per-source cap {q.per_source_max_size} ({q.on_full})")
    if q.timeout_ms:
        extra.append(f"timeout {q.timeout_ms:g} ms")
    if q.stride > 1:
        extra.append(f"stride {q.stride}")
    if q.deadline_ms:
        extra.append(f"deadline {q.deadline_ms:g} ms")
    if sc.priority is not None:
        extra.append(f"{len(sc.priority.levels)} priority levels (caps per level below)")
    out.append(f"config: {b.mode} batching, max batch {b.max_batch_size}, max queue delay {b.max_queue_delay_ms:g} ms, "
               f"{sc.instances} instance{'s' if sc.instances > 1 else ''}, queue {cap}"
               + ("".join(f", {e}" for e in extra)))
    a = sc.arrivals
    if a.process == "closed":
        out.append(f"load: {a.concurrency} closed-loop clients, think {a.think_ms:g} ms ({a.think_distribution}); "
                   f"they sent {res.offered_rps:.1f} rps (Little: clients = throughput x (latency + think))")
    out.extend(instance_policy_lines(res))
    from capsim.queue_policies import format_text
    out += format_text(res.policies)
    return "\n".join(out)


def instance_policy_lines(res) -> list[str]:
    """Devices, autoscaling and network lines of the simulate text output (empty when unused)."""
    sc, pol, out = res.scenario, res.policies, []
    if "devices" in pol:
        d = pol["devices"]
        per = ", ".join(f"{u:.0%} ({b:.0f} batches)" for u, b in zip(d["utilization"], d["batches"]))
        out.append(f"devices: {d['count']} x {d['instances_per_device']} instances, {sc.dispatch} dispatch; "
                   f"utilization by device {per}")
    if "autoscale" in pol:
        a, c = pol["autoscale"], pol["autoscale"]["cold_start"]
        cold = "n/a" if c["p95_ms_while_provisioning"] is None else f"{c['p95_ms_while_provisioning']:.1f} ms"
        rest = "n/a" if c["p95_ms_otherwise"] is None else f"{c['p95_ms_otherwise']:.1f} ms"
        out.append(f"autoscale: {a['scale_ups']} scale-ups, {a['scale_downs']} scale-downs, serving "
                   f"{min(a['serving']['count'])}..{max(a['serving']['count'])} instances; p95 of requests arriving "
                   f"during a cold start {cold} vs {rest} otherwise")
    if sc.network is not None:
        n = sc.network
        out.append(f"network: {n.bandwidth_mbps:g} Mbit/s, {n.latency_ms:g} ms one way, {n.payload} "
                   f"{n.request_kb():.0f} KiB up / {n.response_kb:g} KiB down; mean {res.breakdown_ms['network']:.1f} ms "
                   "of each request's latency")
    return out


def napkin_note(res) -> str:
    """One line on why the simulated percentile differs from the seed's napkin figure."""
    nap = res.napkin
    if not res.stable:
        return "the napkin figure assumes the service keeps up; it does not here."
    key = f"p{res.scenario.slo.percentile:g}" if res.scenario.slo else "p95"
    sim = res.latency_ms.get(key, res.latency_ms["p95"])
    bd = res.breakdown_ms
    if sim > nap.latency_ms:
        return (f"simulated {key} {sim:.1f} ms is above the napkin {nap.latency_ms:.1f} ms because the napkin ignores "
                f"queueing: requests wait {bd['queue_wait']:.1f} ms on average for a busy instance, more in the tail.")
    return (f"simulated {key} {sim:.1f} ms is below the napkin {nap.latency_ms:.1f} ms because the napkin assumes "
            f"the full max delay and a full batch; batches here average {res.mean_batch_size:.1f} requests and wait "
            f"{bd['batch_formation']:.1f} ms to form.")


if __name__ == "__main__":
    sys.exit(main())
