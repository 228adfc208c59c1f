"""Instance-side policies: devices and dispatch, autoscaling, the network stage.

Expected times are worked out by hand from the documented semantics (capsim/sim/devices.py,
autoscale.py and network.py docstrings), never copied from engine output. Times in comments are
ms unless marked s; ``rK`` is the K-th arrival; ``[a, b]`` a batch's service interval.
"""

from __future__ import annotations

import numpy as np
import pytest

from capsim.arrivals import ArrivalStream, generate
from capsim.config import load_scenario, parse_scenario
from capsim.metrics import summarize
from capsim.sim.autoscale import serving_seconds
from capsim.sim.engine import SimPyEngine
from capsim.sim.network import queue_entry
from capsim.simulate import make_engine, not_modelled, simulate


def base(**extra):
    data = {"arrivals": {"process": "poisson", "rate_rps": 1},
            "service": {"batch_latency_ms": {1: 10, 2: 12}},
            "batching": {"max_batch_size": 1, "max_queue_delay_ms": 0},
            "run": {"requests": 200, "warmup_requests": 0, "replications": 1}}
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k] = {**data[k], **v}
        else:
            data[k] = v
    return parse_scenario(data)


def stream(times_s):
    t = np.asarray(times_s, dtype=np.float64)
    n = len(t)
    return ArrivalStream(times=t, source=np.zeros(n, np.int32), frame=np.arange(n, dtype=np.int64), n_sources=1)


def run(sc, times_ms):
    return SimPyEngine(sc).run(stream(np.asarray(times_ms, float) / 1000.0), np.random.default_rng(0))


def ms(values):
    return pytest.approx([v / 1000.0 for v in values], abs=1e-9)


# =========================================================================== devices and dispatch
# 2 devices x 2 instances: inst 0, 1 on device 0, inst 2, 3 on device 1. Service 10 ms for one
# request; two busy on a device run 1.5x slower (15 ms), fixed when the batch starts.


def two_by_two(dispatch):
    return base(service={"contention": {2: 1.5}}, devices={"count": 2, "instances_per_device": 2},
                dispatch=dispatch)


def test_devices_set_the_instance_count():
    sc = two_by_two("lowest_index")
    assert sc.instances == 4


def test_lowest_index_with_per_device_contention():
    # r0@0 -> inst0 (dev0: 1 busy) [0, 10].  r1@20 -> inst0 [20, 30].  r2@21 -> inst1, dev0 now
    # has 2 busy -> [21, 36].  r3@22 -> inst2 (dev1: 1) [22, 32].  r4@23 -> inst3 (dev1: 2) [23, 38].
    # r5@32: inst0 idle (30), inst2 idle (ends at 32, before the decision) -> inst0; inst1 still
    # busy on dev0 -> 15: [32, 47].  r6@33 -> inst2; inst3 busy on dev1 -> [33, 48].
    tr = run(two_by_two("lowest_index"), [0, 20, 21, 22, 23, 32, 33])
    assert tr.instance.tolist() == [0, 0, 1, 2, 3, 0, 2]
    assert tr.start == ms([0, 20, 21, 22, 23, 32, 33])
    assert tr.end == ms([10, 30, 36, 32, 38, 47, 48])


def test_round_robin_timeline():
    # r0@0 -> inst0 (the first after "none") [0, 10].  r1@20 -> the next after inst0: inst1;
    # inst0 is idle, so dev0 has 1 busy -> [20, 30].  r2@21 -> inst2 [21, 31].  r3@22 -> inst3,
    # dev1 2 busy -> [22, 37].  r4@23: only inst0 idle -> inst0, dev0 2 busy -> [23, 38].
    # r5@32: idle inst1 (30), inst2 (31); next after inst0 -> inst1, inst0 busy -> [32, 47].
    # r6@33 -> inst2, inst3 busy on dev1 -> [33, 48].
    tr = run(two_by_two("round_robin"), [0, 20, 21, 22, 23, 32, 33])
    assert tr.instance.tolist() == [0, 1, 2, 3, 0, 1, 2]
    assert tr.start == ms([0, 20, 21, 22, 23, 32, 33])
    assert tr.end == ms([10, 30, 31, 37, 38, 47, 48])
    assert tr.batch_instance.tolist() == [0, 1, 2, 3, 0, 1, 2]


