"""Capacity reports: the question, the verdict, the recommended config, the key figures, the
charts, the napkin beside the simulation and every assumption, as HTML (one self-contained
file), Markdown (charts as PNG files beside it when static export works) or JSON.

:func:`build` gathers the content as data; the ``render_*`` functions only format it.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path

from capsim import explore
from capsim.config import Scenario
from capsim.errors import CapsimError
from capsim.metrics import SimulationResult, _pname
from capsim.plain import finite


@dataclass
class Report:
    """Everything a report shows, as data (``content``) plus the live objects the charts need."""

    content: dict
    result: SimulationResult
    card: dict
    rate: list[dict] | None
    knee_rps: float | None
    batch: list[dict] | None
    timeline: explore.Timeline
    figures: dict = field(default_factory=dict)


def versions() -> dict:
    """capsim and the libraries its numbers depend on."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("capsim", "numpy", "scipy", "simpy", "numba", "plotly"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def build(sc: Scenario, with_plan: bool = False, sweep_csv: str | None = None, engine: str = "auto",
          curves: bool = True, progress=None) -> Report:
    """Simulate ``sc`` (and plan, and read a sweep table) and gather the report's content."""
    from capsim.simulate import simulate

    def step(msg: str) -> None:
        if progress:
            progress(msg)

    step("simulating the scenario")
    res = simulate(sc, engine=engine)
    # A trace or a closed loop has no offered rate to rescale: no max rate and no rate curve.
    scalable = sc.arrivals.offered_rps() is not None
    if scalable:
        step("finding the highest sustainable rate")
    card = explore.verdict_card(sc, res, engine, with_max_rate=scalable)
    rate = knee = batch = None
    if curves:
        if scalable:
            step("latency vs offered rate")
            rate = explore.rate_curve(sc, engine=engine)
            knee = explore.knee(rate)
        step("throughput and latency vs max batch size")
        batch = explore.batch_curve(sc, engine=engine)
    tl = explore.timeline(res)
    slo = explore.slo_of(sc)
    b = sc.batching
    config = {"mode": b.mode, "max_batch_size": b.max_batch_size, "max_queue_delay_ms": b.max_queue_delay_ms,
              "instances": sc.instances, "queue_max_size": sc.queue.max_size, "on_full": sc.queue.on_full,
              "queue_timeout_ms": sc.queue.timeout_ms}
    content = {
        "title": f"Capacity report: {sc.name}",
        "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "question": {"scenario": sc.name, "description": sc.description, "rate_rps": card["rate_rps"],
                     "load": _load_text(sc, res),
                     "slo": {"percentile": slo.percentile, "latency_ms": slo.latency_ms,
                             "min_throughput_rps": slo.min_throughput_rps},
                     "text": (f"Can {sc.name} serve {_load_text(sc, res)} with p{slo.percentile:g} <= "
                              f"{slo.latency_ms:g} ms?")},
        "config": config,
        "card": card,
        "result": res.to_dict(),
        "curves": {"rate": rate, "knee_rps": knee, "batch": batch, "knee_rule": (
            f"first rate step where p{slo.percentile:g} grows {explore.KNEE_ELASTICITY:g}x faster than the load")},
        "plan": None,
        "sweep": None,
    }
    content["verdict"] = card["verdict"]
    content["recommended"] = {**config, "source": "the scenario's own config (no --plan)"}
    content["napkin"] = _napkin(sc, res, slo)
    if with_plan:
        from capsim.plan import plan

        step("planning (config search, verdict, max rate)")
        p = plan(sc, engine=engine).to_dict()
        content["plan"] = p
        content["verdict"] = p["verdict"]
        rec = p["recommended"]
        content["recommended"] = {k: rec[k] for k in ("mode", "max_batch_size", "max_queue_delay_ms", "instances")}
        content["recommended"]["source"] = "capsim plan: " + p["rule"]
        content["napkin"] = p["napkin"]
    if sweep_csv:
        content["sweep"] = _sweep_summary(sweep_csv)
    content["assumptions"] = {
        "scenario_yaml": sc.to_yaml(),
        "seed": sc.run.seed, "replications": sc.run.replications, "requests_per_replication": sc.run.requests,
        "warmup_requests": sc.run.warmup_requests, "engine": res.engine,
        "curves": f"{explore.CURVE_REQUESTS:,} requests x {explore.CURVE_REPLICATIONS} replications per point",
        "profile": _profile_info(sc),
        "versions": versions(),
        "date": content["generated"],
    }
    return Report(finite(content), res, card, rate, knee, batch, tl)


