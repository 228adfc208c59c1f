"""Closed-loop clients (arrivals.process closed): C clients that send, wait, think Z, send again.

Checked against Little's law for the whole loop (C = X (R + Z)), hand-computed timelines, the
finite-source M/M/1//C queue (machine repairman) and the capacity bound.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from capsim.cli import main
from capsim.config import parse_scenario
from capsim.errors import CapsimError
from capsim.plan import throughput_bound, with_rate
from capsim.simulate import make_engine, run_replication, simulate
from capsim.sim.closed import ClosedLoopEngine

MINI = {1: 25, 2: 27, 4: 34, 8: 48}


def closed(C, Z, B=1, dist="exponential", N=1, curve=None, var="none", requests=40000, warmup=2000, reps=2,
           D=0.0, **extra):
    data = {
        "name": "closed",
        "arrivals": {"process": "closed", "concurrency": C, "think_ms": Z, "think_distribution": dist},
        "service": {"batch_latency_ms": curve or MINI, "variability": {"distribution": var}},
        "batching": {"max_batch_size": B, "max_queue_delay_ms": D},
        "instances": N,
        "run": {"requests": requests, "warmup_requests": warmup, "replications": reps, "seed": 4},
    }
    for path, value in extra.items():
        section, key = path.split("__")
        data.setdefault(section, {})[key] = value
    return parse_scenario(data)


def measured_think_s(tr) -> float:
    """Mean time between a client's answer (done + overhead) and its next request."""
    gaps = []
    for c in np.unique(tr.source):
        idx = np.flatnonzero(tr.source == c)
        answer = tr.done[idx[:-1]] + tr.overhead_ms / 1000.0
        gaps.append(tr.arrival[idx[1:]] - answer)
    return float(np.concatenate(gaps).mean())


@pytest.mark.parametrize("C,Z,B,N,var", [
    (8, 20.0, 1, 1, "exponential"),
    (16, 50.0, 4, 1, "exponential"),
    (32, 10.0, 8, 2, "gamma"),
    (5, 200.0, 8, 1, "none"),
])
def test_littles_law_for_the_loop(C, Z, B, N, var):
    extra = {"service__variability": {"distribution": var, "cv": 0.5}} if var == "gamma" else {}
    sc = closed(C, Z, B=B, N=N, var=var, D=5.0, **extra)
    res = simulate(sc)
    X = res.throughput_rps
    R = res.latency_ms["mean"] / 1000.0
    z = np.mean([measured_think_s(tr) for tr in res.traces])
    assert z == pytest.approx(Z / 1000.0, rel=0.03)
    assert X * (R + z) == pytest.approx(C, rel=0.02)
    assert res.stable
    assert res.offered_rps == pytest.approx(X, rel=0.01)  # the achieved send rate


def test_deterministic_queue_of_clients_without_think():
    # B = 1, one instance, constant 10 ms service, no think: the server never idles and every
    # request waits behind the other C - 1 clients' requests.
    C, s = 6, 0.010
    sc = closed(C, 0.0, dist="constant", curve={1: 10}, requests=600, warmup=C, reps=1)
    tr = run_replication(sc, 0)
    m = ~tr.warmup
    np.testing.assert_allclose(tr.latency_ms[m], C * s * 1000.0, rtol=1e-9)
    np.testing.assert_allclose(np.diff(tr.batch_start), s, rtol=1e-9)  # X = 1 / s exactly
    assert tr.batch_start[0] == 0.0 and len(tr.batch_start) == 600
    # The first round: all C send at 0 and are served in turn.
    np.testing.assert_allclose(tr.latency_ms[:C], np.arange(1, C + 1) * s * 1000.0, rtol=1e-9)
    res = simulate(sc)
    assert res.latency_ms["p95"] == pytest.approx(C * s * 1000.0, rel=1e-9)
    assert res.throughput_rps == pytest.approx(1 / s, rel=0.01)


def test_one_client_cycle_with_stages_overhead_and_think():
    # One client: each cycle is pre 2 + service 10 + post 3 + overhead 4 + think 5 = 24 ms.
    sc = closed(1, 5.0, dist="constant", curve={1: 10}, requests=200, warmup=10, reps=1,
                service__preprocess={"ms": 2, "workers": 1}, service__postprocess={"ms": 3, "workers": 2},
                service__overhead_ms=4)
    tr = run_replication(sc, 0)
    np.testing.assert_allclose(tr.arrival, 0.005 + 0.024 * np.arange(200), rtol=0, atol=1e-12)
    np.testing.assert_allclose(tr.latency_ms, 19.0, rtol=1e-9)
    np.testing.assert_allclose(tr.start - tr.arrival, 0.002, atol=1e-12)


