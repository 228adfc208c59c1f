"""capsim serve end to end: a real server process with a real model on a free localhost port,
real HTTP requests. Accounting, timing headers, /metrics, caps under overload, graceful shutdown."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

aiohttp = pytest.importorskip("aiohttp")
pytest.importorskip("onnxruntime")

from capsim.calibrate.prepost import make_jpegs  # noqa: E402
from capsim.validate import protocol as P  # noqa: E402


class Server:
    """``capsim serve ... --port 0`` in a subprocess; its URL read from its first stdout line."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "capsim.cli", "serve", "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        m = re.search(r"listening on (http://\S+)", line)
        if not m:
            self.proc.kill()
            raise AssertionError(f"server did not start: {line!r} {self.proc.stderr.read()}")
        self.url = m.group(1)

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, err
        return err


async def _send(session, url, body, ctype="image/jpeg", **headers):
    async with session.post(P.infer_url(url), data=body, headers={"Content-Type": ctype, **headers}) as r:
        return r.status, dict(r.headers), await r.read()


async def _burst(url, bodies, gap_s=0.0, **headers):
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        tasks = []
        for b in bodies:
            tasks.append(asyncio.ensure_future(_send(s, url, b, **headers)))
            if gap_s:
                await asyncio.sleep(gap_s)
        return await asyncio.gather(*tasks)


def _metrics(url) -> dict[str, float]:
    import urllib.request

    text = urllib.request.urlopen(url + P.METRICS_PATH, timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


@pytest.fixture(scope="module")
def jpegs():
    return make_jpegs(4, size=(320, 240))


def test_server_batches_and_reports_timings(jpegs):
    srv = Server("--model", "tiny_cnn", "--max-batch-size", "4", "--max-queue-delay-ms", "20")
    try:
        res = asyncio.run(_burst(srv.url, [jpegs[i % 4] for i in range(40)], gap_s=0.002))
        assert all(st == 200 for st, _, _ in res)
        sizes = [int(h[P.H_BATCH_SIZE]) for _, h, _ in res]
        assert max(sizes) == 4 and min(sizes) >= 1  # requests 2 ms apart with a 20 ms window batch up
        for _, h, body in res:
            for name in P.TIMING_HEADERS:
                assert name in h, name
            total = float(h[P.H_SERVER_TOTAL])
            parts = (float(h[P.H_PREPROCESS]) + float(h[P.H_QUEUE_WAIT]) + float(h[P.H_COMPUTE])
                     + float(h[P.H_BATCH_OVERHEAD]))
            assert parts <= total + 0.5  # the parts fit inside the server's total
            assert 0 <= float(h[P.H_BATCH_OVERHEAD]) < 50  # the hops to the instance's thread and back: short
            assert float(h[P.H_QUEUE_WAIT]) <= 20 + 30  # never much past the 20 ms window (one instance busy)
            assert b'"top5"' in body
        m = _metrics(srv.url)
        assert m["capsim_requests_received_total"] == 40
        assert m['capsim_requests_total{outcome="completed"}'] == 40
        assert m["capsim_batch_size_sum"] == 40 and m['capsim_batch_size_bucket{le="+Inf"}'] == m["capsim_batch_size_count"]
        assert m["capsim_queue_length"] == 0
        # a tensor body works too; a wrong shape is a 400 with a reason
        ok = asyncio.run(_burst(srv.url, [np.zeros((3, 32, 32), np.float32).tobytes()],
                                ctype="application/octet-stream", **{P.H_SHAPE: "3x32x32"}))
        assert ok[0][0] == 200
        bad = asyncio.run(_burst(srv.url, [b"\0" * 12], ctype="application/octet-stream"))
        assert bad[0][0] == 400 and b"float32" in bad[0][2]
    finally:
        err = srv.stop()
    assert "completed 41" in err and "bad_request 1" in err


# A burst of raw tensors (no decode to pace them) at resnet18 (~25-50 ms a batch on 2 cores)
# builds a real queue, whatever the machine's speed.
TENSOR = np.zeros((3, 224, 224), np.float32).tobytes()
BURST = dict(ctype="application/octet-stream", **{P.H_SHAPE: "3x224x224"})


def test_queue_cap_of_one_rejects_under_overload():
    # one instance, no batching, a cap of one waiting request: a burst of 30 cannot all be queued
    srv = Server("--model", "resnet18", "--max-batch-size", "1", "--max-queue-delay-ms", "0", "--queue-max-size", "1",
                 "--preprocess-workers", "2")
    try:
        res = asyncio.run(_burst(srv.url, [TENSOR] * 30, **BURST))
        codes = [st for st, _, _ in res]
        rejected = [h for st, h, _ in res if st == 503]
        assert codes.count(200) + len(rejected) == 30
        assert rejected and all(h[P.H_DROP] == "rejected" for h in rejected)
        m = _metrics(srv.url)
        assert m['capsim_requests_total{outcome="rejected"}'] == len(rejected)
        assert m['capsim_requests_total{outcome="completed"}'] == codes.count(200)
        assert m["capsim_requests_received_total"] == 30
    finally:
        srv.stop()


def test_drop_oldest_and_timeouts_are_accounted():
    srv = Server("--model", "resnet18", "--max-batch-size", "2", "--max-queue-delay-ms", "0", "--queue-max-size", "3",
                 "--on-full", "drop_oldest", "--queue-timeout-ms", "30", "--preprocess-workers", "2")
    try:
        res = asyncio.run(_burst(srv.url, [TENSOR] * 40, **BURST))
        reasons = [h.get(P.H_DROP) for st, h, _ in res if st == 503]
        assert set(reasons) <= {"dropped_oldest", "timeout"} and "dropped_oldest" in reasons
        m = _metrics(srv.url)
        total = sum(v for k, v in m.items() if k.startswith("capsim_requests_total{"))
        assert total == m["capsim_requests_received_total"] == 40
    finally:
        srv.stop()


def test_graceful_shutdown_finishes_what_it_accepted(jpegs):
    srv = Server("--model", "tiny_cnn", "--max-batch-size", "8", "--max-queue-delay-ms", "200")

    async def go():
        async with aiohttp.ClientSession() as s:
            tasks = [asyncio.ensure_future(_send(s, srv.url, jpegs[2])) for _ in range(6)]
            await asyncio.sleep(0.1)  # queued, waiting for the 200 ms window
            srv.proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*tasks)

    res = asyncio.run(go())
    _, err = srv.proc.communicate(timeout=60)
    assert srv.proc.returncode == 0
    assert [st for st, _, _ in res] == [200] * 6  # the queued requests ran (early: nothing else could join)
    assert "completed 6" in err


