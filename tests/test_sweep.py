"""capsim sweep: grid and rate parsing, rows equal to single simulations, the Pareto column,
executors that agree (a process pool and a real Dask cluster), Ctrl-C keeping finished rows."""

import csv
import json
import signal
import subprocess
import sys
import time

import pytest

from capsim.config import load_scenario, scenario_data
from capsim.errors import CapsimError, ScenarioError
from capsim.plan import with_rate
from capsim.simulate import simulate
from capsim.sweep import (build_configs, flatten, mark_pareto, parse_grid, parse_rates, sweep, write_table)

SMALL = ["run.requests=6000", "run.warmup_requests=500", "run.replications=2"]


def _cli(*argv, timeout=300):
    return subprocess.run([sys.executable, "-m", "capsim.cli", *argv], capture_output=True, text=True,
                          timeout=timeout)


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------- parsing


def test_parse_rates_ranges_and_lists():
    assert parse_rates("40:100:20") == [40, 60, 80, 100]
    assert parse_rates("40:110:20") == [40, 60, 80, 100]  # STOP not on a step: not included
    assert parse_rates("0.5:1.5:0.5") == [0.5, 1.0, 1.5]
    assert parse_rates("120, 60") == [120, 60]


@pytest.mark.parametrize("spec, words", [("-5,10", "rate must be a rate > 0"), ("40:20:5", "below START"),
                                         ("1:2", "START:STOP:STEP"), ("10,abc", "not a number"),
                                         ("10,10", "repeated"), ("1:2:0", "STEP must be")])
def test_parse_rates_rejects_bad_input(spec, words):
    with pytest.raises(CapsimError, match="--rates") as exc:
        parse_rates(spec)
    assert words in str(exc.value)


def test_parse_grid_reads_yaml_scalars():
    a = parse_grid("batching.max_batch_size=1, 4,8")
    assert a.path == "batching.max_batch_size" and a.values == (1, 4, 8)
    assert parse_grid("queue.on_full=reject,drop_oldest").values == ("reject", "drop_oldest")
    for bad in ("batching.max_batch_size", "=1,2", "instances=1,,2", "instances=1,1"):
        with pytest.raises(CapsimError, match="--grid"):
            parse_grid(bad)


def test_grid_values_are_validated_before_anything_runs():
    data, base = scenario_data("mini-challenge")
    with pytest.raises(ScenarioError) as exc:  # the curve stops at 8
        build_configs(data, str(base), [parse_grid("batching.max_batch_size=4,16")])
    assert "batching.max_batch_size" in str(exc.value) and "max_batch_size=16" in str(exc.value)
    with pytest.raises(CapsimError, match="unknown field; did you mean max_batch_size"):
        build_configs(data, str(base), [parse_grid("batching.max_bach_size=4")])


# --------------------------------------------------------------------------- rows


def test_each_row_is_the_flattened_simulation_of_its_point():
    data, base = scenario_data("mini-challenge", SMALL)
    res = sweep(data, str(base), [parse_grid("batching.max_batch_size=4,8")], rates=[60, 150], workers=1)
    assert [(r["batching.max_batch_size"], r["rate_rps"]) for r in res.rows] == [(4, 60), (4, 150), (8, 60), (8, 150)]
    for r in res.rows:
        sc = load_scenario("mini-challenge", SMALL + [f"batching.max_batch_size={r['batching.max_batch_size']}"])
        want = simulate(with_rate(sc, r["rate_rps"])).to_dict()
        assert r["stable"] == want["stable"]
        assert r["throughput_rps"] == want["throughput_rps"]
        assert r["completed"] == want["completed"]
        if want["stable"]:
            assert r["latency_ms.p95"] == want["latency_ms"]["p95"]
            assert [r["latency_ci_ms.p99.lo"], r["latency_ci_ms.p99.hi"]] == want["latency_ci_ms"]["p99"]
            assert r["slo.verdict"] == want["slo"]["verdict"]
        else:  # 150 rps is above batch 4's capacity (4 / 34 ms = 118 rps): no latency, same columns
            assert r["latency_ms.p95"] is None and r["latency_ci_ms.p95.lo"] is None
    assert res.rows[1]["stable"] is False and res.rows[0]["stable"] is True
    assert set(res.rows[0]) == set(res.rows[1])


