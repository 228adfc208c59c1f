"""``cpu_sharing.overlap``: pre-processing and batches sharing the cores moment to moment.

A hand-computed timeline, identity with the ordinary engine when nothing slows down, the mean
slowdown against the analytic average, validate's use of a co-run, the co-run itself on a real
decode, and one-line errors.
"""

from __future__ import annotations


import numpy as np
import pytest

from capsim import host_cpu
from capsim.config import parse_scenario
from capsim.errors import CapsimError, ScenarioError
from capsim.simulate import make_engine, simulate

from edits import edited, stream  # tests/edits.py

SHARED = {"cores": 2, "model_cores": 2, "host_ms": 0.0,
          "overlap": {"model_speed": {1: 0.5}, "preprocess_speed": 0.5}}
BASE = {
    "name": "shared-cores",
    "arrivals": {"process": "poisson", "rate_rps": 20},
    "service": {"batch_latency_ms": {1: 20.0, 8: 100.0}, "preprocess": {"ms": 10.0, "workers": 1},
                "cpu_sharing": SHARED},
    "batching": {"mode": "triton", "max_batch_size": 1, "max_queue_delay_ms": 0},
    "run": {"requests": 4000, "warmup_requests": 400, "replications": 2, "seed": 5},
}


def scenario(**edits):
    return parse_scenario(edited(BASE, **edits))


def test_a_timeline_by_hand():
    # decode 10 ms and batch 20 ms alone; beside each other both run at half speed. Arrivals 0, 15, 30 ms:
    #  0- 10  r0 decodes alone; 10 its batch starts (20 ms of work)
    # 15- 35  r1 decodes beside the batch (10 ms of work at 0.5); the batch does 5 + 10, 5 left
    # 35- 45  r2 decodes (r1 waits for the instance); the batch's last 5 at 0.5: r0 done at 45
    # 45- 55  r1's batch beside r2's decode (5 left at 0.5): 5 done by 55, then alone: r1 done at 70
    # 70- 90  r2's batch alone
    eng = make_engine(scenario())
    assert eng.name == "simpy"
    tr = eng.run(stream([0.0, 0.015, 0.030]), np.random.default_rng(0))
    assert tr.entry * 1000 == pytest.approx([10, 35, 55])
    assert tr.start * 1000 == pytest.approx([10, 45, 70])
    assert tr.end * 1000 == pytest.approx([45, 70, 90])
    assert tr.latency_ms == pytest.approx([45, 55, 60])
    assert tr.extras["preprocess_start"] * 1000 == pytest.approx([0, 15, 35])


def test_a_decode_runs_at_the_speed_beside_the_size_of_the_batch_beside_it():
    # decode 10 ms alone, two workers; batches 16 ms (1) and 30 ms (2), never slowed; a decode runs at
    # x0.5 beside a batch of 1 and x0.25 beside a batch of 2. Three arrivals at 0:
    #  0-10    r0 and r1 decode alone; both enter at 10, and their batch of 2 runs 10-40
    # 10-42.5  r2 decodes beside it: 30 ms at x0.25 is 7.5 ms of work, the last 2.5 alone
    # 42.5-58.5 r2's batch of 1
    eng = make_engine(scenario(**{
        "service.preprocess": {"ms": 10.0, "workers": 2},
        "service.batch_latency_ms": {1: 16.0, 2: 30.0},
        "batching.max_batch_size": 2,
        "service.cpu_sharing.overlap": {"model_speed": {1: 1.0}, "preprocess_speed_by_batch": {1: 0.5, 2: 0.25}}}))
    tr = eng.run(stream([0.0, 0.0, 0.0]), np.random.default_rng(0))
    assert tr.entry * 1000 == pytest.approx([10, 10, 42.5])
    assert tr.start * 1000 == pytest.approx([10, 10, 42.5])
    assert tr.end * 1000 == pytest.approx([40, 40, 58.5])
    # one speed for every size (x0.5) would have finished r2's decode beside the batch, at 30
    one = make_engine(scenario(**{
        "service.preprocess": {"ms": 10.0, "workers": 2},
        "service.batch_latency_ms": {1: 16.0, 2: 30.0},
        "batching.max_batch_size": 2,
        "service.cpu_sharing.overlap": {"model_speed": {1: 1.0}, "preprocess_speed": 0.5}}))
    assert one.run(stream([0.0, 0.0, 0.0]), np.random.default_rng(0)).entry[2] * 1000 == pytest.approx(30)


