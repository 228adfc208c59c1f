"""The scenario model: one set of field definitions read by the YAML/TOML loader,
the ``--set`` overrides of the CLI and (later) the UI widgets.

Each field carries a :class:`Spec` (help text, unit, allowed range or choices).
:func:`parse_scenario` turns plain data into a validated :class:`Scenario`,
collecting every problem as one line ``field.path: problem; fix`` before raising
:class:`~capsim.errors.ScenarioError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from capsim.errors import ScenarioError

ARRIVAL_PROCESSES = ("poisson", "constant", "bursty", "streams", "trace", "closed")
THINK_DISTRIBUTIONS = ("exponential", "constant")
DISPATCH_POLICIES = ("lowest_index", "round_robin", "least_loaded")
PAYLOADS = ("jpeg", "tensor", "raw_frame", "custom")
# Default request sizes on the wire: a 640x480 JPEG at quality ~90, a 3x224x224 float32 tensor,
# an uncompressed 640x480 RGB frame.
PAYLOAD_KB = {"jpeg": 60.0, "tensor": 3 * 224 * 224 * 4 / 1024, "raw_frame": 640 * 480 * 3 / 1024}
DISTRIBUTIONS = ("none", "exponential", "lognormal", "gamma", "empirical")
BATCHING_MODES = ("triton", "timer")
ON_FULL = ("reject", "drop_oldest")


@dataclass(frozen=True)
class Spec:
    """What a field means and which values it accepts."""

    help: str
    unit: str = ""
    ge: float | None = None  # inclusive lower bound
    gt: float | None = None  # exclusive lower bound
    le: float | None = None  # inclusive upper bound
    lt: float | None = None  # exclusive upper bound
    choices: tuple[str, ...] | None = None
    ui_max: float | None = None  # a sensible slider end for the UI


def spec(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = None, **kw: Any) -> Any:
    """A dataclass field with a :class:`Spec` attached."""
    meta = {"spec": Spec(help=help, **kw)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------- sections


@dataclass
class StreamGroup:
    """A group of identical cameras; each camera is its own source with a random phase."""

    count: int = spec(1, "cameras in this group", ge=1, ui_max=64)
    fps: float = spec(25.0, "frames per second of each camera", unit="fps", gt=0, ui_max=120)
    jitter_ms: float = spec(0.0, "standard deviation of each frame's arrival jitter", unit="ms", ge=0, ui_max=20)
    priority: int = spec(0, "priority level of these cameras' frames (0 = highest; with a priority section)", ge=0)


@dataclass
class RateStep:
    """From ``at_s`` on, requests arrive at ``rate_rps`` (until the next step)."""

    at_s: float = spec(0.0, "start of this step, from the start of the period", unit="s", ge=0)
    rate_rps: float = spec(1.0, "arrival rate during this step", unit="rps", gt=0)


@dataclass
class RateSchedule:
    """A time-varying Poisson rate: steps over a period (a daily profile, a ramp, a burst)."""

    steps: list[RateStep] = spec(help="rate steps; the first starts at 0 s", factory=list)
    period_s: float = spec(3600.0, "length of the schedule; the last step lasts until its end", unit="s", gt=0)
    repeat: bool = spec(True, "start over after period_s (a daily profile); false: the last rate holds")

    def mean_rps(self) -> float:
        """Time-weighted mean rate over one period."""
        ends = [st.at_s for st in self.steps[1:]] + [self.period_s]
        return sum(st.rate_rps * (e - st.at_s) for st, e in zip(self.steps, ends)) / self.period_s


@dataclass
class Arrivals:
    """How requests arrive."""

    process: str = spec("poisson", "arrival process", choices=ARRIVAL_PROCESSES)
    rate_rps: float | None = spec(
        None, "mean arrival rate (poisson, constant; calm-state rate for bursty)", unit="rps", gt=0, ui_max=2000
    )
    burst_rate_rps: float | None = spec(None, "arrival rate during a burst (bursty)", unit="rps", gt=0)
    burst_factor: float | None = spec(None, "every camera's frame rate is multiplied by this during a burst "
                                      "(streams; a scene event that wakes all cameras at once)", ge=1, ui_max=8)
    mean_burst_s: float | None = spec(None, "mean length of a burst (bursty; streams with burst_factor)", unit="s",
                                      gt=0)
    mean_calm_s: float | None = spec(None, "mean time between bursts (bursty; streams with burst_factor)", unit="s",
                                     gt=0)
    streams: list[StreamGroup] = spec(help="camera groups (streams)", factory=list)
    path: str | None = spec(None, "CSV of arrival times in seconds, one per line or a column arrival_s (trace)")
    rate_schedule: RateSchedule | None = spec(None, "time-varying rate (poisson, instead of rate_rps)")
    concurrency: int | None = spec(None, "clients that each wait for their answer, think, then send again (closed)",
                                   ge=1, ui_max=256)
    think_ms: float | None = spec(None, "mean pause between an answer and the client's next request (closed)",
                                  unit="ms", ge=0, ui_max=1000)
    think_distribution: str = spec("exponential", "distribution of the think time (closed)",
                                   choices=THINK_DISTRIBUTIONS)

    def offered_rps(self) -> float | None:
        """Long-run mean arrival rate, where the process defines one."""
        if self.process == "poisson" and self.rate_schedule is not None:
            return self.rate_schedule.mean_rps()
        if self.process in ("poisson", "constant"):
            return self.rate_rps
        if self.process == "bursty":
            calm, burst = self.mean_calm_s, self.mean_burst_s
            return (self.rate_rps * calm + self.burst_rate_rps * burst) / (calm + burst)
        if self.process == "streams":
            fps = sum(g.count * g.fps for g in self.streams)
            if self.burst_factor is not None:
                calm, burst = self.mean_calm_s, self.mean_burst_s
                fps *= (calm + self.burst_factor * burst) / (calm + burst)
            return fps
        return None


@dataclass
class Variability:
    """Spread of a batch's service time around the curve value (its mean)."""

    distribution: str = spec("none", "service-time distribution around the mean; empirical resamples the "
                             "calibration profile's measured samples", choices=DISTRIBUTIONS)
    cv: float = spec(0.0, "coefficient of variation (std / mean); exponential is always 1", ge=0, ui_max=2)


