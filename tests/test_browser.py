"""The app and the HTML report in a real browser: Debian's chromium driven by Playwright.

Screenshots land in test-artifacts/ (ignored by git; CI keeps them as artifacts).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

sync_api = pytest.importorskip("playwright.sync_api")

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs Debian's chromium before the tests")
        pytest.skip("no /usr/bin/chromium (apt-get install chromium)")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url():
    port = _free_port()
    log = open(ARTIFACTS.parent / "test-artifacts" / "streamlit.log", "w") if ARTIFACTS.exists() else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true",
                             "--browser.gatherUsageStats", "false"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read().strip() == b"ok":
                break
        except OSError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("streamlit did not come up within 90 s")
    yield url
    proc.terminate()
    proc.wait(timeout=20)


def _verdict(page) -> tuple[str, str]:
    el = page.locator(".capsim-verdict").first
    return el.get_attribute("data-verdict"), el.get_attribute("data-observed")


def test_app_in_a_browser_updates_the_verdict_when_the_rate_changes(browser, app_url):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(app_url)
    page.wait_for_selector(".capsim-verdict", timeout=120_000)
    before = _verdict(page)
    assert before[0] == "feasible" and float(before[1]) < 140  # mini-challenge at 120 rps
    page.wait_for_selector(".js-plotly-plot", timeout=60_000)
    page.screenshot(path=str(ARTIFACTS / "app-before.png"), full_page=True)

    # The offered-rate slider is the sidebar's first; End moves it to its maximum (2,000 rps).
    slider = page.get_by_role("slider").first
    slider.focus()
    slider.press("End")
    page.wait_for_function(
        "() => { const e = document.querySelector('.capsim-verdict');"
        " return e && e.getAttribute('data-verdict') === 'infeasible'; }", timeout=120_000)
    after = _verdict(page)
    assert after == ("infeasible", "None")  # overload: unstable, no latency figure
    assert "unstable" in page.locator(".capsim-verdict").first.inner_text()
    # the latency charts say so instead of drawing a distribution that only measures the run's length
    page.wait_for_function("() => document.body.innerText.includes('no latency distribution to show')",
                           timeout=120_000)
    page.screenshot(path=str(ARTIFACTS / "app-after-rate-change.png"), full_page=True)
    page.close()


def test_html_report_renders_its_charts_offline(browser, tmp_path):
    from capsim import report
    from capsim.config import load_scenario

    rep = report.build(load_scenario("mini-challenge", ["run.requests=20000", "run.replications=3"]))
    out = tmp_path / "report.html"
    report.write(rep, str(out))
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: errors.append(f"network request {r.url}") if r.url.startswith("http") else None)
    page.goto(out.as_uri())
    page.wait_for_selector(".plotly-graph-div .main-svg", timeout=60_000)
    traces = page.evaluate("() => Array.from(document.querySelectorAll('.plotly-graph-div'))"
                           ".map(d => (d.data || []).length)")
    assert len(traces) == len(report.figures(rep)) >= 7
    assert all(n > 0 for n in traces), traces
    drawn = page.evaluate("() => document.querySelectorAll('.plotly-graph-div .main-svg').length")
    assert drawn >= len(traces)
    assert page.locator("#verdict").inner_text() == rep.content["verdict"].upper()
    page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    assert errors == []
    page.close()


def test_app_takes_an_uploaded_scenario_file(browser, app_url, tmp_path):
    # A scenario the built-ins do not have: 30 ms per request, one instance, at 20 rps.
    sc = tmp_path / "my-service.yaml"
    sc.write_text("name: my-service\narrivals: {process: poisson, rate_rps: 20}\n"
                  "service: {batch_latency_ms: {1: 30}}\nbatching: {max_batch_size: 1}\n"
                  "slo: {percentile: 95, latency_ms: 200}\nrun: {requests: 20000, warmup_requests: 1000}\n")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(app_url)
    page.wait_for_selector(".capsim-verdict", timeout=120_000)
    page.get_by_text("upload a scenario file").click()
    page.get_by_text("scenario (YAML or TOML)").wait_for(timeout=60_000)  # the rerun drew the uploader
    page.locator("input[type='file'][accept*='yaml']").set_input_files(str(sc))
    page.wait_for_function("() => document.body.innerText.includes('my-service.yaml:')", timeout=120_000)
    verdict, observed = _verdict(page)
    assert verdict == "feasible"
    # M/D/1 at rho 0.6 with 30 ms service: p95 is about 4-5 service times, far under 200 ms
    assert 60 < float(observed) < 200
    page.screenshot(path=str(ARTIFACTS / "app-uploaded-scenario.png"), full_page=True)
    page.close()
