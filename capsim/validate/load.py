"""``capsim load``: send real requests to an inference server and measure what comes back.

Two ways to drive a server that speaks :mod:`capsim.validate.protocol`:

- **open loop** (``--rate``, ``--streams``, ``--trace``): requests go out at the times of one of
  capsim's own arrival processes (:func:`capsim.arrivals.generate`), whatever the server does. A
  slow response never delays the next send (no coordinated omission), and latency is measured from
  the *scheduled* send time, so time a request would have spent waiting inside a stalled client
  counts against the server, as it would for a real camera or user;
- **closed loop** (``--concurrency C``): C clients each send a request, wait for the answer,
  optionally think, and send the next; throughput then follows Little's law (C / latency).

The library part is :class:`LoadSpec` -> :func:`run_load` -> :class:`LoadResult` (rows and a
summary, returned, nothing written), :func:`write_csv` and :func:`format_summary`; the CLI part is
:func:`add_parser` and :func:`cmd_load`.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import itertools
import json
import math
import os
import re
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from capsim.arrivals import ArrivalStream, generate
from capsim.config import Arrivals, RateSchedule, StreamGroup
from capsim.errors import CapsimError
from capsim.validate import protocol as P

# p99 of (sent - scheduled) above this means the generator itself could not keep up.
LATE_WARN_MS = 5.0

# Labels of the server-side timing headers in the summary. Every header of P.TIMING_HEADERS but
# X-Instance (an id: counted, not averaged) gets a mean; one not named here is labelled from its name.
_LABELS = {
    P.H_PREPROCESS: "preprocess", P.H_QUEUE_WAIT: "queue wait", P.H_BATCH_SIZE: "batch size",
    P.H_COMPUTE: "compute", P.H_POSTPROCESS: "postprocess", P.H_SERVER_TOTAL: "server total",
}
SERVER_MEANS = tuple(
    (h, _LABELS.get(h) or h.removeprefix("X-").removesuffix("-Ms").replace("-", " ").lower())
    for h in P.TIMING_HEADERS if h != P.H_INSTANCE
)

# One CSV row per request. Times in seconds from the start of the run; ms columns in milliseconds.
COLUMNS = (
    "index",             # request number in schedule order (also sent as X-Request-Id)
    "source",            # camera / client id (sent as X-Source)
    "scheduled_s",       # when the schedule said to send it (closed loop: when the client sent it)
    "sent_s",            # when it was handed to the HTTP client
    "received_s",        # when the whole response was read (errors: when the failure was seen)
    "latency_ms",        # received - scheduled: what the caller experienced
    "response_ms",       # received - sent: the request's time on the wire and in the server
    "send_lateness_ms",  # sent - scheduled: the load generator's own delay
    "status",            # HTTP status, or "error" when no response came (timeout, connection)
    "outcome",           # ok (200), rejected (503, the server dropped it) or error
    "reason",            # the drop reason (rejected) or what went wrong (error); empty when ok
    "in_burst",          # scheduled inside a burst (bursty camera streams; empty for other loads)
    *P.TIMING_HEADERS,
    P.H_DROP,
)

PAYLOADS = ("jpeg", "tensor")
OPEN_PROCESSES = ("poisson", "constant", "bursty")


# --------------------------------------------------------------------------- spec and result


@dataclass
class LoadSpec:
    """What to send, where, and for how long.

    Exactly one of ``arrivals`` (open loop: requests sent at the times of this arrival process) and
    ``concurrency`` (closed loop: this many clients, each waiting for its answer, then ``think_ms``,
    before sending again) is set.
    """

    url: str                                # server base URL or its inference endpoint
    duration_s: float                       # send requests scheduled in [0, duration_s)
    arrivals: Arrivals | None = None
    concurrency: int | None = None
    think_ms: float = 0.0
    payload: str = "jpeg"                   # jpeg: one real 640x480 JPEG; tensor: raw float32 of `shape`
    shape: tuple[int, int, int] = (3, 224, 224)
    timeout_s: float = 30.0                 # per request; a request past it counts as an error
    seed: int = 1
    base_dir: str = "."                     # folder a relative trace path is read from
    priority_shares: list[float] | None = None  # open loop: X-Priority level i sent with probability shares[i]
    deadline_ms: float | None = None        # sent as X-Deadline-Ms on every request
    progress: Callable[[str], None] | None = field(default=None, repr=False, compare=False)

    def check(self) -> None:
        """Raise :class:`CapsimError` naming the first bad field and how to fix it."""
        if not re.match(r"^https?://[^/\s]+", self.url or ""):
            raise CapsimError(f"URL: must look like http://host:port (or .../v1/infer), got {self.url!r}")
        if not (self.duration_s > 0 and math.isfinite(self.duration_s)):
            raise CapsimError(f"--duration: must be > 0 seconds, got {self.duration_s:g}; e.g. --duration 60")
        if (self.arrivals is None) == (self.concurrency is None):
            raise CapsimError("load: give exactly one of --rate, --streams, --trace (open loop) "
                              "or --concurrency (closed loop)")
        if self.concurrency is not None and self.concurrency < 1:
            raise CapsimError(f"--concurrency: must be >= 1 client, got {self.concurrency}")
        if not (self.think_ms >= 0 and math.isfinite(self.think_ms)):
            raise CapsimError(f"--think-ms: must be >= 0, got {self.think_ms:g}")
        if self.payload not in PAYLOADS:
            raise CapsimError(f"--payload: must be jpeg or tensor, got {self.payload!r}")
        if len(self.shape) != 3 or any(int(s) < 1 for s in self.shape):
            raise CapsimError(f"--shape: must be three sizes >= 1 (CxHxW), got {self.shape!r}")
        if not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise CapsimError(f"--timeout-s: must be > 0 seconds, got {self.timeout_s:g}")
        if self.seed < 0:
            raise CapsimError(f"--seed: must be >= 0, got {self.seed}")
        if self.arrivals is not None:
            _check_arrivals(self.arrivals, Path(self.base_dir))
        if self.priority_shares is not None:
            sh = self.priority_shares
            if self.arrivals is None:
                raise CapsimError("--priority-shares: only applies to an open loop (--rate, --streams, --trace); remove it")
            if not sh or not all(v > 0 and math.isfinite(v) for v in sh):
                raise CapsimError(f"--priority-shares: each level's share must be > 0, got {sh}; e.g. 0.2,0.8")
            if abs(sum(sh) - 1.0) > 1e-6:
                raise CapsimError(f"--priority-shares: the shares must sum to 1, got {sum(sh):g}; e.g. 0.2,0.8")
        if self.deadline_ms is not None and not (self.deadline_ms >= 0 and math.isfinite(self.deadline_ms)):
            raise CapsimError(f"--deadline-ms: must be >= 0 ms (0: none), got {self.deadline_ms:g}")

    def describe(self) -> str:
        """One line: the load's shape, e.g. ``open loop, constant 50 rps``."""
        if self.concurrency is not None:
            think = f", think {self.think_ms:g} ms" if self.think_ms else ""
            return f"closed loop, {self.concurrency} client{'s' * (self.concurrency != 1)}{think}"
        a = self.arrivals
        if a.rate_schedule is not None:
            rs = a.rate_schedule
            steps = ", ".join(f"{st.rate_rps:g} rps from {st.at_s:g} s" for st in rs.steps)
            return (f"open loop, poisson on a schedule ({steps}; period {rs.period_s:g} s, "
                    f"{'repeated' if rs.repeat else 'last rate held'})")
        if a.process in ("poisson", "constant"):
            return f"open loop, {a.process} {a.rate_rps:g} rps"
        if a.process == "bursty":
            return (f"open loop, bursty {a.rate_rps:g} rps calm / {a.burst_rate_rps:g} rps bursts "
                    f"(mean burst {a.mean_burst_s:g} s, calm {a.mean_calm_s:g} s)")
        if a.process == "streams":
            groups = ",".join(f"{g.count}x{g.fps:g}fps" for g in a.streams)
            jitter = max((g.jitter_ms for g in a.streams), default=0.0)
            burst = (f", x{a.burst_factor:g} fps in bursts (mean burst {a.mean_burst_s:g} s, calm {a.mean_calm_s:g} s)"
                     if a.burst_factor is not None else "")
            return f"open loop, streams {groups}" + (f" (jitter {jitter:g} ms)" if jitter else "") + burst
        return f"open loop, trace {a.path}"


