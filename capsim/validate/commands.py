"""The argparse side of ``capsim serve`` / ``load`` / ``validate``: options only, so that
``capsim --help`` does not import aiohttp or a model runtime."""

from __future__ import annotations

import sys

from capsim.errors import CapsimError


def add_serve_parser(sub) -> None:
    s = sub.add_parser("serve", help="a real micro-batched inference server (HTTP) with capsim's batching rules")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="built-in model (capsim models list), or noop (no work: measures overhead)")
    src.add_argument("--model-file", help="your own model.onnx or TorchScript .pt")
    s.add_argument("--backend", choices=("onnxruntime", "torch"), default="onnxruntime")
    s.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    s.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32")
    s.add_argument("--max-batch-size", type=int, default=8)
    s.add_argument("--max-queue-delay-ms", type=float, default=5.0)
    s.add_argument("--preferred-batch-sizes", default="", help="e.g. 4,8")
    s.add_argument("--instances", type=int, default=1)
    s.add_argument("--queue-max-size", type=int, default=0, help="0: unbounded")
    s.add_argument("--per-source-max-size", type=int, default=0, help="cap per X-Source (camera); 0: none")
    s.add_argument("--on-full", choices=("reject", "drop_oldest"), help="when a cap is reached (default reject)")
    s.add_argument("--queue-timeout-ms", type=float, help="0: none (default)")
    s.add_argument("--priority-levels", type=int, default=1, metavar="N",
                   help="priority lanes (X-Priority 0 = highest); each has its own --level-* queue policy")
    s.add_argument("--level-max-size", metavar="LIST", help="cap per level, e.g. 0,64 (one value: every level; 0: none)")
    s.add_argument("--level-timeout-ms", metavar="LIST", help="queue timeout per level, e.g. 0,200 (0: none)")
    s.add_argument("--level-on-full", metavar="LIST", help="reject or drop_oldest per level, e.g. reject,drop_oldest")
    s.add_argument("--default-priority", type=int, metavar="L", help="level of a request without X-Priority "
                   "(default: the lowest, N-1)")
    s.add_argument("--deadline-ms", type=float, default=0.0, help="drop a request as stale when its batch is formed "
                   "more than this after it arrived (X-Deadline-Ms overrides); 0: none")
    s.add_argument("--stride", type=int, default=1, help="process every k-th frame of each X-Source (default 1)")
    s.add_argument("--degrade-threshold", type=int, default=0, metavar="T", help="raise a camera's stride when a "
                   "frame arrives with T of its frames queued; lower it when its queue is empty (0: off)")
    s.add_argument("--degrade-max-stride", type=int, default=0, metavar="M", help="largest stride with --degrade-threshold")
    s.add_argument("--preprocess-workers", type=int, default=1, help="threads decoding JPEGs (default 1)")
    s.add_argument("--decode-latest", action="store_true", help="frames waiting for a decode thread keep only each "
                   "X-Source's latest: an older waiting frame of the camera is dropped as stale (default: FIFO)")
    s.add_argument("--threads", type=int, help="runtime threads per instance (default: cores / instances)")
    s.add_argument("--input-shape", help="CxHxW for --model-file or noop (default 3x224x224)")
    s.add_argument("--autoscale-max", type=int, metavar="N", help="autoscale between --autoscale-min and N instances "
                   "by utilization (--instances is the starting count); off unless given")
    s.add_argument("--autoscale-min", type=int, metavar="M", help="instances always kept (default: --instances)")
    s.add_argument("--scale-up-utilization", type=float, metavar="U",
                   help="start an instance when a window's utilization is above U (default 0.8)")
    s.add_argument("--scale-down-utilization", type=float, metavar="U",
                   help="retire an instance when a window's utilization is below U (default 0.3)")
    s.add_argument("--scale-window-s", type=float, metavar="S",
                   help="utilization window; a scale decision at the end of each (default 10)")
    s.add_argument("--noop-ms", type=float, default=0.0, metavar="MS",
                   help="test aid: the noop model sleeps MS per batch (sets an instance's utilization)")
    s.add_argument("--noop-load-ms", type=float, default=0.0, metavar="MS",
                   help="test aid: a noop instance takes MS to load (a stand-in for a model's cold start)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000, help="0: any free port (printed)")


def cmd_serve(args) -> int:
    from capsim.validate import require_serve

    require_serve()
    import asyncio

    from capsim.validate.server import InferenceServer, load_model, serve

    for name in ("max_batch_size", "instances"):
        if getattr(args, name) < 1:
            raise CapsimError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(args, name)}")
    for name in ("max_queue_delay_ms", "queue_timeout_ms", "deadline_ms"):
        if (getattr(args, name) or 0) < 0:
            raise CapsimError(f"--{name.replace('_', '-')}: must be >= 0, got {getattr(args, name):g}")
    for name in ("queue_max_size", "per_source_max_size"):
        if getattr(args, name) < 0:
            raise CapsimError(f"--{name.replace('_', '-')}: must be >= 0 (0: no cap), got {getattr(args, name)}")
    if args.preprocess_workers < 1:
        raise CapsimError(f"--preprocess-workers: must be >= 1, got {args.preprocess_workers}")
    levels, default_priority = serve_levels(args)
    serve_stride(args)
    autoscale = serve_autoscale(args)
    for name in ("noop_ms", "noop_load_ms"):
        v = getattr(args, name)
        if not 0 <= v < float("inf"):
            raise CapsimError(f"--{name.replace('_', '-')}: must be ms >= 0, got {v:g}")
        if v and args.model != "noop":
            raise CapsimError(f"--{name.replace('_', '-')}: only applies to --model noop; remove it")
    if not 0 <= args.port < 65536:
        raise CapsimError(f"--port: must be 0..65535, got {args.port}")
    try:
        preferred = [int(v) for v in args.preferred_batch_sizes.split(",") if v.strip()]
    except ValueError:
        raise CapsimError(f"--preferred-batch-sizes: {args.preferred_batch_sizes!r} is not a list of integers") from None
    shape = None
    if args.input_shape:
        try:
            shape = tuple(int(v) for v in args.input_shape.lower().split("x"))
            assert len(shape) == 3 and min(shape) > 0
        except (ValueError, AssertionError):
            raise CapsimError(f"--input-shape: {args.input_shape!r} is not CxHxW, e.g. 3x224x224") from None
    print(f"capsim serve: loading {args.model or args.model_file} ({args.backend}, {args.device}, {args.precision}) "
          f"x {args.instances} instance(s)", file=sys.stderr, flush=True)
    host = load_model(args.model, args.model_file, args.backend, args.device, args.precision, args.instances,
                      args.threads, shape, noop_ms=args.noop_ms, noop_load_ms=args.noop_load_ms)

    async def main() -> None:
        server = InferenceServer(host, args.max_batch_size, args.max_queue_delay_ms, args.instances, preferred,
                                 args.queue_max_size, args.per_source_max_size, args.on_full or "reject",
                                 args.queue_timeout_ms or 0.0, args.preprocess_workers, levels, default_priority,
                                 args.deadline_ms, args.stride, args.degrade_threshold, args.degrade_max_stride,
                                 autoscale, log=lambda line: print(line, file=sys.stderr, flush=True),
                                 decode_latest=args.decode_latest)
        await serve(server, args.host, args.port,
                    ready=lambda url: print(f"capsim serve: listening on {url} (max batch {args.max_batch_size}, "
                                            f"delay {args.max_queue_delay_ms:g} ms, {args.instances} instance(s)"
                                            + (f", autoscaling {autoscale['min_instances']}..{autoscale['max_instances']}"
                                               if autoscale else "") + ")",
                                            flush=True))
        c = server.counts
        print(f"capsim serve: stopped; received {server.received}, " + ", ".join(f"{k} {v}" for k, v in c.items()),
              file=sys.stderr, flush=True)

    asyncio.run(main())
    return 0


