"""Queue-side policies on the SimPy engine: priority lanes, deadlines (stale frames), graceful
degradation (adaptive stride).

The timelines are worked out by hand from the semantics in :mod:`capsim.sim.lanes` (and the
batcher's in :mod:`capsim.sim.batcher`), never copied from engine output. Conventions as in
tests/test_timelines.py: times in ms, ``rK`` is arrival K, ``[a, b]`` a batch's service interval,
deterministic service with every batch size a measured point of the curve.
"""

from __future__ import annotations

import numpy as np
import pytest

from capsim.arrivals import ArrivalStream, generate, read_trace
from capsim.config import load_scenario, parse_scenario
from capsim.errors import CapsimError, ScenarioError
from capsim.queue_policies import degrade_summary, format_text
from capsim.sim.engine import SimPyEngine
from capsim.sim.fast import unsupported_features
from capsim.sim.queue import DROP_REASONS
from capsim.simulate import make_engine, simulate

CURVE = {1: 10, 2: 12, 3: 14, 4: 16}


def scenario(batching: dict, *, queue: dict | None = None, priority: dict | None = None,
             arrivals: dict | None = None, curve: dict | None = None, run: dict | None = None):
    data = {
        "arrivals": arrivals or {"process": "poisson", "rate_rps": 1},
        "service": {"batch_latency_ms": dict(curve or CURVE)},
        "batching": batching,
        "queue": queue or {},
        "run": run or {"requests": 200, "warmup_requests": 0, "replications": 1},
    }
    if priority is not None:
        data["priority"] = priority
    return parse_scenario(data)


def run(sc, times_ms, level=None, source=None):
    times = np.asarray(times_ms, dtype=np.float64) / 1000.0
    n = len(times)
    source = np.zeros(n, np.int32) if source is None else np.asarray(source, np.int32)
    frame = np.zeros(n, np.int64)
    for s in np.unique(source):
        frame[source == s] = np.arange((source == s).sum())
    pri = None if level is None else np.asarray(level, np.int8)
    arr = ArrivalStream(times, source, frame, int(source.max()) + 1, priority=pri)
    return SimPyEngine(sc).run(arr, np.random.default_rng(0))


def ms(values):
    return pytest.approx([np.nan if v is None else v / 1000.0 for v in values], abs=1e-9, nan_ok=True)


def lat(values):
    return pytest.approx([np.nan if v is None else float(v) for v in values], abs=1e-9, nan_ok=True)


def reasons(tr):
    return [DROP_REASONS[r] for r in tr.drop_reason]


TWO_LEVELS = {"levels": [{"share": 0.5}, {"share": 0.5}]}


# =========================================================================== priority lanes


# B=2, D=0, N=1. r0 (0, L1) r1 (1, L1) r2 (2, L1) r3 (3, L0).
# t=0: r0 alone -> [0, 10]. r1..r3 queue meanwhile.
# t=10: q=3 >= B: the batch takes level 0 first (r3), then the oldest of level 1 (r1) -> [10, 22].
# t=22: r2 alone -> [22, 32].
def test_priority_batch_takes_highest_level_first_then_fills_from_the_next():
    sc = scenario({"max_batch_size": 2}, priority=TWO_LEVELS)
    tr = run(sc, [0, 1, 2, 3], level=[1, 1, 1, 0])
    assert tr.start.tolist() == ms([0, 10, 22, 10])
    assert tr.end.tolist() == ms([10, 22, 32, 22])
    assert tr.batch_size.tolist() == [1, 2, 1, 2]
    assert tr.latency_ms.tolist() == lat([10, 21, 30, 19])
    assert tr.extras["priority"].tolist() == [1, 1, 1, 0]


# B=4, D=5, N=1. r0 (0, L1), r1 (2, L0). t0 is the oldest of ANY level: r0's 0, so the delay
# runs out at 5 (not at r1's 2 + 5 = 7): both leave at 5, r1 first in the batch -> [5, 17].
def test_priority_delay_runs_from_the_oldest_request_of_any_level():
    sc = scenario({"max_batch_size": 4, "max_queue_delay_ms": 5}, priority=TWO_LEVELS)
    tr = run(sc, [0, 2], level=[1, 0])
    assert tr.start.tolist() == ms([5, 5])
    assert tr.end.tolist() == ms([17, 17])
    assert tr.latency_ms.tolist() == lat([17, 15])