def _napkin(sc: Scenario, res: SimulationResult, slo) -> dict:
    key = _pname(slo.percentile)
    nap = res.napkin
    sim = res.latency_ms.get(key) if res.stable else None
    diff = None if sim is None else sim - nap.latency_ms
    why = ("the config cannot keep up; the napkin assumes it can" if sim is None else
           f"the napkin ignores queueing (mean queue wait {res.breakdown_ms['queue_wait']:.1f} ms)" if diff > 0 else
           f"batches average {res.mean_batch_size:.1f} and rarely wait the full delay")
    return {"formula": nap.formula, "napkin_latency_ms": nap.latency_ms, "capacity_bound_rps": nap.capacity_rps,
            "littles_law_in_flight": res.littles_law.L, "simulated_ms": sim, "difference": why}


def _profile_info(sc: Scenario) -> dict | None:
    prof = sc.service.loaded_profile
    if prof is None:
        return None
    # The hardware block is the profile's fingerprint (device, CPU/GPU, driver, OS); model
    # names the runtime, its version and the precision.
    return {"path": sc.service.profile, "label": prof.label, "model": prof.model, "hardware": prof.hardware,
            "measured": prof.data.get("date"), "settings": prof.data.get("settings")}


def _sweep_summary(path: str) -> dict:
    import csv

    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise CapsimError(f"--sweep: cannot read {path}: {exc.strerror}") from None
    if not rows or "pareto" not in rows[0]:
        raise CapsimError(f"--sweep {path}: not a capsim sweep table (no pareto column); write one with capsim sweep")
    front = [r for r in rows if r["pareto"] == "True"]
    header = list(rows[0])
    # capsim sweep writes: point, the grid fields, rate_rps, pareto, then the metrics
    grid = header[header.index("point") + 1:header.index("rate_rps")] if "point" in header and "rate_rps" in header \
        else []
    cols = [*grid, "rate_rps", "throughput_rps", "latency_ms.p95", "latency_ms.p99", "drop_rate", "slo.verdict"]
    cols = [c for c in cols if c in rows[0]]
    return {"path": path, "points": len(rows), "pareto_columns": cols,
            "pareto": [{c: r[c] for c in cols} for r in front]}


# --------------------------------------------------------------------------- figures


def figures(rep: Report) -> dict:
    """The charts (built once, shared by HTML and Markdown)."""
    from capsim import charts

    if not rep.figures:
        rep.figures = charts.all_figures(rep.result, rep.card, rep.rate, rep.knee_rps, rep.batch, rep.timeline)
    return rep.figures


# --------------------------------------------------------------------------- rendering


