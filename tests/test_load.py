"""``capsim load`` against a real HTTP server.

Each test starts a small aiohttp server (``ToyServer``) on a free localhost port, in a thread with
its own event loop, that speaks the protocol of :mod:`capsim.validate.protocol` minimally: it
sleeps a known time per request (optionally one request much longer, optionally one request at
a time behind a lock), answers 200 with every timing header, or 503 ``X-Drop-Reason: rejected``
when too many requests are already in flight. The load generator runs for real against it
(library calls, and the CLI as a child process).
"""

from __future__ import annotations

import asyncio
import csv
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402

from capsim.config import Arrivals, StreamGroup  # noqa: E402
from capsim.validate import protocol as P  # noqa: E402
from capsim.validate.load import COLUMNS, LoadSpec, format_summary, run_load, write_csv  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SLEEP_S = 0.020


class ToyServer:
    """A protocol-speaking server whose service time and drops are known exactly."""

    def __init__(self, sleep_s: float = SLEEP_S, stall: dict[int, float] | None = None, serialize: bool = False,
                 max_in_flight: int | None = None):
        self.sleep_s, self.stall, self.serialize, self.max_in_flight = sleep_s, stall or {}, serialize, max_in_flight
        self.in_flight = 0
        self.sources: Counter[int] = Counter()
        self.shapes: Counter[str] = Counter()
        self.seen: dict[int, tuple] = {}  # request id -> (X-Priority, X-Deadline-Ms) as sent
        self.loop = asyncio.new_event_loop()
        self.lock: asyncio.Lock | None = None
        self.url = ""

    async def infer(self, request: web.Request) -> web.Response:
        t_start = time.perf_counter()
        await request.read()
        self.sources[int(request.headers.get(P.H_SOURCE, "-1"))] += 1
        self.shapes[request.headers.get(P.H_SHAPE, request.content_type)] += 1
        self.seen[int(request.headers.get(P.H_REQUEST_ID, "-1"))] = (request.headers.get(P.H_PRIORITY),
                                                                     request.headers.get(P.H_DEADLINE))
        if self.max_in_flight is not None and self.in_flight >= self.max_in_flight:
            return web.json_response({"error": "rejected", "detail": "queue full"}, status=503,
                                     headers={P.H_DROP: "rejected"})
        self.in_flight += 1
        try:
            t_queue = time.perf_counter()
            delay = self.stall.get(int(request.headers[P.H_REQUEST_ID]), self.sleep_s)
            if self.serialize:
                async with self.lock:
                    t_run = time.perf_counter()
                    await asyncio.sleep(delay)
            else:
                t_run = time.perf_counter()
                await asyncio.sleep(delay)
            t_done = time.perf_counter()
        finally:
            self.in_flight -= 1
        ms = lambda a, b: f"{(b - a) * 1e3:.3f}"  # noqa: E731
        headers = {h: "0.125" for h in P.TIMING_HEADERS}  # every timing header, known to this test or not
        headers.update({P.H_PREPROCESS: "0.5", P.H_QUEUE_WAIT: ms(t_queue, t_run), P.H_BATCH_SIZE: "1",
                        P.H_COMPUTE: ms(t_run, t_done), P.H_POSTPROCESS: "0.25",
                        P.H_SERVER_TOTAL: ms(t_start, t_done), P.H_INSTANCE: "0"})
        return web.json_response({"outputs": [1, 2, 3]}, headers=headers)

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _start(self) -> None:
        self.lock = asyncio.Lock()
        app = web.Application()
        app.router.add_post(P.INFER_PATH, self.infer)
        app.router.add_get(P.HEALTH_PATH, self.health)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self) -> ToyServer:
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def load(url: str, duration_s: float, **kw) -> object:
    kw.setdefault("payload", "tensor")
    return asyncio.run(run_load(LoadSpec(url=url, duration_s=duration_s, **kw)))


def constant(rate: float) -> Arrivals:
    return Arrivals(process="constant", rate_rps=rate)