# B=1, D=0, N=1. L0: cap 1 drop_oldest; L1: cap 1 reject.
# r0 (0, L1) -> [0, 10]. r1 (1, L0) queued. r2 (2, L1) queued: each lane has its own cap, so L0's
# request does not fill L1. r3 (3, L0): L0 full -> evicts the oldest of L0, r1 (dropped_oldest at 3).
# r4 (4, L1): L1 full, reject -> rejected at 4. t=10: L0 first: r3 -> [10, 20]; t=20: r2 -> [20, 30].
def test_priority_caps_and_on_full_per_level():
    prio = {"levels": [{"share": 0.5, "max_size": 1, "on_full": "drop_oldest"},
                       {"share": 0.5, "max_size": 1, "on_full": "reject"}]}
    sc = scenario({"max_batch_size": 1}, priority=prio)
    tr = run(sc, [0, 1, 2, 3, 4], level=[1, 0, 1, 0, 1])
    assert reasons(tr) == ["", "dropped_oldest", "", "", "rejected"]
    assert tr.drop_t.tolist() == ms([None, 3, None, None, 4])
    assert tr.start.tolist() == ms([0, None, 20, 10, None])
    assert tr.latency_ms.tolist() == lat([10, None, 28, 17, None])


# B=1, D=0, N=1. L0: no timeout; L1: timeout 5. r0 (0, L0) -> [0, 10]. r1 (1, L1) would time out at
# 6; r2 (2, L0) has none. t=10: r1 dropped (timeout, recorded at 6); r2 -> [10, 20] after 8 ms queued.
def test_priority_timeout_per_level():
    prio = {"levels": [{"share": 0.5}, {"share": 0.5, "timeout_ms": 5}]}
    sc = scenario({"max_batch_size": 1}, priority=prio)
    tr = run(sc, [0, 1, 2], level=[0, 1, 0])
    assert reasons(tr) == ["", "timeout", ""]
    assert tr.drop_t.tolist() == ms([None, 6, None])
    assert tr.start.tolist() == ms([0, None, 10])


def test_one_level_equals_the_run_without_priority():
    """One level of share 1 holding the queue's cap, policy and timeout gives the same trace."""
    base = {"arrivals": {"process": "poisson", "rate_rps": 1500},
            "service": {"batch_latency_ms": {1: 4, 4: 7, 8: 10}, "variability": {"distribution": "gamma", "cv": 0.4}},
            "batching": {"max_batch_size": 8, "max_queue_delay_ms": 3}, "instances": 2,
            "run": {"requests": 6000, "warmup_requests": 500, "replications": 2, "seed": 4}}
    plain = parse_scenario({**base, "queue": {"max_size": 10, "on_full": "drop_oldest", "timeout_ms": 15}})
    lanes = parse_scenario({**base, "priority": {"levels": [
        {"share": 1.0, "max_size": 10, "on_full": "drop_oldest", "timeout_ms": 15}]}})
    a, b = simulate(plain, engine="simpy"), simulate(lanes, engine="simpy")
    assert a.dropped > 0 and a.drops_by_reason["dropped_oldest"] > 0
    for ta, tb in zip(a.traces, b.traces):
        for name in ("arrival", "start", "end", "latency_ms", "drop_t", "batch_start"):
            np.testing.assert_array_equal(getattr(ta, name), getattr(tb, name))
        for name in ("drop_reason", "batch_size", "instance"):
            assert getattr(ta, name).tolist() == getattr(tb, name).tolist()
    assert a.latency_ms == b.latency_ms and a.drops_by_reason == b.drops_by_reason
    lv = b.policies["priority"][0]
    assert lv["offered_share"] == 1.0 and lv["completed"] == b.completed
    assert lv["latency_ms"]["p95"] == b.latency_ms["p95"]


OVERLOAD = {"arrivals": {"process": "poisson", "rate_rps": 600},
            "service": {"batch_latency_ms": {1: 10, 8: 16}},
            "batching": {"max_batch_size": 8, "max_queue_delay_ms": 2},
            "priority": {"levels": [{"share": 0.2, "max_size": 64}, {"share": 0.8, "max_size": 64}]},
            "run": {"requests": 20000, "warmup_requests": 1000, "replications": 3, "seed": 7}}