@dataclass
class LoadResult:
    """One run's per-request rows (dicts keyed by :data:`COLUMNS`) and its summary."""

    spec: LoadSpec
    url: str                       # the inference endpoint the requests went to
    rows: list[dict[str, Any]]
    summary: dict[str, Any]


def _check_arrivals(a: Arrivals, base_dir: Path) -> None:
    if a.process in ("poisson", "constant", "bursty") and a.rate_schedule is None:
        if a.rate_rps is None or not (a.rate_rps > 0 and math.isfinite(a.rate_rps)):
            raise CapsimError(f"--rate: must be > 0 requests per second, got {a.rate_rps}; e.g. --rate 100")
    if a.process == "bursty":
        for value, option, example in ((a.burst_rate_rps, "--burst-rate", "400"), (a.mean_burst_s, "--burst-s", "1"),
                                       (a.mean_calm_s, "--calm-s", "4")):
            if value is None or not (value > 0 and math.isfinite(value)):
                raise CapsimError(f"{option}: must be > 0 with --process bursty, got {value}; e.g. {option} {example}")
    elif a.process == "streams":
        if a.burst_factor is not None:
            for value, option in ((a.mean_burst_s, "--burst-s"), (a.mean_calm_s, "--calm-s")):
                if value is None or not (value > 0 and math.isfinite(value)):
                    raise CapsimError(f"{option}: must be > 0 with --burst, got {value}; e.g. {option} 2")
        if not a.streams:
            raise CapsimError("--streams: give at least one camera group, e.g. --streams 6x25fps")
        for g in a.streams:
            if g.count < 1 or not (g.fps > 0 and math.isfinite(g.fps)):
                raise CapsimError(f"--streams: each group needs >= 1 camera at > 0 fps, got {g.count}x{g.fps:g}fps")
            if not (g.jitter_ms >= 0 and math.isfinite(g.jitter_ms)):
                raise CapsimError(f"--jitter-ms: must be >= 0, got {g.jitter_ms:g}")
    elif a.process == "trace":
        path = base_dir / (a.path or "")
        if not a.path or not path.is_file():
            raise CapsimError(f"--trace: file {path} not found; give a CSV of arrival times in seconds "
                              "(one per line, or columns arrival_s[,source])")
    elif a.process not in OPEN_PROCESSES:
        raise CapsimError(f"--process: must be poisson, constant or bursty, got {a.process!r}")