def _per_level(option: str, text: str | None, n: int, parse, default):
    """``--level-X`` as one value per level (a single value applies to every level)."""
    if text is None:
        return [default] * n
    items = [v.strip() for v in text.split(",")]
    if len(items) not in (1, n):
        raise CapsimError(f"{option}: give one value per level ({n}) or one for all, got {len(items)} in {text!r}")
    try:
        vals = [parse(v) for v in items]
    except ValueError as exc:
        raise CapsimError(f"{option}: {exc} in {text!r}") from None
    return vals * n if len(vals) == 1 else vals


def serve_levels(args):
    """The priority lanes the serve options describe: (None or [(max_size, on_full, timeout_ms)], default level)."""
    n = args.priority_levels
    if n < 1:
        raise CapsimError(f"--priority-levels: must be >= 1, got {n}")
    lane_opts = {"--level-max-size": args.level_max_size, "--level-timeout-ms": args.level_timeout_ms,
                 "--level-on-full": args.level_on_full}
    if n == 1 and all(v is None for v in lane_opts.values()):
        if args.default_priority not in (None, 0):
            raise CapsimError(f"--default-priority: must be 0 with one priority level, got {args.default_priority}")
        return None, None
    for opt, value, use in (("--queue-max-size", args.queue_max_size or None, "--level-max-size"),
                            ("--queue-timeout-ms", args.queue_timeout_ms or None, "--level-timeout-ms"),
                            ("--on-full", args.on_full, "--level-on-full")):
        if value is not None:
            raise CapsimError(f"{opt}: with priority levels each level has its own; use {use} instead")

    def size(v):
        if not v.isdigit():
            raise ValueError(f"sizes must be integers >= 0 (0: no cap), got {v!r}")
        return int(v)

    def ms(v):
        try:
            x = float(v)
        except ValueError:
            x = -1.0
        if not 0 <= x < float("inf"):
            raise ValueError(f"timeouts must be ms >= 0 (0: none), got {v!r}")
        return x

    def on_full(v):
        if v not in ("reject", "drop_oldest"):
            raise ValueError(f"each value must be reject or drop_oldest, got {v!r}")
        return v

    sizes = _per_level("--level-max-size", args.level_max_size, n, size, 0)
    timeouts = _per_level("--level-timeout-ms", args.level_timeout_ms, n, ms, 0.0)
    fulls = _per_level("--level-on-full", args.level_on_full, n, on_full, "reject")
    default = n - 1 if args.default_priority is None else args.default_priority
    if not 0 <= default < n:
        raise CapsimError(f"--default-priority: must be a level 0..{n - 1}, got {default}")
    return list(zip(sizes, fulls, timeouts)), default


