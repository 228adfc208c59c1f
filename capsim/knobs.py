"""The what-if knobs the app shows, derived from the scenario model's field definitions (names,
units, ranges, help), so the UI never keeps a second copy of them. No UI imports here."""

from __future__ import annotations

import copy
from dataclasses import dataclass

from capsim.config import Scenario, _unwrap_optional, apply_overrides, iter_fields, parse_scenario

# (path, group) in the order the sidebar shows them. "offered_rps" is the one knob that is not a
# field: it rescales whatever arrival process the scenario has (plan.with_rate); its range and
# help come from arrivals.rate_rps.
KNOBS = (
    ("offered_rps", "Traffic"),
    ("batching.max_batch_size", "Batching"),
    ("batching.max_queue_delay_ms", "Batching"),
    ("batching.mode", "Batching"),
    ("instances", "Instances"),
    ("queue.max_size", "Queue and drops"),
    ("queue.on_full", "Queue and drops"),
    ("queue.timeout_ms", "Queue and drops"),
    ("queue.deadline_ms", "Queue and drops"),
    ("service.variability.distribution", "Service time"),
    ("service.variability.cv", "Service time"),
    ("service.preprocess.ms", "Pre/post and network"),
    ("service.postprocess.ms", "Pre/post and network"),
    ("service.overhead_ms", "Pre/post and network"),
    ("slo.percentile", "SLO"),
    ("slo.latency_ms", "SLO"),
)

# Slider ends for fields whose spec has no ui_max (the spec's bounds still apply).
_DEFAULT_MAX = {"ms": 200.0, "rps": 2000.0}


@dataclass(frozen=True)
class Knob:
    """One widget: what it sets, how it is labelled and which values it takes."""

    path: str
    label: str
    help: str
    kind: str                  # "choice", "int" or "float"
    value: object
    choices: tuple = ()
    lo: float = 0.0
    hi: float = 1.0
    step: float = 1.0
    group: str = ""


def _specs() -> dict:
    return {p: (s, tp) for p, s, tp in iter_fields()}


def _get(sc: Scenario, path: str):
    node = sc
    for k in path.split("."):
        node = getattr(node, k)
    return node


def knobs_for(sc: Scenario) -> list[Knob]:
    """The knobs with the scenario's current values and the field definitions' ranges and help."""
    specs = _specs()
    largest = max(sc.service.curve_ms())
    out = []
    for path, group in KNOBS:
        if path == "offered_rps" and sc.arrivals.offered_rps() is None:
            continue  # a trace or closed-loop clients: the load has no rate to rescale
        src = "arrivals.rate_rps" if path == "offered_rps" else path
        s, tp = specs[src]
        tp = _unwrap_optional(tp)
        value = sc.arrivals.offered_rps() if path == "offered_rps" else _get(sc, path)
        if path.startswith("slo.") and sc.slo is None:
            value = {"slo.percentile": 95.0, "slo.latency_ms": 100.0}[path]
        name = "offered rate" if path == "offered_rps" else path.rsplit(".", 1)[-1]
        if s.unit and name.endswith("_" + s.unit):  # max_queue_delay_ms -> "max queue delay (ms)"
            name = name[: -len(s.unit) - 1]
        name = name.replace("_", " ")
        label = f"{name} ({s.unit})" if s.unit else name
        help_text = f"{s.help} [{src}]" if path != "offered_rps" else (
            "mean offered rate; rescales the scenario's arrival process (its shape kept) [arrivals]")
        if s.choices:
            out.append(Knob(path, label, help_text, "choice", value, tuple(s.choices), group=group))
            continue
        is_int = tp is int
        hi = s.le if s.le is not None else (s.ui_max if s.ui_max is not None else _DEFAULT_MAX.get(s.unit, 100.0))
        if path == "batching.max_batch_size":
            hi = largest  # the curve is measured up to here
        step = 1 if is_int else (0.05 if path == "service.variability.cv" else 0.5 if hi <= 50 else 1.0)
        lo = s.ge if s.ge is not None else (s.gt + step if s.gt is not None else 0)
        value = value if value is not None else lo
        hi = max(hi, value)
        if is_int:
            out.append(Knob(path, label, help_text, "int", int(value), lo=int(lo), hi=int(hi), step=1, group=group))
        else:
            out.append(Knob(path, label, help_text, "float", float(value), lo=float(min(lo, value)), hi=float(hi),
                            step=step, group=group))
    return out


def apply(data: dict, base_dir: str, values: dict) -> Scenario:
    """The scenario ``data`` with the knob ``values`` applied, validated (ScenarioError on bad input)."""
    from capsim.plan import with_rate

    fields = [f"{p}={_yaml(v)}" for p, v in values.items() if p != "offered_rps"]
    data = apply_overrides(copy.deepcopy(data), fields)
    b = data.get("batching") or {}
    if "batching.max_batch_size" in values and b.get("preferred_batch_sizes"):
        # preferred sizes above a smaller max batch no longer apply (as the planner does)
        b["preferred_batch_sizes"] = [p for p in b["preferred_batch_sizes"] if p <= values["batching.max_batch_size"]]
    sc = parse_scenario(data, base_dir)
    if values.get("offered_rps"):
        before = sc.arrivals.offered_rps()
        sc = with_rate(sc, float(values["offered_rps"]))
        if sc.slo and before and abs(sc.slo.min_throughput_rps - before) <= 1e-9 * before:
            # "serve everything offered" stays that at the new rate
            sc.slo.min_throughput_rps = float(values["offered_rps"])
    return sc


def _yaml(v) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, float) and v.is_integer():
        return repr(v)
    return str(v)