# --------------------------------------------------------------------------- schedule and payload


def schedule(arrivals: Arrivals, duration_s: float, seed: int = 1, base_dir: str | Path = ".") -> ArrivalStream:
    """Every arrival of ``arrivals`` before ``duration_s``, drawn with capsim's own generator.

    A trace is shifted so that its first arrival is at 0 (a trace recorded at t = 3600 s does not
    make the run wait an hour) and cut at ``duration_s``.
    """
    if arrivals.process == "trace":
        s = generate(arrivals, 2**62, np.random.default_rng(seed), base_dir)
        return _cut(ArrivalStream(s.times - s.times[0], s.source, s.frame, s.n_sources), duration_s)
    # Ask for comfortably more than the mean count; double until the schedule covers the duration.
    n = int(arrivals.offered_rps() * duration_s * 1.25) + 64
    while True:
        if n > 100_000_000:
            raise CapsimError(f"--duration: {duration_s:g} s at this rate is tens of millions of requests; "
                              "shorten it or lower the rate")
        s = generate(arrivals, n, np.random.default_rng(seed), base_dir)
        if len(s) and s.times[-1] >= duration_s:
            return _cut(s, duration_s)
        n *= 2


def _cut(s: ArrivalStream, duration_s: float) -> ArrivalStream:
    keep = s.times < duration_s
    bursts = None if s.bursts is None else s.bursts[s.bursts[:, 0] < duration_s]
    return ArrivalStream(s.times[keep], s.source[keep], s.frame[keep], s.n_sources, bursts)


def make_payload(kind: str, shape: tuple[int, int, int] = (3, 224, 224), seed: int = 1) -> tuple[bytes, dict[str, str]]:
    """The request body every request carries, and its content headers.

    ``jpeg``: one real 640x480 JPEG (textured, so decoding costs what a photo costs), made with
    capsim's calibration helper; ``tensor``: seeded random float32 values of ``shape`` (C order).
    """
    if kind == "jpeg":
        from capsim.calibrate.prepost import make_jpegs  # numpy + Pillow only, no torch

        try:
            body = make_jpegs(1, (640, 480), seed=seed)[0]
        except ImportError:
            raise CapsimError("--payload jpeg: needs Pillow to encode the image; pip install pillow, "
                              "or use --payload tensor") from None
        return body, {"Content-Type": "image/jpeg"}
    if kind == "tensor":
        body = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32).tobytes()
        return body, {"Content-Type": "application/octet-stream", P.H_SHAPE: "x".join(str(int(s)) for s in shape)}
    raise CapsimError(f"--payload: must be jpeg or tensor, got {kind!r}")


# --------------------------------------------------------------------------- the run


@dataclass
class _Tally:
    """Live counts for the progress lines."""

    sent: int = 0
    ok: int = 0
    rejected: int = 0
    errors: int = 0