def serve_autoscale(args) -> dict | None:
    """The autoscaling options as a dict for the server (None: off), checked."""
    opts = {"--autoscale-min": args.autoscale_min, "--scale-up-utilization": args.scale_up_utilization,
            "--scale-down-utilization": args.scale_down_utilization, "--scale-window-s": args.scale_window_s}
    if args.autoscale_max is None:
        for opt, value in opts.items():
            if value is not None:
                raise CapsimError(f"{opt}: only applies with --autoscale-max N; add it or remove this")
        return None
    n, hi = args.instances, args.autoscale_max
    lo = n if args.autoscale_min is None else args.autoscale_min
    if lo < 1:
        raise CapsimError(f"--autoscale-min: must be >= 1, got {lo}")
    if hi < lo:
        raise CapsimError(f"--autoscale-max: must be >= --autoscale-min ({lo}), got {hi}")
    if not lo <= n <= hi:
        raise CapsimError(f"--instances: the starting count must be between --autoscale-min ({lo}) and "
                          f"--autoscale-max ({hi}), got {n}")
    up, down, w = (v if v is not None else d for v, d in ((args.scale_up_utilization, 0.8),
                                                         (args.scale_down_utilization, 0.3), (args.scale_window_s, 10.0)))
    if not 0 < up <= 1:
        raise CapsimError(f"--scale-up-utilization: must be in (0, 1], got {up:g}")
    if not 0 <= down < 1:
        raise CapsimError(f"--scale-down-utilization: must be in [0, 1), got {down:g}")
    if down >= up:
        raise CapsimError(f"--scale-down-utilization: must be below --scale-up-utilization ({up:g}), got {down:g}")
    if not 0 < w < float("inf"):
        raise CapsimError(f"--scale-window-s: must be > 0, got {w:g}")
    return {"min_instances": lo, "max_instances": hi, "scale_up_utilization": up, "scale_down_utilization": down,
            "window_s": w}