@pytest.fixture(scope="module")
def constant_run():
    """Open loop, constant 50 rps for 2 s against a 20 ms server (shared by several tests)."""
    with ToyServer() as srv:
        return load(srv.url, 2.0, arrivals=constant(50)), srv


def test_open_loop_sends_on_schedule(constant_run):
    res, srv = constant_run
    s = res.summary
    assert s["sent"] == s["scheduled"] == 99 == s["completed"]  # times k/50 for k = 1..99 are < 2 s
    assert s["rejected_total"] == s["errors_total"] == 0
    sched = np.array([r["scheduled_s"] for r in res.rows])
    np.testing.assert_allclose(np.diff(sched), 0.02, atol=1e-9)
    assert s["send_lateness_ms"]["p99"] < 20
    assert 19 <= s["latency_ms"]["p50"] <= 80  # 20 ms of service; the rest is a busy 2-core box
    assert s["throughput_rps"] == pytest.approx(50, rel=0.05)
    assert s["server_ms"][P.H_BATCH_SIZE] == 1 and s["server_ms"][P.H_COMPUTE] == pytest.approx(20, abs=8)
    assert s["requests_by_instance"] == {"0": 99}
    assert set(s["server_ms"]) == set(P.TIMING_HEADERS) - {P.H_INSTANCE}  # a mean of every timing header
    assert s["server_ms"][P.H_POSTPROCESS] == 0.25
    assert 0 <= s["gap_ms"]["mean"] < 20  # client response time minus X-Server-Total-Ms
    assert 0 <= s["generator_cpu_percent"] < 400
    assert srv.shapes == {"3x224x224": 99}
    text = format_summary(res)
    for part in ("sent 99, completed 99", "p99", "server (mean)", "queue wait", "client - server", "send lateness"):
        assert part in text


def test_no_policy_headers_without_the_options(constant_run):
    res, srv = constant_run
    assert set(srv.seen.values()) == {(None, None)} and "by_priority" not in res.summary
    assert "priority" not in res.rows[0]


def test_priority_shares_and_deadline_headers(tmp_path):
    from capsim.validate.load import draw_priorities

    with ToyServer() as srv:
        res = load(srv.url, 1.0, arrivals=constant(100), priority_shares=[0.25, 0.75], deadline_ms=40, seed=7)
    assert len(res.rows) == 99
    sent = [r["priority"] for r in res.rows]
    assert sent == draw_priorities([0.25, 0.75], 99, 7)  # drawn from the seed: the same every run
    assert {i: (str(p), "40") for i, p in enumerate(sent)} == srv.seen
    by = res.summary["by_priority"]
    assert sorted(by) == [0, 1] and by[0]["sent"] + by[1]["sent"] == 99 and by[0]["sent"] == sent.count(0)
    assert by[0]["completed"] == by[0]["sent"] and by[0]["latency_ms"]["p95"] > 0
    assert "priority 0      sent" in format_summary(res) and "priority 1      sent" in format_summary(res)
    many = draw_priorities([0.25, 0.75], 20000, 7)
    assert many.count(0) / 20000 == pytest.approx(0.25, abs=0.015)
    write_csv(res, tmp_path / "rows.csv")
    with open(tmp_path / "rows.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == (*COLUMNS, "priority") and [int(r["priority"]) for r in rows] == sent


def test_csv_has_the_columns_and_one_row_per_request(constant_run, tmp_path):
    res, _ = constant_run
    path = tmp_path / "rows.csv"
    write_csv(res, path)
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0].keys()) == COLUMNS
    for h in (*P.TIMING_HEADERS, P.H_DROP, "scheduled_s", "sent_s", "received_s", "latency_ms", "status", "source"):
        assert h in COLUMNS
    assert len(rows) == res.summary["sent"] == 99
    assert [int(r["index"]) for r in rows] == list(range(99))
    assert {r["status"] for r in rows} == {"200"} and {r["outcome"] for r in rows} == {"ok"}
    r = rows[10]
    assert float(r["received_s"]) > float(r["sent_s"]) >= float(r["scheduled_s"]) - 1e-3
    assert float(r[P.H_SERVER_TOTAL]) > 0 and r[P.H_DROP] == "" and r[P.H_INSTANCE] == "0"