class _Client:
    """Sends requests on one session and turns each into a row (times relative to ``t0``)."""

    def __init__(self, session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str],
                 t0: float, tally: _Tally):
        self.session, self.url, self.body, self.headers = session, url, body, headers
        self.t0, self.tally = t0, tally
        self.loop = asyncio.get_running_loop()
        self.rows: list[dict[str, Any]] = []

    async def send(self, index: int, source: int, scheduled: float | None = None, priority: int | None = None) -> None:
        """Send request ``index`` (scheduled at loop time ``scheduled``; None: now; at X-Priority
        ``priority`` when given) and record its row."""
        headers = {**self.headers, P.H_SOURCE: str(source), P.H_REQUEST_ID: str(index)}
        if priority is not None:
            headers[P.H_PRIORITY] = str(priority)
        sent = self.loop.time()
        if scheduled is None:
            scheduled = sent
        self.tally.sent += 1
        status: int | str = "error"
        resp_headers: Any = {}
        text = b""
        reason = ""
        try:
            async with self.session.post(self.url, data=self.body, headers=headers) as resp:
                text = await resp.read()
                status, resp_headers = resp.status, resp.headers
        except TimeoutError:  # aiohttp's timeouts all derive from it
            reason = "timeout"
        except aiohttp.ClientConnectorError as exc:
            reason = f"connect: {_os_reason(exc.os_error)}"
        except aiohttp.ServerDisconnectedError:
            reason = "server disconnected"
        except aiohttp.ClientError as exc:  # resets, bad responses: ClientOSError is an OSError
            reason = _os_reason(exc) if isinstance(exc, OSError) else type(exc).__name__
        received = self.loop.time()

        drop = resp_headers.get(P.H_DROP)
        if status == 200:
            outcome = "ok"
            self.tally.ok += 1
        elif status == 503:
            outcome, reason = "rejected", drop or _json_error(text) or "unknown"
            self.tally.rejected += 1
        else:
            outcome = "error"
            if status != "error":
                line = text.decode("utf-8", "replace").strip().splitlines()
                reason = f"http {status}" + (f": {line[0][:80]}" if line else "")
            self.tally.errors += 1
        row = {
            "index": index, "source": source,
            "scheduled_s": scheduled - self.t0, "sent_s": sent - self.t0, "received_s": received - self.t0,
            "latency_ms": (received - scheduled) * 1e3, "response_ms": (received - sent) * 1e3,
            "send_lateness_ms": (sent - scheduled) * 1e3,
            "status": status, "outcome": outcome, "reason": reason, "in_burst": None,
        }
        for h in P.TIMING_HEADERS:
            row[h] = resp_headers.get(h) if h == P.H_INSTANCE else _number(resp_headers.get(h))
        row[P.H_DROP] = drop
        if priority is not None:
            row["priority"] = priority
        self.rows.append(row)


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _os_reason(err: OSError) -> str:
    """``connection refused`` rather than asyncio's ``Connect call failed ('127.0.0.1', 1)``."""
    if isinstance(err, socket.gaierror):
        return "host name not found"
    if err.errno and err.errno > 0:
        return os.strerror(err.errno).lower()
    return err.strerror or str(err) or type(err).__name__


def _json_error(body: bytes) -> str | None:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return None


async def _preflight(session: aiohttp.ClientSession, url: str, timeout_s: float) -> None:
    """Fail in one line when nothing answers at the server's address (any HTTP answer will do)."""
    try:
        async with session.get(P.base_url(url) + P.HEALTH_PATH,
                               timeout=aiohttp.ClientTimeout(total=min(timeout_s, 10.0))) as resp:
            await resp.read()
    except TimeoutError:
        raise CapsimError(f"URL: {url} did not answer within {min(timeout_s, 10.0):g} s; "
                          "is the server running (capsim serve) and the address right?") from None
    except aiohttp.ClientError as exc:
        why = _os_reason(exc.os_error) if isinstance(exc, aiohttp.ClientConnectorError) else type(exc).__name__
        raise CapsimError(f"URL: cannot reach {P.base_url(url)} ({why}); start the server (capsim serve) "
                          "or fix the address") from None


def draw_priorities(shares: list[float], n: int, seed: int) -> list[int]:
    """The X-Priority level of each of ``n`` scheduled requests, drawn by ``shares`` from the run's
    seed (a stream of its own: the arrival times do not change)."""
    rng = np.random.default_rng([seed, 0x5052494F])
    p = np.asarray(shares, dtype=np.float64)
    return rng.choice(len(p), size=n, p=p / p.sum()).tolist()