def test_graceful_shutdown_waits_for_requests_still_decoding():
    # Two 4000x3000 JPEGs take ~0.2 s each on the one decode thread: SIGTERM arrives while the
    # first decodes and the second waits for the thread. Both were accepted, so both are answered.
    big = make_jpegs(1, size=(4000, 3000))[0]
    srv = Server("--model", "noop", "--max-batch-size", "1", "--max-queue-delay-ms", "0")

    async def go():
        async with aiohttp.ClientSession() as s:
            tasks = [asyncio.ensure_future(_send(s, srv.url, big)) for _ in range(2)]
            for _ in range(2000):  # until the server has read both (the first is then decoding)
                if (await asyncio.to_thread(_metrics, srv.url)).get("capsim_requests_received_total", 0) >= 2:
                    break
                await asyncio.sleep(0.005)
            srv.proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*tasks)

    res = asyncio.run(go())
    _, err = srv.proc.communicate(timeout=60)
    assert srv.proc.returncode == 0
    assert [st for st, _, _ in res] == [200, 200]
    assert "completed 2" in err


# --------------------------------------------------------------------------- production policies


@pytest.fixture(scope="module")
def resnet18_onnx(tmp_path_factory):
    """resnet18 exported once: the servers below open the file (about a second) instead of building
    and exporting the model each time."""
    from capsim.calibrate import zoo
    from capsim.calibrate.export import export_onnx

    path = tmp_path_factory.mktemp("model") / "resnet18.onnx"
    export_onnx(zoo.build("resnet18", seed=0), path, (3, 224, 224))
    return ["--model-file", str(path), "--input-shape", "3x224x224"]