def test_priority_under_overload_protects_the_high_level():
    """Offered 600 rps against at most 8 / 16 ms = 500 rps: level 0 keeps its p95 within 3x its
    no-load p95 and loses nothing; level 1 absorbs the drops."""
    res = simulate(parse_scenario(OVERLOAD))
    quiet = simulate(parse_scenario({**OVERLOAD, "arrivals": {"process": "poisson", "rate_rps": 10},
                                     "run": {**OVERLOAD["run"], "requests": 3000, "warmup_requests": 100}}))
    hi, lo = res.policies["priority"]
    no_load_p95 = quiet.policies["priority"][0]["latency_ms"]["p95"]
    assert hi["stable"] and hi["latency_ms"]["p95"] <= 3 * no_load_p95
    assert lo["drop_rate"] > 0.1 and lo["drop_rate"] > 50 * max(hi["drop_rate"], 1e-4)
    assert lo["drops_by_reason"]["rejected"] == lo["dropped"]
    assert hi["offered_share"] == pytest.approx(0.2, abs=0.01)
    assert hi["throughput_rps"] + lo["throughput_rps"] == pytest.approx(res.throughput_rps, rel=1e-9)
    # Shares of the served load follow from the drops: level 0 gets everything it offers.
    assert hi["throughput_rps"] == pytest.approx(0.2 * res.offered_rps, rel=0.05)
    text = "\n".join(format_text(res.policies))
    assert "priority level" in text and text.count("\n  ") >= 1


def test_priority_unstable_level_has_null_latencies():
    """Without lane caps the low level's queue grows without bound: its latencies are null, while
    the high level's are still reported."""
    sc = parse_scenario({**OVERLOAD, "priority": {"levels": [{"share": 0.2}, {"share": 0.8}]},
                         "run": {**OVERLOAD["run"], "replications": 2}})
    res = simulate(sc)
    hi, lo = res.policies["priority"]
    assert not res.stable and not lo["stable"] and lo["latency_ms"]["p95"] is None
    assert hi["stable"] and hi["latency_ms"]["p95"] is not None


def test_littles_law_holds_with_priority():
    sc = parse_scenario({**OVERLOAD, "arrivals": {"process": "poisson", "rate_rps": 380},
                         "run": {**OVERLOAD["run"], "replications": 1}})
    res = simulate(sc)
    assert res.stable and res.littles_law.rel_error < 0.01
    assert sum(lv["arrivals"] for lv in res.policies["priority"]) == res.completed + res.dropped


def test_levels_from_shares_streams_and_trace(tmp_path):
    sc = scenario({"max_batch_size": 1}, priority={"levels": [{"share": 0.25}, {"share": 0.75}]})
    a = generate(sc.arrivals, 40_000, np.random.default_rng(1), ".", sc.priority)
    plain = generate(sc.arrivals, 40_000, np.random.default_rng(1))
    np.testing.assert_array_equal(a.times, plain.times)  # levels are drawn after the times
    assert plain.priority.tolist() == [0] * 40_000
    assert a.priority.dtype == np.int8 and np.mean(a.priority == 0) == pytest.approx(0.25, abs=0.01)

    cams = scenario({"max_batch_size": 1}, priority={"levels": [{}, {}]},
                    arrivals={"process": "streams", "streams": [{"count": 2, "fps": 10, "priority": 1},
                                                                {"count": 1, "fps": 10}]})
    s = generate(cams.arrivals, 300, np.random.default_rng(1), ".", cams.priority)
    assert s.priority.tolist() == [1 if c < 2 else 0 for c in s.source.tolist()]

    path = tmp_path / "t.csv"
    path.write_text("arrival_s,source,priority\n0.2,0,1\n0.1,1,0\n0.3,0,2\n")
    tr = read_trace(path)
    assert tr.priority.tolist() == [0, 1, 2] and tr.source.tolist() == [1, 0, 0]
    with pytest.raises(ScenarioError, match="priority column names level 2"):
        tsc = parse_scenario({"arrivals": {"process": "trace", "path": str(path)},
                              "service": {"batch_latency_ms": CURVE}, "priority": TWO_LEVELS})
        generate(tsc.arrivals, 10, np.random.default_rng(0), ".", tsc.priority)