def test_no_coordinated_omission():
    # 25 rps against a 20 ms server; request 20 stalls 0.5 s. The requests scheduled during the
    # stall still go out on time.
    stall = {20: 0.5}
    with ToyServer(stall=stall) as srv:
        res = load(srv.url, 2.0, arrivals=constant(25))
    rows = res.rows
    s20 = rows[20]["scheduled_s"]
    during = [r for r in rows if s20 < r["scheduled_s"] < s20 + 0.5]
    assert len(during) >= 11
    assert max(r["send_lateness_ms"] for r in during) < 20
    assert rows[20]["latency_ms"] >= 490
    # A concurrent server answers the others in ~20 ms: nothing queued behind the stall.
    assert max(r["latency_ms"] for r in during) < 100

    # Behind a lock, the requests scheduled during the stall queue, and latency counted from their
    # scheduled time shows it: the first waits out the stall, each later one ~20 ms less
    # (40 ms between sends, 20 ms of service each) as the backlog drains.
    with ToyServer(stall=stall, serialize=True) as srv:
        res = load(srv.url, 2.0, arrivals=constant(25))
    rows = res.rows
    during = [r for r in rows if s20 < r["scheduled_s"] < s20 + 0.5]
    assert max(r["send_lateness_ms"] for r in during) < 20  # still sent on schedule
    lat = np.array([r["latency_ms"] for r in during])
    assert lat[0] > 400 and np.all(lat > 150)
    assert np.all(np.diff(lat) < 0) and np.median(np.diff(lat)) == pytest.approx(-20, abs=8)
    assert res.summary["latency_ms"]["p99"] > 400


def test_closed_loop_littles_law():
    # 4 clients, 50 ms per request: throughput = 4 / 0.050 = 80 rps. (At 20 ms the ~2-3 ms of
    # Python HTTP overhead per request on a small CI machine is already a 15 % effect.)
    with ToyServer(sleep_s=0.050) as srv:
        res = load(srv.url, 2.0, concurrency=4, shape=(3, 32, 32))
    s = res.summary
    assert s["errors_total"] == s["rejected_total"] == 0
    assert s["throughput_rps"] == pytest.approx(4 / 0.050, rel=0.15)
    # Little's law with the measured latency is tighter: throughput = clients / latency.
    assert s["throughput_rps"] == pytest.approx(4 / (s["latency_ms"]["mean"] / 1e3), rel=0.05)
    assert {r["source"] for r in res.rows} == {0, 1, 2, 3}
    assert max(r["send_lateness_ms"] for r in res.rows) == 0  # closed loop: sent when decided
    assert "closed loop, 4 clients" in format_summary(res)


def test_streams_carry_the_camera_index():
    arr = Arrivals(process="streams", streams=[StreamGroup(count=3, fps=10, jitter_ms=2)])
    with ToyServer() as srv:
        res = load(srv.url, 2.0, arrivals=arr, seed=7)
    per_cam = Counter(r["source"] for r in res.rows)
    assert sorted(per_cam) == [0, 1, 2] and dict(srv.sources) == dict(per_cam)
    for cam in range(3):
        assert per_cam[cam] in (19, 20, 21)  # 10 fps x 2 s, from a random phase
        t = np.array([r["scheduled_s"] for r in res.rows if r["source"] == cam])
        assert np.median(np.diff(t)) == pytest.approx(0.1, abs=0.01)
    assert res.summary["completed"] == len(res.rows)


