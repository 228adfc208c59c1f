"""The server's work outside the model as it runs under load: the event loop's hand-offs and responses.

The noop run measures that work on an idle machine. Beside a running model it is slower and
spreads: on 2 cores the event loop, the decode thread and the load generator wait for the
runtime's threads (measured with resnet18 on a 2-core VM at 18-20 rps: from the end of a batch to
the response leaving the server 1.9 ms against the noop run's 0.7 ms, the hand-off back from the
decode thread 2.2-2.8 ms against 0.4 ms). The batch-1 calibration run measures it at its rate: the rest of each request's latency
(``other``: HTTP both ways, the event loop, the client), its spread, and the hand-off from the
decode thread beyond the wait for it, and how long each batch holds its instance beyond the
model's run (``X-Batch-Overhead-Ms``: the hand-over to the instance's thread and back, 0.8-1.6 ms
at 7.6-17.8 rps, B=1, on the 2-core VM), which the server counts in ``other`` but which also
keeps the next batch waiting. The full-batch run measures how long the event loop takes per
response: the responses of one batch leave one after another, so the last of a batch of 8
leaves 7 of those after the first.
"""

from __future__ import annotations

import numpy as np

from capsim.analytic import erlang_c
from capsim.validate import protocol as P
from capsim.validate import server_fit


def pool_wait_ms(rate: float, decode_ms: float, decode_cv: float, workers: int = 1) -> float:
    """Mean wait for one of ``workers`` decode threads at a Poisson ``rate`` (M/G/c, Allen-Cunneen:
    Erlang C's wait times (1 + cv^2) / 2; Pollaczek-Khinchine with one worker, exact at cv 1)."""
    c = max(1, workers)
    a = rate * decode_ms / 1000.0
    if a >= c:
        return 0.0  # saturated: nothing to say here
    return erlang_c(c, a) * decode_ms / (c - a) * (1.0 + decode_cv ** 2) / 2.0


def loaded(ok: list[dict], other: np.ndarray, rate: float, workers: int) -> dict:
    """From the batch-1 calibration run at ``rate`` (completed rows, and each one's ``other`` in
    ms): the spread of ``other`` and the hand-off from the decode thread under load (the time
    between arrival and entering the batcher, less the decode and the wait for a decode thread)."""
    pre = np.array([r[P.H_PREPROCESS] for r in ok], dtype=float)
    dec = np.array([r[P.H_DECODE] for r in ok], dtype=float)
    wait = pool_wait_ms(rate, float(np.mean(dec)), server_fit.cv(dec), workers)
    out = {"other_cv": server_fit.cv(other), "handoff_loaded_ms": max(0.0, float(np.mean(pre - dec)) - wait)}
    held = [r[P.H_BATCH_OVERHEAD] for r in ok if r.get(P.H_BATCH_OVERHEAD) is not None]
    if held:  # a server that reports it (older ones did not)
        out["batch_overhead_ms"] = float(np.mean(server_fit.trimmed(held)))
    return out


def response_ms(ok: list[dict], b: int) -> float | None:
    """The event loop's time per response, from full batches of ``b``: in each batch the responses
    leave the server one after another after its end, so the spread of their times from batch
    end to response, over ``b - 1``, is the time per response. The median over batches (None
    with fewer than 3 batches)."""
    batches: dict[tuple, list[float]] = {}
    for r in ok:
        if r.get(P.H_BATCH_SIZE) != b or r.get(P.H_SERVER_TOTAL) is None:
            continue
        after = r[P.H_SERVER_TOTAL] - r[P.H_PREPROCESS] - r[P.H_QUEUE_WAIT] - r[P.H_COMPUTE]
        batches.setdefault((r.get(P.H_INSTANCE), r[P.H_COMPUTE]), []).append(after)
    slopes = [(max(v) - min(v)) / (b - 1) for v in batches.values() if len(v) == b]
    return float(np.median(slopes)) if b > 1 and len(slopes) >= 3 else None


def overhead_stage(host: dict) -> dict | None:
    """What the scenario takes from those measurements: ``overhead_ms`` and ``overhead_cv`` (the
    loaded ``other`` and hand-off, less the time per response and the batch overhead), the time
    per response as a one-worker post-processing stage (so a batch's responses leave one after
    another), and ``batch_overhead_ms`` (each batch holds its instance that long). The hand-off
    comes before the batcher in the server; in the scenario it is part of the overhead, since a
    fixed delay before the queue delays everything behind it alike (``handoff_ms``: the per-stage
    comparison moves it back). None for a calibration that did not measure them (the noop run's
    overhead stands)."""
    if host is None or "other_cv" not in host:
        return None
    resp = host.get("response_ms") or 0.0
    held = host.get("batch_overhead_ms") or 0.0
    other = max(host["other_ms"] - held, 0.0)   # the server counts the batch overhead in other
    mean = max(other + host["handoff_loaded_ms"] - resp, 0.01)
    # the spread measured is other's; the hand-off adds to its mean, not (here) to its spread
    return {"overhead_ms": mean, "overhead_cv": host["other_cv"] * host["other_ms"] / mean, "response_ms": resp,
            "handoff_ms": host["handoff_loaded_ms"], "batch_overhead_ms": held}