def test_flatten_names_nested_fields_and_intervals():
    assert flatten({"a": {"b": 1, "ci": [2, 3]}, "c": None}) == {"a.b": 1, "a.ci.lo": 2, "a.ci.hi": 3, "c": None}


def test_pareto_marks_exactly_the_non_dominated_rows():
    rows = [{"throughput_rps": t, "latency_ms.p95": l, "stable": s, "pareto": False}
            for t, l, s in [(100, 50, True), (100, 60, True), (120, 80, True), (90, 40, True), (95, 45, True),
                            (80, 45, True), (130, 70, False), (120, 80, True)]]
    mark_pareto(rows, "latency_ms.p95")
    assert [r["pareto"] for r in rows] == [True, False, True, True, True, False, False, True]


def test_pareto_column_on_a_real_sweep():
    data, base = scenario_data("mini-challenge", SMALL)
    res = sweep(data, str(base), [parse_grid("batching.max_queue_delay_ms=0,10"),
                                   parse_grid("batching.max_batch_size=2,8")], rates=[40, 100], workers=1)
    key = res.latency_key
    assert key == "latency_ms.p95"
    ok = [r for r in res.rows if r["stable"]]
    front = [r for r in ok if r["pareto"]]
    assert front

    def dominates(a, b):
        return (a["throughput_rps"] >= b["throughput_rps"] and a[key] <= b[key]
                and (a["throughput_rps"] > b["throughput_rps"] or a[key] < b[key]))

    for r in ok:
        beaten = any(dominates(o, r) for o in ok)
        assert r["pareto"] == (not beaten)
    assert not any(r["pareto"] for r in res.rows if not r["stable"])


# --------------------------------------------------------------------------- executors


def test_process_pool_and_one_process_give_identical_rows():
    data, base = scenario_data("example-1-single-image-gpu", SMALL)
    axes = [parse_grid("batching.max_batch_size=1,4"), parse_grid("instances=1,2")]
    one = sweep(data, str(base), axes, rates=[20, 40, 60], workers=1)
    pool = sweep(data, str(base), axes, rates=[20, 40, 60], workers=2)
    assert one.rows == pool.rows and len(one.rows) == 12


def test_dask_cluster_gives_the_same_table_as_the_local_executor(tmp_path):
    from dask.distributed import LocalCluster

    data, base = scenario_data("mini-challenge", SMALL)
    axes = [parse_grid("batching.max_batch_size=4,8"), parse_grid("batching.max_queue_delay_ms=0,5")]
    local = sweep(data, str(base), axes, rates=[60, 120], workers=2)
    # A real cluster of separate worker processes, reached through its scheduler address.
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=40) as cluster:
        remote = sweep(data, str(base), axes, rates=[60, 120], executor="dask", scheduler=cluster.scheduler_address)
    assert remote.rows == local.rows
    write_table(local, str(tmp_path / "local.csv"))
    write_table(remote, str(tmp_path / "dask.csv"))
    assert (tmp_path / "local.csv").read_bytes() == (tmp_path / "dask.csv").read_bytes()


def test_cli_dask_without_a_scheduler_starts_a_local_cluster(tmp_path):
    out_d, out_l = tmp_path / "d.csv", tmp_path / "l.csv"
    common = ["sweep", "mini-challenge", "--grid", "batching.max_batch_size=4,8", "--rates", "60,120", "--quiet",
              *sum((["--set", s] for s in SMALL), [])]
    d = _cli(*common, "--executor", "dask", "--workers", "2", "--out", str(out_d))
    assert d.returncode == 0, d.stderr
    l = _cli(*common, "--out", str(out_l))
    assert l.returncode == 0, l.stderr
    assert out_d.read_bytes() == out_l.read_bytes()
    assert "4/4 points" in d.stdout