async def _open_loop(client: _Client, sched: ArrivalStream, levels: list[int] | None = None) -> None:
    """Send each request at its scheduled time, never waiting for an answer before the next."""
    loop, t0 = client.loop, client.t0
    tasks = set()
    for i, (t, src) in enumerate(zip(sched.times.tolist(), sched.source.tolist())):
        due = t0 + t
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(client.send(i, src, due, None if levels is None else levels[i]))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)


async def _closed_loop(client: _Client, concurrency: int, think_s: float, end: float) -> None:
    """``concurrency`` clients, each sending its next request when its previous one has answered."""
    numbers = itertools.count()

    async def one_client(c: int) -> None:
        while client.loop.time() < end:
            await client.send(next(numbers), c)
            if think_s:
                await asyncio.sleep(think_s)

    await asyncio.gather(*(one_client(c) for c in range(concurrency)))


async def _report_progress(spec: LoadSpec, tally: _Tally, t0: float) -> None:
    loop = asyncio.get_running_loop()
    for k in range(1, 11):
        await asyncio.sleep(max(0.0, t0 + spec.duration_s * k / 10 - loop.time()))
        done = tally.ok + tally.rejected + tally.errors
        spec.progress(f"load: {10 * k:3d}%  {spec.duration_s * k / 10:.1f} s  sent {tally.sent}, ok {tally.ok}, "
                      f"rejected {tally.rejected}, errors {tally.errors}, in flight {tally.sent - done}")


async def run_load(spec: LoadSpec) -> LoadResult:
    """Run the load described by ``spec`` against a live server and return its rows and summary.

    Raises :class:`CapsimError` for bad input or when the server cannot be reached at all;
    failures of single requests (timeouts, resets, HTTP errors) become rows with outcome ``error``.
    """
    spec.check()
    sched = None
    if spec.arrivals is not None:
        sched = schedule(spec.arrivals, spec.duration_s, spec.seed, spec.base_dir)
    body, headers = make_payload(spec.payload, spec.shape, spec.seed)
    if spec.deadline_ms is not None:
        headers[P.H_DEADLINE] = f"{spec.deadline_ms:g}"
    levels = None
    if sched is not None and spec.priority_shares is not None:
        levels = draw_priorities(spec.priority_shares, len(sched), spec.seed)
    url = P.infer_url(spec.url)
    # No per-host connection limit: an open-loop send must never wait for a free connection.
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=spec.timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await _preflight(session, url, spec.timeout_s)
        loop = asyncio.get_running_loop()
        tally = _Tally()
        cpu0, wall0 = os.times(), time.time()
        t0 = loop.time() + 0.005  # a little lead so the first send is not late by construction
        client = _Client(session, url, body, headers, t0, tally)
        progress = asyncio.create_task(_report_progress(spec, tally, t0)) if spec.progress else None
        try:
            if sched is not None:
                await _open_loop(client, sched, levels)
            else:
                await _closed_loop(client, spec.concurrency, spec.think_ms / 1e3, t0 + spec.duration_s)
        finally:
            if progress:
                progress.cancel()
        elapsed = loop.time() - t0
        cpu1 = os.times()
    rows = sorted(client.rows, key=lambda r: r["index"])
    if sched is not None and sched.bursts is not None:
        flags = sched.in_burst(sched.times).tolist()
        for r in rows:
            r["in_burst"] = flags[r["index"]]
    cpu_s = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    summary = summarize(rows, spec, url, n_scheduled=len(sched) if sched is not None else len(rows))
    summary["start_unix_s"] = wall0
    summary["elapsed_s"] = elapsed
    summary["generator_cpu_percent"] = 100.0 * cpu_s / max(elapsed, 1e-9)
    if levels is not None:
        summary["by_priority"] = _priority_summary(rows)
    return LoadResult(spec, url, rows, summary)


# --------------------------------------------------------------------------- summary and output


def _pcts(values: list[float], keys: tuple[str, ...] = ("p50", "p90", "p95", "p99")) -> dict[str, float] | None:
    if not values:
        return None
    a = np.asarray(values, dtype=np.float64)
    out = {k: float(np.percentile(a, float(k[1:]))) for k in keys}
    out["mean"], out["max"] = float(a.mean()), float(a.max())
    return out


