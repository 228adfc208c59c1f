"""The real ``capsim`` command line, run in child processes.

Every command runs ``capsim.cli`` as ``__main__`` in a process of its own (see DRIVER below for how,
and ``test_forked_runs_match_real_subprocesses`` for the check against plain
``[sys.executable, "-m", "capsim.cli", ...]``). All commands run once, a few at a time, on first
use; the tests read their results. Files the commands need (scenarios, traces) are written to one
temporary directory, which is also the commands' working directory.

Valid runs check the output contracts (scenario listing, ``scenarios show``, the JSON keys,
``--set``, seeding, ``--trace-out``, the table's verdict line). Invalid input of every kind must
end with exit status 2, nothing on stdout, one ``capsim: error: <field path>: <problem>`` line
per problem on stderr, and no traceback.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from capsim import scenarios
from capsim.config import load_scenario, parse_scenario

REPO = Path(__file__).resolve().parents[1]
BUILTINS = {
    "daily-traffic",  # a compressed daily rate profile (arrivals.rate_schedule)
    "example-1-single-image-gpu",
    "example-2-multi-camera",
    "example-3-edge-cpu",
    "example-4-littles-law",
    "robot-control-loop",  # closed-loop clients (arrivals.process closed)
    "traffic-ramp-autoscale",
    "gpu-resnet50-fp16",  # driven by a measured GPU profile in calibration/
    "mini-challenge",
    "retail-edge-resnet18-int8",  # driven by a measured profile in calibration/
}
# Small runs: 2 replications x 5,000 requests of which the default 2,000 are warm-up.
REQUESTS, REPLICATIONS, WARMUP = 5000, 2, 2000
SIM = ["simulate", "mini-challenge", "--requests", str(REQUESTS), "--replications", str(REPLICATIONS)]
JSON = [*SIM, "--format", "json"]
QUICK = ["simulate", "mini-challenge", "--requests", "3000", "--replications", "2", "--format", "json"]
TRACE_HEADER = ("request_id,source,arrival_s,dispatch_s,start_s,end_s,latency_ms,batch_size,instance,dropped,"
                "drop_reason,replication,warmup")
# The built-in scenario switched to a trace of arrivals (add --set arrivals.path=...).
TRACE = [*QUICK, "--set", "arrivals.process=trace", "--set", "arrivals.rate_rps=null"]

TOML_SCENARIO = """\
name = "toml-scenario"
instances = 1

[arrivals]
process = "poisson"
rate_rps = 50

[service]
batch_latency_ms = { 1 = 20, 2 = 22, 4 = 30 }
overhead_ms = 5

[batching]
max_batch_size = 4
max_queue_delay_ms = 5

[slo]
percentile = 95
latency_ms = 100

