"""The network stage: the client-to-server link in front of the service, and the way back.

A request's arrival time is the client's send time. Requests cross one shared FIFO link, one at
a time: transfer = request_kb x 1024 x 8 / (bandwidth_mbps x 1e6) s (rounded to the ns), then
``latency_ms`` of propagation (a pure delay, no queueing). They then enter the preprocess stage,
except with ``payload: tensor``: a raw float32 tensor arrives ready and skips it. The response
leaves after post-processing and crosses the link's other direction (full duplex), also FIFO
one at a time in the order responses leave the server (ties: request index), taking
response_kb x 1024 x 8 / (bandwidth_mbps x 1e6) s, plus ``latency_ms``. A request's ``done``
is when its response reaches the client, so latency = done - send (+ overhead).

Both engines call these functions, so their traces stay identical.
"""

from __future__ import annotations

import numpy as np

from capsim.config import Network, Scenario
from capsim.sim.stages import fifo_pool, latest_frame_pool

NS = 1_000_000_000


def transfer_s(net: Network, kb: float) -> float:
    """Seconds to put ``kb`` KiB on the link."""
    return kb * 1024 * 8 / (net.bandwidth_mbps * 1e6)


def queue_entry(sc: Scenario, send_ns: np.ndarray, source: np.ndarray | None = None, n_sources: int = 1
                ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Queue entry times (int ns) of requests sent at ``send_ns`` (sorted), after the network and
    preprocess stages; their arrival times at the server (None without a network stage); and,
    with ``queue.preprocess_latest``, when each was dropped as stale before pre-processing (-1:
    kept; a dropped request's entry time is -1), else None."""
    pre = sc.service.preprocess
    pre_ns = int(round(pre.ms * 1e6))
    net = sc.network
    server = None
    at_pre = send_ns
    if net is not None:
        xfer_ns = int(round(transfer_s(net, net.request_kb()) * NS))
        lat_ns = int(round(net.latency_ms * 1e6))
        # Integers below 2**53 are exact in float64, so the link's closed form is exact to the ns.
        server = fifo_pool(send_ns.astype(np.float64), xfer_ns, 1).astype(np.int64) + lat_ns
        if net.payload == "tensor":
            return server, server, None
        at_pre = server
    if sc.queue.preprocess_latest:
        entry, stale = latest_frame_pool(at_pre, source, pre_ns, pre.workers, n_sources)
        return entry, server, stale
    return fifo_pool(at_pre.astype(np.float64), pre_ns, pre.workers).astype(np.int64), server, None


def respond(sc: Scenario, done: np.ndarray, server_arrival_ns: np.ndarray, arrival: np.ndarray) -> dict:
    """Move ``done`` (seconds, NaN for dropped requests; updated in place) from the response
    leaving the server to it reaching the client; returns the trace's ``extras["network"]``:
    per request the inbound time (send to server arrival) and the response time, in seconds."""
    net = sc.network
    served = np.flatnonzero(np.isfinite(done))
    fifo = served[np.lexsort((served, done[served]))]
    left = done.copy()
    done[fifo] = fifo_pool(done[fifo], transfer_s(net, net.response_kb), 1) + net.latency_ms / 1000.0
    inbound = np.where(server_arrival_ns >= 0, server_arrival_ns / NS - arrival, np.nan)
    return {"inbound_s": inbound, "response_s": done - left}


def adjust_breakdown(breakdown: dict, traces: list, done: list) -> None:
    """Split the network's share out of the preprocess and postprocess entries of the breakdown."""
    def mean(key):
        vals = np.concatenate([tr.extras["network"][key][d] for tr, d in zip(traces, done)])
        return float(vals.mean()) * 1000.0 if len(vals) else float("nan")

    inbound, response = mean("inbound_s"), mean("response_s")
    breakdown["preprocess"] = breakdown["preprocess"] - inbound + 0.0  # + 0.0: no "-0.0" when it is skipped
    breakdown["postprocess"] = breakdown["postprocess"] - response + 0.0
    breakdown["network"] = inbound + response