def test_at_full_speed_it_is_the_ordinary_engine():
    # speeds of 1 change nothing: the same requests leave at the same nanosecond as without sharing
    common = {"service.preprocess": {"ms": 8.0, "workers": 2},
              "service.variability": {"distribution": "gamma", "cv": 0.3},
              "batching.max_batch_size": 4, "batching.max_queue_delay_ms": 5, "arrivals.rate_rps": 60}
    shared = scenario(**common, **{"service.cpu_sharing.overlap": {"model_speed": {1: 1.0}, "preprocess_speed": 1.0}})
    plain = scenario(**common, **{"service.cpu_sharing.overlap": None})
    assert host_cpu.moment_to_moment(shared) and not host_cpu.moment_to_moment(plain)
    rng = np.random.default_rng(9)
    arr = stream(np.cumsum(rng.exponential(1 / 60, 3000)))
    a = make_engine(shared).run(arr, np.random.default_rng(1))
    b = make_engine(plain, "simpy").run(arr, np.random.default_rng(1))
    assert np.array_equal(a.latency_ms, b.latency_ms)
    assert np.array_equal(a.batch_size, b.batch_size)
    assert a.batch_size.max() > 1  # batching took place


def test_mean_slowdown_matches_the_analytic_figure():
    # B=1 at 20 rps, batch 20 ms and decode 10 ms alone, both x0.5 beside each other. The analytic
    # figures (capacity, napkin) take a batch to overlap decodes for the pool's busy share at the
    # slowed speed, 20 x 10 / 0.5 = 40 % of its time, at half speed: 1 / (1 - 0.4 x 0.5) = 1.25x.
    # Event by event the mean agrees within a few per cent (a longer batch meets more arrivals).
    sc = scenario(**{"run.requests": 20000, "run.warmup_requests": 2000})
    assert host_cpu.effective_curve_ms(sc)[1] == pytest.approx(25.0)
    res = simulate(sc)
    assert res.stable
    assert res.breakdown_ms["service"] == pytest.approx(25.0, rel=0.06)
    assert res.breakdown_ms["service"] > 20.0 / 0.9  # more than if decodes were never slowed (20 % busy)


def test_overlap_fattens_the_tail_beyond_an_average_slowdown():
    # The same mean batch and decode times, slowed on average instead of when they overlap: the
    # overlap falls when arrivals bunch up, so the moment-to-moment tail is longer
    shared = simulate(scenario(**{"arrivals.rate_rps": 25, "run.requests": 20000, "run.warmup_requests": 2000}))
    from capsim.validate.validate import decode_ms

    pre = decode_ms(shared, scenario())
    avg = scenario(**{"arrivals.rate_rps": 25, "run.requests": 20000, "run.warmup_requests": 2000,
                      "service.cpu_sharing": None, "service.preprocess.ms": round(pre, 3),
                      "service.batch_latency_ms": {1: round(shared.breakdown_ms["service"], 3), 8: 100.0}})
    average = simulate(avg)
    assert average.breakdown_ms["service"] == pytest.approx(shared.breakdown_ms["service"], rel=0.01)
    assert shared.latency_ms["p95"] > 1.1 * average.latency_ms["p95"]


def test_the_fast_engine_refuses_it_in_one_line():
    with pytest.raises(CapsimError, match=r"--engine fast: .*service\.cpu_sharing\.overlap"):
        simulate(scenario(), engine="fast")