@dataclass
class Stage:
    """A CPU stage (pre- or post-processing) with its own FIFO worker pool."""

    ms: float = spec(0.0, "time per request", unit="ms", ge=0, ui_max=100)
    workers: int = spec(0, "worker pool size; 0 = a pure delay with no queueing", ge=0, ui_max=32)
    cv: float = spec(0.0, "spread of each request's time: gamma with mean ms and this coefficient of variation "
                          "(0: every request takes ms); pre-processing only", ge=0, le=5, ui_max=2)


@dataclass
class Overlap:
    """Measured slowdowns while a batch and pre-processing run at the same moment on shared cores.

    With ``model_speed`` set, the simulator shares the cores moment to moment instead of on
    average: the batch curve and ``preprocess.ms`` are each one's time alone, and while a batch
    runs beside a busy pre-processing worker both slow down by these factors (what a co-run
    measures: runtimes whose threads meet at a barrier lose far more than a fair share)."""

    model_speed: dict[int, float] = spec(
        help="fraction of its own speed a batch runs at while pre-processing runs beside it, by batch size "
             "(interpolated in log batch size); empty = share the cores on average", factory=dict)
    preprocess_speed: float = spec(1.0, "fraction of its own speed a pre-processing worker runs at while a "
                                        "batch runs beside it", gt=0, le=1)
    preprocess_speed_by_batch: dict[int, float] = spec(
        help="the same by the size of the batch beside it (interpolated in log batch size): a runtime's threads "
             "take more of the cores from a decode beside some sizes than others; empty = preprocess_speed "
             "for every size", factory=dict)


@dataclass
class CpuSharing:
    """The model runs on CPU cores that the server's own per-request work (decode, HTTP) also uses.

    That work takes rate x host_ms of CPU per second. Fluid model (:mod:`capsim.host_cpu`): a
    batch gets only the cores left and runs ``max(1, model_cores / (cores - rate x host_ms))`` times
    slower than its curve value; with ``slowdown_per_core`` measured, ``1 + k(b) x rate x host_ms``."""

    cores: int = spec(0, "CPU cores the server's process runs on; 0 = the model has its own device (no sharing)",
                      ge=0, ui_max=64)
    model_cores: float = spec(0.0, "cores the model keeps busy while it runs (its runtime threads); 0 = all cores",
                              ge=0, ui_max=64)
    host_ms: float = spec(0.0, "CPU time per request outside the model on those cores (decode, HTTP, bookkeeping)",
                          unit="ms", ge=0, ui_max=100)
    slowdown_per_core: dict[int, float] = spec(
        help="measured instead of the fluid formula: a batch runs 1 + k x (cores of host work) times slower, "
             "k by batch size (interpolated in log batch size)", factory=dict)
    overlap: Overlap = spec(help="measured moment-to-moment slowdowns of a batch and pre-processing running together "
                                 "(simulated event by event; host_ms then spreads only its part beyond preprocess.ms)",
                            factory=Overlap)


@dataclass
class AfterIdle:
    """A model instance that sat idle starts its next batch slower, by a fixed time that builds up
    with the idle time: ``extra_ms x (1 - exp(-idle / tau_ms))``, ``idle`` being how long the
    instance waited since its last batch (or since the run started).

    On CPU hosts the runtime's threads go to sleep and its caches cool between batches, and a
    profile times batches back to back; at light load nearly every batch pays. Back-to-back
    batches pay nothing, so capacity is unchanged. The SimPy engine simulates it."""

    extra_ms: float = spec(0.0, "extra time of a batch after a long idle; 0 = off", unit="ms", ge=0, ui_max=100)
    tau_ms: float = spec(50.0, "idle time over which that extra time builds up (63 % of it after tau_ms)",
                         unit="ms", gt=0, ui_max=1000)


@dataclass
class SlowSpells:
    """Spells in which the whole machine runs slower: a batch or a pre-processing job that starts
    in one takes ``slowdown`` times as long.

    On a shared cloud VM the host takes the cores now and then (a 16-core VM measured here slowed
    to about x3 for 0.2-0.3 s every 1.6 s). A small share of the time, so a mean or a median
    hides it, but the requests that arrive in a spell queue behind several slow batches: a tail
    that independent per-batch spread does not make. The SimPy engine simulates it."""

    every_s: float = spec(0.0, "mean time from one spell's start to the next; 0 = off", unit="s", ge=0, ui_max=60)
    length_ms: float = spec(200.0, "how long a spell lasts", unit="ms", gt=0, ui_max=5000)
    slowdown: float = spec(2.0, "how many times longer a job takes when it starts in a spell", ge=1, ui_max=10)
    regular: bool = spec(False, "a spell exactly every every_s (at a random phase) instead of an exponential calm "
                                "between spells")


@dataclass
class SpeedSwings:
    """The whole machine's speed swinging from window to window: a batch or a pre-processing job
    that starts in a window takes that window's factor times as long. The factors are lognormal
    with mean 1 and spread ``cv``; their logs follow each other with lag-one ``correlation``.

    On the 2-core VM the model's speed, taken second by second from the server's own batch
    times, moved x0.7-x1.7 within a minute. Near capacity a few slow seconds leave a queue that
    takes many seconds to drain: a tail that independent per-batch spread does not make.
    ``capsim validate`` measures it in its batch-1 calibration runs. The SimPy engine simulates it."""

    cv: float = spec(0.0, "spread (coefficient of variation) of the windows' factors; 0 = off", ge=0, ui_max=1)
    window_s: float = spec(1.0, "how long the machine keeps one speed", unit="s", gt=0, ui_max=60)
    correlation: float = spec(0.0, "lag-one correlation of the log factors from window to window", ge=0, lt=1)