def serve_stride(args) -> None:
    """Check --stride and the degradation options."""
    if args.stride < 1:
        raise CapsimError(f"--stride: must be >= 1 (1: every frame), got {args.stride}")
    t, m = args.degrade_threshold, args.degrade_max_stride
    if t < 0:
        raise CapsimError(f"--degrade-threshold: must be >= 0 (0: off), got {t}")
    if m < 0:
        raise CapsimError(f"--degrade-max-stride: must be >= 0, got {m}")
    if t and m <= args.stride:
        raise CapsimError(f"--degrade-max-stride: must be above --stride ({args.stride}) with --degrade-threshold, "
                          f"got {m}")
    if m and not t:
        raise CapsimError("--degrade-max-stride: only applies with --degrade-threshold T; add it or remove this")


def add_validate_parser(sub) -> None:
    v = sub.add_parser("validate", help="run the real server under load and compare with capsim's prediction")
    v.add_argument("--model", required=True, help="built-in model (capsim models list) or a model file")
    v.add_argument("--backend", choices=("onnxruntime", "torch"), default="onnxruntime")
    v.add_argument("--profile", required=True, help="the model's calibration profile (calibration/X.json)")
    v.add_argument("--configs", default="B=1,D=0;B=4,D=5;B=8,D=10",
                   help='batching configs, e.g. "B=1,D=0;B=4,D=5;B=8,D=10"')
    v.add_argument("--loads", default="0.3,0.5,0.7,0.85", help="fractions of the predicted capacity")
    v.add_argument("--duration", type=float, default=20.0, help="seconds of load per config and load (default 20)")
    v.add_argument("--instances", type=int, default=1)
    v.add_argument("--payload", choices=("jpeg", "tensor"), default="jpeg")
    v.add_argument("--preprocess-workers", type=int, default=1)
    v.add_argument("--seed", type=int, default=1)
    v.add_argument("--streams", metavar="NxFPS", help="validate the camera pipeline instead: e.g. 6x25fps (per-camera "
                   "caps in the server, drop rate and tail latency compared; --loads is not used)")
    v.add_argument("--per-source-max-size", type=int, default=1, help="with --streams: queued frames per camera")
    v.add_argument("--on-full", choices=("reject", "drop_oldest"), default="drop_oldest", help="with --streams")
    v.add_argument("--decode-latest", action="store_true", help="with --streams: the server's decode line keeps "
                   "only each camera's latest frame (capsim serve --decode-latest; queue.preprocess_latest)")
    v.add_argument("--jitter-ms", type=float, default=2.0, help="with --streams: frame arrival jitter")
    v.add_argument("--burst", type=float, metavar="X", help="with --streams: cameras run X times faster during bursts; "
                   "tail latency and drops inside the bursts are compared too")
    v.add_argument("--burst-s", type=float, default=2.0, metavar="S", help="with --burst: mean burst length (default 2)")
    v.add_argument("--calm-s", type=float, default=6.0, metavar="S",
                   help="with --burst: mean time between bursts (default 6)")
    v.add_argument("--threads", type=int, help="runtime threads per instance in the server (default: the threads "
                   "the profile was calibrated with, so the model runs as it was measured)")
    v.add_argument("--no-host-calibration", action="store_true",
                   help="predict from the profile as measured alone, without the light-load run inside the server")
    v.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="measure each cell N times (going round the loads) and compare the median; the runs' "
                        "spread is reported as the measurement's own noise (default 1)")
    v.add_argument("--no-cpu-sharing", action="store_true",
                   help="predict as if the model had its cores to itself (no service.cpu_sharing from the "
                        "measured CPU per request)")
    v.add_argument("--no-overlap", action="store_true",
                   help="share the cores on average instead of moment to moment (no co-run of the model "
                        "beside the decode)")
    v.add_argument("--steady-state", action="store_true",
                   help="compare with the long-run percentiles instead of what a run of --duration seconds from "
                        "an idle server measures (the same arrival schedule, simulated)")
    v.add_argument("--no-closing-calibration", action="store_true",
                   help="predict from the calibration made before the cells only (by default the server's "
                        "overhead and the in-server model times are measured again before each further config "
                        "and after the last, and the prediction uses the mean of them all)")
    v.add_argument("--no-after-idle", action="store_true",
                   help="predict without the extra time a batch takes after its instance sat idle (by "
                        "default batch 1 is also timed in the server at a light rate, and the extra is fitted "
                        "to each batch's idle time before it: service.after_idle)")
    v.add_argument("--overlap-strength", type=float, default=None, metavar="S",
                   help="the share of the co-run's overlap slowdown (its extra time) a batch pays in the server, "
                        "0-1 (default 1: the co-run as measured; 0 = no overlap slowdown)")
    v.add_argument("--overlap-fit", action="store_true",
                   help="fit, from batch 1's compute times in the server at a light and a heavier rate, the "
                        "share of the co-run's slowdown a batch pays there (instead of --overlap-strength)")
    v.add_argument("--speed-swings", action="store_true",
                   help="predict with the machine's speed swinging from second to second as the batch-1 "
                        "calibration runs measured it (service.speed_swings; by default it is measured and "
                        "printed, not used)")
    v.add_argument("--out", help="validation.html (table + chart) or validation.json")
    v.add_argument("--quiet", action="store_true", help="no progress on stderr")