def test_priority_with_timer_mode_is_refused():
    with pytest.raises(ScenarioError, match="priority: lanes are modelled with batching.mode triton only"):
        scenario({"mode": "timer", "max_batch_size": 2}, priority=TWO_LEVELS)


# =========================================================================== deadlines


# B=2, D=0, N=1, deadline 15. r0 (0) -> [0, 10]. r1 (1), r2 (3) -> at 10 [10, 22]. r3 (4), r4 (9),
# r5 (20) queue. t=22: q=3 >= B, a batch is due: r3 is stale (4 + 15 = 19 < 22) -> dropped at 22;
# r4 (9 + 15 = 24) stays. On what is left (r4, r5: q=2 >= B) -> [22, 34].
def test_deadline_drops_stale_requests_when_a_batch_is_formed():
    sc = scenario({"max_batch_size": 2}, queue={"deadline_ms": 15})
    tr = run(sc, [0, 1, 3, 4, 9, 20])
    assert reasons(tr) == ["", "", "", "stale", "", ""]
    assert tr.drop_t.tolist() == ms([None, None, None, 22, None, None])
    assert tr.start.tolist() == ms([0, 10, 10, None, 22, 22])
    assert tr.latency_ms.tolist() == lat([10, 21, 19, None, 25, 14])


# B=4, D=5, N=1, deadline 8. r0 (0), r1 (1): delay runs out at 5 -> [5, 17]. r2 (6), r3 (15).
# t=17: q=2, 17 >= 6 + 5: a batch is due. r2 is stale (6 + 8 = 14 < 17) -> dropped at 17. The rule
# again on what is left: r3 alone, t0 = 15, 17 < 20 -> not due: wait. t=20: due; r3 is not stale
# (15 + 8 = 23 >= 20) -> [20, 30].
def test_deadline_decision_proceeds_on_what_is_left():
    sc = scenario({"max_batch_size": 4, "max_queue_delay_ms": 5}, queue={"deadline_ms": 8})
    tr = run(sc, [0, 1, 6, 15])
    assert reasons(tr) == ["", "", "stale", ""]
    assert tr.drop_t.tolist() == ms([None, None, 17, None])
    assert tr.start.tolist() == ms([5, 5, None, 20])
    assert tr.latency_ms.tolist() == lat([17, 16, None, 15])


# Timer mode, B=2, D=5, N=1, deadline 10. r0 (0), r1 (1): the batch fills at 1 -> [1, 13].
# r2 (2), r3 (3): fills at 3, waits for the instance. r4 (4): closes at 4 + 5 = 9.
# t=13: the closed batch {r2, r3} is about to start: r2 stale (12 < 13) -> dropped at 13; r3 exactly
# at its deadline (13) is kept -> r3 alone [13, 23]. t=23: {r4}: stale (14 < 23) -> dropped at 23;
# the batch is empty and skipped.
def test_deadline_in_timer_mode():
    sc = scenario({"mode": "timer", "max_batch_size": 2, "max_queue_delay_ms": 5}, queue={"deadline_ms": 10})
    tr = run(sc, [0, 1, 2, 3, 4])
    assert reasons(tr) == ["", "", "stale", "", "stale"]
    assert tr.drop_t.tolist() == ms([None, None, 13, None, 23])
    assert tr.start.tolist() == ms([1, 1, None, 13, None])
    assert tr.dispatch.tolist() == ms([1, 1, None, 3, None])  # timer: when the batch closed
    assert tr.latency_ms.tolist() == lat([13, 12, None, 20, None])