@dataclass
class Service:
    """Model service time per batch size, and the time spent outside the model."""

    batch_latency_ms: dict[int, float] = spec(
        help="mean compute time of one batch, by batch size (interpolated monotonically between sizes)",
        unit="ms",
        factory=dict,
    )
    profile: str | None = spec(None, "calibration profile JSON from capsim calibrate (instead of batch_latency_ms)")
    model: str | None = spec(None, "model the scenario is about; a profile of another model is refused")
    hardware: str | None = spec(None, "hardware the scenario is about (text found in the profile's CPU/GPU name); "
                                "a profile from other hardware is refused")
    allow_mismatch: bool = spec(False, "use the profile even if its model or hardware differ from the declared ones")
    variability: Variability = spec(help="service-time variability", factory=Variability)
    overhead_ms: float = spec(
        0.0, "fixed per-request time outside the model (network, pre/post) with no contention", unit="ms", ge=0,
        ui_max=200,
    )
    overhead_cv: float = spec(0.0, "spread of each request's overhead: gamma with mean overhead_ms and this "
                                   "coefficient of variation (0: every request takes overhead_ms)", ge=0, le=5, ui_max=2)
    batch_overhead_ms: float = spec(
        0.0, "time an instance is held per batch beyond the model's run: handing the batch to the instance's "
             "thread and the result back (a server's event loop); its requests wait it too", unit="ms", ge=0,
        ui_max=50)
    preprocess: Stage = spec(help="pre-processing stage before the batcher", factory=Stage)
    postprocess: Stage = spec(help="post-processing stage after the model", factory=Stage)
    contention: dict[int, float] = spec(
        help="slowdown factor of a batch by the number of instances busy on the device (1 is always 1.0)",
        factory=dict,
    )
    cpu_sharing: CpuSharing = spec(help="a CPU model slowed by the server's own work on the same cores",
                                   factory=CpuSharing)
    after_idle: AfterIdle = spec(help="a batch that follows an idle spell of its instance runs slower "
                                      "(threads asleep, caches cold)", factory=AfterIdle)
    slow_spells: SlowSpells = spec(help="spells in which the whole machine runs slower (a shared host)",
                                   factory=SlowSpells)
    speed_swings: SpeedSwings = spec(help="the whole machine's speed swinging from window to window (a shared "
                                          "host)", factory=SpeedSwings)
    # The loaded calibration profile, when `profile` is set; not a user field.
    loaded_profile: Any = field(default=None, repr=False, compare=False, metadata={"internal": True})

    def curve_ms(self) -> dict[int, float]:
        """Mean compute time by batch size: typed in, or the profile's medians."""
        if self.loaded_profile is not None:
            return self.loaded_profile.curve_ms()
        return self.batch_latency_ms


@dataclass
class Batching:
    """The dynamic batcher (semantics in :mod:`capsim.sim.batcher`)."""

    mode: str = spec("triton", "triton: form a batch when an instance is idle; timer: close batches on a timer",
                     choices=BATCHING_MODES)
    max_batch_size: int = spec(1, "largest batch the batcher forms", ge=1, ui_max=64)
    max_queue_delay_ms: float = spec(0.0, "longest the oldest request waits for a batch to fill", unit="ms", ge=0,
                                     ui_max=100)
    preferred_batch_sizes: list[int] = spec(help="dispatch at once when one of these sizes is queued (triton)",
                                            factory=list)


@dataclass
class Queue:
    """Queue caps, timeouts and drop policies."""

    max_size: int = spec(0, "queue cap in requests; 0 = unlimited", ge=0, ui_max=1000)
    timeout_ms: float = spec(0.0, "drop a request still queued this long after it entered; 0 = never", unit="ms",
                             ge=0, ui_max=1000)
    on_full: str = spec("reject", "reject the arrival, or drop_oldest (evict the oldest queued; the video policy)",
                        choices=ON_FULL)
    per_source_max_size: int = spec(0, "cap per source (camera); 0 = unlimited", ge=0, ui_max=16)
    stride: int = spec(1, "process every k-th frame of each source; the others are dropped", ge=1, ui_max=10)
    deadline_ms: float = spec(0.0, "a request older than this (since its arrival) when its batch is formed is "
                              "dropped as stale instead of computed; 0 = no deadline", unit="ms", ge=0, ui_max=1000)
    degrade: Degrade | None = spec(None, "graceful degradation: raise a camera's stride while its queue is long")
    preprocess_latest: bool = spec(False, "pre-processing (decode) keeps only each camera's latest waiting frame: "
                                   "an older frame still waiting for a worker is dropped as stale when a newer one "
                                   "of the same camera arrives (video pipelines)")


@dataclass
class Degrade:
    """Adaptive stride per source: when a frame arrives and its camera already has ``threshold``
    frames queued, that camera's stride rises by one (up to ``max_stride``); when a frame arrives
    to an empty camera queue, it falls by one (down to ``queue.stride``)."""

    threshold: int = spec(1, "queued frames of one camera that raise its stride", ge=1, ui_max=16)
    max_stride: int = spec(2, "largest stride (process every k-th frame)", ge=2, ui_max=10)


@dataclass
class PriorityLevel:
    """One priority lane: its share of the traffic and its own queue policy."""

    share: float | None = spec(None, "fraction of requests at this level (not with camera streams: set "
                               "arrivals.streams[].priority)", gt=0, le=1)
    max_size: int = spec(0, "cap of this lane in requests; 0 = unlimited", ge=0, ui_max=1000)
    timeout_ms: float = spec(0.0, "drop a request still queued this long after it entered; 0 = never", unit="ms",
                             ge=0, ui_max=1000)
    on_full: str = spec("reject", "reject the arrival, or drop_oldest of this lane", choices=ON_FULL)


@dataclass
class Priority:
    """Strict-priority lanes: a batch takes requests from the highest level first (FIFO within a
    level); the queue delay runs from the oldest request of any level."""

    levels: list[PriorityLevel] = spec(help="lanes, highest priority first", factory=list)


@dataclass
class Devices:
    """Several devices, each with its own instances; contention applies per device."""

    count: int = spec(1, "devices (GPUs)", ge=1, ui_max=16)
    instances_per_device: int = spec(1, "model instances on each device", ge=1, ui_max=8)


@dataclass
class Autoscale:
    """Scale instances with utilization; new instances serve only after a cold start."""

    min_instances: int = spec(1, "instances kept warm at all times (prewarm)", ge=1, ui_max=16)
    max_instances: int = spec(4, "most instances", ge=1, ui_max=64)
    scale_up_utilization: float = spec(0.8, "add an instance when the window's utilization is above this", gt=0,
                                       le=1)
    scale_down_utilization: float = spec(0.3, "remove an idle instance when the window's utilization is below "
                                         "this", ge=0, lt=1)
    window_s: float = spec(10.0, "utilization window; decisions are taken at the end of each", unit="s", gt=0)
    warmup_s: float = spec(30.0, "cold start: model load and first-batch compile before a new instance serves",
                           unit="s", ge=0, ui_max=600)