def cmd_validate(args) -> int:
    from capsim.validate.validate import cmd_validate as run

    return run(args)


def add_load_parser(subparsers):
    """Register the ``load`` subcommand and its options on an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "load", help="send real requests to a running inference server and measure latency and throughput",
        description="Open loop (--rate, --streams, --trace): requests go out on schedule whatever the server "
                    "does, latency counted from the scheduled time. Closed loop (--concurrency): C clients "
                    "each wait for their answer before sending again.")
    p.add_argument("url", metavar="URL", help="server base URL (http://host:port) or its inference endpoint")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--rate", type=float, metavar="R", help="open loop at R requests per second")
    how.add_argument("--streams", metavar="NxFPS",
                     help="open loop from cameras, e.g. 6x25fps or 6x25fps,2x10fps (X-Source = camera index)")
    how.add_argument("--trace", metavar="FILE", help="open loop at the times in a CSV (arrival_s[,source])")
    how.add_argument("--schedule", metavar="AT:RPS,...",
                     help="open loop, Poisson at a time-varying rate: e.g. 0:20,30:120 (20 rps from 0 s, 120 rps "
                          "from 30 s); the same generator as arrivals.rate_schedule")
    how.add_argument("--concurrency", type=int, metavar="C", help="closed loop with C clients")
    p.add_argument("--process", choices=("poisson", "constant", "bursty"), help="arrival process with --rate (default poisson)")
    p.add_argument("--burst-rate", type=float, metavar="R", help="bursty: rate during bursts (default 4 x --rate)")
    p.add_argument("--burst", type=float, metavar="X",
                   help="streams: every camera's frame rate is multiplied by X during bursts (e.g. 3)")
    p.add_argument("--burst-s", type=float, metavar="S", help="bursty / --burst: mean burst length (default 1 s)")
    p.add_argument("--calm-s", type=float, metavar="S", help="bursty / --burst: mean time between bursts (default 4 s)")
    p.add_argument("--jitter-ms", type=float, help="streams: std of each frame's arrival jitter (default 0)")
    p.add_argument("--period-s", type=float, metavar="S",
                   help="--schedule: length of the schedule, repeated after it (default: --duration)")
    p.add_argument("--hold", action="store_true", help="--schedule: keep the last rate after --period-s")
    p.add_argument("--think-ms", type=float, help="closed loop: pause between an answer and the next request")
    p.add_argument("--duration", type=float, required=True, metavar="S", help="seconds of sending")
    p.add_argument("--payload", choices=("jpeg", "tensor"), default="jpeg",
                   help="jpeg: a real 640x480 JPEG (default); tensor: raw float32 of --shape")
    p.add_argument("--shape", default="3x224x224", help="tensor payload shape CxHxW (default 3x224x224)")
    p.add_argument("--timeout-s", type=float, default=30.0, help="per-request timeout (default 30)")
    p.add_argument("--seed", type=int, default=1, help="seed of the arrival times and the payload (default 1)")
    p.add_argument("--priority-shares", metavar="LIST", help="open loop: send X-Priority level i with probability "
                   "LIST[i], e.g. 0.2,0.8 (level 0 = highest; drawn with --seed); the summary splits by level")
    p.add_argument("--deadline-ms", type=float, metavar="MS", help="send X-Deadline-Ms: the server drops a request "
                   "still waiting this long after it arrived when its batch is formed (503 stale)")
    p.add_argument("--out", metavar="FILE.csv", help="write one row per request")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def cmd_load(args) -> int:
    from capsim.validate import require_serve

    require_serve()
    from capsim.validate.load import cmd_load as run

    return run(args)