def test_round_robin_wraps_and_skips_busy_instances():
    # Without devices (one device, no contention factor given: 1.0). 3 instances.
    # r0@0 -> 0 [0,10]; r1@1 -> 1 [1,11]; r2@2 -> 2 [2,12]; r3@20 -> wraps to 0; r4@21 -> 1;
    # r5@21.5 -> 2; r6@22: none idle, waits for inst0 at 30 (next after 2 wraps to 0).
    sc = base(instances=3, dispatch="round_robin")
    tr = run(sc, [0, 1, 2, 20, 21, 21.5, 22])
    assert tr.instance.tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert tr.start == ms([0, 1, 2, 20, 21, 21.5, 30])


def test_least_loaded_timeline():
    # r0@0: both devices idle -> tie -> lowest index inst0 [0, 10].  r1@1: dev0 1 busy, dev1 0 ->
    # inst2 [1, 11].  r2@2: 1 and 1 -> tie -> lowest idle index inst1, dev0 2 busy -> [2, 17].
    # r3@3 -> inst3, dev1 2 busy -> [3, 18].  r4@12: idle inst0 (10), inst2 (11); dev0 1 busy
    # (inst1), dev1 1 (inst3) -> tie -> inst0, 2 busy -> [12, 27].  r5@19: idle inst1, 2, 3;
    # dev0 1 busy (inst0), dev1 0 -> inst2 [19, 29].
    tr = run(two_by_two("least_loaded"), [0, 1, 2, 3, 12, 19])
    assert tr.instance.tolist() == [0, 2, 1, 3, 0, 2]
    assert tr.start == ms([0, 1, 2, 3, 12, 19])
    assert tr.end == ms([10, 11, 17, 18, 27, 29])


def test_device_results_section():
    sc = two_by_two("least_loaded")
    tr = run(sc, [0, 1, 2, 3, 12, 19])
    res = summarize(sc, [tr], "simpy")
    d = res.policies["devices"]
    assert d["count"] == 2 and d["instances_per_device"] == 2
    # window [0, 19] ms: dev0 busy 10 + 15 + 7 (of [12, 27]) = 32 ms, dev1 10 + 15 + 0 = 25 ms
    assert d["utilization"] == pytest.approx([32 / (2 * 19), 25 / (2 * 19)])
    assert d["batches"] == [3, 3]


def test_devices_without_contention_are_mm2():
    """G=2 devices x K=1 instance, exponential service, no contention: an M/M/2 queue."""
    mu, c, rho = 100.0, 2, 0.5
    lam = rho * c * mu
    sc = parse_scenario({
        "arrivals": {"process": "poisson", "rate_rps": lam},
        "service": {"batch_latency_ms": {1: 10.0}, "variability": {"distribution": "exponential"}},
        "batching": {"max_batch_size": 1}, "devices": {"count": 2, "instances_per_device": 1},
        "dispatch": "least_loaded",
        "run": {"requests": 60_000, "warmup_requests": 2000, "replications": 5, "seed": 7}})
    a = lam / mu
    b = 1.0
    for k in range(1, c + 1):  # Erlang B recursion, then Erlang C
        b = a * b / (k + a * b)
    pw = c * b / (c - a * (1 - b))
    theory_ms = (pw / (c * mu - lam) + 1.0 / mu) * 1000.0
    for engine in ("simpy", "fast"):
        res = simulate(sc, engine=engine)
        assert res.engine == engine
        assert res.latency_ms["mean"] == pytest.approx(theory_ms, rel=0.03)
        assert res.littles_law.rel_error < 0.02
        assert sum(res.policies["devices"]["utilization"]) / 2 == pytest.approx(rho, rel=0.03)


# =========================================================================== autoscaling


def ramp_scenario(**auto):
    cfg = {"min_instances": 1, "max_instances": 2, "scale_up_utilization": 0.8, "scale_down_utilization": 0.3,
           "window_s": 5, "warmup_s": 3, **auto}
    return base(autoscale=cfg)


def ramp_times_s():
    # 50 rps (utilization 0.5 of one 10 ms instance) for 20 s, 150 rps for 20 s, then 20 rps.
    t = np.concatenate([np.arange(0, 1000) * 0.02, 20 + np.arange(0, 3000) / 150, 40 + np.arange(0, 400) * 0.05])
    return np.round(t * 1e6) / 1e6


@pytest.fixture(scope="module")
def ramp():
    sc = ramp_scenario()
    tr = SimPyEngine(sc).run(stream(ramp_times_s()), np.random.default_rng(0))
    return sc, tr