def summarize(rows: list[dict[str, Any]], spec: LoadSpec, url: str, n_scheduled: int | None = None) -> dict[str, Any]:
    """The run's figures (the summary of :class:`LoadResult`) from its rows.

    Latency percentiles cover completed (200) requests; ``throughput_rps`` is completed requests
    over the window from the first scheduled send to the last response.
    """
    ok = [r for r in rows if r["outcome"] == "ok"]
    rejected = Counter(r["reason"] for r in rows if r["outcome"] == "rejected")
    errors = Counter(r["reason"] for r in rows if r["outcome"] == "error")
    window = (max(r["received_s"] for r in rows) - min(r["scheduled_s"] for r in rows)) if rows else 0.0
    server = {}
    for h, _ in SERVER_MEANS:
        vals = [r[h] for r in ok if r[h] is not None]
        server[h] = float(np.mean(vals)) if vals else None
    gaps = [r["response_ms"] - r[P.H_SERVER_TOTAL] for r in ok if r[P.H_SERVER_TOTAL] is not None]
    lateness = _pcts([r["send_lateness_ms"] for r in rows], ("p50", "p99"))
    offered = spec.arrivals.offered_rps() if spec.arrivals is not None else None
    return {
        "url": url,
        "load": spec.describe(),
        "duration_s": spec.duration_s,
        "payload": spec.payload if spec.payload == "jpeg" else f"tensor {'x'.join(map(str, spec.shape))}",
        "seed": spec.seed,
        "scheduled": len(rows) if n_scheduled is None else n_scheduled,
        "sent": len(rows),
        "completed": len(ok),
        "rejected": dict(rejected),
        "rejected_total": sum(rejected.values()),
        "errors": dict(errors),
        "errors_total": sum(errors.values()),
        "window_s": window,
        "throughput_rps": len(ok) / window if window > 0 else 0.0,
        "offered_rps": offered if offered is not None else len(rows) / spec.duration_s,
        "latency_ms": _pcts([r["latency_ms"] for r in ok]),
        "server_ms": server,
        "requests_by_instance": dict(Counter(r[P.H_INSTANCE] for r in ok if r[P.H_INSTANCE] is not None)),
        "gap_ms": _pcts(gaps, ("p50", "p99")),
        "send_lateness_ms": lateness,
        "generator_late": bool(lateness and lateness["p99"] > LATE_WARN_MS),
        "bursts": _burst_summary(rows),
    }