[run]
requests = 3000
warmup_requests = 500
replications = 2
seed = 7
"""

# Files written into the temporary directory before any command runs.
FILES: dict[str, str | bytes] = {
    "scenario.toml": TOML_SCENARIO,
    # A trace scenario with a path relative to the scenario file's directory.
    "traced/scenario.yaml": (
        "name: traced\n"
        "arrivals: {process: trace, path: arrivals.csv}\n"
        "service: {batch_latency_ms: {1: 5, 2: 6}}\n"
        "batching: {max_batch_size: 2, max_queue_delay_ms: 1}\n"
        "run: {requests: 1000, warmup_requests: 100, replications: 2}\n"
    ),
    "traced/arrivals.csv": "arrival_s\n" + "".join(f"{i * 0.01:.3f}\n" for i in range(600)),
    "typo.yaml": (
        "arrivals: {process: poisson, rate_rps: 100}\n"
        "service: {batch_latency_ms: {1: 25, 8: 48}}\n"
        "batching: {max_batch: 4}\n"
    ),
    "wrong-type.yaml": (
        "arrivals: {process: poisson, rate_rps: fast}\n"
        "service: {batch_latency_ms: [25, 27]}\n"
        "instances: 1.5\n"
    ),
    "section-not-mapping.yaml": "arrivals: [1, 2]\nservice: {batch_latency_ms: {1: 25}}\n",
    "top-level-list.yaml": "- arrivals\n- service\n",
    "empty.yaml": "",
    "malformed.yaml": "arrivals: {process: poisson, rate_rps: 5\nservice: [\n",
    "malformed.toml": 'name = "x"\n[arrivals\nrate_rps = 5\n',
    "garbage-trace.csv": "0.10\n0.20\nnot-a-time\n0.40\n",
    "negative-trace.csv": "0.10\n-1.0\n0.30\n",
    "one-line-trace.csv": "0.10\n",
    "short-trace.csv": "".join(f"{i * 0.01:.2f}\n" for i in range(10)),  # shorter than the warm-up
    "blank-lines-trace.csv": "0.10\n\n\n0.20\nnot-a-time\n",
    "not-utf8.yaml": b"name: x\narrivals: {process: poisson, rate_rps: 100}\ndescription: \xff\xfe\n",
    "bad-source-trace.csv": "arrival_s,source\n0.1,0\n0.2,a\n",
    "flat-trace.csv": "0\n0\n0\n0\n",
}


@dataclass(frozen=True)
class Bad:
    """An invalid invocation and what its error output must mention."""

    argv: tuple[str, ...]
    expect: tuple[str, ...]  # substrings that must appear in stderr (field paths, values)
    lines: int | None = None  # exact number of error lines, when known


def bad(argv: list[str], *expect: str, lines: int | None = 1) -> Bad:
    return Bad(tuple(argv), tuple(expect), lines)


INVALID: dict[str, Bad] = {
    # ranges
    "rate-negative": bad([*QUICK, "--set", "arrivals.rate_rps=-5"], "arrivals.rate_rps: must be > 0", "got -5"),
    "rate-zero": bad([*QUICK, "--set", "arrivals.rate_rps=0"], "arrivals.rate_rps: must be > 0", "got 0"),
    "rate-infinite": bad([*QUICK, "--set", "arrivals.rate_rps=.inf"], "arrivals.rate_rps: must be a finite number"),
    "delay-negative": bad([*QUICK, "--set", "batching.max_queue_delay_ms=-1"],
                          "batching.max_queue_delay_ms: must be >= 0", "got -1"),
    "requests-negative": bad([*QUICK, "--requests", "-5"], "run.requests: must be >= 1", "got -5", lines=None),
    "replications-zero": bad([*QUICK, "--replications", "0"], "run.replications: must be >= 1"),
    "seed-negative": bad([*QUICK, "--seed", "-1"], "run.seed: must be >= 0"),
    "stream-count-zero": bad([*QUICK, "--set", "arrivals.process=streams", "--set", "arrivals.rate_rps=null",
                              "--set", "arrivals.streams=[{count: 0, fps: 25}]"],
                             "arrivals.streams[0].count: must be >= 1"),
    # unknown fields (typos), on the command line and in a file
    "unknown-field-set": bad([*QUICK, "--set", "arrivals.rate_rsp=100"],
                             "arrivals.rate_rsp: unknown field", "rate_rps"),
    "unknown-field-file": bad(["simulate", "typo.yaml"], "batching.max_batch: unknown field", "max_batch_size"),
    "unknown-section": bad([*QUICK, "--set", "nosuch.field=1"], "nosuch: unknown field"),
    # wrong types
    "int-not-a-number": bad([*QUICK, "--set", "batching.max_batch_size=four"],
                            "batching.max_batch_size: must be a whole number", "four"),
    "int-fraction": bad([*QUICK, "--set", "instances=1.5"], "instances: must be a whole number", "1.5"),
    "float-text": bad([*QUICK, "--set", "arrivals.rate_rps=fast"], "arrivals.rate_rps: must be a finite number"),
    "section-scalar": bad([*QUICK, "--set", "batching=5"], "batching: must be a mapping"),
    "wrong-types-file": bad(["simulate", "wrong-type.yaml"], "arrivals.rate_rps: must be a finite number",
                            "service.batch_latency_ms: must be a mapping", "instances: must be a whole number",
                            lines=3),
    "section-not-mapping-file": bad(["simulate", "section-not-mapping.yaml"], "arrivals: must be a mapping"),
    "top-level-list-file": bad(["simulate", "top-level-list.yaml"], "scenario: must be a mapping"),
    "empty-file": bad(["simulate", "empty.yaml"], "scenario:", "is empty"),
    # unknown choices
    "unknown-process": bad([*QUICK, "--set", "arrivals.process=gaussian"],
                           "arrivals.process: must be one of", "poisson", "gaussian"),
    "unknown-mode": bad([*QUICK, "--set", "batching.mode=eager"], "batching.mode: must be one of", "triton"),
    "unknown-on-full": bad([*QUICK, "--set", "queue.on_full=drop_newest"], "queue.on_full: must be one of",
                           "drop_oldest"),
    "unknown-distribution": bad([*QUICK, "--set", "service.variability.distribution=weibull"],
                                "service.variability.distribution: must be one of", "lognormal"),
    # cross-field rules
    "bursty-without-burst-rate": bad([*QUICK, "--set", "arrivals.process=bursty", "--set", "arrivals.mean_burst_s=1",
                                      "--set", "arrivals.mean_calm_s=5"],
                                     "arrivals.burst_rate_rps: required for process bursty"),
    "bursty-without-anything": bad([*QUICK, "--set", "arrivals.process=bursty"], "arrivals.burst_rate_rps",
                                   "arrivals.mean_burst_s", "arrivals.mean_calm_s", lines=3),
    "field-unused-by-process": bad([*QUICK, "--set", "arrivals.burst_rate_rps=300"],
                                   "arrivals.burst_rate_rps: not used by process poisson"),
    "batch-above-measured": bad([*QUICK, "--set", "batching.max_batch_size=16"], "batching.max_batch_size:", "16",
                                "largest measured batch size 8"),
    "curve-without-size-1": bad([*QUICK, "--set", "service.batch_latency_ms={2: 27, 4: 34, 8: 48}"],
                                "service.batch_latency_ms: must include batch size 1"),
    "curve-nonpositive": bad([*QUICK, "--set", "service.batch_latency_ms.4=0"],
                             "service.batch_latency_ms.4: must be > 0"),
    "preferred-above-max": bad([*QUICK, "--set", "batching.preferred_batch_sizes=[4, 9]"],
                               "batching.preferred_batch_sizes[1]:", "9"),
    "warmup-equals-requests": bad([*QUICK, "--requests", "2000"], "run.warmup_requests: must be below run.requests"),
    "warmup-above-requests": bad([*QUICK, "--set", "run.warmup_requests=5000"], "run.warmup_requests:", "5000"),
    "cv-with-distribution-none": bad([*QUICK, "--set", "service.variability.cv=0.3"], "service.variability.cv:",
                                     "none"),
    "contention-too-short": bad([*QUICK, "--set", "instances=3", "--set", "service.contention={1: 1.0, 2: 1.3}"],
                                "service.contention:", "3"),
    # files and names
    "malformed-yaml": bad(["simulate", "malformed.yaml"], "scenario:", "malformed.yaml", "not valid"),
    "malformed-toml": bad(["simulate", "malformed.toml"], "scenario:", "malformed.toml", "not valid"),
    "missing-scenario-file": bad(["simulate", "no-such-file.yaml"], "scenario:", "no-such-file.yaml", "not found"),
    "unknown-builtin": bad(["simulate", "mini-challange"], "scenario:", "mini-challange", "mini-challenge"),
    "show-unknown-builtin": bad(["scenarios", "show", "mini-challange"], "name:", "mini-challange"),
    # --set syntax and values
    "set-without-equals": bad([*QUICK, "--set", "batching.max_batch_size"], "--set batching.max_batch_size:",
                              "PATH=VALUE"),
    "set-empty-path": bad([*QUICK, "--set", "=4"], "--set =4:"),
    "set-bad-value": bad([*QUICK, "--set", "batching.max_batch_size=0"], "batching.max_batch_size: must be >= 1",
                         "got 0"),
    # trace files
    "trace-missing": bad([*TRACE, "--set", "arrivals.path=no-such-trace.csv"], "arrivals.path:", "no-such-trace.csv"),
    "trace-garbage": bad([*TRACE, "--set", "arrivals.path=garbage-trace.csv"], "arrivals.path:", "line 3",
                         "not-a-time"),
    "trace-negative": bad([*TRACE, "--set", "arrivals.path=negative-trace.csv"], "arrivals.path:", "negative"),
    "trace-one-line": bad([*TRACE, "--set", "arrivals.path=one-line-trace.csv"], "arrivals.path:", "at least 2"),
    "trace-shorter-than-warmup": bad([*TRACE, "--set", "arrivals.path=short-trace.csv"], "run.warmup_requests:"),
    "trace-without-path": bad(TRACE, "arrivals.path: required for process trace"),
    # output
    "trace-out-unwritable": bad([*QUICK, "--trace-out", "no-such-dir/trace.csv"], "--trace-out:",
                                "no-such-dir/trace.csv"),
    # argparse errors: one line too
    "format-xml": bad([*QUICK, "--format", "xml"], "--format", "xml"),
    "requests-not-a-number": bad([*QUICK, "--requests", "many"], "--requests", "many"),
    "unknown-command": bad(["simulat"], "simulat"),
}

# Known bugs, reported to the maintainers; the cases run, and the tests expect them to fail.
INVALID.update({
    # A file that is not UTF-8 text (once a UnicodeDecodeError traceback).
    "not-utf8-file": bad(["simulate", "not-utf8.yaml"], "scenario:", "not-utf8.yaml"),
    # Line numbers count blank lines too: the garbage is on line 5.
    "trace-line-number-after-blank-lines": bad([*TRACE, "--set", "arrivals.path=blank-lines-trace.csv"],
                                               "arrivals.path:", "line 5"),
    # A file that is not a mapping is reported as such, also when --set is given.
    "trace-bad-source": bad([*TRACE, "--set", "arrivals.path=bad-source-trace.csv"], "arrivals.path:", "line 3",
                            "source"),
    "trace-no-time-span": bad([*TRACE, "--set", "arrivals.path=flat-trace.csv", "--set", "run.warmup_requests=0"],
                              "arrivals.path:", "must span time"),
    "requests-too-many": bad(["simulate", "--requests", "1000000000000"], "run.requests: must be <="),
    "set-list-index-out-of-range": bad(["simulate", "example-2-multi-camera", "--set", "arrivals.streams.3.fps=30"],
                                       "arrivals.streams has 1 entries"),
    "top-level-list-file-with-set": bad(["simulate", "top-level-list.yaml", "--set", "instances=2"],
                                        "scenario: must be a mapping"),
})

VALID: dict[str, list[str]] = {
    "list": ["scenarios"],
    "show": ["scenarios", "show", "mini-challenge"],
    "json": [*JSON, "--trace-out", "trace.csv"],
    "json-again": JSON,  # same seed (1) without --trace-out
    "json-seed-2": [*JSON, "--seed", "2"],
    "json-batch-4": [*JSON, "--set", "batching.max_batch_size=4"],
    "table": SIM,
    "toml": ["simulate", "scenario.toml", "--format", "json"],
    "trace-scenario": ["simulate", "traced/scenario.yaml", "--format", "json"],
    # Every request times out in the queue: nothing completes (valid input, all-NaN latencies).
    "all-dropped": [*QUICK, "--set", "queue.timeout_ms=0.001"],
    # Overloaded with a capped queue: rejections, in the summary and in the trace.
    "drops": ["simulate", "mini-challenge", "--requests", "2500", "--replications", "1", "--set",
              "run.warmup_requests=100", "--set", "arrivals.rate_rps=400", "--set", "queue.max_size=8",
              "--format", "json", "--trace-out", "drops.csv"],
}
ALL_JOBS: dict[str, list[str]] = {**VALID, **{k: list(b.argv) for k, b in INVALID.items()}}


# Each job runs ``capsim.cli`` as ``__main__`` (what ``python -m capsim.cli`` does) in its own
# process, forked from one driver that has imported numpy, scipy, simpy and capsim once: a fresh
# ``python -m capsim.cli`` spends ~1.5 s importing, which for ~60 commands on a small machine would
# blow the time budget. The driver reproduces the interpreter's top level: SystemExit codes, and a
# traceback with exit status 1 for any other exception. ``test_forked_runs_match_real_subprocesses``
# checks that it gives byte-identical results to ``[sys.executable, "-m", "capsim.cli", ...]``;
# CAPSIM_TEST_REAL_SUBPROCESS=1 (or a platform without fork) runs every command that way instead.
DRIVER = r"""
import io, json, os, runpy, sys, traceback
import numpy, scipy.stats, scipy.interpolate, simpy, yaml, tomllib, argparse, csv
import capsim, capsim.simulate, capsim.metrics, capsim.sim.engine, capsim.arrivals, capsim.config

