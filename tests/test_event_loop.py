"""``capsim.validate.event_loop``: the server's work outside the model under load, read from
timing headers (hand-made rows) and turned into the scenario's overhead and response stage."""

from __future__ import annotations

import numpy as np
import pytest

from capsim.validate import event_loop
from capsim.validate import protocol as P


def row(pre, dec, wait, compute, total, size=1, inst=0):
    return {P.H_PREPROCESS: pre, P.H_DECODE: dec, P.H_QUEUE_WAIT: wait, P.H_COMPUTE: compute,
            P.H_SERVER_TOTAL: total, P.H_BATCH_SIZE: size, P.H_INSTANCE: inst}


def test_the_time_per_response_is_read_from_each_batchs_spread():
    # batches of 4 whose responses leave 1.5, 2.0, 1.0 and 1.2 ms apart (after 0.8 ms of hand-off);
    # rows of one batch share its compute time, and come in any order
    rows, rng = [], np.random.default_rng(0)
    for k, step in enumerate((1.5, 2.0, 1.0, 1.2)):
        compute = 40.0 + k
        for j in rng.permutation(4):
            pre, wait = 9.0 + j, 3.0 + 0.5 * j
            rows.append(row(pre, 8.0, wait, compute, pre + wait + compute + 0.8 + j * step, size=4))
    rows.append(row(9.0, 8.0, 1.0, 20.0, 35.0, size=2))  # another size: not counted
    assert event_loop.response_ms(rows, 4) == pytest.approx(np.median([1.5, 2.0, 1.0, 1.2]))
    assert event_loop.response_ms(rows[:8], 4) is None  # two batches are too few to say
    assert event_loop.response_ms(rows, 1) is None


def test_the_wait_for_a_decode_thread_is_pollaczek_khinchine():
    # M/G/1: rho = 20 rps x 10 ms = 0.2; W = rho / (1 - rho) x E[S] (1 + cv^2) / 2
    assert event_loop.pool_wait_ms(20.0, 10.0, 0.5) == pytest.approx(0.25 * 10.0 * 1.25 / 2)
    # two threads at a = 1.2 (rho 0.6), by hand: Erlang C = (a^2 / 2 / (1 - rho)) / (1 + a + that) = 0.45,
    # W = C x E[S] / (c - a) = 5.625 ms at cv 1 (M/M/2), x (1 + 0.25) / 2 at cv 0.5
    assert event_loop.pool_wait_ms(120.0, 10.0, 1.0, workers=2) == pytest.approx(5.625)
    assert event_loop.pool_wait_ms(120.0, 10.0, 0.5, workers=2) == pytest.approx(5.625 * 0.625)
    assert event_loop.pool_wait_ms(200.0, 10.0, 0.0) == 0.0  # saturated: nothing to say here
    assert event_loop.pool_wait_ms(250.0, 10.0, 0.0, workers=2) == 0.0


def test_the_hand_off_under_load_is_what_the_decode_and_its_wait_leave():
    rng = np.random.default_rng(1)
    dec = rng.gamma(25.0, 0.4, 400)        # 10 ms, cv 0.2
    rows = [row(d + 3.0, d, 0.0, 30.0, d + 40.0) for d in dec]
    other = rng.gamma(4.0, 1.5, 400)       # 6 ms, cv 0.5
    got = event_loop.loaded(rows, other, 20.0, 1)
    wait = event_loop.pool_wait_ms(20.0, float(np.mean(dec)), float(np.std(dec[dec <= np.quantile(dec, 0.99)])
                                                                      / np.mean(dec[dec <= np.quantile(dec, 0.99)])))
    assert got["handoff_loaded_ms"] == pytest.approx(3.0 - wait, abs=1e-9)
    assert got["other_cv"] == pytest.approx(0.5, abs=0.06)


def test_the_scenario_takes_the_loaded_overhead_less_the_responses():
    host = {"other_ms": 7.0, "other_cv": 0.6, "handoff_loaded_ms": 1.5, "response_ms": 1.2}
    got = event_loop.overhead_stage(host)
    assert got["overhead_ms"] == pytest.approx(7.3) and got["response_ms"] == 1.2 and got["handoff_ms"] == 1.5
    assert got["overhead_cv"] * got["overhead_ms"] == pytest.approx(0.6 * 7.0)  # other's spread, in ms
    assert event_loop.overhead_stage({**host, "response_ms": None})["overhead_ms"] == pytest.approx(8.5)
    assert event_loop.overhead_stage({"other_ms": 7.0}) is None  # an older calibration: the noop run's overhead
    assert event_loop.overhead_stage(None) is None


def test_the_batch_overhead_is_read_and_taken_out_of_other():
    # the server counts the hand-over to the instance's thread in other; the scenario holds the
    # instance for it instead, so the per-request overhead is other less it
    rows = [{**row(11.0, 8.0, 2.0, 30.0, 48.0), P.H_BATCH_OVERHEAD: v} for v in (1.0, 1.2, 1.4, 1.6) * 25]
    got = event_loop.loaded(rows, np.full(100, 6.0), 10.0, 1)
    assert got["batch_overhead_ms"] == pytest.approx(1.3)
    host = {"other_ms": 7.0, "other_cv": 0.6, "handoff_loaded_ms": 1.5, "response_ms": 1.2, "batch_overhead_ms": 1.3}
    stage = event_loop.overhead_stage(host)
    assert stage["overhead_ms"] == pytest.approx(7.0 - 1.3 + 1.5 - 1.2) and stage["batch_overhead_ms"] == 1.3
    older = [{k: v for k, v in r.items() if k != P.H_BATCH_OVERHEAD} for r in rows]   # a server without the header
    assert "batch_overhead_ms" not in event_loop.loaded(older, np.full(100, 6.0), 10.0, 1)