def _accounted(m: dict[str, float]) -> float:
    """Sum of every outcome counter: must equal the requests received."""
    return sum(v for k, v in m.items() if k.startswith("capsim_requests_total{"))


def test_priority_lanes_protect_the_high_level_under_overload(resnet18_onnx):
    # A 0.2 s burst of ~40 tensors (~12 at level 0) at resnet18 one at a time (B=1): level 0 is
    # uncapped, level 1 holds at most 2. Level 0 always goes first, so it completes everything and
    # finishes before the level-1 requests that were queued; level 1 loses most of its requests.
    from capsim.config import Arrivals
    from capsim.validate.load import LoadSpec, format_summary, run_load

    srv = Server(*resnet18_onnx, "--max-batch-size", "1", "--max-queue-delay-ms", "0",
                 "--priority-levels", "2", "--level-max-size", "0,2", "--level-on-full", "reject")
    try:
        spec = LoadSpec(url=srv.url, duration_s=0.2, arrivals=Arrivals(process="constant", rate_rps=200),
                        payload="tensor", priority_shares=[0.3, 0.7], seed=3)
        res = asyncio.run(run_load(spec))
        m = _metrics(srv.url)
    finally:
        srv.stop()
    by = res.summary["by_priority"]
    hi, lo = by[0], by[1]
    n = res.summary["sent"]
    assert hi["sent"] + lo["sent"] == n >= 35 and hi["sent"] >= 5
    assert hi["drop_rate"] == 0.0 and lo["drop_rate"] > 0.5, by
    assert set(lo["rejected"]) == {"rejected"}
    assert hi["latency_ms"]["p95"] < lo["latency_ms"]["p95"], by
    assert all(r[P.H_DROP] is None or r["priority"] == 1 for r in res.rows)
    for lv, b in by.items():  # the server's counts by level agree with what the client saw
        assert m[f'capsim_requests_by_level_total{{level="{lv}",outcome="completed"}}'] == b["completed"]
        assert m[f'capsim_requests_by_level_total{{level="{lv}",outcome="rejected"}}'] == b["sent"] - b["completed"]
    assert _accounted(m) == m["capsim_requests_received_total"] == n
    text = format_summary(res)
    print(text)
    assert "priority 0" in text and "priority 1" in text


def test_deadline_drops_stale_requests_and_accounts_for_all(resnet18_onnx):
    # 10 requests with the server's 100 ms deadline and 10 with X-Deadline-Ms: 0 (none), one at a time
    # on resnet18: whatever waited past 100 ms when its batch came up is dropped as stale.
    srv = Server(*resnet18_onnx, "--max-batch-size", "1", "--max-queue-delay-ms", "0", "--deadline-ms", "100",
                 "--preprocess-workers", "2")

    async def go():
        return await asyncio.gather(_burst(srv.url, [TENSOR] * 10, **BURST),
                                    _burst(srv.url, [TENSOR] * 10, **BURST, **{P.H_DEADLINE: "0"}))

    try:
        with_deadline, without = asyncio.run(go())
        m = _metrics(srv.url)
    finally:
        srv.stop()
    assert [st for st, _, _ in without] == [200] * 10  # no deadline: never stale
    stale = [h for st, h, _ in with_deadline if st == 503]
    print(f"deadline: {len(stale)} of 10 stale")
    assert stale and all(h[P.H_DROP] == "stale" for h in stale)
    assert b"deadline" in [b for st, _, b in with_deadline if st == 503][0]
    assert m['capsim_requests_total{outcome="stale"}'] == len(stale)
    assert m['capsim_requests_total{outcome="completed"}'] == 20 - len(stale)
    assert _accounted(m) == m["capsim_requests_received_total"] == 20