def test_scale_up_after_the_window_and_serves_after_the_warmup(ramp):
    sc, tr = ramp
    ex = tr.extras["autoscale"]
    # Windows end at 5, 10, 15, 20 s with utilization 0.5: no action. The window (20, 25] is
    # saturated (utilization 1 > 0.8): start inst1 at 25 s; it serves from 28 s (3 s cold start).
    # The window (25, 30] is still above 0.8 but max_instances = 2. After 40 s the load is 20 rps:
    # the window (40, 45] is below 0.3 with 2 serving -> retire the highest-index idle (inst1).
    # From then on 1 serving = min_instances: nothing more is retired.
    assert ex["events"] == [[25.0, "start", 1], [28.0, "ready", 1], [45.0, "retired", 1]]
    assert ex["t"] == [0.0, 25.0, 28.0, 45.0]
    assert ex["serving"] == [1, 1, 2, 1] and ex["provisioning"] == [0, 1, 0, 0]
    on1 = tr.batch_instance == 1
    # The backlog built up since 20 s is waiting: inst1 takes a batch the instant it is ready.
    assert tr.batch_start[on1].min() == 28.0
    assert tr.batch_end[on1].max() <= 45.0
    assert min(ex["serving"]) >= sc.autoscale.min_instances


def test_cold_start_penalty_and_utilization_over_serving_capacity(ramp):
    sc, tr = ramp
    res = summarize(sc, [tr], "simpy")
    a = res.policies["autoscale"]
    assert a["scale_ups"] == 1 and a["scale_downs"] == 1
    cold = (tr.arrival >= 25.0) & (tr.arrival < 28.0)
    after = tr.arrival >= 40.0
    p95_cold = np.percentile(tr.latency_ms[cold], 95)
    p95_after = np.percentile(tr.latency_ms[after], 95)
    assert p95_cold > 10 * p95_after
    assert a["cold_start"]["p95_ms_while_provisioning"] == pytest.approx(p95_cold)
    assert a["cold_start"]["requests_while_provisioning"] == int(cold.sum()) == 450
    # Utilization = busy / serving instance-time: 1 instance until 28 s, 2 until 45 s, 1 after.
    t0, t1 = 0.0, float(tr.arrival[-1])
    assert serving_seconds(tr, t0, t1) == pytest.approx(28 + 2 * 17 + (t1 - 45))
    busy = float(np.sum(np.minimum(tr.batch_end, t1) - tr.batch_start))
    assert res.utilization == pytest.approx(busy / (28 + 2 * 17 + (t1 - 45)))


def test_retire_the_busy_instance_that_finishes_first():
    # 2 instances, 100 ms per request, window 1 s. r0@0.99 s -> inst0 [0.99, 1.09], r1@0.995 s ->
    # inst1 [0.995, 1.095]. Window (0, 1]: busy 0.01 + 0.005 of 2 s -> 0.0075 < 0.3, but none is
    # idle: retire the one that finishes first, inst0, which leaves at 1.09 s. r2@1.2 s finds
    # only inst1. Window (1, 2]: busy 0.09 + 0.095 + 0.1 over 0.09 + 1 serving-s: below 0.3 but
    # only min_instances serve: nothing more.
    sc = parse_scenario({
        "arrivals": {"process": "poisson", "rate_rps": 1}, "service": {"batch_latency_ms": {1: 100}},
        "batching": {"max_batch_size": 1}, "instances": 2,
        "autoscale": {"min_instances": 1, "max_instances": 2, "scale_up_utilization": 0.9,
                      "scale_down_utilization": 0.3, "window_s": 1, "warmup_s": 0},
        "run": {"requests": 200, "warmup_requests": 0, "replications": 1}})
    tr = run(sc, [990, 995, 1200, 2500])
    assert tr.instance.tolist() == [0, 1, 1, 1]
    assert tr.extras["autoscale"]["events"] == [[1.0, "retire", 0], [1.09, "retired", 0]]
    assert tr.extras["autoscale"]["serving"] == [2, 1]


def test_scale_in_after_load_drops_on_devices():
    # Two devices x 1 instance, starting with 2: a light load scales in to min_instances = 1.
    sc = parse_scenario({
        "arrivals": {"process": "constant", "rate_rps": 10}, "service": {"batch_latency_ms": {1: 10}},
        "batching": {"max_batch_size": 1}, "instances": 2, "devices": {"count": 2, "instances_per_device": 1},
        "autoscale": {"min_instances": 1, "max_instances": 2, "window_s": 2, "warmup_s": 1},
        "run": {"requests": 100, "warmup_requests": 0, "replications": 1}})
    tr = SimPyEngine(sc).run(generate(sc.arrivals, 100, np.random.default_rng(0)), np.random.default_rng(0))
    # Utilization 10 x 10 ms / 2 instances = 0.05 < 0.3 at the first window end (2 s): inst1 goes.
    assert tr.extras["autoscale"]["events"] == [[2.0, "retired", 1]]
    assert (tr.instance[tr.arrival > 2.0] == 0).all()


