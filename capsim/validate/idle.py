"""After idle: how much longer a batch takes when its model instance sat idle before it.

A calibration profile times batches back to back. In a server at light load nearly every batch
follows an idle spell, during which the runtime's threads go to sleep and the caches cool. This
fits ``service.after_idle``, an extra time ``extra_ms x (1 - exp(-idle / tau_ms))``, to the
server's own batch-1 calibration runs: each batch's idle time before it follows from the timing
headers (:func:`idle_gaps`, :func:`fit_in_server`).

It was first timed in a quiet process (the server's runner alone, after set idle gaps). That is
not the server: on the 2-core VM it found the extra in 5 of 9 records (m-u) and nothing beyond
its noise in the other 4, and where it found nothing, the cells at load 0.3 ran 6.2 % slower
than the prediction (relative to each record's mean), against 2.1 % where it was found. A 60 s
run of the server at 7.4 rps (B=1) measured 32.6 ms per batch after under 50 ms of idle and
36.0 ms after 200-400 ms; fitted from that run, +4.4 ms (±1.3) at tau 67 ms.
"""

from __future__ import annotations

import numpy as np

from capsim.validate import protocol as P

# In the server the idle times are Poisson's, mostly under 1 s: a longer tau is a straight line
# that 15 s of batches can tilt far (a 15 s run alone fitted 27 ms at tau 2000, against 4.4 ms at
# 67 ms from 60 s)
_TAUS_MS = np.geomspace(10.0, 400.0, 100)


def mean_extra(extra_ms: float, tau_ms: float, rate_rps: float, service_ms: float) -> float:
    """The mean extra time per batch of a B=1 server under Poisson arrivals at ``rate_rps`` whose
    batches take ``service_ms`` back to back. A batch finds the instance idle with probability
    1 - rho, and then it has been idle an Exp(rate) time, which costs extra / (1 + rate x tau) on
    average; rho counts the extra too: s = service + (1 - rate s) k, so s = (service + k) / (1 + rate k)."""
    r = rate_rps / 1000.0   # per ms
    k = extra_ms / (1.0 + r * tau_ms)
    s = (service_ms + k) / (1.0 + r * k)
    return max(0.0, s - service_ms)


MIN_IDLE_MS = 1.0   # a batch formed within 1 ms of the last one letting go followed it back to back


def batch_start_ms(row: dict) -> float:
    """When a completed request's batch started (ms on the load generator's clock): its send time
    plus its pre-processing and queue wait (the timing headers; the upload is left out)."""
    return row["sent_s"] * 1000.0 + row[P.H_PREPROCESS] + row[P.H_QUEUE_WAIT]


def idle_gaps(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(the idle time before each batch, its compute time), in ms, from the completed rows of one
    load run against a B=1 server, instance by instance. A request's batch starts at its send time
    plus its pre-processing and queue wait, and holds the instance for its compute time and batch
    overhead (the timing headers); the idle time before a batch is the time since the batch
    before it let go on that instance. The upload of the body is left out of both ends alike.
    Each instance's first batch (nothing known before it) is left out."""
    by_instance: dict[object, list[dict]] = {}
    for r in rows:
        if r["outcome"] == "ok" and r.get(P.H_COMPUTE) is not None:
            by_instance.setdefault(r.get(P.H_INSTANCE), []).append(r)
    gaps, times = [np.zeros(0)], [np.zeros(0)]
    for ok in by_instance.values():
        if len(ok) < 2:
            continue
        start = np.array([batch_start_ms(r) for r in ok])
        compute = np.array([r[P.H_COMPUTE] for r in ok])
        end = start + compute + np.array([r.get(P.H_BATCH_OVERHEAD) or 0.0 for r in ok])
        order = np.argsort(start, kind="stable")
        start, compute, end = start[order], compute[order], end[order]
        gaps.append(np.maximum(0.0, start[1:] - end[:-1]))
        times.append(compute[1:])
    return np.concatenate(gaps), np.concatenate(times)


def fit_in_server(runs) -> dict:
    """``service.after_idle`` fitted to the batches of several load runs (``(idle_ms, compute_ms)``
    pairs of arrays, :func:`idle_gaps`) that found their instance idle: least squares of the
    compute time on ``1 - exp(-idle / tau)`` over a grid of tau, each run with its own base time
    (a machine that drifts between runs moves that, not the extra). Back-to-back batches are left
    out, since their request waited while the batch before ran beside the next decodes, and the
    slowest 1 % of each run (one stall is not an idle effect). No significance gate: zeroing an
    extra that sits within its noise made every such record's light load too fast on average.
    ``extra_ms`` 0 when batches are no slower after idle."""
    groups = []
    for g, c in runs:
        g, c = np.asarray(g, float), np.asarray(c, float)
        keep = g >= MIN_IDLE_MS
        if keep.sum() >= 3:
            g, c = g[keep], c[keep]
            keep = c <= np.quantile(c, 0.99)
            groups.append((g[keep], c[keep] - c[keep].mean()))
    n = sum(len(g) for g, _ in groups)
    if n < 3 * max(1, len(groups)):
        return {"extra_ms": 0.0, "tau_ms": 50.0, "se_ms": float("nan"), "batches": n}
    best = (np.inf, 0.0, 50.0, 1.0)
    for tau in _TAUS_MS:
        fs = [1.0 - np.exp(-g / tau) for g, _ in groups]
        fs = [f - f.mean() for f in fs]
        ff = sum(float(f @ f) for f in fs)
        if ff <= 0:
            continue
        a = max(0.0, sum(float(f @ y) for f, (_, y) in zip(fs, groups)) / ff)
        sse = sum(float(((y - a * f) ** 2).sum()) for f, (_, y) in zip(fs, groups))
        if sse < best[0]:
            best = (sse, a, float(tau), ff)
    sse, a, tau, ff = best
    se = float(np.sqrt(sse / max(1, n - len(groups) - 2) / ff))
    return {"extra_ms": round(a, 4) if a > 0 else 0.0, "tau_ms": round(tau, 2) if a > 0 else 50.0,
            "se_ms": round(se, 4), "batches": n}
