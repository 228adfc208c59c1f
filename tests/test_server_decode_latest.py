"""capsim serve --decode-latest: frames waiting for a decode thread keep only each camera's latest.

The line itself on hand-computed timelines (a tiny event loop with a fake clock, decode times
given), then a real server process: a burst from 3 cameras while the one decode thread is busy with
a large JPEG leaves exactly one frame per camera waiting, the older ones are answered 503 stale,
each camera's last frame is answered 200, every request is accounted; without the flag the same
burst has no stale drops."""

from __future__ import annotations

import asyncio
import heapq
import subprocess
import sys
import time

import numpy as np
import pytest

from capsim.validate.decode_line import DecodeLine

# --------------------------------------------------------------------------- the line, fake clock


def run_line(arrivals, decode_ms, workers=1):
    """Drive a DecodeLine through ``arrivals`` [(t, frame, source)] with each decode taking
    ``decode_ms``; at equal times a decode end comes before an arrival. Returns (start time per
    decoded frame, stale time per dropped frame, frames in the order they started, largest line)."""
    line = DecodeLine(workers)
    started, stale, order, ends, most = {}, {}, [], [], 0
    i = 0

    def start(frame, t):
        started[frame] = t
        order.append(frame)
        heapq.heappush(ends, (t + decode_ms, len(order), frame))

    while i < len(arrivals) or ends:
        if ends and (i == len(arrivals) or ends[0][0] <= arrivals[i][0]):
            t, _, _ = heapq.heappop(ends)
            nxt = line.finish()
            if nxt is not None:
                start(nxt, t)
        else:
            t, frame, src = arrivals[i]
            i += 1
            go, old = line.arrive(src, frame)
            if old is not None:
                stale[old] = t
            if go:
                start(frame, t)
        assert line.free == 0 or line.waiting == 0  # nobody waits while a thread idles
        most = max(most, line.waiting)
    assert line.free == workers and line.waiting == 0
    return started, stale, order, most


def test_a_newer_frame_drops_the_waiting_one_and_joins_the_back():
    # one thread, 10 ms a frame. A0 decodes 0-10. B0, A1 wait; B1 makes B0 stale (t=3) and queues
    # behind A1; A2 makes A1 stale (t=4) and queues behind B1: the line is [B1, A2], so B1 goes
    # first at 10 (replacing in place would have started A2 first), A2 at 20, C0 (t=12) at 30.
    arr = [(0, "A0", 0), (1, "B0", 1), (2, "A1", 0), (3, "B1", 1), (4, "A2", 0), (12, "C0", 2)]
    started, stale, order, most = run_line(arr, 10)
    assert started == {"A0": 0, "B1": 10, "A2": 20, "C0": 30}
    assert stale == {"B0": 3, "A1": 4}
    assert order == ["A0", "B1", "A2", "C0"] and most == 2


def test_a_frame_in_decode_is_never_dropped_and_a_free_thread_starts_at_once():
    # A0 decodes 0-10 though A1 (t=5) and A2 (t=7) of its camera arrive; A2 replaces A1 in the line
    # and starts at 10; A3 arrives at 25 with the thread free (A2 ended at 20) and starts then.
    arr = [(0, "A0", 0), (5, "A1", 0), (7, "A2", 0), (25, "A3", 0)]
    started, stale, order, most = run_line(arr, 10)
    assert started == {"A0": 0, "A2": 10, "A3": 25} and stale == {"A1": 7} and most == 1


def test_two_threads_take_the_head_in_turn():
    # A0, B0 start at 0 on the two threads; A1 and C0 wait; A2 (t=3) makes A1 stale: line [C0, A2].
    # Both threads end at 10: the first takes C0, the second A2. At 20 both end before B1 arrives
    # (a decode end comes first at equal times): B1 starts at once.
    arr = [(0, "A0", 0), (0, "B0", 1), (1, "A1", 0), (2, "C0", 2), (3, "A2", 0), (20, "B1", 1)]
    started, stale, order, most = run_line(arr, 10, workers=2)
    assert started == {"A0": 0, "B0": 0, "C0": 10, "A2": 10, "B1": 20}
    assert stale == {"A1": 3} and order == ["A0", "B0", "C0", "A2", "B1"]


def test_random_streams_keep_every_invariant():
    # 6 cameras, jittered arrivals faster than one thread decodes: every frame is decoded or stale
    # exactly once, at most one frame per camera waits, each camera's last frame is decoded, and
    # frames start in the order they arrived (one FIFO line).
    rng = np.random.default_rng(5)
    arr = sorted((float(t), f"{s}-{k}", s) for s in range(6)
                 for k, t in enumerate(np.cumsum(rng.exponential(8.0, 40))))
    for workers in (1, 2):
        started, stale, order, most = run_line(arr, 3.0, workers)
        assert set(started) | set(stale) == {f for _, f, _ in arr} and not set(started) & set(stale)
        assert 1 <= most <= 6 and len(stale) > 0
        last = {s: f for _, f, s in arr}
        assert all(f in started for f in last.values())
        assert order == [f for _, f, _ in arr if f in started]
        assert all(stale[f] >= t for t, f, _ in arr if f in stale)


def test_withdraw_and_bad_worker_count():
    line = DecodeLine(1)
    assert line.arrive(0, "a") == (True, None)
    assert line.arrive(1, "b") == (False, None)
    assert line.withdraw(1, "x") is False and line.withdraw(1, "b") is True and line.waiting == 0
    assert line.finish() is None and line.free == 1
    with pytest.raises(ValueError):
        DecodeLine(0)