def test_builtin_traffic_ramp_autoscale_scales_with_the_bursts():
    sc = load_scenario("traffic-ramp-autoscale", ["run.requests=60000", "run.replications=1"])
    res = simulate(sc)
    a = res.policies["autoscale"]
    assert a["scale_ups"] >= 1 and a["scale_downs"] >= 1
    assert max(a["serving"]["count"]) >= 2 and min(a["serving"]["count"]) >= 1
    assert max(a["serving"]["count"]) <= 4
    c = a["cold_start"]
    assert c["p95_ms_while_provisioning"] > c["p95_ms_otherwise"]
    assert res.littles_law.rel_error < 0.02


# =========================================================================== network


def net_scenario(**net):
    cfg = {"bandwidth_mbps": 100, "latency_ms": 1, "payload_kb": 100, "response_kb": 1, **net}
    return base(service={"preprocess": {"ms": 2, "workers": 1}}, batching={"max_batch_size": 2}, network=cfg)


def test_network_timeline_exact_to_the_ns():
    # 100 KiB at 100 Mbit/s: 100 x 1024 x 8 / 1e8 s = 8.192 ms on the link, then 1 ms.
    # r0 sent 0: link [0, 8.192], server 9.192, preprocess [9.192, 11.192].
    # r1 sent 1: the link is busy until 8.192 -> [8.192, 16.384], server 17.384, pre -> 19.384.
    # r2 sent 2: link [16.384, 24.576], server 25.576, pre -> 27.576.  r3 sent 30: link
    # [30, 38.192], server 39.192, pre -> 41.192.
    sc = net_scenario()
    entry, server, stale = queue_entry(sc, np.array([0, 1, 2, 30], np.int64) * 1_000_000)
    assert stale is None  # no queue.preprocess_latest: nothing is superseded
    assert server.tolist() == [9_192_000, 17_384_000, 25_576_000, 39_192_000]
    assert entry.tolist() == [11_192_000, 19_384_000, 27_576_000, 41_192_000]
    # One instance, 10 ms per request (D = 0: it takes whatever is queued): r0 [11.192, 21.192],
    # r1 waits -> [21.192, 31.192], r2 [31.192, 41.192], r3 [41.192, 51.192]. Response 1 KiB:
    # 0.08192 ms on the way back + 1 ms.
    tr = run(sc, [0, 1, 2, 30])
    assert tr.start == ms([11.192, 21.192, 31.192, 41.192])
    assert tr.done == ms([22.27392, 32.27392, 42.27392, 52.27392])
    assert tr.latency_ms == pytest.approx([22.27392, 31.27392, 40.27392, 22.27392], abs=1e-6)
    res = summarize(sc, [tr], "simpy")
    inbound = np.mean([9.192, 16.384, 23.576, 9.192])
    assert res.breakdown_ms["network"] == pytest.approx(inbound + 1.08192)
    assert res.breakdown_ms["preprocess"] == pytest.approx(2.0)
    assert res.breakdown_ms["postprocess"] == pytest.approx(0.0, abs=1e-9)


def test_responses_queue_on_their_own_direction():
    # 10 Mbit/s, 1 KiB requests (0.8192 ms), 100 KiB responses (81.92 ms), no preprocess cost,
    # no latency. r0, r1 sent at 0 and 0.9: server at 0.8192 and 1.7192 -> batch? D = 0 and one
    # instance: r0 [0.8192, 10.8192], r1 [10.8192, 20.8192]. Responses: r0 leaves at 10.8192 and
    # takes until 92.7392; r1 leaves at 20.8192 but waits for r0's response: 92.7392 + 81.92.
    sc = base(network={"bandwidth_mbps": 10, "payload_kb": 1, "response_kb": 100, "payload": "tensor"})
    tr = run(sc, [0, 0.9])
    assert tr.done == ms([92.7392, 174.6592])