def _burst_summary(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Latency and drops of the requests scheduled inside bursts and of the others (bursty streams)."""
    if not rows or rows[0]["in_burst"] is None:
        return None
    out = {}
    for name, flag in (("in_bursts", True), ("outside", False)):
        part = [r for r in rows if r["in_burst"] is flag]
        ok = [r["latency_ms"] for r in part if r["outcome"] == "ok"]
        out[name] = {"sent": len(part), "completed": len(ok),
                     "drop_rate": 1.0 - len(ok) / len(part) if part else None, "latency_ms": _pcts(ok)}
    return out


def _priority_summary(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per X-Priority level sent: requests, completions, drops by reason and latency of the completed."""
    out = {}
    for lv in sorted({r["priority"] for r in rows}):
        part = [r for r in rows if r["priority"] == lv]
        ok = [r["latency_ms"] for r in part if r["outcome"] == "ok"]
        out[lv] = {"sent": len(part), "completed": len(ok), "drop_rate": 1.0 - len(ok) / len(part),
                   "rejected": dict(Counter(r["reason"] for r in part if r["outcome"] == "rejected")),
                   "latency_ms": _pcts(ok)}
    return out


def format_summary(result: LoadResult) -> str:
    """A perf_analyzer-style text summary of a run."""
    s = result.summary
    lines = [f"capsim load: {s['url']}  {s['load']} for {s['duration_s']:g} s, payload {s['payload']}, "
             f"seed {s['seed']}"]

    def counts(d: dict[str, int]) -> str:
        return " (" + ", ".join(f"{k} {v}" for k, v in sorted(d.items())) + ")" if d else ""

    lines.append(f"requests        sent {s['sent']}, completed {s['completed']}, rejected {s['rejected_total']}"
                 f"{counts(s['rejected'])}, errors {s['errors_total']}{counts(s['errors'])}")
    lines.append(f"throughput      {s['throughput_rps']:.1f} rps completed (offered {s['offered_rps']:.1f} rps) "
                 f"over {s['window_s']:.2f} s")
    lat = s["latency_ms"]
    if lat:
        figures = "  ".join(f"{k} {lat[k]:.1f}" for k in ("p50", "p90", "p95", "p99", "mean", "max"))
        lines.append(f"latency (ms)    {figures}   (client side, from the scheduled send)")
    else:
        lines.append("latency (ms)    no request completed")
    parts = [f"{label} {s['server_ms'][h]:.{2 if h == P.H_BATCH_SIZE else 1}f}"
             for h, label in SERVER_MEANS if s["server_ms"][h] is not None]
    lines.append("server (mean)   " + (", ".join(parts) + "  (ms; batch size in requests)" if parts
                                        else "no timing headers in the responses"))
    if s["requests_by_instance"]:
        lines.append("instances       " + ", ".join(f"{k}: {v}" for k, v in sorted(s["requests_by_instance"].items())))
    if s["gap_ms"]:
        g = s["gap_ms"]
        lines.append(f"client - server mean {g['mean']:.1f} ms, p99 {g['p99']:.1f} ms  (network + HTTP: response "
                     f"time minus {P.H_SERVER_TOTAL})")
    for name, label in (("in_bursts", "in bursts"), ("outside", "outside")):
        b = (s.get("bursts") or {}).get(name)
        if b and b["sent"]:
            lat = b["latency_ms"]
            figures = "  ".join(f"{k} {lat[k]:.1f}" for k in ("p50", "p95", "p99")) if lat else "none completed"
            lines.append(f"{label:<15} sent {b['sent']}, dropped {100 * b['drop_rate']:.1f} %, latency (ms) {figures}")
    for lv, b in (s.get("by_priority") or {}).items():
        lat = b["latency_ms"]
        figures = "  ".join(f"{k} {lat[k]:.1f}" for k in ("p50", "p95", "p99")) if lat else "none completed"
        lines.append(f"{'priority ' + str(lv):<15} sent {b['sent']}, completed {b['completed']}, dropped "
                     f"{100 * b['drop_rate']:.1f} %{counts(b['rejected'])}, latency (ms) {figures}")
    late = s["send_lateness_ms"]
    if late:
        lines.append(f"load generator  CPU {s['generator_cpu_percent']:.0f}% of one core, send lateness "
                     f"p50 {late['p50']:.2f} ms, p99 {late['p99']:.2f} ms, max {late['max']:.2f} ms")
    if s["generator_late"]:
        lines.append(f"WARNING: the load generator sent late (p99 {late['p99']:.1f} ms > {LATE_WARN_MS:g} ms): it "
                     "could not keep up, so latencies include its own delay; lower the rate or use a smaller payload")
    return "\n".join(lines)


def _cell(key: str, value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6f}" if key.endswith("_s") else f"{value:.3f}" if key.endswith("_ms") else f"{value:.6g}"
    return value


def write_csv(result: LoadResult, path: str | Path) -> None:
    """Write one row per request, columns :data:`COLUMNS` (empty cell = no value)."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        cols = COLUMNS + ("priority",) if result.rows and "priority" in result.rows[0] else COLUMNS
        w.writerow(cols)
        for r in result.rows:
            w.writerow([_cell(k, r[k]) for k in cols])


# --------------------------------------------------------------------------- CLI


def parse_streams(text: str, jitter_ms: float = 0.0) -> list[StreamGroup]:
    """``6x25fps,2x10fps`` -> camera groups (``fps`` optional, fractional rates allowed)."""
    groups = []
    for item in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:fps)?\s*", item, re.IGNORECASE)
        if not m:
            raise CapsimError(f"--streams: {item.strip()!r} is not CAMERASxFPS; write e.g. 6x25fps or 6x25fps,2x10fps")
        groups.append(StreamGroup(count=int(m[1]), fps=float(m[2]), jitter_ms=jitter_ms))
    return groups


def parse_schedule(text: str, period_s: float, repeat: bool = True) -> RateSchedule:
    """``0:20,30:120`` -> a rate schedule (validated as the scenario field arrivals.rate_schedule)."""
    from capsim.config import parse_scenario
    from capsim.errors import ScenarioError

    steps = []
    for item in text.split(","):
        m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*:\s*(\d+(?:\.\d*)?)\s*", item)
        if not m:
            raise CapsimError(f"--schedule: {item.strip()!r} is not AT_S:RPS; write e.g. 0:20,30:120")
        steps.append({"at_s": float(m[1]), "rate_rps": float(m[2])})
    data = {"arrivals": {"process": "poisson", "rate_schedule": {"steps": steps, "period_s": period_s,
                                                                 "repeat": repeat}},
            "service": {"batch_latency_ms": {1: 1.0}}}
    try:
        return parse_scenario(data).arrivals.rate_schedule
    except ScenarioError as exc:  # name the option, keep the field's own explanation
        raise CapsimError(f"--schedule: {exc.problems[0]}") from None


def _parse_shape(text: str) -> tuple[int, int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*x\s*(\d+)\s*", text or "")
    if not m or any(int(g) < 1 for g in m.groups()):
        raise CapsimError(f"--shape: must be CxHxW with sizes >= 1, e.g. 3x224x224; got {text!r}")
    return int(m[1]), int(m[2]), int(m[3])


def spec_from_args(args: argparse.Namespace) -> LoadSpec:
    """The :class:`LoadSpec` the ``load`` options describe (options that do not apply are refused)."""
    def only_with(option: str, value: Any, ok: bool, needs: str) -> None:
        if value is not None and not ok:
            raise CapsimError(f"{option}: only applies with {needs}; remove it")

    bursty = args.rate is not None and args.process == "bursty"
    burst_streams = args.streams is not None and args.burst is not None
    only_with("--process", args.process, args.rate is not None, "--rate")
    only_with("--burst-rate", args.burst_rate, bursty, "--rate R --process bursty")
    only_with("--burst", args.burst, args.streams is not None, "--streams")
    for opt, value in (("--burst-s", args.burst_s), ("--calm-s", args.calm_s)):
        only_with(opt, value, bursty or burst_streams, "--rate R --process bursty or --streams ... --burst X")
    only_with("--jitter-ms", args.jitter_ms, args.streams is not None, "--streams")
    only_with("--think-ms", args.think_ms, args.concurrency is not None, "--concurrency")
    only_with("--period-s", args.period_s, args.schedule is not None, "--schedule")
    only_with("--hold", args.hold or None, args.schedule is not None, "--schedule")
    only_with("--priority-shares", args.priority_shares, args.concurrency is None, "an open loop (--rate, --streams, --trace)")
    shares = None
    if args.priority_shares is not None:
        try:
            shares = [float(v) for v in args.priority_shares.split(",")]
        except ValueError:
            raise CapsimError(f"--priority-shares: {args.priority_shares!r} is not a list of numbers; "
                              "e.g. 0.2,0.8 (level 0 first)") from None

    arrivals = None
    if args.rate is not None:
        if not args.rate > 0:
            raise CapsimError(f"--rate: must be > 0 requests per second, got {args.rate:g}; e.g. --rate 100")
        process = args.process or "poisson"
        arrivals = Arrivals(process=process, rate_rps=args.rate)
        if process == "bursty":
            arrivals.burst_rate_rps = args.burst_rate if args.burst_rate is not None else 4 * args.rate
            arrivals.mean_burst_s = args.burst_s if args.burst_s is not None else 1.0
            arrivals.mean_calm_s = args.calm_s if args.calm_s is not None else 4.0
    elif args.streams is not None:
        arrivals = Arrivals(process="streams", streams=parse_streams(args.streams, args.jitter_ms or 0.0))
        if args.burst is not None:
            if not (args.burst >= 1 and math.isfinite(args.burst)):
                raise CapsimError(f"--burst: the cameras' frame-rate multiplier during a burst must be >= 1, "
                                  f"got {args.burst:g}; e.g. --burst 3")
            arrivals.burst_factor = args.burst
            arrivals.mean_burst_s = args.burst_s if args.burst_s is not None else 1.0
            arrivals.mean_calm_s = args.calm_s if args.calm_s is not None else 4.0
    elif args.trace is not None:
        arrivals = Arrivals(process="trace", path=args.trace)
    elif args.schedule is not None:
        arrivals = Arrivals(process="poisson", rate_schedule=parse_schedule(
            args.schedule, args.period_s if args.period_s is not None else args.duration, not args.hold))
    return LoadSpec(
        url=args.url, duration_s=args.duration, arrivals=arrivals, concurrency=args.concurrency,
        think_ms=args.think_ms or 0.0, payload=args.payload, shape=_parse_shape(args.shape),
        timeout_s=args.timeout_s, seed=args.seed, priority_shares=shares, deadline_ms=args.deadline_ms,
        progress=None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True)),
    )


def cmd_load(args: argparse.Namespace) -> int:
    """Run ``capsim load``: summary on stdout, rows to ``--out``; bad input raises CapsimError (exit 2)."""
    spec = spec_from_args(args)
    spec.check()
    if args.out:
        out = Path(args.out)
        if not out.parent.is_dir():
            raise CapsimError(f"--out: folder {out.parent} does not exist; create it or write elsewhere")
    result = asyncio.run(run_load(spec))
    if args.out:
        write_csv(result, args.out)
    print(format_summary(result))
    if args.out:
        print(f"rows: {args.out} ({len(result.rows)} requests)")
    return 0
