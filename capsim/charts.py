"""Every chart capsim draws, as plotly figures: the app and the report both call these, so they
always show the same thing. Inputs are capsim results and capsim.explore data."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from capsim.explore import Timeline, instance_utilization, latency_sample
from capsim.metrics import SimulationResult

SLO_COLOR = "#d62728"
LAYOUT = dict(template="plotly_white", height=360, margin=dict(l=60, r=20, t=50, b=50),
              legend=dict(orientation="h", y=-0.2))


def _slo_line(fig: go.Figure, target_ms: float, label: str, horizontal: bool = True, **kw) -> None:
    if horizontal:
        fig.add_hline(y=target_ms, line_dash="dash", line_color=SLO_COLOR, annotation_text=label,
                      annotation_position="top left", **kw)
    else:
        fig.add_vline(x=target_ms, line_dash="dash", line_color=SLO_COLOR, annotation_text=label,
                      annotation_position="top right", **kw)


def _unstable(fig: go.Figure, res: SimulationResult, title: str) -> go.Figure:
    """An overloaded run has no latency distribution to show (it only grows with the run's length)."""
    fig.add_annotation(text="UNSTABLE: offered load above capacity<br>no latency distribution to show",
                       showarrow=False, font=dict(size=16, color=SLO_COLOR), xref="paper", yref="paper", x=0.5, y=0.5)
    fig.update_layout(title=title, xaxis_visible=False, yaxis_visible=False, **LAYOUT)
    return fig


def latency_cdf(res: SimulationResult, target_ms: float, percentile: float) -> go.Figure:
    """Cumulative distribution of request latency, the SLO target and percentile marked."""
    if not res.stable:
        return _unstable(go.Figure(), res, "Latency CDF")
    lat = latency_sample(res)
    fig = go.Figure()
    if len(lat):
        fig.add_trace(go.Scatter(x=lat, y=np.linspace(0, 100, len(lat)), mode="lines", name="latency CDF"))
    fig.add_hline(y=percentile, line_dash="dot", line_color="gray", annotation_text=f"p{percentile:g}",
                  annotation_position="bottom right")
    _slo_line(fig, target_ms, f"SLO {target_ms:g} ms", horizontal=False)
    fig.update_layout(title="Latency CDF", xaxis_title="latency (ms)", yaxis_title="% of requests", **LAYOUT)
    return fig


def latency_histogram(res: SimulationResult, target_ms: float) -> go.Figure:
    """Histogram of request latency with the SLO target."""
    if not res.stable:
        return _unstable(go.Figure(), res, "Latency histogram")
    lat = latency_sample(res)
    fig = go.Figure(go.Histogram(x=lat, nbinsx=60, name="requests"))
    _slo_line(fig, target_ms, f"SLO {target_ms:g} ms", horizontal=False)
    fig.update_layout(title="Latency histogram", xaxis_title="latency (ms)", yaxis_title="requests", **LAYOUT)
    return fig


def rate_curve(curve: list[dict], target_ms: float, percentile: float, knee_rps: float | None = None,
               current_rps: float | None = None) -> go.Figure:
    """p95 and p99 (and the SLO percentile's interval) against offered rate, with the SLO and the knee."""
    fig = go.Figure()
    x = [p["offered_rps"] for p in curve]
    for key, name in (("p95", "p95"), ("p99", "p99")):
        fig.add_trace(go.Scatter(x=x, y=[p[key] for p in curve], mode="lines+markers", name=name))
    lo = [p["slo_ci_ms"][0] if p["slo_ci_ms"] else None for p in curve]
    hi = [p["slo_ci_ms"][1] if p["slo_ci_ms"] else None for p in curve]
    fig.add_trace(go.Scatter(x=x, y=hi, mode="lines", line=dict(width=0), showlegend=False, hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=x, y=lo, mode="lines", line=dict(width=0), fill="tonexty",
                             fillcolor="rgba(31,119,180,0.15)", name=f"p{percentile:g} 95% CI"))
    unstable = [p["offered_rps"] for p in curve if not p["stable"]]
    if unstable:
        fig.add_vrect(x0=min(unstable), x1=max(unstable), fillcolor="gray", opacity=0.12, line_width=0,
                      annotation_text="unstable", annotation_position="top left")
    _slo_line(fig, target_ms, f"SLO p{percentile:g} {target_ms:g} ms")
    if knee_rps:
        fig.add_vline(x=knee_rps, line_dash="dot", line_color="orange", annotation_text=f"knee {knee_rps:.0f} rps")
    if current_rps:
        fig.add_vline(x=current_rps, line_color="green", line_width=1, annotation_text="now",
                      annotation_position="bottom right")
    fig.update_layout(title="Tail latency vs offered rate", xaxis_title="offered rate (rps)",
                      yaxis_title="latency (ms)", **LAYOUT)
    return fig


def batch_curve(curve: list[dict], target_ms: float, percentile: float) -> go.Figure:
    """Throughput and the SLO percentile against max batch size at the current rate."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    x = [str(p["max_batch_size"]) for p in curve]
    fig.add_trace(go.Bar(x=x, y=[p["throughput_rps"] for p in curve], name="throughput (rps)", opacity=0.6,
                         text=["" if p["stable"] else "unstable" for p in curve], textposition="outside"),
                  secondary_y=False)
    fig.add_trace(go.Scatter(x=x, y=[p["slo_ms"] for p in curve], mode="lines+markers",
                             name=f"p{percentile:g} (ms)"), secondary_y=True)
    fig.add_hline(y=target_ms, line_dash="dash", line_color=SLO_COLOR, secondary_y=True,
                  annotation_text=f"SLO {target_ms:g} ms")
    fig.update_layout(title="Throughput and latency vs max batch size", xaxis_title="max batch size", **LAYOUT)
    fig.update_yaxes(title_text="throughput (rps)", secondary_y=False, rangemode="tozero")
    fig.update_yaxes(title_text="latency (ms)", secondary_y=True, rangemode="tozero", showgrid=False)
    return fig


def timeline(tl: Timeline) -> go.Figure:
    """Queue length and drops over time (first replication)."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=tl.t_s, y=tl.queue_max, mode="lines", name="queue length (max in bin)",
                             line=dict(color="#aec7e8")), secondary_y=False)
    fig.add_trace(go.Scatter(x=tl.t_s, y=tl.queue_len, mode="lines", name="queue length (mean)",
                             line=dict(color="#1f77b4")), secondary_y=False)
    fig.add_trace(go.Scatter(x=tl.t_s, y=tl.drops_rps, mode="lines", name="drops (per s)",
                             line=dict(color=SLO_COLOR)), secondary_y=True)
    fig.update_layout(title="Queue length and drops over time", xaxis_title="simulated time (s)", **LAYOUT)
    fig.update_yaxes(title_text="requests queued", secondary_y=False, rangemode="tozero")
    fig.update_yaxes(title_text="drops per second", secondary_y=True, rangemode="tozero", showgrid=False)
    return fig