@dataclass
class Network:
    """The client-to-server link: requests cross it one after another (a shared FIFO link)."""

    bandwidth_mbps: float = spec(1000.0, "link bandwidth", unit="Mbit/s", gt=0, ui_max=100000)
    latency_ms: float = spec(0.0, "one-way propagation delay (no queueing)", unit="ms", ge=0, ui_max=200)
    payload: str = spec("jpeg", "what a request carries: jpeg (decoded by the preprocess stage), tensor (raw "
                        "float32, ready: the preprocess stage is skipped), raw_frame (uncompressed RGB, resized "
                        "and normalised by the preprocess stage) or custom", choices=PAYLOADS)
    payload_kb: float | None = spec(None, "request size; default by payload: jpeg 60, tensor 588, raw_frame 900",
                                    unit="KiB", gt=0)
    response_kb: float = spec(1.0, "response size (sent back on its own link direction)", unit="KiB", ge=0)

    def request_kb(self) -> float:
        return self.payload_kb if self.payload_kb is not None else PAYLOAD_KB.get(self.payload, 0.0)


@dataclass
class SLO:
    """The service-level objective a result is judged against."""

    percentile: float = spec(95.0, "latency percentile the SLO is about", gt=0, lt=100)
    latency_ms: float = spec(100.0, "largest acceptable latency at that percentile", unit="ms", gt=0, ui_max=2000)
    min_throughput_rps: float = spec(0.0, "smallest acceptable throughput; 0 = no throughput goal", unit="rps", ge=0)


@dataclass
class Run:
    """How long and how often to simulate."""

    requests: int = spec(100_000, "arrivals simulated per replication, warm-up included", ge=1, le=20_000_000)
    warmup_requests: int = spec(2_000, "first arrivals excluded from statistics", ge=0)
    replications: int = spec(5, "independent replications (confidence intervals); 1 uses batch means", ge=1,
                             le=1000)
    seed: int = spec(1, "root seed; every stream and replication gets its own spawned generator", ge=0)


@dataclass
class Scenario:
    """A complete what-if question: traffic, service, batcher, queue, SLO and run length."""

    name: str = spec("scenario", "scenario name")
    description: str = spec("", "what the scenario represents")
    arrivals: Arrivals = spec(help="arrival process", factory=Arrivals)
    service: Service = spec(help="service times", factory=Service)
    batching: Batching = spec(help="dynamic batching", factory=Batching)
    instances: int = spec(1, "model instances sharing the queue (on one device; with devices: in all)", ge=1,
                          ui_max=16)
    queue: Queue = spec(help="queue policy", factory=Queue)
    priority: Priority | None = spec(None, "priority lanes (optional)")
    devices: Devices | None = spec(None, "several devices (optional): instances = count x instances_per_device")
    dispatch: str = spec("lowest_index", "which idle instance gets a batch: lowest_index, round_robin, or "
                         "least_loaded (the device with the fewest busy instances)", choices=DISPATCH_POLICIES)
    autoscale: Autoscale | None = spec(None, "autoscaling (optional): instances is the starting count")
    network: Network | None = spec(None, "network stage before the server (optional)")
    slo: SLO | None = spec(None, "service-level objective (optional)")
    run: Run = spec(help="run length and seeds", factory=Run)
    # Directory that relative paths (trace files) are resolved against; not a user field.
    base_dir: str = field(default=".", compare=False, metadata={"internal": True})

    def to_dict(self) -> dict[str, Any]:
        """Plain data (YAML/JSON-ready) for this scenario, without internal fields."""
        return _to_plain(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)


# --------------------------------------------------------------------------- field walking


def _specs(cls: type) -> list[tuple[dataclasses.Field, Spec, Any]]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        out.append((f, f.metadata["spec"], hints[f.name]))
    return out


def iter_fields(cls: type = Scenario, prefix: str = ""):
    """Yield ``(path, Spec, type)`` for every leaf field: the one list the CLI, loader and UI share."""
    for f, s, tp in _specs(cls):
        path = f"{prefix}{f.name}"
        inner = _unwrap_optional(tp)
        if dataclasses.is_dataclass(inner):
            yield from iter_fields(inner, path + ".")
        elif typing.get_origin(inner) is list and dataclasses.is_dataclass(typing.get_args(inner)[0]):
            yield path, s, tp
            yield from iter_fields(typing.get_args(inner)[0], path + "[].")
        else:
            yield path, s, tp


def field_spec(path: str) -> Spec:
    """The :class:`Spec` of a dotted field path such as ``batching.max_batch_size``."""
    for p, s, _ in iter_fields():
        if p == path:
            return s
    raise KeyError(path)


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f, _, _ in _specs(type(obj))}
    if isinstance(obj, list):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    return obj


# --------------------------------------------------------------------------- coercion


def _fmt(v: Any) -> str:
    return repr(v) if isinstance(v, str) else str(v)