def _fmt(v, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def key_rows(c: dict) -> list[tuple[str, str]]:
    """The key table: (what, value) rows, shared by HTML and Markdown."""
    r, card = c["result"], c["card"]
    lat, ci = r["latency_ms"], r["latency_ci_ms"]
    rows = [("verdict", c["verdict"].upper()),
            (f"p{card['percentile']:g} target", f"{card['target_ms']:g} ms")]
    for q in ("p50", "p95", "p99"):
        rows.append((f"{q} latency", "unstable" if lat[q] is None else
                     f"{lat[q]:.1f} ms (95% CI {ci[q][0]:.1f}–{ci[q][1]:.1f})"))
    rows += [("offered rate", f"{_fmt(card['rate_rps'])} rps"), ("throughput", f"{r['throughput_rps']:.1f} rps"),
             ("drop rate", f"{100 * r['drop_rate']:.2f} %"), ("utilization", f"{100 * r['utilization']:.0f} %"),
             ("mean batch size", f"{r['mean_batch_size']:.2f}"),
             ("highest sustainable rate (this config)", f"{_fmt(card['max_rate_rps'])} rps"),
             ("headroom", "–" if card["headroom_pct"] is None else f"{card['headroom_pct']:+.0f} %")]
    if c["curves"]["knee_rps"]:
        rows.append(("knee of the latency curve", f"{c['curves']['knee_rps']:.0f} rps"))
    return rows


def _load_text(sc: Scenario, res) -> str:
    """The load the question is about, in words: a rate, or what sets it when nothing does."""
    rate = sc.arrivals.offered_rps()
    if rate is not None:
        return f"{rate:g} rps"
    a = sc.arrivals
    if a.process == "closed":
        return f"{a.concurrency} closed-loop clients (think {a.think_ms:g} ms; {res.offered_rps:.1f} rps sent)"
    return f"the trace {a.path} ({res.offered_rps:.1f} rps)"


def answer(c: dict) -> str:
    """One sentence: the verdict in words."""
    q, rec = c["question"], c["recommended"]
    cfg = (f"{rec['mode']} batching, max batch {rec['max_batch_size']}, max queue delay "
           f"{rec['max_queue_delay_ms']:g} ms, {rec['instances']} instance(s)")
    v = c["verdict"]
    if v == "feasible":
        return f"Yes: {cfg} meets the SLO at {q['load']} (the whole 95 % interval is under the target)."
    if v == "inconclusive":
        return f"Not settled: with {cfg} the 95 % interval straddles the target; simulate more requests."
    return f"No: {cfg} does not meet the SLO at {q['load']}."


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}
th{background:#f4f4f4}.verdict{font-size:1.4em;padding:.6em 1em;border-radius:6px;display:inline-block}
.feasible{background:#e6f4ea;color:#137333}.infeasible{background:#fce8e6;color:#a50e0e}
.inconclusive{background:#fef7e0;color:#8a6100}pre{background:#f7f7f7;padding:1em;overflow:auto}"""


def _table(rows: list[list], head: list[str] | None = None) -> str:
    h = "".join(f"<th>{html.escape(str(x))}</th>" for x in head) if head else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(x))}</td>" for x in r) + "</tr>" for r in rows)
    return f"<table>{'<tr>' + h + '</tr>' if h else ''}{body}</table>"


def render_html(rep: Report) -> str:
    """One self-contained HTML file (plotly.js inlined once; opens offline)."""
    c = rep.content
    figs = figures(rep)
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(c['title'])}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>{html.escape(c['title'])}</h1><p>Generated {html.escape(c['generated'])} by capsim "
             f"{html.escape(str(c['assumptions']['versions'].get('capsim')))}</p>",
             f"<h2>Question</h2><p>{html.escape(c['question']['text'])}</p>",
             f"<h2>Verdict</h2><div class='verdict {c['verdict']}' id='verdict'>{c['verdict'].upper()}</div>"
             f"<p>{html.escape(answer(c))}</p>",
             "<h2>Recommended config</h2>" + _table([[k, v] for k, v in c["recommended"].items()]),
             "<h2>Key figures</h2>" + _table([list(r) for r in key_rows(c)])]
    if c["plan"]:
        p = c["plan"]
        rows = [[a["mode"], a["max_batch_size"], a["max_queue_delay_ms"], a["instances"], a["verdict"],
                 a["slo_observed_ms"], a.get("note") or (a["slo_ci_ms"] and f"{a['slo_ci_ms'][0]:.1f}–"
                                                                         f"{a['slo_ci_ms'][1]:.1f}")]
                for a in [p["recommended"], *p["alternatives"]]]
        parts.append("<h2>Plan: configs searched</h2><p>" + html.escape(
            f"{p['evaluated_configs']} configs screened; rule: {p['rule']}. Highest sustainable rate "
            f"{_fmt(p['max_rate_rps'])} rps (headroom {_fmt(p['headroom_pct'], 0)} %); binding: "
            + "; ".join(p["binding"])) + "</p>" + _table(rows, ["mode", "max batch", "delay ms", "instances",
                                                                 "verdict", "SLO pct ms", "95% CI / note"]))
    n = c["napkin"]
    parts.append("<h2>Napkin vs simulation</h2>" + _table(
        [["napkin formula", n["formula"]], ["napkin latency", f"{_fmt(n['napkin_latency_ms'])} ms"],
         ["simulated", f"{_fmt(n['simulated_ms'])} ms"], ["capacity bound", f"{_fmt(n['capacity_bound_rps'])} rps"],
         ["Little's law: requests in flight", _fmt(n["littles_law_in_flight"])], ["why they differ", n["difference"]]]))
    parts.append("<h2>Charts</h2>")
    first = True
    for name, fig in figs.items():
        parts.append(f"<div class='chart' id='chart-{name}'>"
                     + fig.to_html(full_html=False, include_plotlyjs=first, div_id=f"fig-{name}") + "</div>")
        first = False
    if c["sweep"]:
        s = c["sweep"]
        parts.append(f"<h2>Sweep: Pareto front</h2><p>{s['points']} points in {html.escape(s['path'])}; "
                     f"{len(s['pareto'])} on the front (throughput up, latency down).</p>"
                     + _table([[r[k] for k in s["pareto_columns"]] for r in s["pareto"]], s["pareto_columns"]))
    a = c["assumptions"]
    parts.append("<h2>Assumptions</h2>" + _table(
        [["seed", a["seed"]], ["replications x requests", f"{a['replications']} x {a['requests_per_replication']:,}"],
         ["warm-up requests", a["warmup_requests"]], ["engine", a["engine"]], ["curves", a["curves"]],
         ["calibration profile", json.dumps(a["profile"]) if a["profile"] else "none (batch times from the scenario)"],
         ["versions", ", ".join(f"{k} {v}" for k, v in a["versions"].items())], ["date", a["date"]]])
        + f"<h3>Scenario</h3><pre>{html.escape(a['scenario_yaml'])}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _md_table(rows: list[list], head: list[str]) -> str:
    def cell(x):
        return _fmt(x).replace("|", "\\|")

    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(cell(x) for x in r) + " |" for r in rows]
    return "\n".join(out)