BREAKDOWN = (("preprocess", "pre-processing"), ("queue_wait", "queue wait"),
             ("batch_formation", "batch formation"), ("service", "model compute"),
             ("postprocess", "post-processing"), ("overhead", "overhead / network"))


def breakdown(res: SimulationResult) -> go.Figure:
    """Mean latency split into its parts, as one stacked bar."""
    fig = go.Figure()
    for key, name in BREAKDOWN:
        v = res.breakdown_ms.get(key, 0.0)
        fig.add_trace(go.Bar(y=["mean latency"], x=[v if v == v else 0.0], name=f"{name} {v:.1f} ms",
                             orientation="h"))
    fig.update_layout(barmode="stack", title="Where the time goes (mean per request)", xaxis_title="ms",
                      **{**LAYOUT, "height": 260})
    return fig


def utilization(res: SimulationResult) -> go.Figure:
    """Busy fraction of each model instance."""
    u = instance_utilization(res)
    fig = go.Figure(go.Bar(x=[f"instance {i}" for i in range(len(u))], y=[100 * v for v in u],
                           text=[f"{100 * v:.0f}%" for v in u], textposition="auto"))
    fig.add_hline(y=85, line_dash="dot", line_color="orange", annotation_text="85 %")
    fig.update_layout(title="Instance utilization", yaxis_title="% busy", yaxis_range=[0, 100],
                      **{**LAYOUT, "height": 300})
    return fig


