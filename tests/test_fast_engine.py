"""The compiled fast engine reproduces the SimPy reference engine request for request.

Both engines get the same arrival stream and identically seeded service generators; every
per-request and per-batch field of the traces must be identical (NaN where NaN).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("numba")

from capsim import scenarios as builtin  # noqa: E402
from capsim.arrivals import generate  # noqa: E402
from capsim.config import load_scenario, parse_scenario  # noqa: E402
from capsim.sim.engine import SimPyEngine  # noqa: E402
from capsim.sim.fast import FastEngine, unsupported_features  # noqa: E402

PER_REQUEST = ("arrival", "source", "entry", "dispatch", "start", "end", "done", "latency_ms", "formation_ms",
               "batch_size", "instance", "drop_reason", "drop_t", "warmup")
PER_BATCH = ("batch_start", "batch_end", "batch_size_by_batch", "batch_instance")


def run_both(sc, seed=0):
    arr = generate(sc.arrivals, sc.run.requests, np.random.default_rng([seed, 1]), sc.base_dir, sc.priority)
    ref = SimPyEngine(sc).run(arr, np.random.default_rng([seed, 2]))
    fast = FastEngine(sc, fallback=False).run(arr, np.random.default_rng([seed, 2]))
    return ref, fast


def assert_same(ref, fast):
    for f in PER_REQUEST + PER_BATCH:
        np.testing.assert_array_equal(getattr(fast, f), getattr(ref, f), err_msg=f)  # NaN == NaN here
        assert getattr(fast, f).dtype == getattr(ref, f).dtype, f
    assert fast.instances == ref.instances and fast.overhead_ms == ref.overhead_ms


# --------------------------------------------------------------------------- built-in scenarios


# Autoscaling and closed loops run on SimPy only.
SIMPY_ONLY = {"traffic-ramp-autoscale": ["autoscale"],
              "robot-control-loop": ["closed-loop clients (arrivals.process closed)"]}


@pytest.mark.parametrize("name", [n for n in builtin.names() if n not in SIMPY_ONLY])
def test_builtin_scenarios_identical(name):
    sc = load_scenario(name, ["run.requests=20000"])
    assert unsupported_features(sc) == []
    ref, fast = run_both(sc)
    assert_same(ref, fast)


@pytest.mark.parametrize("overrides", [
    ["queue.max_size=6", "queue.on_full=drop_oldest", "queue.timeout_ms=60", "instances=2",
     "service.contention={2: 1.3}", "service.variability.distribution=gamma", "service.variability.cv=0.5"],
    ["batching.mode=timer", "queue.max_size=10", "queue.timeout_ms=40", "service.preprocess.ms=2",
     "service.preprocess.workers=1", "service.postprocess.ms=1", "service.postprocess.workers=2"],
    ["batching.preferred_batch_sizes=[2, 4]", "queue.max_size=8", "queue.on_full=reject",
     "service.variability.distribution=lognormal", "service.variability.cv=0.3"],
])
def test_builtin_with_caps_and_timeouts(overrides):  # noqa: D103
    sc = load_scenario("mini-challenge", ["run.requests=20000", "arrivals.rate_rps=250"] + overrides)
    ref, fast = run_both(sc, seed=3)
    assert_same(ref, fast)
    assert (ref.drop_reason > 0).any() or "batching.mode=timer" in overrides


@pytest.mark.parametrize("overrides", [
    ["queue.per_source_max_size=1", "queue.on_full=drop_oldest"],
    ["queue.per_source_max_size=2", "queue.on_full=reject", "queue.max_size=6", "queue.timeout_ms=30"],
    ["queue.stride=2"],
    ["queue.stride=3", "queue.per_source_max_size=1", "queue.on_full=drop_oldest", "batching.mode=timer"],
    ["queue.per_source_max_size=1", "queue.on_full=drop_oldest", "service.preprocess.ms=3",
     "service.preprocess.workers=1"],
])
def test_camera_streams_with_per_camera_caps_and_stride(overrides):
    # 6 cameras x 25 fps pushed to 10x the rate (above capacity) so the caps bite
    sc = load_scenario("example-2-multi-camera", ["run.requests=20000", "arrivals.streams.0.fps=250"] + overrides)
    ref, fast = run_both(sc, seed=4)
    assert_same(ref, fast)
    reasons = set(np.unique(ref.drop_reason).tolist())
    if any("stride" in o for o in overrides):
        assert 4 in reasons
    if any("per_source" in o for o in overrides):
        assert reasons & {1, 2}


@pytest.mark.parametrize("overrides", [[], ["queue.max_size=4", "queue.on_full=drop_oldest", "instances=2"],
                                       ["batching.mode=timer", "batching.max_queue_delay_ms=30"]])
def test_empirical_variability_from_a_profile(overrides):
    sc = load_scenario("mini-challenge", ["run.requests=15000", "service.batch_latency_ms=null",
                                          "service.profile=calibration/resnet18-onnxruntime-cpu-int8.json",
                                          "service.variability.distribution=empirical", "arrivals.rate_rps=50",
                                          "service.overhead_ms=0"] + overrides)
    ref, fast = run_both(sc, seed=8)
    assert_same(ref, fast)
    assert len(np.unique(ref.batch_end - ref.batch_start)) > 10  # service times really vary


# --------------------------------------------------------------------------- random scenarios


ROUND = (0, 1, 2, 2.5, 4, 5, 8, 10, 12.5, 20, 25, 40, 50)


def _num(lo, hi):
    """A float in [lo, hi], often a round number so that events coincide (ties)."""
    rounds = [v for v in ROUND if lo <= v <= hi]
    return st.one_of(st.sampled_from(rounds), st.floats(lo, hi, allow_nan=False)) if rounds else st.floats(lo, hi)


@st.composite
def scenarios(draw, direct=False, deadline=False, devices=False, priority=False):
    """A random scenario the fast engine supports; ``direct``: triton batching with nothing ever
    dropped (no cap, no timeout), which the fast engine runs without its event queue;
    ``deadline``: with ``queue.deadline_ms``; ``devices``: several devices and a dispatch policy;
    ``priority``: priority lanes (triton), each level with its own cap, on_full and timeout."""
    B = draw(st.integers(1, 8))
    sizes = sorted({1, B} | set(draw(st.lists(st.integers(1, B), max_size=3))))
    ms, curve = draw(_num(0.5, 20)), {}
    for b in sizes:
        curve[b] = round(ms, 3)
        ms += draw(_num(0, 5)) * (b > 1)
    dist = draw(st.sampled_from(["none", "exponential", "gamma", "lognormal"]))
    cv = {"none": 0.0, "exponential": 1.0}.get(dist, None)
    if cv is None:
        cv = draw(_num(0.05, 1.5))
    instances = draw(st.integers(1, 3))
    policies = {}
    if devices:  # G devices x K instances; contention counts the busy instances on one device
        G, K = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        instances = G * K
        policies = {"devices": {"count": G, "instances_per_device": K},
                    "dispatch": draw(st.sampled_from(["lowest_index", "round_robin", "least_loaded"]))}
    per_device = policies["devices"]["instances_per_device"] if devices else instances
    contention = {}
    if per_device > 1 and draw(st.booleans()):
        contention = {k: round(draw(_num(1.0, 2.0)), 3) for k in range(2, per_device + 1)}
    mode = "triton" if direct or priority else draw(st.sampled_from(["triton", "timer"]))
    preferred = []
    if mode == "triton" and B > 1 and draw(st.booleans()):
        preferred = draw(st.lists(st.integers(1, B), max_size=3, unique=True))

    def stage():
        return {"ms": draw(st.one_of(st.just(0.0), _num(0, 10))), "workers": draw(st.integers(0, 3))}

    capacity = instances * B / curve[B] * 1000.0
    rate = max(draw(st.one_of(st.sampled_from([0.5, 0.9, 1.0, 1.2, 1.5]), _num(0.05, 1.5))) * capacity, 1.0)
    process = draw(st.sampled_from(["poisson", "constant", "bursty", "streams"]))
    if process in ("poisson", "constant"):
        arrivals = {"process": process, "rate_rps": rate}
    elif process == "bursty":
        arrivals = {"process": "bursty", "rate_rps": rate / 2, "burst_rate_rps": rate * 3,
                    "mean_burst_s": 0.1, "mean_calm_s": 0.3}
    else:
        cams = draw(st.integers(1, 6))
        arrivals = {"process": "streams", "streams": [
            {"count": cams, "fps": max(rate / cams, 0.5), "jitter_ms": draw(st.one_of(st.just(0.0), _num(0, 5)))}]}
    cams_queue = {}
    if process == "streams":  # per-camera caps and stride only mean something with cameras
        cams_queue = {"stride": draw(st.sampled_from([1, 1, 2, 3])),
                      "per_source_max_size": 0 if direct else draw(st.sampled_from([0, 0, 1, 2, 4]))}
    if priority:  # the overall cap, timeout and on_full move to the levels
        nlev = draw(st.integers(1, 3))
        weights = [draw(st.integers(1, 5)) for _ in range(nlev)]
        levels = [{"max_size": draw(st.one_of(st.just(0), st.integers(1, 20))),
                   "timeout_ms": draw(st.one_of(st.just(0.0), _num(1, 150))),
                   "on_full": draw(st.sampled_from(["reject", "drop_oldest"]))} for _ in range(nlev)]
        if process == "streams":
            arrivals["streams"] = [{**arrivals["streams"][0], "count": 1, "priority": draw(st.integers(0, nlev - 1))}
                                   for _ in range(arrivals["streams"][0]["count"])]
        else:
            for lv, w in zip(levels, weights):
                lv["share"] = w / sum(weights)
        policies["priority"] = {"levels": levels}
    data = {
        "name": "fast-vs-simpy",
        "arrivals": arrivals,
        "service": {"batch_latency_ms": curve, "variability": {"distribution": dist, "cv": cv},
                    "overhead_ms": draw(st.one_of(st.just(0.0), _num(0, 20))),
                    "preprocess": stage(), "postprocess": stage(), "contention": contention},
        "batching": {"mode": mode, "max_batch_size": B, "max_queue_delay_ms": draw(_num(0, 20)),
                     "preferred_batch_sizes": preferred},
        "instances": instances, **policies,
        "queue": {"max_size": 0 if direct or priority else draw(st.one_of(st.just(0), st.integers(1, 30))),
                  "timeout_ms": 0.0 if direct or priority else draw(st.one_of(st.just(0.0), _num(1, 150))),
                  "on_full": "reject" if priority else draw(st.sampled_from(["reject", "drop_oldest"])),
                  **cams_queue,
                  "deadline_ms": draw(_num(0.5, 150)) if deadline else 0.0},
        "run": {"requests": draw(st.integers(300, 3000)), "warmup_requests": draw(st.integers(0, 100)),
                "replications": 1},
    }
    return parse_scenario(data), draw(st.integers(0, 2**31))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_random_scenarios_identical(case):
    sc, seed = case
    assert unsupported_features(sc) == []
    ref, fast = run_both(sc, seed)
    assert_same(ref, fast)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(direct=True))
def test_random_drop_free_triton_scenarios_identical(case):
    # The direct path (no event queue) against the SimPy engine's events, ties included.
    sc, seed = case
    assert FastEngine(sc).direct
    ref, fast = run_both(sc, seed)
    assert_same(ref, fast)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(deadline=True))
def test_random_deadline_scenarios_identical(case):
    # queue.deadline_ms: stale drops at batch decisions, with every other queue feature around.
    sc, seed = case
    assert unsupported_features(sc) == [] and not FastEngine(sc).direct
    ref, fast = run_both(sc, seed)
    assert_same(ref, fast)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(devices=True))
def test_random_device_scenarios_identical(case):
    # devices x instances, the three dispatch policies, per-device contention (event-queue path).
    sc, seed = case
    assert unsupported_features(sc) == []
    ref, fast = run_both(sc, seed)
    assert_same(ref, fast)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(direct=True, devices=True))
def test_random_drop_free_device_scenarios_identical(case):
    # The same on the direct path: the dispatch policy picks among the instances idle at T.
    sc, seed = case
    assert FastEngine(sc).direct
    ref, fast = run_both(sc, seed)
    assert_same(ref, fast)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(priority=True, deadline=True))
def test_random_priority_scenarios_identical(case):
    # priority lanes (per-level caps, on_full, timeouts; camera levels or shares), with deadlines.
    sc, seed = case
    assert unsupported_features(sc) == [] and not FastEngine(sc).direct
    ref, fast = run_both(sc, seed)
    assert_same(ref, fast)
    np.testing.assert_array_equal(fast.extras["priority"], ref.extras["priority"])


def test_direct_path_is_only_taken_when_nothing_can_be_dropped():
    assert FastEngine(load_scenario("mini-challenge")).direct
    assert FastEngine(load_scenario("mini-challenge", ["devices.count=2", "dispatch=least_loaded"])).direct
    for o in ("queue.max_size=5", "queue.timeout_ms=50", "batching.mode=timer", "queue.deadline_ms=100",
              "priority.levels=[{share: 0.5}, {share: 0.5}]"):
        assert not FastEngine(load_scenario("mini-challenge", [o])).direct, o


# --------------------------------------------------------------------------- deadlines, devices


@pytest.mark.parametrize("overrides", [
    ["queue.deadline_ms=20"],
    ["queue.deadline_ms=20", "batching.mode=timer"],
    ["queue.deadline_ms=12.5", "batching.preferred_batch_sizes=[2, 4]", "instances=2", "service.contention={2: 1.4}"],
    ["queue.deadline_ms=30", "queue.max_size=40", "queue.on_full=drop_oldest", "queue.timeout_ms=60"],
    ["queue.deadline_ms=25", "batching.mode=timer", "queue.timeout_ms=40", "service.preprocess.ms=2",
     "service.preprocess.workers=1"],
    ["queue.deadline_ms=15", "network.bandwidth_mbps=1000", "network.payload=jpeg"],
])
def test_deadlines_identical_and_stale_drops_are_exact(overrides):
    sc = load_scenario("mini-challenge", ["run.requests=20000", "arrivals.rate_rps=400"] + overrides)
    ref, fast = run_both(sc, seed=11)
    assert_same(ref, fast)
    dl = sc.queue.deadline_ms / 1000.0
    stale = fast.drop_reason == 5
    assert stale.sum() > 100  # overloaded: the deadline bites
    assert ((fast.drop_t[stale] - fast.arrival[stale]) > dl - 1e-12).all()  # strictly older than the deadline
    served = fast.drop_reason == 0
    # a served request's batch started no later than its arrival + deadline (the purge at the start)
    assert ((fast.start[served] - fast.arrival[served]) <= dl + 1e-12).all()


def test_deadlines_with_camera_caps_and_stride():
    sc = load_scenario("example-2-multi-camera", ["run.requests=20000", "arrivals.streams.0.fps=250", "queue.stride=2",
                                                  "queue.per_source_max_size=1", "queue.on_full=drop_oldest",
                                                  "queue.deadline_ms=40"])
    ref, fast = run_both(sc, seed=4)
    assert_same(ref, fast)
    assert {2, 4, 5} <= set(np.unique(fast.drop_reason).tolist())


@pytest.mark.parametrize("dispatch", ["lowest_index", "round_robin", "least_loaded"])
@pytest.mark.parametrize("extra", [[], ["queue.max_size=6"], ["batching.mode=timer"]])
def test_devices_and_dispatch_identical(dispatch, extra):
    sc = load_scenario("mini-challenge", ["run.requests=20000", "arrivals.rate_rps=450", "devices.count=2",
                                          "devices.instances_per_device=2", f"dispatch={dispatch}",
                                          "service.contention={2: 1.5}"] + extra)
    assert FastEngine(sc).direct == (not extra)
    ref, fast = run_both(sc, seed=5)
    assert_same(ref, fast)
    assert set(fast.batch_instance.tolist()) == {0, 1, 2, 3}


def test_contention_is_per_device():
    # One instance per device: never two busy on a device, so no batch is slowed down, however
    # loaded; the same two instances on one device share it and slow each other (factor 3).
    from capsim.service import ServiceCurve

    base = ["run.requests=5000", "arrivals.rate_rps=300", "service.contention={2: 3.0}", "dispatch=round_robin"]
    sc = load_scenario("mini-challenge", base + ["devices.count=2", "devices.instances_per_device=1"])
    ref, fast = run_both(sc, seed=2)
    assert_same(ref, fast)
    curve_s = ServiceCurve(sc.service.curve_ms(), sc.batching.max_batch_size).seconds
    assert set(fast.batch_instance.tolist()) == {0, 1}
    np.testing.assert_allclose(fast.batch_end - fast.batch_start, curve_s[fast.batch_size_by_batch], atol=1e-9)
    shared = run_both(load_scenario("mini-challenge", base + ["instances=2"]), seed=2)[1]
    slowdown = (shared.batch_end - shared.batch_start) / curve_s[shared.batch_size_by_batch]
    assert slowdown.max() == pytest.approx(3.0, abs=1e-6)


@pytest.mark.parametrize("levels, extra", [
    ("[{share: 0.2}, {share: 0.8, max_size: 64}]", []),
    ("[{share: 0.3, max_size: 8, on_full: drop_oldest}, {share: 0.7, max_size: 20, timeout_ms: 40}]", []),
    ("[{share: 0.3, timeout_ms: 25}, {share: 0.5, max_size: 10, on_full: drop_oldest}, {share: 0.2, timeout_ms: 60}]",
     ["queue.deadline_ms=50", "devices.count=2", "dispatch=least_loaded", "service.contention={2: 1.3}"]),
])
def test_priority_lanes_identical(levels, extra):
    sc = load_scenario("mini-challenge", ["run.requests=20000", "arrivals.rate_rps=300", f"priority.levels={levels}"]
                       + extra)
    ref, fast = run_both(sc, seed=7)
    assert_same(ref, fast)
    lvl = fast.extras["priority"]
    np.testing.assert_array_equal(lvl, ref.extras["priority"])
    done = fast.drop_reason == 0
    if "timeout" in levels or extra:  # drops bias who is left: compare the levels only without them
        assert (fast.drop_reason > 0).any()
        return
    # level 0 goes first: it waits less than level 1
    assert np.percentile(fast.latency_ms[done & (lvl == 0)], 95) < np.percentile(fast.latency_ms[done & (lvl == 1)], 95)


def test_priority_lanes_on_camera_streams_with_per_camera_caps():
    sc = load_scenario("example-2-multi-camera", [
        "run.requests=20000", "arrivals.streams.0.fps=250", "arrivals.streams.0.priority=1",
        "priority.levels=[{max_size: 4, on_full: drop_oldest}, {max_size: 6, timeout_ms: 300}]",
        "queue.per_source_max_size=2", "queue.on_full=reject", "queue.max_size=0", "queue.timeout_ms=0"])
    ref, fast = run_both(sc, seed=9)
    assert_same(ref, fast)
    assert (fast.drop_reason > 0).any()