# --------------------------------------------------------------------------- a real server

aiohttp = pytest.importorskip("aiohttp")
from capsim.calibrate.prepost import make_jpegs  # noqa: E402
from capsim.validate import protocol as P  # noqa: E402

from tests.test_server import Server, _accounted, _send  # noqa: E402

CAMERAS, FRAMES = 3, 6  # a burst of 6 frames from each of 3 cameras, then each camera's last frame


@pytest.fixture(scope="module")
def frames():
    # the blocker: a 4000x3000 JPEG takes ~0.2 s to decode (PIL, one core), the burst ~4 ms a frame
    return make_jpegs(1, size=(4000, 3000))[0], make_jpegs(4, size=(320, 240))


async def _metrics(session, url) -> dict[str, float]:
    async with session.get(url + P.METRICS_PATH) as r:
        text = await r.text()
    return {k: float(v) for k, v in (ln.rsplit(" ", 1) for ln in text.splitlines() if ln and ln[0] != "#")}


async def _until_received(session, url, n: int) -> dict[str, float]:
    while True:
        m = await _metrics(session, url)
        if m["capsim_requests_received_total"] >= n:
            return m
        await asyncio.sleep(0.002)


async def _camera_burst(url, big, small):
    """The blocker (camera 9) on the one decode thread, then the burst once the server has it, then
    each camera's last frame once the server has the whole burst (so it is surely the last to arrive)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        t0 = time.perf_counter()
        blocker = asyncio.ensure_future(_send(s, url, big, **{P.H_SOURCE: "9"}))
        await _until_received(s, url, 1)
        burst = [asyncio.ensure_future(_send(s, url, small[k % 4], **{P.H_SOURCE: str(cam)}))
                 for k in range(FRAMES - 1) for cam in range(CAMERAS)]
        at_burst = await _until_received(s, url, 1 + len(burst))
        burst_s = time.perf_counter() - t0
        last = [asyncio.ensure_future(_send(s, url, small[0], **{P.H_SOURCE: str(cam)})) for cam in range(CAMERAS)]
        res = await asyncio.gather(blocker, *burst, *last)
        end = await _metrics(s, url)
    return res[0], res[1:1 + len(burst)], res[1 + len(burst):], at_burst, end, burst_s


def _run(args, frames):
    srv = Server("--model", "noop", "--preprocess-workers", "1", "--max-batch-size", "4",
                 "--max-queue-delay-ms", "0", *args)
    try:
        return asyncio.run(_camera_burst(srv.url, *frames))
    finally:
        srv.stop()


def test_decode_latest_keeps_one_frame_per_camera_waiting(frames):
    blocker, burst, last, at_burst, m, burst_s = _run(["--decode-latest"], frames)
    n = 1 + len(burst) + len(last)
    assert blocker[0] == 200 and [st for st, _, _ in last] == [200] * CAMERAS  # each camera's last frame
    decode_ms = float(blocker[1][P.H_DECODE])
    # premise (wide margin): the whole burst reached the server while the blocker was still decoding
    assert burst_s * 1000.0 < decode_ms, (burst_s, decode_ms)
    assert at_burst["capsim_decode_waiting"] == CAMERAS  # exactly one waiting frame per camera
    for st, h, body in burst:
        assert st == 200 or (st == 503 and h[P.H_DROP] == "stale" and b"decode" in body), (st, h)
    ok_burst = [h for st, h, _ in burst if st == 200]
    for cam in range(CAMERAS):  # burst[i] is camera i % CAMERAS: at most its frame left waiting was decoded
        assert sum(st == 200 for st, _, _ in burst[cam::CAMERAS]) <= 1
    stale = sum(1 for st, _, _ in burst if st == 503)
    print(f"decode-latest: blocker decode {decode_ms:.0f} ms, burst in {burst_s * 1000:.0f} ms, "
          f"{stale} of {len(burst)} burst frames stale, {len(ok_burst)} decoded")
    # each camera's burst: all but the frame left waiting went stale as they arrived; that one too if
    # its camera's last frame came before a thread took it
    assert m['capsim_requests_total{outcome="stale"}'] == stale >= CAMERAS * (FRAMES - 2)
    assert m['capsim_requests_total{outcome="completed"}'] == n - stale
    assert _accounted(m) == m["capsim_requests_received_total"] == n
    assert m["capsim_decode_waiting"] == 0 and m["capsim_decode_busy"] == 0


def test_without_decode_latest_the_same_burst_has_no_stale_drops(frames):
    blocker, burst, last, at_burst, m, burst_s = _run([], frames)
    n = 1 + len(burst) + len(last)
    assert [st for st, _, _ in [blocker, *burst, *last]] == [200] * n
    assert m['capsim_requests_total{outcome="stale"}'] == 0
    assert m['capsim_requests_total{outcome="completed"}'] == _accounted(m) == m["capsim_requests_received_total"] == n
    assert "capsim_decode_waiting" not in m  # the gauge exists only with --decode-latest


@pytest.mark.parametrize("args, message", [
    (["serve", "--model", "noop", "--decode-latest", "--preprocess-workers", "0"], "--preprocess-workers"),
    (["validate", "--model", "noop", "--profile", "x.json", "--decode-latest"], "--decode-latest"),
])
def test_bad_decode_latest_options_exit_2_with_one_line(args, message):
    r = subprocess.run([sys.executable, "-m", "capsim.cli", *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