def test_full_batches_form_at_the_instant_all_clients_send():
    # C = B = 8, no delay, no think: the clients' sends at one instant all join one batch.
    sc = closed(8, 0.0, B=8, dist="constant", requests=800, warmup=8, reps=1)
    tr = run_replication(sc, 0)
    assert set(tr.batch_size_by_batch.tolist()) == {8}
    np.testing.assert_allclose(np.diff(tr.batch_start), 0.048, rtol=1e-9)
    np.testing.assert_allclose(tr.latency_ms, 48.0, rtol=1e-9)


def repairman(C: int, think_s: float, service_s: float) -> tuple[float, float]:
    """Throughput and mean response time of the finite-source M/M/1//C queue, from its
    birth-death chain: from n in system, arrivals at (C - n) / think, departures at 1 / service."""
    lam, mu = 1.0 / think_s, 1.0 / service_s
    p = [1.0]
    for n in range(C):
        p.append(p[-1] * (C - n) * lam / mu)
    total = sum(p)
    X = mu * (1.0 - p[0] / total)
    return X, C / X - think_s


@pytest.mark.parametrize("C,Z", [(3, 100.0), (5, 100.0), (8, 150.0)])
def test_machine_repairman_closed_form(C, Z):
    sc = closed(C, Z, curve={1: 25}, var="exponential", requests=60000, reps=2)
    res = simulate(sc)
    X, R = repairman(C, Z / 1000.0, 0.025)
    assert res.throughput_rps == pytest.approx(X, rel=0.03)
    assert res.latency_ms["mean"] / 1000.0 == pytest.approx(R, rel=0.03)


def test_throughput_saturates_at_the_capacity_bound():
    xs = []
    for C in (1, 4, 16, 64):
        sc = closed(C, 20.0, B=8, requests=20000, reps=1)
        res = simulate(sc)
        assert res.stable
        xs.append(res.throughput_rps)
    bound = throughput_bound(closed(1, 20.0, B=8))
    assert bound == pytest.approx(8 / 0.048)
    assert all(x <= bound * 1.001 for x in xs)
    assert xs == sorted(xs)
    assert xs[0] == pytest.approx(1 / (0.025 + 0.020), rel=0.01)  # one client: no queueing at all
    assert xs[-1] == pytest.approx(bound, rel=0.01)


def test_a_large_closed_loop_is_stable():
    res = simulate(closed(300, 0.0, B=8, requests=20000, reps=1))
    assert res.stable and res.unstable_reason is None
    assert res.latency_ms["mean"] == pytest.approx(300 / (8 / 0.048) * 1000.0, rel=0.02)


def test_same_seed_same_trace_and_no_global_state():
    sc = closed(8, 20.0, B=4, var="exponential", requests=3000, reps=1)
    state = np.random.get_state()[1].copy()
    a, b = run_replication(sc, 0), run_replication(sc, 0)
    for f in ("arrival", "done", "latency_ms", "batch_size", "source"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    np.testing.assert_array_equal(np.random.get_state()[1], state)
    assert not np.array_equal(a.arrival, run_replication(sc, 1).arrival)


def test_engines_and_refusals():
    sc = closed(4, 10.0)
    assert isinstance(make_engine(sc, "auto"), ClosedLoopEngine)
    assert isinstance(make_engine(sc, "simpy"), ClosedLoopEngine)
    with pytest.raises(CapsimError, match=r"^--engine fast: the fast engine does not model closed-loop"):
        make_engine(sc, "fast")
    with pytest.raises(CapsimError, match=r"^arrivals.process: closed-loop clients have no offered rate.*concurrency"):
        with_rate(sc, 50.0)
    for field, value in (("max_size", 10), ("timeout_ms", 50), ("per_source_max_size", 2), ("stride", 2)):
        bad = closed(4, 10.0, **{f"queue__{field}": value})
        with pytest.raises(CapsimError) as exc:
            make_engine(bad)
        assert str(exc.value).startswith(f"queue.{field}: not supported with arrivals.process closed")
        assert "\n" not in str(exc.value)


def test_cli_closed_loop(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("arrivals: {process: closed, concurrency: 4, think_ms: 10}\n"
                    "service: {batch_latency_ms: {1: 10}}\n"
                    "queue: {max_size: 5}\n"
                    "run: {requests: 2000, warmup_requests: 100, replications: 2}\n")
    assert main(["simulate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "queue.max_size" in err
    path.write_text(path.read_text().replace("queue: {max_size: 5}\n", ""))
    assert main(["simulate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "simpy engine" in out and "UNSTABLE" not in out
    assert main(["simulate", str(path), "--engine", "fast"]) == 2
    assert main(["plan", str(path), "--slo", "p95<=100ms"]) == 2
    assert "vary arrivals.concurrency" in capsys.readouterr().err
    assert math.isfinite(simulate(closed(4, 10.0, requests=2000, warmup=100)).offered_rps)