def test_stale_dropping_raises_useful_throughput():
    """12 cameras x 25 fps = 300 fps against at most 4 / 16 ms = 250 fps. A frame is useful when
    answered within 120 ms. Without a deadline the queue grows and almost nothing is useful; with
    deadline_ms 100 (120 less the longest batch) stale frames are skipped and the service spends
    its capacity on frames that can still make it."""
    base = {"arrivals": {"process": "streams", "streams": [{"count": 12, "fps": 25, "jitter_ms": 2}]},
            "service": {"batch_latency_ms": {1: 10, 2: 12, 4: 16}},
            "batching": {"max_batch_size": 4, "max_queue_delay_ms": 2},
            "run": {"requests": 15000, "warmup_requests": 500, "replications": 1, "seed": 3}}

    def useful_rps(res):
        tr = res.traces[0]
        m = ~tr.warmup
        t = tr.arrival[m]
        ok = tr.completed & m & (tr.latency_ms <= 120.0)
        return ok.sum() / (t[-1] - t[0])

    none = simulate(parse_scenario(base))
    dl = simulate(parse_scenario({**base, "queue": {"deadline_ms": 100}}))
    assert not none.stable
    assert dl.drops_by_reason["stale"] > 0 and dl.drops_by_reason["stale"] == dl.dropped
    assert useful_rps(dl) > 0.9 * 250 and useful_rps(dl) > 10 * useful_rps(none)
    assert dl.latency_ms["max"] <= 100 + 16 + 1e-6


# =========================================================================== graceful degradation


# One camera, threshold 1, max_stride 3, base stride 1; B=1, D=0, N=1 (10 ms per frame).
# f0 (1): none queued, stride stays 1 -> [1, 11].
# f1 (3): none queued (f0 is in service) -> stride 1, queued.
# f2 (5): 1 queued >= 1 -> stride 2; 2 % 2 = 0, queued.      f3 (7): 2 queued -> stride 3; 3 % 3 = 0.
# f4 (9): 3 queued -> stride stays 3 (max); 4 % 3 = 1 -> dropped (stride) at 9.
# t=11: f1 -> [11, 21]. f5 (12): 2 queued -> stride 3; 5 % 3 = 2 -> dropped at 12.
# t=21: f2 -> [21, 31]; t=31: f3 -> [31, 41].
# f6 (40): none queued -> stride 2; 6 % 2 = 0 -> queued; t=41: f6 -> [41, 51].
# f7 (42): none queued -> stride 1 -> queued; t=51: f7 -> [51, 61].
# f8 (60): none queued -> stride stays 1 -> queued; t=61: f8 -> [61, 71].
def test_degrade_stride_rises_with_the_queue_and_falls_when_it_empties():
    sc = scenario({"max_batch_size": 1}, queue={"degrade": {"threshold": 1, "max_stride": 3}},
                  arrivals={"process": "streams", "streams": [{"count": 1, "fps": 10}]})
    tr = run(sc, [1, 3, 5, 7, 9, 12, 40, 42, 60])
    assert reasons(tr) == ["", "", "", "", "stride", "stride", "", "", ""]
    assert tr.drop_t.tolist() == ms([None] * 4 + [9, 12] + [None] * 3)
    assert tr.start.tolist() == ms([1, 11, 21, 31, None, None, 41, 51, 61])
    d = tr.extras["degrade"]
    assert list(zip((d["t"] * 1000).round(9).tolist(), d["source"].tolist(), d["stride"].tolist())) == \
        [(5.0, 0, 2), (7.0, 0, 3), (40.0, 0, 2), (42.0, 0, 1)]


# Two cameras share the queue; each adapts on its OWN queued count. threshold 1, max 3.
# a0 (0, cam 0) -> [0, 10]. a1 (1, cam 0): none of cam 0 queued -> queued. b0 (2, cam 1): none of
# cam 1 queued -> queued. a2 (3, cam 0): 1 of cam 0 queued -> stride 2, 2 % 2 = 0 queued.
# b1 (4, cam 1): 1 of cam 1 queued -> cam 1 stride 2; 1 % 2 = 1 -> dropped. a3 (5, cam 0): 2 of cam 0
# queued -> stride 3; 3 % 3 = 0 queued.
def test_degrade_is_per_camera():
    sc = scenario({"max_batch_size": 1}, queue={"degrade": {"threshold": 1, "max_stride": 3}},
                  arrivals={"process": "streams", "streams": [{"count": 2, "fps": 10}]})
    tr = run(sc, [0, 1, 2, 3, 4, 5], source=[0, 0, 1, 0, 1, 0])
    assert reasons(tr) == ["", "", "", "", "stride", ""]
    assert tr.start.tolist() == ms([0, 10, 20, 30, None, 40])
    d = tr.extras["degrade"]
    assert list(zip(d["source"].tolist(), d["stride"].tolist())) == [(0, 2), (1, 2), (0, 3)]