def test_degrade_raises_a_cameras_stride_in_a_burst_and_lowers_it_after(resnet18_onnx):
    srv = Server(*resnet18_onnx, "--max-batch-size", "1", "--max-queue-delay-ms", "0",
                 "--degrade-threshold", "2", "--degrade-max-stride", "4", "--preprocess-workers", "2")
    try:
        burst = asyncio.run(_burst(srv.url, [TENSOR] * 16, **BURST, **{P.H_SOURCE: "3"}))
        m = _metrics(srv.url)
        dropped = [h[P.H_DROP] for st, h, _ in burst if st == 503]
        assert dropped and set(dropped) == {"stride"}  # frames off the raised stride were skipped
        stride = m['capsim_source_stride{source="3"}']
        print(f"degrade: stride after the burst {stride:g}, {len(dropped)} of 16 frames skipped")
        assert stride >= 2
        after = []
        for _ in range(5):  # one at a time: each frame enters with the camera's queue empty
            after += asyncio.run(_burst(srv.url, [TENSOR], **BURST, **{P.H_SOURCE: "3"}))
        m = _metrics(srv.url)
    finally:
        srv.stop()
    assert m['capsim_source_stride{source="3"}'] == 1  # back down to the base stride (at most 4 -> 1)
    assert m['capsim_source_frames_total{source="3"}'] == 21
    ok = sum(st == 200 for st, _, _ in burst + after)
    assert m['capsim_source_frames_processed_total{source="3"}'] == ok == m['capsim_requests_total{outcome="completed"}']
    assert m['capsim_requests_total{outcome="stride"}'] == 21 - ok
    assert _accounted(m) == m["capsim_requests_received_total"] == 21


def test_bad_policy_headers_are_400_with_one_line():
    srv = Server("--model", "noop", "--input-shape", "3x8x8", "--priority-levels", "3", "--stride", "2")
    body = np.zeros((3, 8, 8), np.float32).tobytes()
    kw = dict(ctype="application/octet-stream")
    try:
        ok = asyncio.run(_burst(srv.url, [body], **kw, **{P.H_FRAME_INDEX: "4"}))
        assert ok[0][0] == 200 and ok[0][1][P.H_PRIORITY] == "2"  # no X-Priority: the lowest level
        skip = asyncio.run(_burst(srv.url, [body], **kw, **{P.H_FRAME_INDEX: "5", P.H_PRIORITY: "0"}))
        assert skip[0][0] == 503 and skip[0][1][P.H_DROP] == "stride" and skip[0][1][P.H_PRIORITY] == "0"
        for name, value in ((P.H_PRIORITY, "3"), (P.H_PRIORITY, "-1"), (P.H_PRIORITY, "high"),
                            (P.H_DEADLINE, "-5"), (P.H_DEADLINE, "soon"), (P.H_FRAME_INDEX, "x"),
                            (P.H_SOURCE, "-2")):
            (st, _, text), = asyncio.run(_burst(srv.url, [body], **kw, **{name: value}))
            detail = __import__("json").loads(text)["detail"]
            assert st == 400 and detail.startswith(name) and "\n" not in detail, (name, value, detail)
        m = _metrics(srv.url)
    finally:
        srv.stop()
    assert m['capsim_requests_total{outcome="bad_request"}'] == 7
    assert _accounted(m) == m["capsim_requests_received_total"] == 9


@pytest.mark.parametrize("args, message", [
    (["serve", "--model", "noop", "--priority-levels", "2", "--level-max-size", "1,2,3"], "--level-max-size"),
    (["serve", "--model", "noop", "--priority-levels", "2", "--queue-max-size", "4"], "--queue-max-size"),
    (["serve", "--model", "noop", "--degrade-threshold", "2", "--degrade-max-stride", "1"], "--degrade-max-stride"),
    (["serve", "--model", "noop", "--level-on-full", "drop_newest"], "--level-on-full"),
    (["load", "http://127.0.0.1:9", "--concurrency", "2", "--duration", "1", "--priority-shares", "0.5,0.5"],
     "--priority-shares"),
    (["load", "http://127.0.0.1:9", "--rate", "5", "--duration", "1", "--priority-shares", "0.5,0.6"],
     "--priority-shares"),
])
def test_bad_policy_options_exit_2_with_one_line(args, message):
    r = subprocess.run([sys.executable, "-m", "capsim.cli", *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