def test_rejections_and_timeouts_are_counted_by_reason():
    # 200 rps at 50 ms each keeps ~10 in flight; the server takes 4, so most are rejected. Request 0
    # (never rejected: it is the first) takes 1 s against a 0.3 s client timeout.
    with ToyServer(sleep_s=0.05, max_in_flight=4, stall={0: 1.0}) as srv:
        res = load(srv.url, 1.0, arrivals=constant(200), timeout_s=0.3, payload="jpeg")
    s = res.summary
    statuses = Counter(r["status"] for r in res.rows)
    assert s["rejected"] == {"rejected": statuses[503]} and statuses[503] > 50
    assert s["errors"] == {"timeout": 1} and res.rows[0]["status"] == "error" and res.rows[0]["reason"] == "timeout"
    assert s["completed"] == statuses[200] > 20
    assert s["completed"] + s["rejected_total"] + s["errors_total"] == s["sent"] == 199
    assert all(r[P.H_DROP] == "rejected" for r in res.rows if r["status"] == 503)
    assert srv.shapes == {"image/jpeg": 199}
    assert f"rejected {statuses[503]} (rejected {statuses[503]}), errors 1 (timeout 1)" in format_summary(res)


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    # PYTHONPATH: this checkout's capsim, whatever the working directory.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "capsim.cli", "load", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=60)


def test_cli_run_writes_summary_and_csv(tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text("arrival_s,source\n100.0,0\n100.1,1\n100.2,0\n100.3,1\n100.4,0\n")
    out = tmp_path / "rows.csv"
    with ToyServer() as srv:
        p = _cli(srv.url + P.INFER_PATH, "--trace", str(trace), "--duration", "1", "--payload", "tensor",
                 "--shape", "3x32x32", "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert "sent 5, completed 5" in p.stdout and "load:  10%" in p.stderr and "Traceback" not in p.stderr
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["source"] for r in rows] == ["0", "1", "0", "1", "0"]
    assert [float(r["scheduled_s"]) for r in rows] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4], abs=1e-6)
    assert srv.shapes == {"3x32x32": 5}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("args, field", [
    (["--rate", "-5", "--duration", "1"], "--rate"),
    (["--rate", "5", "--duration", "0"], "--duration"),
    (["--streams", "6x", "--duration", "1"], "--streams"),
    (["--streams", "x25fps", "--duration", "1"], "--streams"),
    (["--trace", "no-such-trace.csv", "--duration", "1"], "--trace"),
    (["--rate", "5", "--duration", "1", "--shape", "3x224"], "--shape"),
    (["--rate", "5", "--duration", "1"], "URL"),  # nothing listens on the port
])
def test_cli_bad_input_exits_2_with_one_line(args, field, tmp_path):
    p = _cli(f"http://127.0.0.1:{_closed_port()}", *args, "--quiet", cwd=tmp_path)
    assert p.returncode == 2
    assert p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"capsim: error: {field}:"), p.stderr
    if field == "URL":
        assert "cannot reach" in lines[0] and "connection refused" in lines[0]


@pytest.mark.parametrize("arr, rel", [
    (Arrivals(process="poisson", rate_rps=1000), 0.05),
    # ~8 burst/calm cycles in 20 s: the count varies a lot around the mean rate.
    (Arrivals(process="bursty", rate_rps=200, burst_rate_rps=2000, mean_burst_s=0.5, mean_calm_s=2), 0.6),
    (Arrivals(process="streams", streams=[StreamGroup(count=6, fps=25, jitter_ms=3), StreamGroup(count=2, fps=10)]),
     0.01),
])
def test_schedule_is_capsims_own_arrival_process(arr, rel):
    from capsim.arrivals import generate
    from capsim.validate.load import schedule

    s = schedule(arr, 20.0, seed=3)
    assert np.all(s.times < 20) and np.all(np.diff(s.times) >= 0)
    assert len(s) == pytest.approx(arr.offered_rps() * 20, rel=rel)
    # The same draws as the simulator's: a prefix of generate() with the same seed.
    ref = generate(arr, len(s) + 1000, np.random.default_rng(3))
    if arr.process != "streams":  # streams draws depend on n (its horizon); check the rate per camera instead
        np.testing.assert_array_equal(s.times, ref.times[: len(s)])
    else:
        assert Counter(s.source.tolist()) == pytest.approx({c: 500 if c < 6 else 200 for c in range(8)}, abs=2)