def child(job):
    os.chdir(job["cwd"])
    for fd, name in ((1, "out"), (2, "err")):
        f = os.open(job[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8")
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                  errors="backslashreplace", line_buffering=True)
    sys.argv = ["-m", *job["argv"]]
    code = 0
    try:
        runpy.run_module("capsim.cli", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        c = exc.code
        if c is None:
            code = 0
        elif isinstance(c, int):
            code = c
        else:
            print(c, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except Exception:
            code = code or 120
    os._exit(code & 0xFF)

jobs = json.load(sys.stdin)
width = max(1, int(sys.argv[1]))
running, codes, pending = {}, {}, list(jobs)
while pending or running:
    while pending and len(running) < width:
        job = pending.pop(0)
        pid = os.fork()
        if pid == 0:
            child(job)
        running[pid] = job["id"]
    pid, status = os.wait()
    codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
json.dump(codes, sys.stdout)
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.pop("PYTHONWARNINGS", None)
    return env


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """One real ``python -m capsim.cli`` process."""
    return subprocess.run([sys.executable, "-m", "capsim.cli", *argv], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=300)


def _run_forked(jobs: dict[str, list[str]], cwd: Path) -> dict[str, subprocess.CompletedProcess]:
    """Run every job through the forking driver; returns {job id: CompletedProcess}."""
    io_dir = cwd / ".cli-io"
    io_dir.mkdir(exist_ok=True)
    spec = [{"id": k, "argv": argv, "cwd": str(cwd), "out": str(io_dir / f"{k}.out"),
             "err": str(io_dir / f"{k}.err")} for k, argv in jobs.items()]
    width = max(2, os.cpu_count() or 2)
    drv = subprocess.run([sys.executable, "-c", DRIVER, str(width)], input=json.dumps(spec), cwd=cwd, env=_env(),
                         capture_output=True, text=True, timeout=600)
    assert drv.returncode == 0, drv.stderr
    codes = json.loads(drv.stdout)
    out = {}
    for job in spec:
        k = job["id"]
        out[k] = subprocess.CompletedProcess(
            ["capsim", *jobs[k]], codes[k], Path(job["out"]).read_text(encoding="utf-8"),
            Path(job["err"]).read_text(encoding="utf-8", errors="backslashreplace"))
    return out


REAL = os.environ.get("CAPSIM_TEST_REAL_SUBPROCESS") == "1" or not hasattr(os, "fork")


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """Run every command of this module; returns (directory, {case id: CompletedProcess})."""
    d = tmp_path_factory.mktemp("cli")
    for name, content in FILES.items():
        p = d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)
    if not REAL:
        return d, _run_forked(ALL_JOBS, d)
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as ex:
        futures = {k: ex.submit(_run, argv, d) for k, argv in ALL_JOBS.items()}
        return d, {k: f.result() for k, f in futures.items()}


# Cases run again as real ``python -m capsim.cli`` processes: success, a field error, an argparse
# error and an uncaught exception (a known bug) must come out exactly the same.
CROSS_CHECK = ("json-again", "rate-negative", "format-xml", "not-utf8-file")


def test_forked_runs_match_real_subprocesses(cli):
    d, results = cli
    with ThreadPoolExecutor(max_workers=len(CROSS_CHECK)) as ex:
        real = dict(zip(CROSS_CHECK, ex.map(lambda k: _run(ALL_JOBS[k], d), CROSS_CHECK)))
    for k in CROSS_CHECK:
        assert (real[k].returncode, real[k].stdout) == (results[k].returncode, results[k].stdout), k
        if "Traceback" in real[k].stderr:  # frames differ (runpy vs the driver); the outcome must not
            assert "Traceback" in results[k].stderr
            assert real[k].stderr.splitlines()[-1] == results[k].stderr.splitlines()[-1], k
        else:
            assert real[k].stderr == results[k].stderr, k


def ok(cli, case: str) -> subprocess.CompletedProcess:
    r = cli[1][case]
    assert r.returncode == 0, f"{case}: exit {r.returncode}\n{r.stderr}"
    assert "Traceback" not in r.stderr
    return r


def as_json(cli, case: str) -> dict:
    return json.loads(ok(cli, case).stdout)


# --------------------------------------------------------------------------- scenarios


def test_scenarios_lists_the_builtins(cli):
    out = ok(cli, "list").stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert set(names) == BUILTINS
    assert len(names) == len(BUILTINS)
    assert set(scenarios.names()) == BUILTINS


def test_scenarios_show_prints_yaml_equal_to_the_builtin(cli):
    data = yaml.safe_load(ok(cli, "show").stdout)
    assert data == scenarios.data("mini-challenge")
    assert parse_scenario(data) == load_scenario("mini-challenge")


# --------------------------------------------------------------------------- simulate --format json

CONTRACT_KEYS = {
    "offered_rps", "throughput_rps", "completed", "dropped", "drop_rate", "drops_by_reason", "latency_ms",
    "latency_ci_ms", "mean_batch_size", "batch_size_histogram", "utilization", "breakdown_ms", "stable", "slo",
}
LATENCY_KEYS = {"mean", "p50", "p90", "p95", "p99", "max"}
CI_KEYS = {"p50", "p95", "p99"}
SLO_KEYS = {"met", "percentile", "target_ms", "observed_ms", "confidence"}


def test_json_is_one_object_with_every_contract_key(cli):
    out = ok(cli, "json").stdout
    d = json.loads(out)  # the whole of stdout is one JSON document
    assert isinstance(d, dict)
    assert CONTRACT_KEYS <= d.keys()
    assert LATENCY_KEYS <= d["latency_ms"].keys()
    assert CI_KEYS <= d["latency_ci_ms"].keys()
    for k in CI_KEYS:
        ci = d["latency_ci_ms"][k]
        assert isinstance(ci, list) and len(ci) == 2
    assert SLO_KEYS <= d["slo"].keys()


def test_json_values_are_sane(cli):
    d = as_json(cli, "json")
    measured = REPLICATIONS * (REQUESTS - WARMUP)
    assert d["completed"] == measured and d["dropped"] == 0 and d["drop_rate"] == 0.0
    assert all(v == 0 for v in d["drops_by_reason"].values())
    assert d["offered_rps"] == pytest.approx(120, rel=0.1)
    assert d["throughput_rps"] == pytest.approx(d["offered_rps"], rel=0.05)
    assert d["stable"] is True

    lat = d["latency_ms"]
    floor = 10 + 25  # overhead + the batch-of-one compute time: no request can be faster
    assert floor - 1e-6 <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert floor <= lat["mean"] <= lat["max"]
    assert lat["max"] < 1000
    for k in CI_KEYS:
        low, high = d["latency_ci_ms"][k]
        assert low <= lat[k] <= high

    hist = {int(b): c for b, c in d["batch_size_histogram"].items()}
    assert set(hist) <= set(range(1, 9)) and all(c > 0 for c in hist.values())
    assert 1 <= d["mean_batch_size"] <= 8
    assert d["mean_batch_size"] == pytest.approx(sum(b * c for b, c in hist.items()) / sum(hist.values()))
    # Batches started in the measured window carry about the measured requests.
    assert sum(b * c for b, c in hist.items()) == pytest.approx(measured, rel=0.01)
    assert 0 < d["utilization"] <= 1

    bd = d["breakdown_ms"]
    assert {"queue_wait", "batch_formation", "service", "overhead"} <= bd.keys()
    assert bd["overhead"] == 10
    assert 25 <= bd["service"] <= 48
    assert all(v >= 0 for v in bd.values())

    slo = d["slo"]
    assert slo["percentile"] == 95 and slo["target_ms"] == 140
    assert slo["observed_ms"] == pytest.approx(lat["p95"])
    assert 0 <= slo["confidence"] <= 1
    assert slo["met"] is (lat["p95"] <= 140)


def test_set_changes_the_result(cli):
    base, b4 = as_json(cli, "json-again"), as_json(cli, "json-batch-4")
    hist = {int(b) for b in b4["batch_size_histogram"]}
    assert max(hist) <= 4
    assert max(int(b) for b in base["batch_size_histogram"]) == 8
    assert b4["mean_batch_size"] <= 4
    assert b4["latency_ms"] != base["latency_ms"]


def test_same_seed_gives_identical_json_and_another_seed_does_not(cli):
    a, again, other = (ok(cli, k).stdout for k in ("json", "json-again", "json-seed-2"))
    assert a == again  # --trace-out does not change the result either
    assert a != other
    assert json.loads(a)["latency_ms"] != json.loads(other)["latency_ms"]


def test_toml_scenario_file_is_accepted(cli):
    d = as_json(cli, "toml")
    assert d["scenario"] == "toml-scenario"
    assert d["offered_rps"] == pytest.approx(50, rel=0.15)
    assert max(int(b) for b in d["batch_size_histogram"]) <= 4
    assert d["completed"] == 2 * (3000 - 500)
    assert d["slo"]["target_ms"] == 100


def test_trace_arrivals_resolve_relative_to_the_scenario_file(cli):
    d = as_json(cli, "trace-scenario")
    # 600 arrivals every 10 ms (run.requests 1000 is capped by the trace), 100 of them warm-up.
    assert d["completed"] == 2 * (600 - 100)
    assert d["offered_rps"] == pytest.approx(100, rel=1e-6)
    assert d["dropped"] == 0


def _strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_json_is_strict_json(cli):
    _strict_json(ok(cli, "json").stdout)


def test_json_is_strict_even_when_nothing_completes(cli):
    r = ok(cli, "all-dropped")
    d = json.loads(r.stdout)
    assert d["completed"] == 0 and d["drop_rate"] == 1.0
    _strict_json(r.stdout)


# --------------------------------------------------------------------------- --trace-out


def test_trace_out_writes_one_row_per_request_per_replication(cli):
    d, _ = cli
    summary = as_json(cli, "json")
    path = d / "trace.csv"
    text = path.read_text()
    assert text.splitlines()[0] == TRACE_HEADER
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == REQUESTS * REPLICATIONS
    for rep in range(REPLICATIONS):
        mine = [r for r in rows if int(r["replication"]) == rep]
        assert [int(r["request_id"]) for r in mine] == list(range(REQUESTS))
        warm = [int(r["warmup"]) for r in mine]
        assert warm == [1] * WARMUP + [0] * (REQUESTS - WARMUP)
        arrivals = [float(r["arrival_s"]) for r in mine]
        assert arrivals == sorted(arrivals)
    assert {int(r["replication"]) for r in rows} == set(range(REPLICATIONS))

    completed_measured = 0
    for r in rows:
        assert r["dropped"] == "0" and r["drop_reason"] == ""
        arrival, dispatch, start, end = (float(r[k]) for k in ("arrival_s", "dispatch_s", "start_s", "end_s"))
        assert arrival <= dispatch <= start < end
        assert float(r["latency_ms"]) == pytest.approx((end - arrival) * 1000 + 10, abs=1e-3)
        assert 1 <= int(r["batch_size"]) <= 8
        assert r["instance"] == "0" and r["source"] == "0"
        completed_measured += r["warmup"] == "0"
    assert completed_measured == summary["completed"]


def test_trace_out_marks_dropped_requests(cli):
    path = cli[0] / "drops.csv"
    d = as_json(cli, "drops")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2500
    dropped = [row for row in rows if row["dropped"] == "1"]
    assert dropped and all(row["drop_reason"] == "rejected" for row in dropped)
    assert all(row["latency_ms"] == "" and row["instance"] == "-1" for row in dropped)
    assert sum(row["warmup"] == "0" for row in dropped) == d["dropped"] == d["drops_by_reason"]["rejected"]
    assert d["drop_rate"] == pytest.approx(d["dropped"] / (d["dropped"] + d["completed"]))


# --------------------------------------------------------------------------- table


def test_table_leads_with_the_verdict(cli):
    lines = ok(cli, "table").stdout.splitlines()
    assert lines[0].startswith("capsim simulate: mini-challenge")  # header: what was run
    # The first line after the header is the answer.
    assert re.match(r"SLO p95 <= 140 ms at >= 120 rps: (MET|NOT MET|INCONCLUSIVE) \(", lines[1]), lines[1]
    assert any(line.strip().startswith("p95") for line in lines)


# --------------------------------------------------------------------------- invalid input

ERROR_LINE = re.compile(r"^capsim(?: simulate)?: error: (?P<path>[^:]+): \S")


def _check_invalid(r: subprocess.CompletedProcess, case: Bad) -> None:
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 2, f"exit {r.returncode}\n{r.stderr}"
    assert r.stdout == ""
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines, "no message on stderr"
    for line in lines:
        m = ERROR_LINE.match(line)
        assert m, f"not 'capsim: error: <field>: <problem>': {line!r}"
    if case.lines is not None:
        assert len(lines) == case.lines, r.stderr
    for s in case.expect:
        assert s in r.stderr, f"{s!r} not in:\n{r.stderr}"


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_input_exits_2_with_a_field_message(cli, case):
    _check_invalid(cli[1][case], INVALID[case])


def test_every_error_line_of_a_multi_problem_input_names_its_field(cli):
    r = cli[1]["wrong-types-file"]
    paths = [ERROR_LINE.match(line)["path"] for line in r.stderr.splitlines() if line.strip()]
    assert sorted(paths) == ["arrivals.rate_rps", "instances", "service.batch_latency_ms"]



def test_set_indexes_into_lists():
    from capsim.config import load_scenario

    sc = load_scenario("example-2-multi-camera", ["arrivals.streams.0.fps=30", "arrivals.streams.0.count=4"])
    assert (sc.arrivals.streams[0].fps, sc.arrivals.streams[0].count) == (30.0, 4)


def test_malformed_yaml_message_is_one_readable_line(tmp_path):
    from capsim.config import load_scenario
    from capsim.errors import ScenarioError

    p = tmp_path / "m.yaml"
    p.write_text("arrivals: {process: poisson, rate_rps: 5\nservice: [\n")
    with pytest.raises(ScenarioError) as exc:
        load_scenario(p)
    (line,) = exc.value.problems
    assert "not valid YAML at line" in line and "<unicode string>" not in line and "  " not in line


def test_closed_pipe_is_not_a_traceback():
    r = subprocess.run(f"{sys.executable} -m capsim.cli scenarios show mini-challenge | head -c 1 >/dev/null; "
                       f"{sys.executable} -m capsim.cli simulate --requests 3000 --replications 1 | head -n 1",
                       shell=True, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in r.stderr and r.stdout.startswith("capsim simulate: mini-challenge")