def test_tensor_payload_skips_the_preprocess_stage():
    sc = net_scenario(payload="tensor")
    entry, server, _ = queue_entry(sc, np.array([0, 1], np.int64) * 1_000_000)
    assert (entry == server).all() and server.tolist() == [9_192_000, 17_384_000]


def test_a_saturated_link_is_unstable():
    # tensor 588 KiB = 4.817 Mbit per request: 100 Mbit/s carries 20.76 rps.
    def sc(rate):
        return parse_scenario({
            "arrivals": {"process": "poisson", "rate_rps": rate}, "service": {"batch_latency_ms": {1: 2, 8: 4}},
            "batching": {"max_batch_size": 8, "max_queue_delay_ms": 2},
            "network": {"bandwidth_mbps": 100, "payload": "tensor"},
            "run": {"requests": 20_000, "warmup_requests": 1000, "replications": 2}})
    over, under = simulate(sc(30)), simulate(sc(15))
    assert not over.stable and "20.8 rps" in over.unstable_reason
    assert under.stable
    assert over.napkin.capacity_rps == pytest.approx(100e6 / (3 * 224 * 224 * 4 * 8))


@pytest.mark.parametrize("overrides", [
    ["network.bandwidth_mbps=100", "network.latency_ms=2"],
    ["network.bandwidth_mbps=1000", "network.payload=tensor", "network.response_kb=4", "instances=2",
     "service.contention={2: 1.3}"],
    ["network.bandwidth_mbps=200", "service.preprocess.ms=2", "service.preprocess.workers=2",
     "service.postprocess.ms=1", "service.postprocess.workers=1", "batching.mode=timer", "queue.max_size=20",
     "queue.timeout_ms=50"],
])
def test_fast_and_simpy_identical_with_a_network_stage(overrides):
    pytest.importorskip("numba")
    from capsim.sim.fast import FastEngine

    sc = load_scenario("mini-challenge", ["run.requests=20000", *overrides])
    arr = generate(sc.arrivals, sc.run.requests, np.random.default_rng(3), sc.base_dir)
    ref = SimPyEngine(sc).run(arr, np.random.default_rng(4))
    fast = FastEngine(sc, fallback=False).run(arr, np.random.default_rng(4))
    for f in ("arrival", "entry", "dispatch", "start", "end", "done", "latency_ms", "formation_ms", "batch_size",
              "instance", "drop_reason", "drop_t", "batch_start", "batch_end", "batch_instance"):
        np.testing.assert_array_equal(getattr(fast, f), getattr(ref, f), err_msg=f)
    for k in ("inbound_s", "response_s"):
        np.testing.assert_array_equal(fast.extras["network"][k], ref.extras["network"][k], err_msg=k)


def test_camera_stride_frames_with_a_network_stage_match_too():
    pytest.importorskip("numba")
    from capsim.sim.fast import FastEngine

    sc = load_scenario("example-2-multi-camera", ["run.requests=10000", "queue.stride=2",
                                                  "network.bandwidth_mbps=50"])
    arr = generate(sc.arrivals, sc.run.requests, np.random.default_rng(3), sc.base_dir)
    ref = SimPyEngine(sc).run(arr, np.random.default_rng(4))
    fast = FastEngine(sc, fallback=False).run(arr, np.random.default_rng(4))
    for f in ("entry", "start", "done", "latency_ms", "drop_reason"):
        np.testing.assert_array_equal(getattr(fast, f), getattr(ref, f), err_msg=f)


def test_littles_law_with_network_and_devices():
    sc = load_scenario("mini-challenge", ["run.requests=30000", "run.replications=2", "network.bandwidth_mbps=100",
                                          "network.latency_ms=5", "devices={count: 2, instances_per_device: 1}",
                                          "dispatch=round_robin"])
    res = simulate(sc)
    assert res.stable and res.littles_law.rel_error < 0.02
    assert res.breakdown_ms["network"] > 10.0  # 2 x 5 ms of propagation alone


# =========================================================================== engines


def test_policies_are_modelled_and_the_fast_engine_defers_instance_policies():
    from capsim.sim.fast import unsupported_features

    sc = load_scenario("traffic-ramp-autoscale", ["dispatch=round_robin"])
    assert not_modelled(sc) == []
    assert unsupported_features(sc) == ["autoscale"]  # devices and dispatch run on the fast engine too
    assert make_engine(sc, "auto").name == "simpy"
    net = load_scenario("mini-challenge", ["network.bandwidth_mbps=100"])
    assert unsupported_features(net) == [] and make_engine(net, "auto").name == "fast"