def test_degrade_with_base_stride_and_caps():
    """Base stride 2 drops odd frames before the queue; the adaptive stride never goes below it."""
    sc = scenario({"max_batch_size": 1}, queue={"stride": 2, "degrade": {"threshold": 5, "max_stride": 4}},
                  arrivals={"process": "streams", "streams": [{"count": 1, "fps": 10}]})
    tr = run(sc, [0, 20, 40, 60])  # never queued: nothing adapts
    assert reasons(tr) == ["", "stride", "", "stride"]
    assert len(tr.extras["degrade"]["t"]) == 0


def test_degrade_stride_rises_during_a_burst_and_falls_after():
    """4 cameras at 25 fps (100 fps in all) for 4 s, a burst at 4x (400 fps, above the 250 fps the
    service can do) for 2 s, then 25 fps again: the strides rise during the burst and are back at
    the base stride after it."""
    fps = np.concatenate([np.full(100, 25.0), np.full(200, 100.0), np.full(100, 25.0)])
    cam_t = np.concatenate(([0.0], np.cumsum(1.0 / fps)))[:-1]  # one camera's frame times
    times, source = [], []
    for c in range(4):
        times.append(cam_t + c * 0.0097)
        source.append(np.full(len(cam_t), c))
    t = np.concatenate(times)
    order = np.argsort(t, kind="stable")
    sc = scenario({"max_batch_size": 4, "max_queue_delay_ms": 2}, curve={1: 10, 2: 12, 4: 16},
                  queue={"degrade": {"threshold": 2, "max_stride": 4}},
                  arrivals={"process": "streams", "streams": [{"count": 4, "fps": 25}]})
    tr = run(sc, t[order] * 1000.0, source=np.concatenate(source)[order])
    assert cam_t[100] == pytest.approx(4.0) and cam_t[300] == pytest.approx(6.0)
    summary = degrade_summary(sc, [tr])
    starts = np.array(summary["t_s"])
    w = summary["bin_s"]
    calm_before = starts + w <= 4.0
    burst = (starts >= 4.3) & (starts + w <= 6.0)
    after = starts >= 7.0
    for cam in summary["cameras"]:
        stride = np.array(cam["stride"])
        assert np.all(stride[calm_before] == 1.0)
        assert stride[burst].mean() > 1.5 and cam["max_stride"] >= 3
        assert np.all(stride[after] == 1.0)
        assert 0.05 < cam["above_base_fraction"] < 0.5
        processed = np.array(cam["processed_fps"])
        assert processed[burst].mean() < 100 * 0.9  # frames were skipped in the burst
        assert processed[after].mean() == pytest.approx(25, abs=3)
    assert tr.completed.sum() + (tr.drop_reason == DROP_REASONS.index("stride")).sum() == len(tr.arrival)


def test_degrade_result_and_text_on_bursty_streams():
    sc = parse_scenario({
        "arrivals": {"process": "streams", "streams": [{"count": 4, "fps": 25}], "burst_factor": 3,
                     "mean_burst_s": 2, "mean_calm_s": 8},
        "service": {"batch_latency_ms": {1: 10, 2: 12, 4: 16}},
        "batching": {"max_batch_size": 4, "max_queue_delay_ms": 2},
        "queue": {"degrade": {"threshold": 2, "max_stride": 4}},
        "run": {"requests": 8000, "warmup_requests": 500, "replications": 2}})
    res = simulate(sc)
    d = res.to_dict()["policies"]["degrade"]
    assert len(d["t_s"]) == 50 and len(d["cameras"]) == 4
    assert all(len(c["stride"]) == 50 and min(c["stride"]) >= 1.0 for c in d["cameras"])
    assert any(c["max_stride"] > 1 for c in d["cameras"])
    assert res.drops_by_reason["stride"] > 0
    lines = format_text(res.policies)
    assert sum(line.startswith("  camera ") for line in lines) == 4


# =========================================================================== engines