def _coerce(value: Any, tp: Any, path: str, problems: list[str]) -> Any:
    """Convert plain data to ``tp``; on failure append a problem and return ``None``."""
    optional = typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)
    tp = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        if typing.get_origin(tp) in (dict, list):
            return typing.get_origin(tp)()  # null empties a mapping or list (e.g. to use a profile)
        problems.append(f"{path}: must be set, got nothing")
        return None
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(f"{path}: must be a mapping of fields, got {_fmt(value)}")
            return None
        return _build(tp, value, path, problems)
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool) and item_tp in (int, float):
            value = [v for v in str(value).split(",") if v.strip()]  # "1,2,4" from --set
        if not isinstance(value, list):
            problems.append(f"{path}: must be a list, got {_fmt(value)}")
            return None
        return [_coerce(v, item_tp, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            problems.append(f"{path}: must be a mapping like {{1: 25, 2: 27}}, got {_fmt(value)}")
            return None
        out = {}
        for k, v in value.items():
            kk = _coerce(k, key_tp, f"{path}.{k}", problems)
            vv = _coerce(v, val_tp, f"{path}.{k}", problems)
            if kk is not None and vv is not None:
                out[kk] = vv
        return dict(sorted(out.items()))
    if tp is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{path}: must be true or false, got {_fmt(value)}")
        return None
    if tp is int:
        if isinstance(value, str):
            try:
                value = float(value.replace("_", ""))
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        problems.append(f"{path}: must be a whole number, got {_fmt(value)}")
        return None
    if tp is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        problems.append(f"{path}: must be a finite number, got {_fmt(value)}")
        return None
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        problems.append(f"{path}: must be text, got {_fmt(value)}")
        return None
    raise TypeError(f"unsupported field type {tp!r} at {path}")  # a bug in the model, not user input


def _check_spec(value: Any, s: Spec, path: str, problems: list[str]) -> None:
    if value is None:
        return
    if s.choices is not None and value not in s.choices:
        problems.append(f"{path}: must be one of {', '.join(s.choices)}, got {_fmt(value)}")
        return
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        unit = f" {s.unit}" if s.unit else ""
        if s.gt is not None and not value > s.gt:
            problems.append(f"{path}: must be > {_num(s.gt)}{unit}, got {_num(value)}")
        if s.ge is not None and not value >= s.ge:
            problems.append(f"{path}: must be >= {_num(s.ge)}{unit}, got {_num(value)}")
        if s.lt is not None and not value < s.lt:
            problems.append(f"{path}: must be < {_num(s.lt)}{unit}, got {_num(value)}")
        if s.le is not None and not value <= s.le:
            problems.append(f"{path}: must be <= {_num(s.le)}{unit}, got {_num(value)}")


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def _build(cls: type, data: dict, path: str, problems: list[str]) -> Any:
    specs = _specs(cls)
    names = {f.name for f, _, _ in specs}
    prefix = f"{path}." if path else ""
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            problems.append(f"{prefix}{key}: unknown field; {hint}valid fields here: {', '.join(sorted(names))}")
    kwargs = {}
    for f, s, tp in specs:
        fpath = f"{prefix}{f.name}"
        if f.name in data:
            v = _coerce(data[f.name], tp, fpath, problems)
            _check_spec(v, s, fpath, problems)
            if v is None and data[f.name] is not None:
                continue  # keep the default; the problem is already recorded
            kwargs[f.name] = v
    return cls(**kwargs)


# --------------------------------------------------------------------------- cross-field rules


def _use_profile(sc: Scenario, base_dir: str | Path, problems: list[str]) -> None:
    """Load ``service.profile`` and take from it what the scenario leaves open."""
    from capsim.profile import ProfileError, load_profile, mismatch

    s = sc.service
    if s.batch_latency_ms:
        problems.append("service.batch_latency_ms: give either batch_latency_ms or profile, not both")
        return
    path = Path(s.profile)
    if not path.is_absolute():
        from capsim.scenarios import project_dir

        # Relative to the scenario file; failing that, to the checkout that ships calibration/.
        path = Path(base_dir) / path
        shipped = project_dir() / s.profile
        if not path.exists() and shipped.exists():
            path = shipped
    try:
        prof = load_profile(path)
    except ProfileError as exc:
        problems.append(f"service.profile: {exc}")
        return
    why = mismatch(prof, s.model, s.hardware)
    if why and not s.allow_mismatch:
        problems.append(f"service.profile: {why}; re-calibrate on the declared hardware, or pass --allow-mismatch")
        return
    s.loaded_profile = prof
    # Stages and contention the scenario leaves at their defaults come from the measurement.
    for stage in ("preprocess", "postprocess"):
        ms = prof.stage_ms(stage)
        if ms is not None and getattr(s, stage).ms == 0:
            getattr(s, stage).ms = round(ms, 4)
    if not s.contention and prof.contention():
        s.contention = {k: v for k, v in prof.contention().items() if k > 1}


def _check_scenario(sc: Scenario, problems: list[str], base_dir: str | Path = ".") -> None:
    a = sc.arrivals
    needs = {
        "poisson": {"rate_schedule"} if a.rate_schedule is not None else {"rate_rps"},
        "constant": {"rate_rps"},
        "bursty": {"rate_rps", "burst_rate_rps", "mean_burst_s", "mean_calm_s"},
        "streams": {"streams"} | ({"burst_factor", "mean_burst_s", "mean_calm_s"} if a.burst_factor is not None else set()),
        "trace": {"path"},
        "closed": {"concurrency", "think_ms"},
    }[a.process]
    for name in ("rate_rps", "burst_rate_rps", "burst_factor", "mean_burst_s", "mean_calm_s", "streams", "path",
                 "rate_schedule", "concurrency", "think_ms"):
        given = getattr(a, name) not in (None, [])
        if name in needs and not given:
            problems.append(f"arrivals.{name}: required for process {a.process}; set it")
        elif name not in needs and given:
            problems.append(f"arrivals.{name}: not used by process {a.process}; remove it or change arrivals.process")
    for i, g in enumerate(a.streams):
        if g is None:
            problems.append(f"arrivals.streams[{i}]: must be a mapping like {{count: 6, fps: 25}}")
    if a.think_distribution != "exponential" and a.process != "closed":
        problems.append("arrivals.think_distribution: only used by process closed; remove it")
    rs = a.rate_schedule
    if rs is not None:
        if not rs.steps:
            problems.append("arrivals.rate_schedule.steps: give at least one step, e.g. [{at_s: 0, rate_rps: 50}]")
        elif rs.steps[0].at_s != 0:
            problems.append(f"arrivals.rate_schedule.steps[0].at_s: the first step starts at 0 s, got "
                            f"{_num(rs.steps[0].at_s)}")
        for i, (x, y) in enumerate(zip(rs.steps, rs.steps[1:])):
            if not y.at_s > x.at_s:
                problems.append(f"arrivals.rate_schedule.steps[{i + 1}].at_s: steps must start in increasing "
                                f"order, got {_num(y.at_s)} after {_num(x.at_s)}")
        if rs.steps and not rs.steps[-1].at_s < rs.period_s:
            problems.append(f"arrivals.rate_schedule.period_s: must be after the last step's start "
                            f"({_num(rs.steps[-1].at_s)} s), got {_num(rs.period_s)}")
    _check_policies(sc, problems)

    s = sc.service
    if s.profile is not None:
        _use_profile(sc, base_dir, problems)
    curve = s.curve_ms()
    if s.profile is None and not curve:
        problems.append("service.batch_latency_ms: required; give the compute time per batch size, e.g. {1: 25, 8: 48}, "
                        "or a calibration profile as service.profile")
    for b, ms in curve.items():
        if b < 1:
            problems.append(f"service.batch_latency_ms.{b}: batch sizes must be >= 1, got {b}")
        if not ms > 0:
            problems.append(f"service.batch_latency_ms.{b}: must be > 0 ms, got {_num(ms)}")
    where = "the calibration profile" if s.profile else "service.batch_latency_ms"
    if curve and 1 not in curve:
        problems.append(f"{'service.profile' if s.profile else 'service.batch_latency_ms'}: must include batch size 1 (a batch of one can always form); "
                        f"measured sizes are {', '.join(map(str, curve))}")
    if curve and sc.batching.max_batch_size > max(curve):
        problems.append(
            f"batching.max_batch_size: {sc.batching.max_batch_size} is above the largest measured batch size "
            f"{max(curve)} in {where}; lower it or {'calibrate' if s.profile else 'add'} that batch size"
        )
    v = s.variability
    if v.distribution == "empirical":
        if s.loaded_profile is None:
            if s.profile is None:
                problems.append("service.variability.distribution: empirical resamples a calibration profile's "
                                "samples; set service.profile or pick lognormal/gamma")
        elif not s.loaded_profile.samples_ms():
            problems.append(f"service.variability.distribution: the profile {s.profile} stores no samples "
                            "(imported averages); use none, lognormal or gamma")
        if v.cv:
            problems.append("service.variability.cv: not used with empirical (the samples give the spread); remove it")
    elif v.distribution == "none" and v.cv > 0:
        problems.append(f"service.variability.cv: {v.cv:g} has no effect with distribution none; "
                        "set distribution to lognormal or gamma, or cv to 0")
    if v.distribution in ("lognormal", "gamma") and v.cv == 0:
        problems.append(f"service.variability.cv: must be > 0 with distribution {v.distribution}; "
                        "set it or use distribution none")
    if v.distribution == "exponential" and v.cv not in (0.0, 1.0):
        problems.append(f"service.variability.cv: an exponential distribution has cv 1, got {v.cv:g}; "
                        "use gamma or lognormal for another cv")
    for k, factor in s.contention.items():
        if k < 1:
            problems.append(f"service.contention.{k}: instance counts must be >= 1")
        if not factor > 0:
            problems.append(f"service.contention.{k}: must be > 0, got {_num(factor)}")
    if s.contention and busy_per_device(sc) > max(s.contention):
        problems.append(f"service.contention: has no factor for {busy_per_device(sc)} busy instances on one "
                        f"device; add it or lower instances")
    if s.contention.get(1, 1.0) != 1.0:
        problems.append("service.contention.1: one busy instance is the reference and must be 1.0")
    problems += _cpu_sharing_problems(sc)
    problems += _stage_spread_problems(sc)
    problems += _slow_spells_problems(sc)
    problems += _speed_swings_problems(sc)

    b = sc.batching
    for i, p in enumerate(b.preferred_batch_sizes):
        if p is not None and not 1 <= p <= b.max_batch_size:
            problems.append(f"batching.preferred_batch_sizes[{i}]: must be between 1 and max_batch_size "
                            f"{b.max_batch_size}, got {p}")
    if b.preferred_batch_sizes and b.mode != "triton":
        problems.append("batching.preferred_batch_sizes: only used in triton mode; remove it or set mode: triton")

    r = sc.run
    if r.warmup_requests >= r.requests:
        problems.append(f"run.warmup_requests: must be below run.requests ({r.requests}), got {r.warmup_requests}")
    elif r.replications == 1 and r.requests - r.warmup_requests < 100:
        problems.append("run.requests: need at least 100 requests after warm-up for batch-means intervals")


def _check_policies(sc: Scenario, problems: list[str]) -> None:
    """Rules across the production-policy sections (priority, degrade, devices, autoscale, network)."""
    a, q = sc.arrivals, sc.queue
    sourced = a.process in ("streams", "trace")
    if q.preprocess_latest:
        pre = sc.service.preprocess
        if not (pre.workers >= 1 and pre.ms > 0):
            problems.append("queue.preprocess_latest: needs a pre-processing pool (service.preprocess.ms > 0 and "
                            "workers >= 1) whose waiting line it trims; set them or remove it")
        elif sc.network is not None and sc.network.payload == "tensor":
            problems.append("queue.preprocess_latest: raw tensors skip pre-processing (network.payload tensor); "
                            "remove it or send jpeg")
    if q.degrade is not None:
        if not sourced:
            problems.append("queue.degrade: needs sources (arrivals.process streams or trace); remove it")
        elif q.degrade.max_stride <= q.stride:
            problems.append(f"queue.degrade.max_stride: must be above queue.stride ({q.stride}), got "
                            f"{q.degrade.max_stride}")
    p = sc.priority
    if p is not None:
        if not p.levels:
            problems.append("priority.levels: give at least one level, e.g. [{share: 0.2}, {share: 0.8}]")
        if sc.batching.mode != "triton":
            problems.append("priority: lanes are modelled with batching.mode triton only; set mode: triton")
        for name in ("max_size", "timeout_ms"):
            if getattr(q, name):
                problems.append(f"queue.{name}: with priority lanes each level has its own; move it to "
                                f"priority.levels[].{name}")
        if q.on_full != "reject":
            problems.append("queue.on_full: with priority lanes each level has its own; move it to "
                            "priority.levels[].on_full")
        shares = [lv.share for lv in p.levels]
        if a.process == "streams":
            if any(v is not None for v in shares):
                problems.append("priority.levels[].share: camera streams take their level from "
                                "arrivals.streams[].priority; remove share")
            for i, g in enumerate(a.streams):
                if g is not None and g.priority >= len(p.levels):
                    problems.append(f"arrivals.streams[{i}].priority: must name a level 0..{len(p.levels) - 1}, "
                                    f"got {g.priority}")
        elif p.levels:
            if any(v is None for v in shares):
                problems.append("priority.levels[].share: give every level its share of the requests "
                                "(they sum to 1)")
            elif abs(sum(shares) - 1.0) > 1e-6:
                problems.append(f"priority.levels[].share: the shares must sum to 1, got {sum(shares):g}")
    elif a.process == "streams" and any(g is not None and g.priority for g in a.streams):
        problems.append("arrivals.streams[].priority: needs a priority section with the levels; add one or "
                        "remove priority")
    d = sc.devices
    if d is not None:
        total = d.count * d.instances_per_device
        if sc.instances not in (1, total) and sc.autoscale is None:
            problems.append(f"instances: {sc.instances} differs from devices.count x instances_per_device = "
                            f"{total}; remove instances or make them agree")
        if sc.autoscale is None:
            sc.instances = total
    elif sc.dispatch == "least_loaded":
        problems.append("dispatch: least_loaded balances devices; it needs a devices section (or use round_robin)")
    s = sc.autoscale
    if s is not None:
        if s.min_instances > s.max_instances:
            problems.append(f"autoscale.min_instances: must be <= max_instances ({s.max_instances}), got "
                            f"{s.min_instances}")
        elif not s.min_instances <= sc.instances <= s.max_instances:
            problems.append(f"instances: the starting count must be between autoscale.min_instances "
                            f"({s.min_instances}) and max_instances ({s.max_instances}), got {sc.instances}")
        if s.scale_down_utilization >= s.scale_up_utilization:
            problems.append(f"autoscale.scale_down_utilization: must be below scale_up_utilization "
                            f"({_num(s.scale_up_utilization)}), got {_num(s.scale_down_utilization)}")
        if d is not None and s.max_instances > d.count * d.instances_per_device:
            problems.append(f"autoscale.max_instances: {s.max_instances} is more than the devices hold "
                            f"({d.count} x {d.instances_per_device}); lower it or add devices")


def _stage_spread_problems(sc) -> list[str]:
    """Where a stage's per-request spread (``cv``) is modelled: pre-processing (any pool; the queue
    behind it takes requests in the order they finish), and the overhead outside the model."""
    out = []
    pre, post = sc.service.preprocess, sc.service.postprocess
    if post.cv > 0:
        out.append("service.postprocess.cv: not modelled yet; remove it (post-processing takes ms per request)")
    if sc.service.overhead_cv > 0:
        if sc.service.overhead_ms <= 0:
            out.append("service.overhead_cv: spreads overhead_ms, which is 0; set overhead_ms or remove overhead_cv")
        if sc.arrivals.process == "closed":
            out.append("service.overhead_cv: not modelled with closed-loop clients (arrivals.process closed); "
                       "remove it")
    if pre.cv > 0:
        if pre.ms <= 0:
            out.append(f"service.preprocess.cv: spreads service.preprocess.ms, which is {_num(pre.ms)}; "
                       "set ms or remove cv")
        out += _refused_beside_own_times(sc, "service.preprocess.cv")
    return out


def _refused_beside_own_times(sc, field_name: str) -> list[str]:
    """``field_name`` draws or scales each request's own stage times, which the latest-frame decode
    line, the network stage and closed loops do not carry: one line for each of them in use."""
    return [f"{field_name}: not modelled with {name}; remove one of the two"
            for name, used in (("queue.preprocess_latest", sc.queue.preprocess_latest),
                               ("network", sc.network is not None),
                               ("closed-loop clients (arrivals.process closed)", sc.arrivals.process == "closed"))
            if used]


def _slow_spells_problems(sc) -> list[str]:
    sp = sc.service.slow_spells
    if not sp.every_s:
        return []
    out = []
    if sp.length_ms / 1000.0 >= sp.every_s:
        out.append(f"service.slow_spells.length_ms: a spell of {_num(sp.length_ms)} ms must be shorter than the "
                   f"time between spells (every_s {_num(sp.every_s)}); shorten it or space them out")
    out += _refused_beside_own_times(sc, "service.slow_spells")
    return out


def _speed_swings_problems(sc) -> list[str]:
    if not sc.service.speed_swings.cv:
        return []
    out = []
    if sc.service.slow_spells.every_s:
        out.append("service.speed_swings: not modelled with service.slow_spells; remove one of the two")
    out += _refused_beside_own_times(sc, "service.speed_swings")
    return out


def _cpu_sharing_problems(sc) -> list[str]:
    cs = sc.service.cpu_sharing
    if not cs.cores:
        if cs.model_cores or cs.host_ms or cs.slowdown_per_core or cs.overlap.model_speed:
            return ["service.cpu_sharing.cores: set the cores the server runs on (model_cores and host_ms "
                    "need it), or remove the section"]
        return []
    out = []
    if cs.model_cores > cs.cores:
        out.append(f"service.cpu_sharing.model_cores: {cs.model_cores:g} is more than the {cs.cores} cores; "
                   "lower it to the model's runtime threads")
    for b, k in cs.slowdown_per_core.items():
        if b < 1:
            out.append(f"service.cpu_sharing.slowdown_per_core.{b}: batch sizes must be >= 1")
        if not k >= 0:
            out.append(f"service.cpu_sharing.slowdown_per_core.{b}: must be >= 0 (slower per core of host work), "
                       f"got {_num(k)}")
    if cs.slowdown_per_core and cs.model_cores:
        out.append("service.cpu_sharing.model_cores: not used with slowdown_per_core (the measured factors "
                   "replace the fluid formula); remove one of the two")
    out += _overlap_problems(sc)
    if sc.arrivals.offered_rps() is None:
        out.append(f"service.cpu_sharing: needs a mean arrival rate, which arrivals.process "
                   f"{sc.arrivals.process} does not define; use poisson, constant, bursty or streams")
    if sc.devices is not None:
        out.append("service.cpu_sharing: models one CPU host; remove the devices section")
    if sc.autoscale is not None:
        out.append("service.cpu_sharing: not modelled with autoscaling; remove one of the two")
    return out


def _overlap_problems(sc) -> list[str]:
    ov = sc.service.cpu_sharing.overlap
    if not ov.model_speed:
        for name, used in (("preprocess_speed", ov.preprocess_speed != 1.0),
                           ("preprocess_speed_by_batch", bool(ov.preprocess_speed_by_batch))):
            if used:
                return [f"service.cpu_sharing.overlap.{name}: needs model_speed (the batch's side of the "
                        "co-run); set it or remove the overlap section"]
        return []
    out = []
    for field_name, table, whose in (("model_speed", ov.model_speed, "batch's"),
                                     ("preprocess_speed_by_batch", ov.preprocess_speed_by_batch, "worker's")):
        for b, v in table.items():
            if b < 1:
                out.append(f"service.cpu_sharing.overlap.{field_name}.{b}: batch sizes must be >= 1")
            if not 0 < v <= 1:
                out.append(f"service.cpu_sharing.overlap.{field_name}.{b}: must be in (0, 1] (a fraction of the "
                           f"{whose} own speed), got {_num(v)}")
    pre = sc.service.preprocess
    if not (pre.ms > 0 and pre.workers > 0):
        out.append("service.cpu_sharing.overlap: needs a pre-processing pool to overlap with; set "
                   "service.preprocess.ms and workers, or remove the overlap section")
    if sc.service.cpu_sharing.slowdown_per_core:
        out.append("service.cpu_sharing.overlap: not modelled with slowdown_per_core; remove one of the two")
    # The moment-to-moment engine runs the plain server: one FIFO pre-processing pool, the triton batcher.
    unsupported = [("batching.mode timer", sc.batching.mode == "timer"),
                   ("queue.preprocess_latest", sc.queue.preprocess_latest),
                   ("network", sc.network is not None),
                   ("priority", sc.priority is not None),
                   ("queue.deadline_ms", sc.queue.deadline_ms > 0),
                   ("queue.degrade", sc.queue.degrade is not None)]
    for name, used in unsupported:
        if used:
            out.append(f"service.cpu_sharing.overlap: not modelled with {name}; remove one of the two")
    return out


def busy_per_device(sc: Scenario) -> int:
    """Most instances that can be busy on one device (what the contention table must cover)."""
    if sc.devices is not None:
        return sc.devices.instances_per_device
    return sc.autoscale.max_instances if sc.autoscale is not None else sc.instances


def max_instances(sc: Scenario) -> int:
    """Most instances the scenario can ever run at once."""
    return sc.autoscale.max_instances if sc.autoscale is not None else sc.instances


# --------------------------------------------------------------------------- loading


def parse_scenario(data: Any, base_dir: str | Path = ".") -> Scenario:
    """Validate plain data (from YAML, TOML or JSON) into a :class:`Scenario`."""
    if not isinstance(data, dict):
        raise ScenarioError([f"scenario: must be a mapping of sections (arrivals, service, ...), got {_fmt(data)}"])
    problems: list[str] = []
    sc = _build(Scenario, data, "", problems)
    if not problems:
        _check_scenario(sc, problems, base_dir)
    if problems:
        raise ScenarioError(problems)
    sc.base_dir = str(base_dir)
    return sc


def read_scenario_data(path: Path) -> dict:
    """Plain data from a YAML or TOML scenario file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError([f"scenario: cannot read {path}: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ScenarioError([f"scenario: {path} is not UTF-8 text; save it as UTF-8 YAML or TOML"]) from None
    kind = "TOML" if path.suffix.lower() == ".toml" else "YAML"
    try:
        if kind == "TOML":
            return tomllib.loads(text)
        return yaml.safe_load(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError([f"scenario: {path} is not valid TOML: {exc}"]) from None
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ScenarioError([f"scenario: {path} is not valid YAML{where}: {problem}"]) from None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``PATH=VALUE`` overrides (VALUE parsed as YAML) to plain scenario data."""
    for item in overrides:
        if "=" not in item:
            raise ScenarioError([f"--set {item}: must look like PATH=VALUE, e.g. batching.max_batch_size=4"])
        path, raw = item.split("=", 1)
        keys = [k for k in path.strip().split(".") if k]
        if not keys:
            raise ScenarioError([f"--set {item}: the field path is empty"])
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = data
        for depth, k in enumerate(keys):
            if isinstance(node, list):
                if not (k.isdigit() and int(k) < len(node)):
                    raise ScenarioError([f"--set {item}: {'.'.join(keys[:depth])} has {len(node)} entries; "
                                         f"index it with 0..{len(node) - 1}"])
                k = int(k)
            elif k.isdigit() and k not in node and int(k) in node:
                k = int(k)  # service.batch_latency_ms.16=60 against YAML int keys
            if depth == len(keys) - 1:
                node[k] = value
                break
            child = node[k] if isinstance(node, list) else node.get(k)
            if not isinstance(child, (dict, list)):
                child = {}
                node[k] = child
            node = child
    return data


def scenario_data(source: str | Path, overrides: list[str] | None = None) -> tuple[dict, Path]:
    """The plain data of a scenario file or built-in (overrides applied, not yet validated) and the
    folder its relative paths are read from."""
    from capsim import scenarios  # built-ins live in their own package

    src = str(source)
    path = Path(src)
    if path.suffix.lower() in (".yaml", ".yml", ".toml", ".json") or path.exists():
        if not path.exists():
            raise ScenarioError([f"scenario: file {src} not found; give a scenario file or a built-in name "
                                 f"({', '.join(scenarios.names())})"])
        data = read_scenario_data(path)
        base = path.parent
    elif src in scenarios.names():
        data = scenarios.data(src)
        base = Path(".")
    else:
        raise ScenarioError([f"scenario: {src!r} is neither a file nor a built-in scenario; "
                             f"built-ins: {', '.join(scenarios.names())}"])
    if data is None:
        raise ScenarioError([f"scenario: {src} is empty; start from one of the built-ins, e.g. "
                             "capsim scenarios show mini-challenge > my.yaml"])
    if not isinstance(data, dict):
        raise ScenarioError([f"scenario: must be a mapping of sections (arrivals, service, ...), got a "
                             f"{type(data).__name__}"])
    if overrides:
        data = apply_overrides(data, overrides)
    return data, base


def load_scenario(source: str | Path, overrides: list[str] | None = None) -> Scenario:
    """Load a scenario from a YAML/TOML file or a built-in name, apply overrides, validate."""
    data, base = scenario_data(source, overrides)
    return parse_scenario(data, base_dir=base)
