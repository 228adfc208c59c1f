"""``capsim serve``: a real micro-batched inference server with the simulator's batching rules.

Stack: aiohttp on one asyncio event loop. The HTTP handlers, the dynamic batcher
(:class:`~capsim.validate.batching.ServerBatcher`) and the bookkeeping all live on that loop,
so the queue needs no locks and a batch decision sees every arrival up to its instant; the
blocking work runs on threads that release the GIL: JPEG decoding on a pool of
``preprocess_workers`` threads (the simulator's pre-processing stage), and each model instance
on its own thread with its own runtime session (ONNX Runtime or torch). aiohttp was chosen over
an ASGI stack (uvicorn + starlette) because it is one mature dependency for both this server
and the load generator's client, with less per-request machinery between the socket and the
handler; on a 2-core machine that overhead is part of what ``capsim validate`` must model.

Every request ends in exactly one outcome, counted in ``/metrics``: completed, rejected,
dropped_oldest, timeout, stale, stride, bad_request, error or shutting_down; received = their sum.
Requests with a valid priority level are counted by level too (``capsim_requests_by_level_total``);
with a stride or degradation, each camera's current stride and its frames are exposed.
With ``--autoscale-max`` the instance count follows utilization (:mod:`capsim.validate.autoscale`):
a new instance loads its own session on its own thread and serves only after that cold start.
With ``--decode-latest`` the frames waiting for a decode thread form an explicit line keeping only
each camera's latest frame (:mod:`capsim.validate.decode_line`); an older frame it replaces is
dropped as stale.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from aiohttp import web

from capsim.errors import CapsimError
from capsim.validate import protocol as P
from capsim.validate.autoscale import READY, RETIRE, START, ServerAutoscaler
from capsim.validate.batching import LevelPolicy, ServerBatcher
from capsim.validate.decode_line import DecodeLine

OUTCOMES = ("completed", "rejected", "dropped_oldest", "timeout", "stale", "stride", "bad_request", "error",
            "shutting_down")
# outcomes a request with a known level can have (bad_request may come before its level is read)
LEVEL_OUTCOMES = tuple(o for o in OUTCOMES if o != "bad_request")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


DROP_DETAILS = {
    "rejected": "the queue was full: the request was rejected by the queue policy",
    "dropped_oldest": "the request was dropped (oldest) by the queue policy to make room",
    "timeout": "the request waited longer than the queue timeout",
    "stale": "the request was older than its deadline when its batch was formed",
    "stride": "the frame was skipped: its index is not a multiple of its camera's current stride",
}
DECODE_STALE = "a newer frame of its camera arrived while it waited for a decode thread (--decode-latest)"


class BadPayload(ValueError):
    """A request body the server cannot turn into a model input."""


class StaleFrame(Exception):
    """The frame was replaced in the decode line by a newer frame of its camera (--decode-latest)."""


# --------------------------------------------------------------------------- the model


class NoopRunner:
    """A model that does no work: outputs zeros at once. ``capsim validate`` runs the server with it
    to measure the server's own per-request overhead (HTTP, decoding, batching bookkeeping).
    ``ms`` (``--noop-ms``, a test and measurement aid): sleep this long per batch, so that an
    instance's utilization can be set by the load."""

    def __init__(self, classes: int = 1000, ms: float = 0.0):
        self.classes = classes
        self.ms = ms

    def run(self, x: np.ndarray) -> np.ndarray:
        if self.ms:
            time.sleep(self.ms / 1000.0)
        return np.zeros((x.shape[0], self.classes), np.float32)

    def close(self) -> None:
        pass