# --------------------------------------------------------------------------- production policies


def priority_levels(levels: list[dict], target_ms: float, percentile: float) -> go.Figure:
    """Per priority level: p95 latency (bars; none for an unstable level) and drop rate (markers)."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    names = [f"level {lv['level']}" for lv in levels]
    p95 = [lv["latency_ms"]["p95"] if lv["latency_ms"] else None for lv in levels]
    fig.add_trace(go.Bar(x=names, y=p95, name="p95 latency (ms)",
                         text=["unstable" if v is None else f"{v:.0f} ms" for v in p95], textposition="auto"))
    fig.add_trace(go.Scatter(x=names, y=[100 * lv["drop_rate"] for lv in levels], mode="markers+text",
                             marker=dict(size=14, color=SLO_COLOR), name="drop rate (%)",
                             text=[f"{100 * lv['drop_rate']:.1f} %" for lv in levels], textposition="top center"),
                  secondary_y=True)
    _slo_line(fig, target_ms, f"SLO p{percentile:g} {target_ms:g} ms")
    fig.update_yaxes(title_text="p95 latency (ms)", secondary_y=False)
    fig.update_yaxes(title_text="drop rate (%)", range=[0, 100], dtick=20, showgrid=False, secondary_y=True)
    fig.update_layout(title="Priority levels: latency and drops", **LAYOUT)
    return fig


def camera_fps(degrade: dict) -> go.Figure:
    """Graceful degradation: each camera's processed fps over time, with its mean stride."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    t = degrade["t_s"]
    for cam in degrade["cameras"]:
        fig.add_trace(go.Scatter(x=t, y=cam["processed_fps"], mode="lines", name=f"camera {cam['camera']} fps"))
    strides = np.array([cam["stride"] for cam in degrade["cameras"]], dtype=float)
    fig.add_trace(go.Scatter(x=t, y=strides.mean(axis=0), mode="lines", line=dict(dash="dot", color="black"),
                             name="mean stride"), secondary_y=True)
    fig.update_yaxes(title_text="processed frames/s", secondary_y=False)
    fig.update_yaxes(title_text="stride", range=[0, degrade["max_stride"] + 0.5], secondary_y=True)
    fig.update_layout(title="Processed fps per camera (graceful degradation)", xaxis_title="time (s)", **LAYOUT)
    return fig


def instances_over_time(autoscale: dict) -> go.Figure:
    """Autoscaling: serving and provisioning (cold-starting) instances over time."""
    fig = go.Figure()
    for key, name, color in (("serving", "serving", "#1f77b4"), ("provisioning", "cold-starting", "#ff7f0e")):
        series = autoscale[key]
        fig.add_trace(go.Scatter(x=series["t"], y=series["count"], mode="lines", line_shape="hv", name=name,
                                 line=dict(color=color)))
    cs = autoscale["cold_start"]
    fig.update_layout(title=(f"Instances over time (p95 {_ms(cs['p95_ms_while_provisioning'])} during cold starts vs "
                             f"{_ms(cs['p95_ms_otherwise'])} otherwise)"),
                      xaxis_title="time (s)", yaxis_title="instances", yaxis_dtick=1, **LAYOUT)
    return fig


def schedule_steps(schedule: dict) -> go.Figure:
    """Time-varying load: each step's offered rate and throughput (bars) and p95 (line)."""
    steps = [st for st in schedule["steps"] if st["offered_rps"] is not None]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    x = [st["at_s"] for st in steps]
    fig.add_trace(go.Bar(x=x, y=[st["offered_rps"] for st in steps], name="offered (rps)", opacity=0.5))
    fig.add_trace(go.Bar(x=x, y=[st["throughput_rps"] for st in steps], name="throughput (rps)"))
    fig.add_trace(go.Scatter(x=x, y=[st["p95_ms"] for st in steps], mode="lines+markers", name="p95 (ms)",
                             line=dict(color=SLO_COLOR)), secondary_y=True)
    fig.update_yaxes(title_text="requests/s", secondary_y=False)
    fig.update_yaxes(title_text="p95 latency (ms)", secondary_y=True)
    fig.update_layout(title="Rate schedule: each step", xaxis_title="step start (s into the period)",
                      barmode="overlay", **LAYOUT)
    return fig