def render_markdown(rep: Report, out_path: Path) -> tuple[str, list[Path], str | None]:
    """Markdown text, the PNG files written beside it, and a note when static export was not possible."""
    c = rep.content
    figs = figures(rep)
    img_dir = out_path.with_suffix("").name + "_files"
    written, note = _write_pngs(figs, out_path.parent / img_dir)
    lines = [f"# {c['title']}", "", f"Generated {c['generated']}.", "", "## Question", "", c["question"]["text"], "",
             "## Verdict", "", f"**{c['verdict'].upper()}** — {answer(c)}", "", "## Recommended config", "",
             _md_table([[k, v] for k, v in c["recommended"].items()], ["setting", "value"]), "",
             "## Key figures", "", _md_table([list(r) for r in key_rows(c)], ["what", "value"]), ""]
    if c["plan"]:
        p = c["plan"]
        lines += ["## Plan: configs searched", "",
                  f"{p['evaluated_configs']} configs screened; rule: {p['rule']}. Highest sustainable rate "
                  f"{_fmt(p['max_rate_rps'])} rps; binding: {'; '.join(p['binding'])}.", "",
                  _md_table([[a["mode"], a["max_batch_size"], a["max_queue_delay_ms"], a["instances"], a["verdict"],
                              a["slo_observed_ms"]] for a in [p["recommended"], *p["alternatives"]]],
                            ["mode", "max batch", "delay ms", "instances", "verdict", "SLO pct ms"]), ""]
    n = c["napkin"]
    lines += ["## Napkin vs simulation", "", _md_table(
        [["napkin formula", n["formula"]], ["napkin latency (ms)", n["napkin_latency_ms"]],
         ["simulated (ms)", n["simulated_ms"]], ["capacity bound (rps)", n["capacity_bound_rps"]],
         ["why they differ", n["difference"]]], ["", ""]), "", "## Charts", ""]
    if note:
        lines += [f"> {note}", ""]
    for path in written:
        lines += [f"![{path.stem}]({img_dir}/{path.name})", ""]
    if c["sweep"]:
        s = c["sweep"]
        lines += ["## Sweep: Pareto front", "", f"{s['points']} points in `{s['path']}`.", "",
                  _md_table([[r[k] for k in s["pareto_columns"]] for r in s["pareto"]], s["pareto_columns"]), ""]
    a = c["assumptions"]
    lines += ["## Assumptions", "", _md_table(
        [["seed", a["seed"]], ["replications x requests", f"{a['replications']} x {a['requests_per_replication']}"],
         ["engine", a["engine"]], ["curves", a["curves"]],
         ["calibration profile", json.dumps(a["profile"]) if a["profile"] else "none"],
         ["versions", ", ".join(f"{k} {v}" for k, v in a["versions"].items())], ["date", a["date"]]], ["", ""]),
              "", "```yaml", a["scenario_yaml"].rstrip(), "```", ""]
    return "\n".join(lines), written, note


def _write_pngs(figs: dict, folder: Path) -> tuple[list[Path], str | None]:
    """Static PNGs of the charts via kaleido; a note instead when that is not available."""
    try:
        import plotly.io as pio

        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / f"{name}.png" for name in figs]
        if hasattr(pio, "write_images"):  # one browser for all of them
            pio.write_images(list(figs.values()), paths, width=900, height=420)
        else:
            for fig, p in zip(figs.values(), paths):
                fig.write_image(p, width=900, height=420)
        return paths, None
    except Exception as exc:  # noqa: BLE001 - any failure of the optional exporter becomes the note
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return [], (f"Charts are not embedded: static image export is not available here ({reason[:160]}). "
                    "Install kaleido and Chrome/Chromium, or open the HTML report, which has every chart.")


def render_json(rep: Report) -> str:
    return json.dumps(rep.content, indent=2, allow_nan=False)


def write(rep: Report, out: str) -> list[Path]:
    """Write the report in the format ``out``'s extension names; returns every file written."""
    path = Path(out)
    suffix = path.suffix.lower()
    if suffix not in (".html", ".htm", ".md", ".json"):
        raise CapsimError(f"--out {out}: write a .html, .md or .json report")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if suffix in (".html", ".htm"):
            path.write_text(render_html(rep), encoding="utf-8")
            return [path]
        if suffix == ".json":
            path.write_text(render_json(rep), encoding="utf-8")
            return [path]
        text, pngs, _ = render_markdown(rep, path)
        path.write_text(text, encoding="utf-8")
        return [path, *pngs]
    except OSError as exc:
        raise CapsimError(f"--out: cannot write {out}: {exc.strerror}") from None