@dataclass
class ModelHost:
    """N model instances (one runtime session each) and what their input looks like. ``factory()``
    builds one more warmed-up runner (the same model, backend and threads): autoscaling's cold start."""

    name: str
    task: str
    input_shape: tuple[int, int, int]
    runners: list
    info: dict = field(default_factory=dict)
    factory: object = None

    def run(self, instance: int, x: np.ndarray) -> tuple[np.ndarray, float]:
        t = time.perf_counter()
        out = self.runners[instance].run(x)
        return np.asarray(out), (time.perf_counter() - t) * 1000.0

    def add(self, instance: int, runner) -> None:
        """``runner`` serves as ``instance`` (a new index or one retired before)."""
        if instance >= len(self.runners):
            self.runners += [None] * (instance + 1 - len(self.runners))
        self.runners[instance] = runner

    def retire(self, instance: int) -> None:
        """Close ``instance``'s session (call it on that instance's thread)."""
        r, self.runners[instance] = self.runners[instance], None
        if r is not None:
            r.close()

    def close(self) -> None:
        for r in self.runners:
            if r is not None:
                r.close()


def load_model(model: str | None, model_file: str | None, backend: str, device: str, precision: str,
               instances: int, threads: int | None = None, input_shape=None, seed: int = 0, noop_ms: float = 0.0,
               noop_load_ms: float = 0.0) -> ModelHost:
    """Build ``instances`` runners of a zoo model, a model file, or ``noop`` (which sleeps ``noop_ms``
    per batch and ``noop_load_ms`` to load: test aids). ``threads``: per instance (default: the cores
    split between the instances)."""
    if model == "noop":
        shape = tuple(input_shape or (3, 224, 224))

        def noop():
            if noop_load_ms:
                time.sleep(noop_load_ms / 1000.0)
            r = NoopRunner(ms=noop_ms)
            r.run(np.zeros((1, *shape), np.float32))  # the warm-up batch, as for a real model
            return r

        info = {"backend": "none", "device": "cpu", "precision": "fp32"}
        if noop_ms or noop_load_ms:
            info.update(noop_ms=noop_ms, noop_load_ms=noop_load_ms)
        return ModelHost("noop", "classification", shape, [noop() for _ in range(instances)], info, noop)
    from capsim.calibrate import backends
    from capsim.calibrate.run import _source

    src, name, task, shape, origin = _source(model, model_file, input_shape, None, seed)
    per = threads or max(1, (os.cpu_count() or 1) // instances)  # the cores, split between instances
    import tempfile

    work = tempfile.mkdtemp(prefix="capsim-serve-")

    def make():
        return backends.make_runner(src, backend, device=device, precision=precision, threads=per,
                                    input_shape=shape, workdir=work)

    def factory():
        r = make()
        r.run(np.zeros((1, *shape), np.float32))  # warm-up: first calls allocate and pick kernels
        return r

    runners = []
    try:
        for _ in range(instances):
            runners.append(make())
    except ValueError as exc:
        raise CapsimError(f"--model: {exc}") from None
    x = np.zeros((1, *shape), np.float32)
    for r in runners:  # warm-up: first calls allocate and pick kernels
        r.run(x)
    return ModelHost(name, task, tuple(shape), runners,
                     {"backend": backend, "device": device, "precision": precision, "threads_per_instance": per,
                      "origin": origin}, factory)


def timed_decode(body: bytes, content_type: str, shape_header: str | None, input_shape) -> tuple[np.ndarray, float]:
    """:func:`decode` and its own duration in ms (measured on the pre-processing thread, so it
    excludes the wait for a free thread)."""
    t = time.perf_counter()
    x = decode(body, content_type, shape_header, input_shape)
    return x, (time.perf_counter() - t) * 1000.0


def decode(body: bytes, content_type: str, shape_header: str | None, input_shape) -> np.ndarray:
    """The model input for one request body (runs on a pre-processing thread)."""
    if content_type == "image/jpeg":
        from capsim.calibrate.prepost import preprocess

        try:
            return preprocess(body, input_shape)
        except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for a bad image
            raise BadPayload(f"body is not a decodable JPEG ({type(exc).__name__})") from None
    if content_type == "application/octet-stream":
        want = tuple(int(v) for v in input_shape)
        if shape_header:
            try:
                got = tuple(int(v) for v in shape_header.lower().split("x"))
            except ValueError:
                raise BadPayload(f"{P.H_SHAPE}: {shape_header!r} is not CxHxW") from None
            if got != want:
                raise BadPayload(f"{P.H_SHAPE}: {shape_header} does not match the model input "
                                 f"{'x'.join(map(str, want))}")
        n = int(np.prod(want)) * 4
        if len(body) != n:
            raise BadPayload(f"tensor body has {len(body)} bytes; a float32 {'x'.join(map(str, want))} needs {n}")
        return np.frombuffer(body, np.float32).reshape(want)
    raise BadPayload(f"Content-Type {content_type!r}: send image/jpeg or application/octet-stream")


def postprocess(task: str, out: np.ndarray) -> dict:
    """This request's slice of the batch output as JSON-able data."""
    if task == "classification":
        logits = out.reshape(-1).astype(np.float64)
        z = np.exp(logits - logits.max())
        p = z / z.sum()
        top = np.argsort(-p, kind="stable")[:5]
        return {"top5": [{"class": int(i), "score": float(p[i])} for i in top]}
    return {"shape": list(out.shape), "mean": float(np.mean(out))}


# --------------------------------------------------------------------------- the server


@dataclass
class Req:
    """One request in flight inside the server."""

    x: np.ndarray
    source: int
    received: float
    preprocess_ms: float
    decode_ms: float
    fut: asyncio.Future
    level: int = 0


class InferenceServer:
    """The aiohttp application, the batcher loop and the counters."""

    def __init__(self, host: ModelHost, max_batch: int, delay_ms: float, instances: int, preferred=(),
                 max_size: int = 0, per_source_max_size: int = 0, on_full: str = "reject", timeout_ms: float = 0.0,
                 preprocess_workers: int = 1, levels=None, default_priority: int | None = None,
                 deadline_ms: float = 0.0, stride: int = 1, degrade_threshold: int = 0, degrade_max_stride: int = 0,
                 autoscale: dict | None = None, log=None, decode_latest: bool = False):
        """``levels``: priority lanes as (max_size, on_full, timeout_ms), highest first (None: one lane
        from max_size/on_full/timeout_ms); a request without X-Priority gets ``default_priority``
        (None: the lowest). ``autoscale``: {min_instances, max_instances, scale_up_utilization,
        scale_down_utilization, window_s} (None: a fixed count); ``log(line)`` gets each scale event.
        ``decode_latest``: frames wait for a decode thread in a :class:`DecodeLine` (one per camera)."""
        self.host = host
        lanes = None if levels is None else [LevelPolicy(m, o, t / 1000.0) for m, o, t in levels]
        self.batcher = ServerBatcher(max_batch, delay_ms / 1000.0, instances, list(preferred), max_size,
                                     per_source_max_size, on_full, timeout_ms / 1000.0, levels=lanes,
                                     deadline=deadline_ms / 1000.0, stride=stride,
                                     degrade_threshold=degrade_threshold, degrade_max_stride=degrade_max_stride)
        self.n_levels = len(self.batcher.levels)
        self.default_priority = self.n_levels - 1 if default_priority is None else default_priority
        self.config = {"max_batch_size": max_batch, "max_queue_delay_ms": delay_ms, "instances": instances,
                       "preferred_batch_sizes": list(preferred), "queue_max_size": max_size,
                       "per_source_max_size": per_source_max_size, "on_full": on_full, "queue_timeout_ms": timeout_ms,
                       "preprocess_workers": preprocess_workers}
        if levels is not None:
            self.config["priority_levels"] = [{"max_size": m, "on_full": o, "timeout_ms": t} for m, o, t in levels]
            self.config["default_priority"] = self.default_priority
        if deadline_ms:
            self.config["deadline_ms"] = deadline_ms
        if self.batcher.strided:
            self.config.update(stride=stride, degrade_threshold=degrade_threshold,
                               degrade_max_stride=degrade_max_stride)
        self.autoscale = autoscale
        self.scaler: ServerAutoscaler | None = None  # made when the batcher loop starts (its clock)
        self.scale_counts = {START: 0, READY: 0, RETIRE: 0}
        self.scale_task: asyncio.Task | None = None
        self.start_task: asyncio.Future | None = None
        self.log = log or (lambda line: None)
        if autoscale:
            self.config["autoscale"] = dict(autoscale)
        self.by_level = [{o: 0 for o in LEVEL_OUTCOMES} for _ in range(self.n_levels)]
        self.processed: dict[int, int] = {}  # completed frames per source (stride / degrade on)
        self.pre_pool = ThreadPoolExecutor(max(1, preprocess_workers), thread_name_prefix="capsim-pre")
        # --decode-latest: the line decides which frame a free thread takes, so the pool's own queue stays empty
        self.line = DecodeLine(max(1, preprocess_workers)) if decode_latest else None
        if decode_latest:
            self.config["decode_latest"] = True
        self.inst_pools = {i: ThreadPoolExecutor(1, thread_name_prefix=f"capsim-inst{i}") for i in range(instances)}
        self.counts = {o: 0 for o in OUTCOMES}
        self.received = 0
        self.batch_hist = [0] * (len(BATCH_BUCKETS) + 1)
        self.batch_sum = 0
        self.batches = 0
        self.lat_hist = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.lat_sum = 0.0
        self.in_flight = 0
        self.draining = False
        self.decoding = 0  # accepted requests not yet in the batcher (decoding): a drain waits for them
        self.wake = asyncio.Event()
        self.loop_task: asyncio.Task | None = None
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.router.add_post(P.INFER_PATH, self.infer)
        self.app.router.add_get(P.HEALTH_PATH, self.health)
        self.app.router.add_get(P.METRICS_PATH, self.metrics)

    # -- handlers

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok" if not self.draining else "draining", status=200 if not self.draining else 503)

    def _read_headers(self, headers) -> tuple[int, int, float | None, int | None]:
        """(source, level, deadline in s or None, frame index or None) from the request headers;
        ValueError with a one-line reason for a bad value."""
        def integer(name: str, default, lo: int = 0, hi: int | None = None):
            text = headers.get(name)
            if text is None:
                return default
            try:
                v = int(text)
            except ValueError:
                v = None
            if v is None or v < lo or (hi is not None and v > hi):
                rng = f"0..{hi}" if hi is not None else f">= {lo}"
                raise ValueError(f"{name}: must be an integer {rng}, got {text!r}")
            return v

        source = integer(P.H_SOURCE, 0)
        level = integer(P.H_PRIORITY, self.default_priority, hi=self.n_levels - 1)
        frame = integer(P.H_FRAME_INDEX, None)
        deadline = None
        text = headers.get(P.H_DEADLINE)
        if text is not None:
            try:
                deadline = float(text)
            except ValueError:
                deadline = -1.0
            if not (0 <= deadline < float("inf")):
                raise ValueError(f"{P.H_DEADLINE}: must be a number of ms >= 0 (0: no deadline), got {text!r}")
            deadline /= 1000.0
        return source, level, deadline, frame

    async def infer(self, request: web.Request) -> web.Response:
        body = await request.read()
        received = time.perf_counter()
        self.received += 1
        rid = request.headers.get(P.H_REQUEST_ID, "")
        try:
            source, level, deadline, frame = self._read_headers(request.headers)
        except ValueError as exc:
            if self.draining:
                return self._dropped("shutting_down", "the server is shutting down", rid)
            return self._bad(str(exc), rid)
        if self.draining:
            return self._dropped("shutting_down", "the server is shutting down", rid, level)
        loop = asyncio.get_running_loop()
        self.decoding += 1
        try:
            if self.line is None:
                x, decode_ms = await loop.run_in_executor(self.pre_pool, timed_decode, body, request.content_type,
                                                          request.headers.get(P.H_SHAPE), self.host.input_shape)
            else:
                x, decode_ms = await self._decode_latest(source, body, request.content_type,
                                                         request.headers.get(P.H_SHAPE))
        except BadPayload as exc:
            return self._bad(str(exc), rid)
        except StaleFrame:
            return self._dropped("stale", DECODE_STALE, rid, level)
        finally:
            self.decoding -= 1
            if self.draining:
                self.wake.set()  # the batcher loop stops only once nothing it accepted is still decoding
        entered = time.perf_counter()
        req = Req(x, source, received, (entered - received) * 1000.0, decode_ms, loop.create_future(), level)
        for p in self.batcher.offer(req, source, entered, level, received, deadline, frame):
            p.key.fut.set_result(("dropped", p.dropped))
        self.wake.set()
        outcome = await req.fut
        if outcome[0] == "dropped":
            return self._dropped(outcome[1], DROP_DETAILS.get(outcome[1], outcome[1]), rid, level)
        if outcome[0] == "error":
            self.counts["error"] += 1
            self.by_level[level]["error"] += 1
            return web.json_response({"error": "inference_failed", "detail": outcome[1]}, status=500,
                                     headers={P.H_REQUEST_ID: rid, P.H_PRIORITY: str(level)})
        _, out, compute_ms, size, inst, queue_wait_ms, held_ms = outcome
        t = time.perf_counter()
        result = postprocess(self.host.task, out)
        done = time.perf_counter()
        total = done - received
        self.counts["completed"] += 1
        self.by_level[level]["completed"] += 1
        if self.batcher.strided:
            self.processed[source] = self.processed.get(source, 0) + 1
        self.lat_sum += total
        self.lat_hist[_bucket(LATENCY_BUCKETS_S, total)] += 1
        headers = {P.H_PREPROCESS: f"{req.preprocess_ms:.4f}", P.H_DECODE: f"{req.decode_ms:.4f}",
                   P.H_QUEUE_WAIT: f"{queue_wait_ms:.4f}",
                   P.H_BATCH_SIZE: str(size), P.H_COMPUTE: f"{compute_ms:.4f}",
                   P.H_BATCH_OVERHEAD: f"{held_ms:.4f}",
                   P.H_POSTPROCESS: f"{(done - t) * 1000.0:.4f}", P.H_SERVER_TOTAL: f"{total * 1000.0:.4f}",
                   P.H_INSTANCE: str(inst), P.H_REQUEST_ID: rid, P.H_PRIORITY: str(level)}
        return web.Response(text=json.dumps({"outputs": result}), content_type="application/json", headers=headers)

    async def _decode_latest(self, source: int, body: bytes, content_type: str, shape: str | None):
        """Wait in the decode line (raises :class:`StaleFrame` if a newer frame of ``source`` replaces
        this one), then decode on a pre-processing thread. Tensor bodies take the same line."""
        loop = asyncio.get_running_loop()
        ticket = loop.create_future()  # True: a thread is ours; False: replaced (stale)
        start, stale = self.line.arrive(source, ticket)
        if stale is not None and not stale.done():  # done: its request went away (cancelled)
            stale.set_result(False)
        if start:
            ticket.set_result(True)
        try:
            go = await ticket
        except asyncio.CancelledError:
            # the request went away: leave the line, or hand on the thread it was just given
            if not self.line.withdraw(source, ticket) and ticket.done() and not ticket.cancelled() \
                    and ticket.result():
                self._next_decode()
            raise
        if not go:
            raise StaleFrame
        try:
            return await loop.run_in_executor(self.pre_pool, timed_decode, body, content_type, shape,
                                              self.host.input_shape)
        finally:
            self._next_decode()

    def _next_decode(self) -> None:
        """A decode thread finished: it takes the head of the line (skipping requests gone meanwhile)."""
        while (ticket := self.line.finish()) is not None:
            if not ticket.done():
                ticket.set_result(True)
                break
        if self.draining:
            self.wake.set()  # the batcher loop may be waiting for the decode line to empty before it stops

    def _dropped(self, reason: str, detail: str, rid: str, level: int | None = None) -> web.Response:
        self.counts[reason] += 1
        headers = {P.H_DROP: reason, P.H_REQUEST_ID: rid}
        if level is not None:
            self.by_level[level][reason] += 1
            headers[P.H_PRIORITY] = str(level)
        return web.json_response({"error": reason, "detail": detail}, status=503, headers=headers)

    def _bad(self, detail: str, rid: str) -> web.Response:
        self.counts["bad_request"] += 1
        return web.json_response({"error": "bad_request", "detail": detail}, status=400,
                                 headers={P.H_REQUEST_ID: rid})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=self.prometheus(), content_type="text/plain")

    def prometheus(self) -> str:
        """The counters in Prometheus' text exposition format."""
        lines = ["# HELP capsim_requests_received_total Inference requests received.",
                 "# TYPE capsim_requests_received_total counter", f"capsim_requests_received_total {self.received}",
                 "# HELP capsim_requests_total Inference requests by outcome.", "# TYPE capsim_requests_total counter"]
        lines += [f'capsim_requests_total{{outcome="{o}"}} {n}' for o, n in self.counts.items()]
        lines += ["# HELP capsim_queue_length Requests waiting in the batcher's queue.",
                  "# TYPE capsim_queue_length gauge", f"capsim_queue_length {self.batcher.qlen}",
                  "# HELP capsim_batches_in_flight Batches running on model instances.",
                  "# TYPE capsim_batches_in_flight gauge", f"capsim_batches_in_flight {self.in_flight}"]
        if self.line is not None:
            lines += ["# HELP capsim_decode_waiting Frames waiting for a decode thread (at most one per camera).",
                      "# TYPE capsim_decode_waiting gauge", f"capsim_decode_waiting {self.line.waiting}",
                      "# HELP capsim_decode_busy Decode threads working on a frame.",
                      "# TYPE capsim_decode_busy gauge", f"capsim_decode_busy {self.line.busy}"]
        if self.n_levels > 1:
            lines += ["# HELP capsim_requests_by_level_total Inference requests by priority level and outcome.",
                      "# TYPE capsim_requests_by_level_total counter"]
            lines += [f'capsim_requests_by_level_total{{level="{lv}",outcome="{o}"}} {n}'
                      for lv, c in enumerate(self.by_level) for o, n in c.items()]
        if self.batcher.strided:
            b = self.batcher
            lines += ["# HELP capsim_source_stride Current stride of each camera (process every k-th frame).",
                      "# TYPE capsim_source_stride gauge"]
            lines += [f'capsim_source_stride{{source="{s}"}} {k}' for s, k in sorted(b.stride_of.items())]
            lines += ["# HELP capsim_source_frames_total Frames of each camera that entered the batcher.",
                      "# TYPE capsim_source_frames_total counter"]
            lines += [f'capsim_source_frames_total{{source="{s}"}} {k}' for s, k in sorted(b.frames.items())]
            lines += ["# HELP capsim_source_frames_processed_total Frames of each camera computed and answered.",
                      "# TYPE capsim_source_frames_processed_total counter"]
            lines += [f'capsim_source_frames_processed_total{{source="{s}"}} {self.processed.get(s, 0)}'
                      for s in sorted(b.frames)]
        if self.scaler is not None:
            a = self.scaler
            lines += ["# HELP capsim_instances_serving Model instances that take batches (autoscaling).",
                      "# TYPE capsim_instances_serving gauge", f"capsim_instances_serving {len(a.serving)}",
                      "# HELP capsim_instances_provisioning Instances loading their model (cold start; 0 or 1).",
                      "# TYPE capsim_instances_provisioning gauge",
                      f"capsim_instances_provisioning {0 if a.pending is None else 1}",
                      "# HELP capsim_scale_events_total Autoscaling events: start (decided), ready (serves), retire.",
                      "# TYPE capsim_scale_events_total counter"]
            lines += [f'capsim_scale_events_total{{action="{k}"}} {n}' for k, n in self.scale_counts.items()]
            lines += ["# HELP capsim_cold_start_seconds Last cold start: from the decision until the instance serves.",
                      "# TYPE capsim_cold_start_seconds gauge",
                      f"capsim_cold_start_seconds {a.last_cold_start or 0.0:g}",
                      "# HELP capsim_window_utilization Busy / serving instance-time in the last window.",
                      "# TYPE capsim_window_utilization gauge",
                      f"capsim_window_utilization {a.last_utilization or 0.0:g}"]
        lines += _histogram("capsim_batch_size", "Requests per dispatched batch.", BATCH_BUCKETS, self.batch_hist,
                            self.batch_sum, self.batches)
        lines += _histogram("capsim_request_duration_seconds", "Server time of completed requests.",
                            LATENCY_BUCKETS_S, self.lat_hist, self.lat_sum, self.counts["completed"])
        return "\n".join(lines) + "\n"

    # -- the batcher loop

    async def run_batcher(self) -> None:
        """Dispatch batches as they become due; sleep until the next arrival, completion or deadline."""
        while True:
            now = time.perf_counter()
            expired, batches = self.batcher.take(now)
            for p in expired:
                p.key.fut.set_result(("dropped", p.dropped))
            for inst, batch in batches:
                self.in_flight += 1
                if self.scaler is not None:
                    self.scaler.batch_start(inst, now)
                asyncio.ensure_future(self._run_batch(inst, batch, now))
            if self.draining and not self.batcher.qlen and not self.in_flight and not self.decoding \
                    and self._decode_idle():
                return
            wake = self.batcher.next_wake(now)
            self.wake.clear()  # no await since take(): nothing can have set it in between
            timeout = None if wake is None else max(0.0, wake - time.perf_counter())
            try:
                await asyncio.wait_for(self.wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    def _decode_idle(self) -> bool:
        """No frame waits for or is in decode in the --decode-latest line (always True without it)."""
        return self.line is None or not (self.line.busy or self.line.waiting)

    async def _run_batch(self, inst: int, batch: list, started: float) -> None:
        loop = asyncio.get_running_loop()
        k = len(batch)
        self.batches += 1
        self.batch_sum += k
        self.batch_hist[_bucket(BATCH_BUCKETS, k)] += 1
        x = np.stack([p.key.x for p in batch]) if k > 1 else batch[0].key.x[None]
        try:
            out, compute_ms = await loop.run_in_executor(self.inst_pools[inst], self.host.run, inst, x)
        except Exception as exc:  # noqa: BLE001 - a failed batch fails its requests, not the server
            out, compute_ms, err = None, 0.0, f"{type(exc).__name__}: {exc}"
        else:
            err = None
        end = time.perf_counter()
        if self.scaler is not None and self.scaler.batch_end(inst, end):
            self._retired(inst)  # its last batch: it leaves instead of going back to the idle instances
        else:
            self.batcher.release(inst, end)
        self.in_flight -= 1
        self.wake.set()
        # the instance was held from the batch's forming to now: the model run and the hops to its
        # thread and back, which wait on the event loop (and on the cores) under load
        held_ms = max(0.0, (end - started) * 1000.0 - compute_ms)
        for j, p in enumerate(batch):
            wait_ms = (started - p.entered) * 1000.0
            p.key.fut.set_result(("error", err) if err else ("ok", out[j], compute_ms, k, inst, wait_ms, held_ms))

    # -- autoscaling

    def start_autoscaler(self) -> None:
        """Begin the window checks (the server clock's t0 is now)."""
        a = self.autoscale
        self.t0 = time.perf_counter()
        self.scaler = ServerAutoscaler(self.batcher.instances, a["min_instances"], a["max_instances"],
                                       a["scale_up_utilization"], a["scale_down_utilization"], a["window_s"], self.t0)
        self.scale_task = asyncio.ensure_future(self._scale_loop())

    async def _scale_loop(self) -> None:
        a = self.scaler
        while not self.draining:
            await asyncio.sleep(max(0.0, a.next_check - time.perf_counter()))
            if self.draining:
                return
            now = time.perf_counter()
            decision = a.check(now, list(self.batcher.idle))
            if decision is None:
                continue
            action, inst = decision
            if action == RETIRE:
                self.batcher.remove_idle(inst)
                self._retired(inst)
            else:
                self._event()
                self.start_task = asyncio.ensure_future(self._cold_start(inst))

    async def _cold_start(self, inst: int) -> None:
        """Load a new session on the new instance's own thread (load + warm-up batch), then let it serve."""
        pool = ThreadPoolExecutor(1, thread_name_prefix=f"capsim-inst{inst}")
        try:
            runner = await asyncio.get_running_loop().run_in_executor(pool, self.host.factory)
        except Exception as exc:  # noqa: BLE001 - a failed load leaves the count as it was
            pool.shutdown(wait=False)
            self.scaler.failed(inst, time.perf_counter(), f"{type(exc).__name__}: {exc}")
            self._event()
            return
        self.host.add(inst, runner)
        self.inst_pools[inst] = pool
        now = time.perf_counter()
        self.scaler.ready(inst, now)
        self.batcher.add_instance(inst, now)
        self._event()
        self.wake.set()  # queued work may start on it now

    def _retired(self, inst: int) -> None:
        """Close the retired instance's session on its own thread and stop that thread."""
        pool = self.inst_pools.pop(inst)
        pool.submit(self.host.retire, inst)
        pool.shutdown(wait=False)
        self._event()

    def _event(self) -> None:
        """Count and log the scale event just recorded."""
        e = self.scaler.events[-1]
        if e.action in self.scale_counts:
            self.scale_counts[e.action] += 1
        self.log(f"capsim serve: +{e.t - self.t0:.3f} s scale {e.action} instance {e.instance} ({e.detail}); "
                 f"serving {len(self.scaler.serving)}, provisioning {0 if self.scaler.pending is None else 1}")

    async def drain(self) -> None:
        """Graceful shutdown: refuse new requests, run what is queued and in flight, then stop."""
        self.draining = True
        if self.scale_task is not None:
            self.scale_task.cancel()
        if self.start_task is not None:
            await self.start_task  # a pending start finishes loading (and is closed with the others)
        self.batcher.delay = 0.0  # nothing new will join: send what is queued now
        self.wake.set()
        if self.loop_task is not None:
            await self.loop_task

    def close(self) -> None:
        self.pre_pool.shutdown(wait=False)
        for p in self.inst_pools.values():
            p.shutdown(wait=True)
        self.host.close()


def _bucket(edges, v) -> int:
    for i, e in enumerate(edges):
        if v <= e:
            return i
    return len(edges)


def _histogram(name: str, help_text: str, edges, counts, total, n) -> list[str]:
    out = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
    cum = 0
    for e, c in zip(edges, counts):
        cum += c
        out.append(f'{name}_bucket{{le="{e:g}"}} {cum}')
    out.append(f'{name}_bucket{{le="+Inf"}} {cum + counts[-1]}')
    out += [f"{name}_sum {total:g}", f"{name}_count {n}"]
    return out


async def serve(server: InferenceServer, host: str, port: int, ready=None) -> None:
    """Listen until SIGINT/SIGTERM, then shut down gracefully; ``ready(url)`` once listening."""
    server.loop_task = asyncio.ensure_future(server.run_batcher())
    if server.autoscale:
        server.start_autoscaler()
    runner = web.AppRunner(server.app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise CapsimError(f"--port {port}: cannot listen on {host}:{port} ({exc.strerror})") from None
    actual = runner.addresses[0][1] if runner.addresses else port
    url = f"http://{host}:{actual}"
    if ready:
        ready(url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.drain()  # in-flight and queued requests finish; new ones get 503 shutting_down
    await runner.cleanup()
    server.close()