def test_engines_and_refusals():
    # deadlines (and priority lanes) run on the fast engine; adaptive stride falls back to SimPy
    assert unsupported_features(scenario({"max_batch_size": 2}, queue={"deadline_ms": 50})) == []
    sc = scenario({"max_batch_size": 2}, queue={"degrade": {"threshold": 1, "max_stride": 2}},
                  arrivals={"process": "streams", "streams": [{"count": 2, "fps": 10}]})
    assert unsupported_features(sc) == ["queue.degrade"]
    assert make_engine(sc).name == "simpy"  # auto falls back
    with pytest.raises(CapsimError, match="fast engine does not model queue.degrade"):
        make_engine(sc, "fast")
    assert DROP_REASONS[:5] == ("", "rejected", "dropped_oldest", "timeout", "stride")
    assert DROP_REASONS[5] == "stale"


# =========================================================================== latest frame before decode


def test_latest_frame_pool_hand_timeline():
    from capsim.sim.stages import fifo_pool, latest_frame_pool

    # one decode worker, 10 ns per frame; camera 0 at 0, 2, 5, 10; camera 1 at 3, 12
    t = np.array([0, 2, 3, 5, 10, 12])
    src = np.array([0, 0, 1, 0, 0, 1])
    done, dropped = latest_frame_pool(t, src, 10, 1, 2)
    # 0 decodes at once; 2 waits and is superseded by 5 (dropped at 5); 3 starts at 10; 5 is still
    # waiting at 10 and is superseded by 10 (dropped at 10: the worker freed at 10 took 3 first)
    assert done.tolist() == [10, -1, 20, -1, 30, 40]
    assert dropped.tolist() == [-1, 5, -1, 10, -1, -1]
    # every frame its own camera: nothing is superseded and it is the plain FIFO pool
    rng = np.random.default_rng(1)
    t = np.sort(rng.integers(0, 10**6, 2000))
    done, dropped = latest_frame_pool(t, np.arange(2000), 700, 3, 2000)
    assert (dropped < 0).all() and np.array_equal(done, fifo_pool(t.astype(float), 700, 3).astype(np.int64))


def _decode_bound_cameras(extra=()):
    # 6 cameras x 25 fps = 150 fps into one decoder of 10 ms (100 fps): the decode line overflows
    return load_scenario("example-2-multi-camera", ["service.preprocess.ms=10", "service.preprocess.workers=1",
                                                    "run.requests=30000", "run.replications=2", *extra])


def test_latest_frame_keeps_a_decode_bound_camera_pipeline_stable():
    plain = simulate(_decode_bound_cameras())
    latest = simulate(_decode_bound_cameras(["queue.preprocess_latest=true"]))
    assert not plain.stable  # frames pile up before decode, where the per-camera caps cannot reach
    assert latest.stable and latest.latency_ms["p95"] < 100
    assert latest.drops_by_reason["stale"] > 0.2 * (latest.completed + latest.dropped)
    assert latest.throughput_rps == pytest.approx(100, rel=0.05)  # the decoder runs flat out


@pytest.mark.parametrize("extra", [[], ["network.bandwidth_mbps=100"], ["arrivals.streams.0.jitter_ms=3",
                                                                        "queue.stride=2", "instances=2",
                                                                        "service.preprocess.ms=16"]])
def test_latest_frame_same_traces_on_both_engines(extra):
    from capsim.sim.engine import SimPyEngine
    from capsim.sim.fast import FastEngine, unsupported_features

    sc = _decode_bound_cameras(["queue.preprocess_latest=true", "run.requests=8000", *extra])
    assert unsupported_features(sc) == []
    arr = generate(sc.arrivals, sc.run.requests, np.random.default_rng(3))
    ref = SimPyEngine(sc).run(arr, np.random.default_rng(4))
    fast = FastEngine(sc).run(arr, np.random.default_rng(4))
    assert (ref.drop_reason == DROP_REASONS.index("stale")).sum() > 100
    for f in ("entry", "start", "end", "done", "latency_ms", "drop_t"):
        np.testing.assert_array_equal(getattr(ref, f), getattr(fast, f), err_msg=f)
    np.testing.assert_array_equal(ref.drop_reason, fast.drop_reason)


def test_latest_frame_needs_a_decode_pool():
    with pytest.raises(ScenarioError, match="queue.preprocess_latest: needs a pre-processing pool"):
        load_scenario("example-2-multi-camera", ["queue.preprocess_latest=true", "service.preprocess.workers=0"])
