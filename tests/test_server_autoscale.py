"""capsim serve --autoscale-max: the simulator's autoscaling rule on live model instances.

The rule itself on a fake clock (hand-computed windows), then a real server process driven through
a load step up and down: it adds an instance about one window after the step, the new instance
serves only after its real cold start, a load drop retires it, the minimum is kept, and every
request is accounted for. Assertions are on order and counts with wide time margins."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from capsim.validate.autoscale import READY, RETIRE, START, ServerAutoscaler
from capsim.validate.batching import ServerBatcher

# --------------------------------------------------------------------------- the rule, fake clock


def test_hand_computed_windows():
    a = ServerAutoscaler(1, 1, 2, up=0.5, down=0.2, window=10.0)
    a.batch_start(0, 0.0); a.batch_end(0, 4.0)
    a.batch_start(0, 5.0); a.batch_end(0, 9.0)
    assert a.check(10.0, [0]) == (START, 1)           # 8 busy of 10 serving: 0.8 > 0.5
    assert a.pending == 1 and a.serving == {0}
    a.batch_start(0, 10.0); a.batch_end(0, 18.0)
    assert a.check(20.0, [0]) is None                  # 0.8 again, but a start is pending
    a.ready(1, 23.0)
    assert a.last_cold_start == 13.0 and a.serving == {0, 1}
    a.batch_start(0, 25.0)
    assert a.check(30.0, []) is None                   # busy 5 / serving 1x3 + 2x7 = 17: 0.29
    assert a.last_utilization == pytest.approx(5 / 17)
    a.batch_end(0, 32.0)                               # its 2 s inside the next window
    assert a.check(40.0, [0, 1]) == (RETIRE, 1)        # 2 / 20 = 0.1 < 0.2: the highest idle one
    assert a.serving == {0}
    a.batch_start(0, 41.0); a.batch_end(0, 42.0)
    assert a.check(50.0, [0]) is None                  # 0.1 but the minimum (1) serves
    assert [(e.t, e.action, e.instance) for e in a.events] == [(10.0, START, 1), (23.0, READY, 1),
                                                               (40.0, RETIRE, 1)]


def test_no_idle_instance_the_first_to_finish_retires_at_its_batch_end():
    a = ServerAutoscaler(2, 1, 2, up=0.5, down=0.2, window=10.0)
    a.batch_start(0, 9.0)
    a.batch_start(1, 9.5)
    assert a.check(10.0, []) is None                   # 1.5 / 20: low, but both are busy
    assert a.batch_end(1, 11.0) is True                # the first to finish leaves then
    assert a.serving == {0}
    assert a.batch_end(0, 12.0) is False               # only one retirement was owed
    assert a.check(20.0, [0]) is None                  # serving 2x1 + 1x9 = 11, busy 2 + 1: 0.27
    assert a.last_utilization == pytest.approx(3 / 11)
    assert [(e.t, e.action, e.instance) for e in a.events] == [(11.0, RETIRE, 1)]


def test_the_batcher_dispatches_only_to_serving_instances():
    b = ServerBatcher(1, 0.0, 1)
    for k in range(3):
        b.offer(k, 0, 0.0)
    _, batches = b.take(0.0)
    assert [i for i, _ in batches] == [0]              # instance 1 is still provisioning
    b.add_instance(1, 1.0)
    _, batches = b.take(1.0)
    assert [i for i, _ in batches] == [1]
    b.release(0, 2.0)
    b.remove_idle(0)                                   # retired while idle
    _, batches = b.take(2.0)
    assert batches == [] and b.qlen == 1
    b.release(1, 3.0)
    assert [i for i, _ in b.take(3.0)[1]] == [1]


# --------------------------------------------------------------------------- a real server

aiohttp = pytest.importorskip("aiohttp")

from capsim.validate import protocol as P  # noqa: E402
from tests.test_server import Server, _metrics  # noqa: E402

async def _drive(url, phases, poll_s=0.1, shape=(3, 8, 8)):
    """Send at a constant rate per phase [(seconds, rps)]; poll /metrics meanwhile.
    Returns ([(status, instance, received_at)], [(sent_at, serving, provisioning)], phase start times)."""
    results, polls, starts = [], [], []
    done = False
    body = np.zeros(shape, np.float32).tobytes()
    hdr = {"Content-Type": "application/octet-stream", P.H_SHAPE: "x".join(map(str, shape))}

    async def one(s):
        async with s.post(P.infer_url(url), data=body, headers=hdr) as r:
            await r.read()
            results.append((r.status, int(r.headers.get(P.H_INSTANCE, -1)), time.perf_counter()))

    async def poll(s):
        while not done:
            t = time.perf_counter()
            async with s.get(url + P.METRICS_PATH) as r:
                text = await r.text()
            serving = int(re.search(r"^capsim_instances_serving (\d+)", text, re.M).group(1))
            prov = int(re.search(r"^capsim_instances_provisioning (\d+)", text, re.M).group(1))
            polls.append((t, serving, prov))
            await asyncio.sleep(poll_s)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        poller = asyncio.ensure_future(poll(s))
        tasks = []
        for secs, rps in phases:
            t0 = time.perf_counter()
            starts.append(t0)
            k = 0
            while k / rps < secs:
                await asyncio.sleep(max(0.0, t0 + k / rps - time.perf_counter()))
                tasks.append(asyncio.ensure_future(one(s)))
                k += 1
        await asyncio.gather(*tasks)
        starts.append(time.perf_counter())
        await asyncio.sleep(0.3)
        done = True
        await poller
    return results, polls, starts


def _events(err: str):
    return [(float(t), action, int(i)) for t, action, i in
            re.findall(r"^capsim serve: \+(\d+\.\d+) s scale (\w+) instance (\d+)", err, re.M)]


def test_load_step_adds_an_instance_after_its_cold_start_and_a_drop_retires_it():
    # noop instances busy 20 ms a batch (B = 1): one serves ~50 rps; 40 rps is ~0.8 of one, ~0.4 of two
    srv = Server("--model", "noop", "--input-shape", "3x8x8", "--noop-ms", "20", "--noop-load-ms", "600",
                 "--max-batch-size", "1", "--max-queue-delay-ms", "0", "--instances", "2", "--autoscale-min", "1",
                 "--autoscale-max", "2", "--scale-window-s", "0.5", "--scale-up-utilization", "0.6",
                 "--scale-down-utilization", "0.2")
    try:
        time.sleep(1.3)  # idle windows: instance 1 (idle, the highest) retires; instance 0 is the minimum
        results, polls, (low, high, drop, end) = asyncio.run(_drive(srv.url, [(1.0, 5), (3.0, 40), (2.5, 2)]))
        m = _metrics(srv.url)
    finally:
        err = srv.stop()
    ev = _events(err)
    assert [(a, i) for _, a, i in ev] == [(RETIRE, 1), (START, 1), (READY, 1), (RETIRE, 1)], err
    (t_ret0, _, _), (t_start, _, _), (t_ready, _, _), (t_ret, _, _) = ev
    assert 0.4 <= t_ret0 <= 0.6 + 0.3                  # the first window's end
    assert t_ready - t_start >= 0.6                    # the cold start: load (600 ms) + a warm-up batch
    assert m["capsim_cold_start_seconds"] >= 0.6 and m["capsim_cold_start_seconds"] == pytest.approx(
        t_ready - t_start, abs=0.002)
    # every request accounted
    n = len(results)
    assert n == 5 + 120 + 5 and all(st == 200 for st, _, _ in results)
    assert m["capsim_requests_received_total"] == n == m['capsim_requests_total{outcome="completed"}']
    assert m['capsim_scale_events_total{action="start"}'] == 1 == m['capsim_scale_events_total{action="ready"}']
    assert m['capsim_scale_events_total{action="retire"}'] == 2
    assert m["capsim_instances_serving"] == 1 and m["capsim_instances_provisioning"] == 0  # the minimum kept
    # the start comes about one window after the step (2 windows + slack), the retirement after the drop
    first_prov = min(t for t, _, p in polls if p == 1)
    assert high <= first_prov + 0.1 and first_prov - high <= 1.0 + 0.5
    two = [t for t, s, _ in polls if s == 2]
    assert two and min(two) > first_prov
    back = min(t for t, s, _ in polls if t > max(two) and s == 1)
    assert drop <= back <= drop + 1.0 + 0.5
    # instance 1 served only after its cold start: no instance-1 answer before a poll that saw it provisioning
    got1 = [t for st, i, t in results if i == 1]
    assert got1 and min(got1) > max(t for t, _, p in polls if p == 1)
    assert all(t > high for t in got1)                 # nothing from instance 1 at the low start
    assert {i for _, i, _ in results} == {0, 1}


def test_a_real_model_cold_start_is_measured():
    # tiny_cnn (onnxruntime): any busy time is above a 0.001 scale-up threshold, so the first loaded
    # window starts instance 1: a real session load plus its warm-up batch
    pytest.importorskip("onnxruntime")
    srv = Server("--model", "tiny_cnn", "--max-batch-size", "1", "--max-queue-delay-ms", "0", "--autoscale-max", "2",
                 "--scale-window-s", "0.3", "--scale-up-utilization", "0.001", "--scale-down-utilization", "0")
    try:
        results, polls, _ = asyncio.run(_drive(srv.url, [(1.5, 20)], shape=(3, 32, 32)))
        m = _metrics(srv.url)
    finally:
        err = srv.stop()
    ev = _events(err)
    assert [(a, i) for _, a, i in ev][:2] == [(START, 1), (READY, 1)], err
    assert 0 < m["capsim_cold_start_seconds"] < 30
    assert m["capsim_instances_serving"] == 2
    assert all(st == 200 for st, _, _ in results) and m["capsim_requests_received_total"] == len(results) == 30
    got1 = [t for _, i, t in results if i == 1]
    assert not got1 or min(got1) > max((t for t, _, p in polls if p == 1), default=0.0)


@pytest.mark.parametrize("args, message", [
    (["--autoscale-max", "1", "--instances", "2"], "--autoscale-max"),
    (["--autoscale-max", "3", "--instances", "1", "--autoscale-min", "2"], "--instances"),
    (["--autoscale-max", "3", "--autoscale-min", "0"], "--autoscale-min"),
    (["--autoscale-max", "3", "--scale-up-utilization", "0.3", "--scale-down-utilization", "0.3"],
     "--scale-down-utilization"),
    (["--autoscale-max", "3", "--scale-up-utilization", "1.5"], "--scale-up-utilization"),
    (["--autoscale-max", "3", "--scale-window-s", "0"], "--scale-window-s"),
    (["--scale-window-s", "2"], "--scale-window-s"),
    (["--autoscale-min", "1"], "--autoscale-min"),
    (["--noop-ms", "-1"], "--noop-ms"),
])
def test_bad_autoscale_options_exit_2_with_one_line(args, message):
    r = subprocess.run([sys.executable, "-m", "capsim.cli", "serve", "--model", "noop", *args], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr


def test_no_autoscale_metrics_without_the_option():
    srv = Server("--model", "noop", "--input-shape", "3x8x8")
    try:
        m = _metrics(srv.url)
    finally:
        srv.stop()
    assert not any(k.startswith(("capsim_instances", "capsim_scale")) for k in m)
