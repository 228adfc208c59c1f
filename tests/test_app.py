"""The Streamlit app under streamlit.testing (AppTest): it loads on every built-in scenario, and
its numbers move the way queueing says when a knob moves."""

from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from capsim import scenarios  # noqa: E402
from capsim.config import field_spec, load_scenario  # noqa: E402
from capsim.knobs import knobs_for  # noqa: E402

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def _app(**state) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    assert not at.exception, at.exception
    return at


def _metric(at: AppTest, label_start: str) -> str:
    for m in at.metric:
        if m.label.startswith(label_start):
            return m.value
    raise AssertionError(f"no metric {label_start!r}: {[m.label for m in at.metric]}")


def _verdict(at: AppTest) -> str:
    for md in at.markdown:
        if "capsim-verdict" in md.value:
            return md.value.split("data-verdict='", 1)[1].split("'", 1)[0]
    raise AssertionError("no verdict card")


@pytest.mark.parametrize("name", scenarios.names())
def test_app_loads_on_every_builtin_scenario(name):
    at = _app()
    at.selectbox(key="builtin").set_value(name).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert _verdict(at) in ("feasible", "infeasible", "inconclusive")
    # the knob for the offered rate shows the scenario's rate (closed-loop clients have no rate knob)
    rate = load_scenario(name).arrivals.offered_rps()
    if rate is None:
        assert "offered_rps" not in [s.key for s in at.slider]
    else:
        assert at.slider(key="offered_rps").value == pytest.approx(rate)


def test_more_load_raises_p95_and_more_instances_lower_it():
    at = _app()
    p95_120 = float(_metric(at, "p95"))
    at.slider(key="offered_rps").set_value(140.0).run()
    p95_140 = float(_metric(at, "p95"))
    assert p95_140 > p95_120 + 5  # 140 rps is much closer to batch 8's 167 rps ceiling
    at.slider(key="instances").set_value(2).run()
    p95_2 = float(_metric(at, "p95"))
    assert p95_2 < p95_140
    # far above what one instance can do: unstable, reported as such (no latency number)
    at.slider(key="instances").set_value(1).run()
    at.slider(key="offered_rps").set_value(400.0).run()
    assert _metric(at, "p95") == "unstable" and _verdict(at) == "infeasible"


def test_widgets_come_from_the_field_definitions():
    sc = load_scenario("mini-challenge")
    at = _app()
    for k in knobs_for(sc):
        if k.path == "offered_rps" or k.kind == "choice":
            continue
        w = at.slider(key=k.path)
        spec = field_spec(k.path)
        assert spec.help in w.help  # the scenario model's help text, not a second copy
        assert w.label == k.label and (spec.unit in w.label if spec.unit else True)
        assert w.min == k.lo and w.max == k.hi


def test_a_shipped_profile_drives_the_service_times():
    at = _app()
    p95_seed = float(_metric(at, "p95"))
    at.selectbox(key="profile").set_value("resnet18-onnxruntime-cpu-int8.json").run()
    assert not at.exception and not at.error
    # the INT8 CPU profile is far slower than the seed's 48 ms GPU batch: 120 rps cannot be served
    assert _metric(at, "p95") == "unstable" or float(_metric(at, "p95")) > p95_seed


def test_compare_mode_highlights_what_differs():
    at = _app()
    at.toggle(key="compare").set_value(True).run()
    at.slider(key="batching.max_queue_delay_ms").set_value(0.0).run()
    assert not at.exception
    text = " ".join(md.value for md in at.markdown)
    assert "A (pinned)" in text and "B (current)" in text and "Settings that differ" in text
    settings = at.dataframe[0].value
    assert list(settings["setting"]) == ["batching.max_queue_delay_ms"]
    assert list(settings["A"]) == ["10.0"] and list(settings["B"]) == ["0.0"]


def test_plan_button_shows_the_planners_table():
    at = _app()
    at.button(key="plan").click().run()
    assert not at.exception
    table = at.dataframe[0].value
    assert table.iloc[0]["verdict"] == "feasible" and table.iloc[0]["max batch"] == 8
    assert any("FEASIBLE" in md.value for md in at.markdown)


def test_export_buttons_produce_the_report_and_the_sweep_table():
    import csv
    import io
    import json
    import zipfile

    at = _app()
    at.button(key="prep_report").click().run()
    assert not at.exception
    html_text, md_zip, js = at.session_state["report"]
    assert "<html" in html_text and "plotly" in html_text
    assert json.loads(js)["verdict"] == _verdict(at)
    names = zipfile.ZipFile(io.BytesIO(md_zip)).namelist()
    assert "report.md" in names
    at.button(key="sweep").click().run()
    assert not at.exception
    rows = list(csv.DictReader(io.StringIO(at.session_state["sweep_csv"].decode())))
    assert len(rows) == 4 * 8 and "pareto" in rows[0]  # max batch 1,2,4,8 x 8 rates
    assert any(r["pareto"] == "True" for r in rows)


def test_capsim_ui_serves_the_app(tmp_path):
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "capsim.cli", "ui", "--port", str(port), "--host", "127.0.0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**__import__("os").environ, "STREAMLIT_SERVER_HEADLESS": "true"})
    try:
        deadline, ok = time.time() + 90, False
        while time.time() < deadline and not ok:
            try:
                ok = urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read() == b"ok"
            except OSError:
                time.sleep(0.3)
        assert ok, "capsim ui did not serve within 90 s"
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
        assert "<div id=\"root\">" in page or "streamlit" in page.lower()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    # stopping `capsim ui` stops the server itself (no streamlit left running behind it)
    deadline, up = time.time() + 10, True
    while time.time() < deadline and up:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1)
            time.sleep(0.3)
        except OSError:
            up = False
    assert not up, "capsim ui left its streamlit server running after it was stopped"


def test_capsim_ui_rejects_a_bad_port():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "capsim.cli", "ui", "--port", "70000"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "--port" in r.stderr


def test_closed_loop_scenario_runs_without_a_rate_knob(tmp_path):
    from capsim import knobs
    from capsim.config import load_scenario

    sc = load_scenario("mini-challenge", ["arrivals.rate_rps=null", "arrivals.process=closed",
                                          "arrivals.concurrency=8", "arrivals.think_ms=20"])
    assert "offered_rps" not in [k.path for k in knobs.knobs_for(sc)]
    assert "offered_rps" in [k.path for k in knobs.knobs_for(load_scenario("mini-challenge"))]


def test_a_deadline_knob_drops_stale_requests_under_overload():
    at = _app()
    at.slider(key="offered_rps").set_value(220.0).run()  # above the 166.7 rps capacity bound
    assert "unstable" in " ".join(m.value for m in at.markdown).lower()
    at.slider(key="queue.deadline_ms").set_value(120.0).run()
    assert not at.exception, at.exception
    text = " ".join(m.value for m in at.markdown).lower()
    assert "unstable" not in text  # stale requests are dropped instead of piling up