# --------------------------------------------------------------------------- files and the CLI


def test_csv_and_parquet_hold_the_same_table(tmp_path):
    import pyarrow.parquet as pq

    base = ["sweep", "example-4-littles-law", "--grid", "instances=1,2", "--rates", "30:60:15", "--quiet",
            *sum((["--set", s] for s in SMALL), [])]
    assert _cli(*base, "--out", str(tmp_path / "s.csv")).returncode == 0
    r = _cli(*base, "--out", str(tmp_path / "s.parquet"))
    assert r.returncode == 0, r.stderr
    rows = _read_csv(tmp_path / "s.csv")
    table = pq.read_table(tmp_path / "s.parquet").to_pylist()
    assert len(rows) == len(table) == 6
    assert list(rows[0]) == list(table[0])
    for a, b in zip(rows, table):
        assert float(a["throughput_rps"]) == b["throughput_rps"]
        assert (a["latency_ms.p95"] == "") == (b["latency_ms.p95"] is None)
        assert a["pareto"] == str(b["pareto"])
    # 60 rps on one 40 ms instance is overload: empty latency, not a number
    overload = [a for a in rows if a["instances"] == "1" and a["rate_rps"] == "60.0"][0]
    assert overload["stable"] == "False" and overload["latency_ms.p99"] == ""


@pytest.mark.parametrize("argv, field", [
    (["--grid", "batching.max_batch_size=0,4"], "batching.max_batch_size"),
    (["--grid", "nope.field=1"], "nope: unknown field"),
    (["--rates", "-3"], "--rates"),
    (["--scheduler", "tcp://127.0.0.1:1"], "--scheduler"),
    (["--workers", "0"], "--workers"),
    (["--out", "table.xlsx"], "--out"),
])
def test_sweep_bad_input_exits_2_with_one_line(argv, field, tmp_path):
    out = [] if "--out" in argv else ["--out", str(tmp_path / "x.csv")]
    r = _cli("sweep", "mini-challenge", "--quiet", *argv, *out)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and field in lines[0] and "Traceback" not in r.stderr


def test_rates_on_a_trace_scenario_are_refused(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("\n".join(f"{i * 0.01:.3f}" for i in range(3000)))
    sc = tmp_path / "sc.yaml"
    sc.write_text(json.dumps({"arrivals": {"process": "trace", "path": "t.csv"},
                              "service": {"batch_latency_ms": {1: 5}},
                              "run": {"requests": 2000, "warmup_requests": 100, "replications": 1}}))
    r = _cli("sweep", str(sc), "--rates", "50,100", "--out", str(tmp_path / "o.csv"), "--quiet")
    assert r.returncode == 2 and "arrivals.process" in r.stderr and "trace" in r.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_keeps_the_finished_rows(tmp_path, workers):
    out = tmp_path / "partial.csv"
    # The SimPy engine makes each point take a while, so the interrupt lands mid-sweep.
    p = subprocess.Popen([sys.executable, "-m", "capsim.cli", "sweep", "mini-challenge", "--engine", "simpy",
                          "--workers", str(workers), "--rates", "20:200:2", "--set", "run.requests=20000",
                          "--set", "run.warmup_requests=200", "--set", "run.replications=1", "--out", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.time() + 120
    while time.time() < deadline:  # wait for the first progress line: some rows are done
        line = p.stderr.readline()
        lines.append(line)
        if line.startswith("sweep: ") and not line.startswith("sweep: 0/"):
            break
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 130, stderr
    rows = _read_csv(out)
    assert 0 < len(rows) < 91
    rates = [float(r["rate_rps"]) for r in rows]
    if workers == 1:  # one process runs the points in order: the kept rows are the first ones
        assert rates == [20 + 2 * i for i in range(len(rows))]
    else:  # a pool finishes chunks out of order: the kept rows are still in point order
        assert rates == sorted(rates) and set(rates) <= {20.0 + 2 * i for i in range(91)}
    assert f"kept the {len(rows)} finished rows of 91" in stderr
    assert all(r["throughput_rps"] for r in rows)