def test_bursty_streams_speed_every_camera_up_inside_the_bursts():
    from capsim.arrivals import generate

    arr = Arrivals(process="streams", streams=[StreamGroup(count=6, fps=25)], burst_factor=3, mean_burst_s=1,
                   mean_calm_s=4)
    assert arr.offered_rps() == pytest.approx(150 * (4 + 3 * 1) / 5)
    s = generate(arr, 200_000, np.random.default_rng(5))
    inside = s.in_burst(s.times)
    burst_time = (np.minimum(s.bursts[:, 1], s.times[-1]) - s.bursts[:, 0]).clip(0).sum()
    assert inside.sum() / burst_time == pytest.approx(450, rel=0.01)          # 6 x 25 fps x 3
    assert (~inside).sum() / (s.times[-1] - burst_time) == pytest.approx(150, rel=0.01)
    # ~190 bursts of mean 1 s: the sample mean has a std of ~0.075 s
    assert np.mean(np.diff(s.bursts, axis=1)) == pytest.approx(1.0, abs=0.25)
    # A longer run extends the same burst schedule (the load generator and the simulator agree).
    short = generate(arr, 5_000, np.random.default_rng(5))
    assert np.array_equal(short.bursts, s.bursts[:len(short.bursts)])


def test_load_marks_the_requests_sent_inside_bursts(tmp_path):
    arr = Arrivals(process="streams", streams=[StreamGroup(count=2, fps=20)], burst_factor=4, mean_burst_s=0.5,
                   mean_calm_s=0.5)
    with ToyServer() as srv:
        res = load(srv.url, 3.0, arrivals=arr, seed=2)
    flags = [r["in_burst"] for r in res.rows]
    assert set(flags) == {True, False}
    b = res.summary["bursts"]
    assert b["in_bursts"]["sent"] == flags.count(True) and b["outside"]["sent"] == flags.count(False)
    assert b["in_bursts"]["drop_rate"] == 0.0 and b["in_bursts"]["latency_ms"]["p95"] > 0
    assert "in bursts" in format_summary(res) and "x4 fps in bursts" in res.summary["load"]
    write_csv(res, tmp_path / "rows.csv")
    with open(tmp_path / "rows.csv", newline="") as fh:
        assert [r["in_burst"] for r in csv.DictReader(fh)] == [str(f) for f in flags]


@pytest.mark.parametrize("args, field", [
    (["--rate", "5", "--burst", "3"], "--burst"),
    (["--streams", "2x10fps", "--burst", "0.5"], "--burst"),
    (["--streams", "2x10fps", "--burst-s", "1"], "--burst-s"),
    (["--streams", "2x10fps", "--burst", "2", "--calm-s", "0"], "--calm-s"),
])
def test_burst_options_refused_where_they_do_not_apply(args, field, tmp_path):
    p = _cli(f"http://127.0.0.1:{_closed_port()}", *args, "--duration", "1", "--quiet", cwd=tmp_path)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"capsim: error: {field}:"), p.stderr


def test_schedule_sends_poisson_at_each_steps_rate():
    from capsim.validate.load import parse_schedule

    arr = Arrivals(process="poisson", rate_schedule=parse_schedule("0:20,1:200", period_s=2.0))
    with ToyServer() as srv:
        res = load(srv.url, 2.0, arrivals=arr, seed=4)
    t = np.array([r["scheduled_s"] for r in res.rows])
    first, second = int((t < 1).sum()), int((t >= 1).sum())
    assert 5 <= first <= 40 and 150 <= second <= 250  # Poisson counts of mean 20 and 200, ~3.5 sigma
    assert res.summary["completed"] == len(res.rows)
    assert "poisson on a schedule (20 rps from 0 s, 200 rps from 1 s" in res.summary["load"]


@pytest.mark.parametrize("args, field", [
    (["--schedule", "0:20,x"], "--schedule"),
    (["--schedule", "5:20"], "--schedule"),        # the first step starts at 0 s
    (["--rate", "5", "--hold"], "--hold"),
    (["--rate", "5", "--period-s", "3"], "--period-s"),
])
def test_schedule_options_refused_with_one_line(args, field, tmp_path):
    p = _cli(f"http://127.0.0.1:{_closed_port()}", *args, "--duration", "1", "--quiet", cwd=tmp_path)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"capsim: error: {field}:"), p.stderr
