"""The ``capsim`` command line."""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys

from capsim import scenarios
from capsim.config import load_scenario
from capsim.errors import CapsimError

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

    sc = sub.add_parser("scenarios", help="list the built-in scenarios, show one, or list every scenario field")
    sc.add_argument("action", nargs="?", choices=("list", "show", "fields"), default="list")
    sc.add_argument("name", nargs="?", help="scenario to show")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "simulate":
            return cmd_simulate(args)
        if args.command == "scenarios":
            return cmd_scenarios(args)
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


# --------------------------------------------------------------------------- simulate


def cmd_simulate(args) -> int:
    from capsim.simulate import simulate

    overrides = list(args.overrides)
    for flag, path in (("requests", "run.requests"), ("seed", "run.seed"), ("replications", "run.replications")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{path}={value}")
    sc = load_scenario(args.scenario, overrides)
    show = not args.quiet and sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        if show:
            end = "\n" if done == total else ""
            print(f"\rsimulating {sc.name}: replication {done}/{total}", end=end, file=sys.stderr, flush=True)

    res = simulate(sc, progress=progress)
    if args.trace_out:
        write_trace(res, args.trace_out)
    if args.format == "json":
        print(json.dumps(_finite(res.to_dict()), indent=2, allow_nan=False))
    else:
        print(format_table(res))
    return 0


def _finite(o):
    """Plain JSON data: non-finite floats (nothing to measure) become null, numpy scalars Python ones."""
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if hasattr(o, "item"):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


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
    if res.theory_mean_ms is not None and res.stable:
        err = (res.latency_ms["mean"] - res.theory_mean_ms) / res.theory_mean_ms
        out.append(f"queueing theory: mean {res.theory_mean_ms:.1f} ms vs simulated {res.latency_ms['mean']:.1f} ms "
                   f"({err:+.1%})")
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
    out.append(f"config: {b.mode} batching, max batch {b.max_batch_size}, max queue delay {b.max_queue_delay_ms:g} ms, "
               f"{sc.instances} instance{'s' if sc.instances > 1 else ''}, queue {cap}"
               + ("".join(f", {e}" for e in extra)))
    return "\n".join(out)


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