def _ms(v) -> str:
    return "–" if v is None else f"{v:.0f} ms"


def policy_figures(res: SimulationResult, target_ms: float, percentile: float) -> dict[str, go.Figure]:
    """Charts of the production policies the scenario uses (none when it uses none)."""
    p, figs = res.policies, {}
    if p.get("priority"):
        figs["priority"] = priority_levels(p["priority"], target_ms, percentile)
    if p.get("degrade"):
        figs["camera_fps"] = camera_fps(p["degrade"])
    if p.get("autoscale"):
        figs["instances"] = instances_over_time(p["autoscale"])
    if p.get("rate_schedule") and any(st["offered_rps"] is not None for st in p["rate_schedule"]["steps"]):
        figs["rate_schedule"] = schedule_steps(p["rate_schedule"])
    return figs


def all_figures(res: SimulationResult, card: dict, rate: list[dict] | None, knee_rps: float | None,
                batch: list[dict] | None, tl: Timeline) -> dict[str, go.Figure]:
    """The report's and the app's charts, by name, in reading order."""
    t, q = card["target_ms"], card["percentile"]
    figs = {"latency_cdf": latency_cdf(res, t, q), "latency_histogram": latency_histogram(res, t)}
    if rate:
        figs["rate_curve"] = rate_curve(rate, t, q, knee_rps, card["rate_rps"])
    if batch:
        figs["batch_curve"] = batch_curve(batch, t, q)
    figs["timeline"] = timeline(tl)
    figs["breakdown"] = breakdown(res)
    figs["utilization"] = utilization(res)
    figs.update(policy_figures(res, t, q))
    return figs


def predicted_vs_measured(cells: list[dict]) -> go.Figure:
    """capsim validate: predicted against measured p50/p95/p99 for every config and load, with y = x;
    a cell measured several times shows the range of its runs as a horizontal bar."""
    fig = go.Figure()
    top = 0.0
    for key, symbol in (("p50", "circle"), ("p95", "diamond"), ("p99", "square")):
        pts = [(c["measured"][key], c["predicted"][key], f"B={c['max_batch_size']} D={c['max_queue_delay_ms']:g} "
                f"load {c['load']:.2f}", (c["measured"].get("spread") or {}).get(key))
               for c in cells if c["measured"][key] is not None and c["predicted"][key] is not None]
        if pts:
            x, y, text, spread = zip(*pts)
            top = max(top, max(x), max(y), *(s[1] for s in spread if s))
            bars = None
            if any(spread):
                bars = dict(type="data", symmetric=False, array=[s[1] - m if s else 0 for m, s in zip(x, spread)],
                            arrayminus=[m - s[0] if s else 0 for m, s in zip(x, spread)], thickness=1)
            fig.add_trace(go.Scatter(x=x, y=y, mode="markers", name=key, text=text, marker_symbol=symbol,
                                     error_x=bars,
                                     hovertemplate="%{text}<br>measured %{x:.1f} ms<br>predicted %{y:.1f} ms"))
    top = top * 1.05 or 1.0
    fig.add_trace(go.Scatter(x=[0, top], y=[0, top], mode="lines", name="predicted = measured",
                             line=dict(dash="dash", color="gray")))
    for f, name in ((1.1, "+10 %"), (0.9, "-10 %")):
        fig.add_trace(go.Scatter(x=[0, top], y=[0, top * f], mode="lines", name=name, showlegend=False,
                                 line=dict(dash="dot", color="lightgray")))
    fig.update_layout(title="Predicted vs measured latency", xaxis_title="measured (ms)", yaxis_title="predicted (ms)",
                      **{**LAYOUT, "height": 480})
    return fig
