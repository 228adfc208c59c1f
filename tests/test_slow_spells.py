"""``service.slow_spells``: spells in which the whole machine runs slower.

Hand-computed timelines for the pool and the spell lookup, where the spells fall (regular and
at random, each with the share of time asked for), the batches that start in a spell taking
``slowdown`` times as long (the rest not), the tail they add at the same mean, the cores
shared moment to moment at full speed giving the same run, and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from capsim.config import SlowSpells, parse_scenario
from capsim.errors import CapsimError, ScenarioError
from capsim.sim.spells import SpellWindows, mean_factor, windows
from capsim.sim.stages import fifo_pool_each
from capsim.simulate import make_engine, simulate

from edits import edited  # tests/edits.py

MS = 1_000_000
BASE = {
    "name": "slow-spells",
    "arrivals": {"process": "poisson", "rate_rps": 10},
    "service": {"batch_latency_ms": {1: 10.0}, "slow_spells": {"every_s": 1.0, "length_ms": 200, "slowdown": 3}},
    "batching": {"mode": "triton", "max_batch_size": 1, "max_queue_delay_ms": 0},
    "run": {"requests": 40000, "warmup_requests": 2000, "replications": 1, "seed": 5},
}


def scenario(**edits):
    return parse_scenario(edited(BASE, **edits))


def test_a_job_that_starts_in_a_spell_takes_longer_by_hand():
    w = SpellWindows(np.array([10, 40]) * MS, np.array([20, 50]) * MS, 3.0)
    assert [w.factor(t * MS) for t in (0, 10, 19, 20, 39, 40, 49, 50, 99)] == [1, 3, 3, 1, 1, 3, 3, 1, 1]
    # one worker: 0 -> 5; 12 starts in the spell: 12 + 15 = 27; 25 waits for it and starts at 27, after the spell
    out = fifo_pool_each(np.array([0, 12, 25]) * MS, np.array([5, 5, 5]) * MS, 1, w)
    assert list(out // MS) == [5, 27, 32]
    # two workers: 12 and 13 both start in the spell (27, 28); 25 waits for the worker free first
    # (27), after the spell: 32. At 41 a job starts in the second spell: 56
    out = fifo_pool_each(np.array([0, 12, 13, 25, 41]) * MS, np.array([5, 5, 5, 5, 5]) * MS, 2, w)
    assert list(out // MS) == [5, 27, 28, 32, 56]
    assert list(fifo_pool_each(np.array([12, 30]) * MS, np.array([5, 5]) * MS, 0, w) // MS) == [27, 35]  # no pool


@pytest.mark.parametrize("regular", [True, False])
def test_spells_come_every_every_s_and_last_length_ms(regular):
    sp = SlowSpells(every_s=1.6, length_ms=250, slowdown=3, regular=regular)
    w = windows(sp, 2000 * 10**9, np.random.default_rng(3))
    cycles = np.diff(w.starts) / 1e9
    assert np.all(w.ends - w.starts == 250 * MS) and np.all(w.starts[1:] >= w.ends[:-1])  # never overlapping
    assert cycles.mean() == pytest.approx(1.6, rel=0.03)
    if regular:
        assert np.allclose(cycles, 1.6, atol=1e-9)
    else:
        assert cycles.std() > 0.5   # an exponential calm of mean 1.35 s
    assert mean_factor(sp) == pytest.approx(1 + 2 * 0.25 / 1.6)
    assert mean_factor(SlowSpells()) == 1.0


def test_batches_that_start_in_a_spell_take_slowdown_times_as_long():
    res = simulate(scenario())
    assert res.engine == "simpy"
    tr = res.traces[0]
    m = tr.completed & ~tr.warmup
    took = np.round((tr.end - tr.start)[m] * 1000.0, 6)
    assert set(took) == {10.0, 30.0}
    # at 10 rps the batches start nearly at the arrivals' Poisson times: a share 0.2 of them in a spell
    assert np.mean(took == 30.0) == pytest.approx(0.2, abs=0.015)
    # the slow ones come in runs: a batch after a slow one is slow far more often than 0.2
    slow = took[np.argsort(tr.start[m])] == 30.0
    assert np.mean(slow[1:][slow[:-1]]) > 0.5


def test_spells_lengthen_the_tail_beyond_the_same_mean_spread_evenly():
    spells = simulate(scenario(**{"arrivals.rate_rps": 50}))
    # fewer batches start in a spell than its share of the time (they take longer there), so the
    # mean batch time is below 10 x mean_factor = 14 ms; the same mean as a fixed time, and as an
    # independent spread of each batch (gamma, the same cv)
    mean = spells.breakdown_ms["service"]
    assert 10.0 < mean < 14.0
    fixed = simulate(scenario(**{"arrivals.rate_rps": 50, "service.slow_spells.every_s": 0.0,
                                 "service.batch_latency_ms": {1: mean}}))
    cv = np.sqrt((mean - 10.0) / 20.0 * (1 - (mean - 10.0) / 20.0)) * 20.0 / mean   # two-point: 10 or 30 ms
    spread = simulate(scenario(**{"arrivals.rate_rps": 50, "service.slow_spells.every_s": 0.0,
                                  "service.batch_latency_ms": {1: mean},
                                  "service.variability": {"distribution": "gamma", "cv": float(cv)}}))
    assert spells.latency_ms["p99"] > 2.0 * fixed.latency_ms["p99"]
    assert spells.latency_ms["p99"] > 1.5 * spread.latency_ms["p99"]


def test_the_decode_pool_slows_in_a_spell_too():
    res = simulate(scenario(**{"service.preprocess": {"ms": 5.0, "workers": 2}, "arrivals.rate_rps": 5}))
    tr = res.traces[0]
    m = tr.completed & ~tr.warmup
    pre = np.round((tr.entry - tr.arrival)[m] * 1000.0, 6)
    assert np.mean(pre == 15.0) == pytest.approx(0.2, abs=0.02) and np.mean(pre == 5.0) > 0.75


def test_sharing_the_cores_at_full_speed_gives_the_same_run():
    edits = {"service.preprocess": {"ms": 5.0, "workers": 2, "cv": 0.5}, "arrivals.rate_rps": 60,
             "service.batch_latency_ms": {1: 4.0, 4: 10.0}, "batching.max_batch_size": 4, "run.requests": 10000}
    plain = simulate(scenario(**edits)).traces[0]
    shared = simulate(scenario(**edits, **{"service.cpu_sharing": {
        "cores": 4, "model_cores": 1, "host_ms": 0.0,
        "overlap": {"model_speed": {1: 1.0}, "preprocess_speed": 1.0}}})).traces[0]
    assert np.array_equal(plain.entry, shared.entry) and np.array_equal(plain.done, shared.done)


def test_without_spells_the_run_is_unchanged():
    off = {"service.slow_spells.every_s": 0.0, "service.preprocess": {"ms": 5.0, "workers": 1, "cv": 0.3}}
    a = simulate(scenario(**off)).traces[0]
    b = simulate(parse_scenario(edited(BASE, **off, **{"service.slow_spells": {}}))).traces[0]
    assert np.array_equal(a.done, b.done)


@pytest.mark.parametrize("edits, field", [
    ({"service.slow_spells.length_ms": 1000}, "service.slow_spells.length_ms: a spell of 1000 ms must be shorter"),
    ({"service.slow_spells.slowdown": 0.5}, "service.slow_spells.slowdown"),
    ({"service.slow_spells.every_s": -1}, "service.slow_spells.every_s"),
    ({"queue.preprocess_latest": True, "arrivals": {"process": "streams", "streams": [{"count": 2, "fps": 10}]},
      "service.preprocess": {"ms": 5.0, "workers": 1}}, "service.slow_spells: not modelled with queue.preprocess_latest"),
])
def test_bad_spells_say_so_in_one_line(edits, field):
    with pytest.raises(ScenarioError, match=field.replace(".", r"\.")):
        scenario(**edits)


def test_the_fast_engine_refuses_them_in_one_line():
    with pytest.raises(CapsimError, match=r"--engine fast: .*service\.slow_spells"):
        make_engine(scenario(), "fast")


def test_a_host_with_spells_predicts_with_them_at_the_calm_speed():
    # capsim validate's scenario from a host whose calibration found slow spells: the spells go in,
    # and the curve and the decode are scaled to the calm speed (the measured means include the spells)
    from capsim.validate.validate import scenario_for

    from test_server_fit import OVERHEAD, PROFILE, host_measuring

    host = host_measuring(1.0, alone=1.1)
    plain = scenario_for(PROFILE, OVERHEAD, 4, 5.0, 1, 1, 10.0, 1, host)
    sp = {"every_s": 1.6, "length_ms": 250.0, "slowdown": 3.0, "regular": True}
    spelled = scenario_for(PROFILE, OVERHEAD, 4, 5.0, 1, 1, 10.0, 1, {**host, "slow_spells": sp})
    assert spelled.service.slow_spells == SlowSpells(**sp)
    calm = 1.0 / mean_factor(SlowSpells(**sp))
    for b, ms in plain.service.batch_latency_ms.items():
        assert spelled.service.batch_latency_ms[b] == pytest.approx(ms * calm, abs=1e-3)
    assert spelled.service.preprocess.ms == pytest.approx(plain.service.preprocess.ms * calm, abs=1e-3)
    fitted = scenario_for(PROFILE, OVERHEAD, 4, 5.0, 1, 1, 10.0, 1, {**host, "slow_spells": sp, "spells_calm": 0.9})
    assert fitted.service.batch_latency_ms[1] == pytest.approx(plain.service.batch_latency_ms[1] * 0.9, abs=1e-3)


def test_the_capacity_counts_the_throughput_spells_take():
    # a share f = 0.2 of the time at x3: 1 - 0.2 + 0.2 / 3 of the calm 100 rps is left
    from capsim import analytic

    sc = scenario()
    assert analytic.capacity_rps(sc) == pytest.approx(100.0 * (0.8 + 0.2 / 3))
    assert analytic.capacity_rps(scenario(**{"service.slow_spells.every_s": 0.0})) == pytest.approx(100.0)
    assert simulate(scenario(**{"arrivals.rate_rps": 80, "run.requests": 30000})).stable
    assert not simulate(scenario(**{"arrivals.rate_rps": 93, "run.requests": 30000})).stable   # below 100, above 86.7
