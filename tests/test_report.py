"""capsim report: the same answer as capsim plan, every section present, one self-contained HTML
file, Markdown with its charts (or a note), JSON as data; bad input exits 2."""

import json
import re
import subprocess
import sys

import pytest

pytest.importorskip("plotly")

from capsim import report  # noqa: E402
from capsim.config import load_scenario  # noqa: E402
from capsim.plan import plan  # noqa: E402


def _cli(*argv):
    return subprocess.run([sys.executable, "-m", "capsim.cli", *argv], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def mini_report():
    return report.build(load_scenario("mini-challenge"), with_plan=True)


def test_report_answer_equals_the_planners(mini_report):
    p = plan(load_scenario("mini-challenge")).to_dict()
    c = mini_report.content
    assert c["verdict"] == p["verdict"] == "feasible"
    for k in ("mode", "max_batch_size", "max_queue_delay_ms", "instances"):
        assert c["recommended"][k] == p["recommended"][k]
    assert c["plan"]["max_rate_rps"] == p["max_rate_rps"]


def test_report_content_has_every_section(mini_report):
    c = mini_report.content
    assert c["question"]["text"] == "Can mini-challenge serve 120 rps with p95 <= 140 ms?"
    assert c["result"]["latency_ms"]["p95"] > c["napkin"]["napkin_latency_ms"]  # queueing the napkin ignores
    a = c["assumptions"]
    assert a["seed"] == 1 and a["replications"] == 5 and "arrivals:" in a["scenario_yaml"]
    assert a["versions"]["numpy"] and a["versions"]["simpy"] and a["date"]
    rate = c["curves"]["rate"]
    p95 = [p["p95"] for p in rate if p["stable"]]
    assert p95 == sorted(p95)  # more load, more latency
    assert c["curves"]["knee_rps"] and 100 < c["curves"]["knee_rps"] < 167  # below batch 8's ceiling
    batch = {p["max_batch_size"]: p for p in c["curves"]["batch"]}
    assert not batch[1]["stable"] and batch[8]["stable"]  # 1 / 25 ms = 40 rps cannot carry 120


def test_html_is_self_contained(mini_report, tmp_path):
    out = tmp_path / "r.html"
    report.write(mini_report, str(out))
    text = out.read_text()
    assert "verdict feasible" in text and "max batch" in text.lower()
    assert not re.search(r"<script[^>]+src=", text)  # plotly.js inlined, nothing fetched
    assert text.count("Plotly.newPlot") == len(report.figures(mini_report)) >= 7
    assert "calibration profile" in text and "seed" in text


def test_markdown_has_tables_and_charts_or_a_note(mini_report, tmp_path):
    out = tmp_path / "r.md"
    files = report.write(mini_report, str(out))
    text = out.read_text()
    assert "| verdict | FEASIBLE |" in text and "## Napkin vs simulation" in text
    pngs = [f for f in files if f.suffix == ".png"]
    if pngs:
        assert len(pngs) == len(report.figures(mini_report))
        for p in pngs:
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert f"](r_files/{p.name})" in text
    else:
        assert "static image export is not available" in text


def test_json_is_the_content(mini_report, tmp_path):
    out = tmp_path / "r.json"
    report.write(mini_report, str(out))
    data = json.loads(out.read_text())
    assert data["verdict"] == "feasible" and data["recommended"]["max_batch_size"] == 8
    assert set(data) >= {"question", "verdict", "recommended", "result", "napkin", "curves", "assumptions", "plan"}


def test_cli_report_with_a_sweep_table(tmp_path):
    sweep_csv = tmp_path / "s.csv"
    r = _cli("sweep", "example-4-littles-law", "--grid", "instances=1,2", "--rates", "20,40", "--quiet",
             "--set", "run.requests=5000", "--set", "run.warmup_requests=500", "--out", str(sweep_csv))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "rep.json"
    r = _cli("report", "example-4-littles-law", "--sweep", str(sweep_csv), "--out", str(out), "--quiet",
             "--set", "run.requests=5000", "--set", "run.warmup_requests=500")
    assert r.returncode == 0, r.stderr
    s = json.loads(out.read_text())["sweep"]
    assert s["points"] == 4 and s["pareto"] and "instances" in s["pareto_columns"]


@pytest.mark.parametrize("argv, words", [
    (["--out", "{tmp}/r.pdf"], "r.pdf: write a .html, .md or .json report"),
    (["--sweep", "/nonexistent.csv", "--out", "{tmp}/r.json"], "--sweep"),
    (["--set", "instances=0", "--out", "{tmp}/r.json"], "instances"),
])
def test_report_bad_input_exits_2(argv, words, tmp_path):
    argv = [a.format(tmp=tmp_path) for a in argv]
    r = _cli("report", "mini-challenge", "--quiet", *argv)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and words in lines[0]


def test_policy_charts_in_the_report(tmp_path):
    sc = load_scenario("mini-challenge", ["priority.levels=[{share: 0.2}, {share: 0.8, max_size: 64}]",
                                          "autoscale.min_instances=1", "autoscale.max_instances=3",
                                          "autoscale.window_s=5", "autoscale.warmup_s=3", "arrivals.rate_rps=250",
                                          "run.requests=20000", "run.replications=2"])
    rep = report.build(sc)
    figs = report.figures(rep)
    prio, inst = figs["priority"], figs["instances"]
    levels = rep.result.policies["priority"]
    assert list(prio.data[0].x) == ["level 0", "level 1"]
    assert list(prio.data[1].y) == pytest.approx([100 * lv["drop_rate"] for lv in levels])
    serving = rep.result.policies["autoscale"]["serving"]
    assert list(inst.data[0].y) == serving["count"] and max(serving["count"]) > 1  # it scaled out
    out = tmp_path / "r.html"
    report.write(rep, str(out))
    text = out.read_text()
    assert "id='chart-priority'" in text and "id='chart-instances'" in text


def test_report_on_a_closed_loop_scenario(tmp_path):
    sc = load_scenario("mini-challenge", ["arrivals.rate_rps=null", "arrivals.process=closed",
                                          "arrivals.concurrency=8", "arrivals.think_ms=20", "run.requests=20000",
                                          "run.replications=2"])
    rep = report.build(sc)
    c = rep.content
    # no rate to rescale: no max rate and no rate curve, and the question names the clients
    assert c["card"]["max_rate_rps"] is None and c["curves"]["rate"] is None and c["curves"]["batch"]
    assert c["question"]["text"].startswith("Can mini-challenge serve 8 closed-loop clients (think 20 ms; ")
    assert "8 closed-loop clients" in report.answer(c)
    report.write(rep, str(tmp_path / "r.html"))
    assert "rate_curve" not in report.figures(rep)