@pytest.mark.parametrize("edits, field", [
    ({"service.cpu_sharing.overlap.model_speed": {1: 1.5}}, "service.cpu_sharing.overlap.model_speed.1"),
    ({"service.cpu_sharing.overlap.model_speed": {0: 0.5}}, "service.cpu_sharing.overlap.model_speed.0"),
    ({"service.cpu_sharing.overlap": {"preprocess_speed": 0.5}}, "service.cpu_sharing.overlap.preprocess_speed"),
    ({"service.cpu_sharing.overlap": {"preprocess_speed_by_batch": {1: 0.5}}},
     "service.cpu_sharing.overlap.preprocess_speed_by_batch: needs model_speed"),
    ({"service.cpu_sharing.overlap.preprocess_speed_by_batch": {2: 0.0}},
     "service.cpu_sharing.overlap.preprocess_speed_by_batch.2: must be in"),
    ({"service.preprocess": None}, "service.cpu_sharing.overlap: needs a pre-processing pool"),
    ({"batching.mode": "timer"}, "service.cpu_sharing.overlap: not modelled with batching.mode timer"),
    ({"service.cpu_sharing.slowdown_per_core": {1: 0.2}, "service.cpu_sharing.model_cores": 0},
     "service.cpu_sharing.overlap: not modelled with slowdown_per_core"),
])
def test_bad_overlap_fields_name_themselves(edits, field):
    with pytest.raises(ScenarioError, match=field.replace(".", r"\.")):
        scenario(**edits)


def test_validate_predicts_with_the_co_run():
    from capsim.validate.validate import host_ratio, scenario_for, share_cores

    # batch 1 ran at 20 rps in the server: decode (7 ms alone, x0.7 beside a batch) busy
    # 20 x 7 / 0.7 = 20 % of the time at x0.5 -> 1 / 0.9; the other 3 ms per request (0.06 cores)
    # leave 1.94 cores for a 2-thread model -> 2 / 1.94
    host = {"compute_b1_ms": 30.0, "profile_b1_ms": 27.0, "compute_ratio": 30.0 / 27.0, "rate_rps": 20.0,
            "compute_cv": 0.3, "decode_ms": 9.0, "compute_bmax_ms": 190.0, "bmax": 8, "profile_bmax_ms": 200.0,
            "compute_ratio_bmax": 0.95}
    corun = {"model_speed": {1: 0.5, 8: 0.6}, "preprocess_speed": 0.7, "model_alone_cv": {1: 0.04, 8: 0.06}}
    share_cores(host, {"host_cpu_ms": 10.0, "preprocess_ms": 7.0}, threads=2, instances=1, cores=2, corun=corun)
    k = (1 / 0.9) * (2 / 1.94)
    assert host["calibration_slowdown"] == pytest.approx(k)
    assert host_ratio(host, 1) == pytest.approx(30.0 / 27.0 / k)
    assert host["sharing"]["overlap"] == {"model_speed": {1: 0.5, 8: 0.6}, "preprocess_speed_by_batch": {1: 0.7}}
    sc = scenario_for(BASE_PROFILE, {"overhead_ms": 3.0, "preprocess_ms": 7.0}, 8, 10.0, 1, 1, 20.0, 1, host)
    assert host_cpu.moment_to_moment(sc)
    assert sc.service.preprocess.ms == 7.0                 # the decode alone, not the 9 ms beside the model
    assert sc.service.variability.cv == pytest.approx(0.05)  # the model's own spread, not the server's 0.3
    assert host_cpu.spread_ms(sc) == pytest.approx(3.0)


BASE_PROFILE = str(__import__("pathlib").Path(__file__).resolve().parent.parent / "calibration"
                   / "resnet18-onnxruntime-cpu-fp32.json")


def test_co_run_times_a_real_decode_beside_a_model():
    pytest.importorskip("PIL")
    from capsim.validate import corun
    from capsim.validate.load import make_payload
    from capsim.validate.server import load_model

    # the noop model sleeps 4 ms per batch: it takes no CPU, so the decode beside it keeps most of
    # its speed, and the batch's own time is the sleep
    host = load_model("noop", None, "onnxruntime", "cpu", "fp32", 1, input_shape=(3, 64, 64), noop_ms=4.0)
    body, headers = make_payload("jpeg", (3, 64, 64))
    out = corun.measure(host, body, headers["Content-Type"], [1, 2], seconds=0.4)
    assert set(out["model_speed"]) == {1, 2}
    assert 3.9 <= out["model_alone_ms"][1] < 8.0
    assert all(0 < v <= 1 for v in out["model_speed"].values())
    assert out["decode_alone_ms"] > 0 and 0.4 < out["preprocess_speed"] <= 1.0
    # the decode was timed beside each size, the largest's speed kept as the one for every size
    assert set(out["preprocess_speed_by_batch"]) == {1, 2}
    assert all(0.4 < v <= 1.0 for v in out["preprocess_speed_by_batch"].values())
    assert out["preprocess_speed"] == out["preprocess_speed_by_batch"][2]
