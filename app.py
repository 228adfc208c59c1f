"""capsim what-if app: ``capsim ui`` or ``streamlit run app.py``.

Pick a scenario (built-in, uploaded file, or a calibration profile), move the knobs, and see the
verdict, the charts and the numbers update. Widgets come from the scenario model's field
definitions (capsim.knobs); charts from capsim.charts, the same module the reports use.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import streamlit as st
import yaml

from capsim import charts, explore, knobs, report, scenarios
from capsim.allocator import keep_freed_memory
from capsim.config import parse_scenario, read_scenario_data, scenario_data
from capsim.scenarios import project_dir
from capsim.errors import CapsimError
from capsim.simulate import simulate

keep_freed_memory()
st.set_page_config(page_title="capsim what-if", layout="wide")

QUICK = {"requests": 30_000, "replications": 3}
CALIBRATION = project_dir() / "calibration"


# --------------------------------------------------------------------------- cached work


@st.cache_resource(max_entries=64, show_spinner=False)
def run(scenario_yaml: str, base_dir: str, engine: str):
    """Simulate the scenario (its text is the cache key); cached across reruns."""
    sc = parse_scenario(yaml.safe_load(scenario_yaml), base_dir)
    return sc, simulate(sc, engine=engine)


# The max sustainable rate and the latency-vs-rate curve do not depend on the offered rate, so
# they are cached on the rate-free scenario: moving the rate slider only re-runs the scenario.
@st.cache_resource(max_entries=64, show_spinner=False)
def max_rate(rate_free_yaml: str, base_dir: str, engine: str) -> float:
    return explore.max_rate(parse_scenario(yaml.safe_load(rate_free_yaml), base_dir), engine)


@st.cache_resource(max_entries=64, show_spinner=False)
def rate_curve(rate_free_yaml: str, base_dir: str, engine: str):
    rate = explore.rate_curve(parse_scenario(yaml.safe_load(rate_free_yaml), base_dir), engine=engine)
    return rate, explore.knee(rate)


@st.cache_resource(max_entries=64, show_spinner=False)
def batch_curve(scenario_yaml: str, base_dir: str, engine: str):
    return explore.batch_curve(parse_scenario(yaml.safe_load(scenario_yaml), base_dir), engine=engine)


def evaluate(sc, engine: str):
    """(scenario, result, verdict card) for the app, from the caches above."""
    sc2, res = run(scenario_text(sc), sc.base_dir, engine)
    if sc.arrivals.offered_rps() is None:  # a trace or closed-loop clients: no rate to rescale
        return sc2, res, explore.verdict_card(sc2, res, engine, with_max_rate=False)
    m = max_rate(scenario_text(explore.rate_free(sc)), sc.base_dir, engine)
    return sc2, res, explore.verdict_card(sc2, res, engine, max_rate_rps=m)


def scenario_text(sc) -> str:
    return sc.to_yaml()


# --------------------------------------------------------------------------- the sidebar


def choose_source() -> tuple[dict, str, str]:
    """(scenario data, base dir, label) from a built-in, an upload, and optionally a profile."""
    st.sidebar.header("Scenario")
    names = scenarios.names()
    src = st.sidebar.radio("source", ["built-in", "upload a scenario file"], horizontal=True, key="source")
    if src == "built-in":
        name = st.sidebar.selectbox("built-in scenario", names, index=names.index("mini-challenge"), key="builtin",
                                    help="the seed's worked examples and scenarios driven by shipped profiles")
        data, base = scenario_data(name)
        label = name
    else:
        up = st.sidebar.file_uploader("scenario (YAML or TOML)", type=["yaml", "yml", "toml"], key="upload")
        if up is None:
            st.info("Upload a scenario file, or pick a built-in. `capsim scenarios show mini-challenge > my.yaml` "
                    "gives a starting point.")
            st.stop()
        tmp = Path(st.session_state.setdefault("_tmpdir", _tmpdir())) / up.name
        tmp.write_bytes(up.getvalue())
        data, base, label = read_scenario_data(tmp), tmp.parent, up.name
    profiles = ["(the scenario's own batch times)"] + sorted(p.name for p in CALIBRATION.glob("*.json"))
    choice = st.sidebar.selectbox("calibration profile", profiles, key="profile",
                                  help="drive the service times by a measured profile from calibration/")
    prof_up = st.sidebar.file_uploader("…or upload a profile (JSON)", type=["json"], key="profile_upload")
    if prof_up is not None:
        path = Path(st.session_state.setdefault("_tmpdir", _tmpdir())) / prof_up.name
        path.write_bytes(prof_up.getvalue())
        data = _with_profile(data, str(path))
        label += f" + {prof_up.name}"
    elif choice != profiles[0]:
        data = _with_profile(data, str(CALIBRATION / choice))
        label += f" + {choice}"
    return data, str(base), label


def _with_profile(data: dict, path: str) -> dict:
    data = json.loads(json.dumps(data))  # a copy
    svc = data.setdefault("service", {})
    svc["batch_latency_ms"] = {}
    svc["profile"] = path
    svc["allow_mismatch"] = True  # the user picked it on purpose
    for stage in ("preprocess", "postprocess"):
        svc.pop(stage, None)  # the profile's measured stages
    svc.pop("contention", None)
    return data


def _tmpdir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="capsim-ui-")


def knob_widgets(base_sc, source: str, prefix: str = "") -> dict:
    """A widget per knob, built from the field definitions; returns {path: value}.

    When the scenario or profile changes, the knobs start again from its values.
    """
    values, group = {}, None
    ks = knobs.knobs_for(base_sc)
    if st.session_state.get("_knob_source") != source:
        for k in ks:
            st.session_state.pop(f"{prefix}{k.path}", None)
        st.session_state["_knob_source"] = source
    for k in ks:
        if k.group != group:
            st.sidebar.subheader(k.group)
            group = k.group
        key = f"{prefix}{k.path}"
        if k.kind == "choice":
            values[k.path] = st.sidebar.selectbox(k.label, k.choices, index=k.choices.index(k.value), help=k.help,
                                                  key=key)
        elif k.lo == k.hi:  # one possible value (e.g. a curve measured at batch 1 only)
            values[k.path] = st.sidebar.number_input(k.label, value=k.value, disabled=True, key=key,
                                                     help=k.help + " — the only value this scenario allows")
        elif k.kind == "int":
            values[k.path] = st.sidebar.slider(k.label, k.lo, k.hi, k.value, step=1, help=k.help, key=key)
        else:
            values[k.path] = st.sidebar.slider(k.label, k.lo, k.hi, k.value, step=k.step, help=k.help, key=key)
    return values


# --------------------------------------------------------------------------- the main view


def verdict_card(card: dict, title: str = "Verdict", run_note: str = "") -> None:
    v = card["verdict"]
    colour = {"feasible": "#137333", "infeasible": "#a50e0e", "inconclusive": "#8a6100"}[v]
    q = f"p{card['percentile']:g}"
    if card["observed_ms"] is None:
        body = f"unstable: {card['unstable_reason']}"
    else:
        lo, hi = card["ci_ms"]
        body = (f"{q} <b>{card['observed_ms']:.1f} ms</b> (95% CI {lo:.1f}–{hi:.1f}) vs target "
                f"{card['target_ms']:g} ms")
    st.markdown(f"<div class='capsim-verdict' data-verdict='{v}' data-observed='{card['observed_ms']}' "
                f"style='border-left:6px solid {colour};padding:.4em 1em;margin-bottom:.6em'>"
                f"<span style='font-size:1.3em;color:{colour}'><b>{title}: {v.upper()}</b></span><br>{body}"
                f"{'<br><small>' + run_note + '</small>' if run_note else ''}</div>", unsafe_allow_html=True)
    c1, c2, c3, c4 = st.columns(4)
    c1.metric(f"{q} latency (ms)", "unstable" if card["observed_ms"] is None else f"{card['observed_ms']:.1f}")
    offered = (f"offered {card['rate_rps']:.1f} rps" if card["rate_rps"] is not None
               else "set by closed-loop clients or a trace (no rate knob)")
    c2.metric("throughput (rps)", f"{card['throughput_rps']:.1f}", help=offered)
    c3.metric("max sustainable rate (rps)", "–" if card["max_rate_rps"] is None else f"{card['max_rate_rps']:.1f}")
    c4.metric("headroom", "–" if card["headroom_pct"] is None else f"{card['headroom_pct']:+.0f} %")
    if not card["slo_from_scenario"]:
        st.caption("This scenario has no SLO; judged against the SLO knobs in the sidebar.")


def show_charts(sc, res, card, engine: str, with_curves: bool) -> dict:
    rate = knee = batch = None
    if with_curves:
        with st.spinner("latency vs rate and vs batch size…"):
            if sc.arrivals.offered_rps() is not None:
                rate, knee = rate_curve(scenario_text(explore.rate_free(sc)), sc.base_dir, engine)
            batch = batch_curve(scenario_text(sc), sc.base_dir, engine)
    figs = charts.all_figures(res, card, rate, knee, batch, explore.timeline(res))
    names = list(figs)
    for i in range(0, len(names), 2):
        cols = st.columns(2)
        for col, name in zip(cols, names[i:i + 2]):
            col.plotly_chart(figs[name], width="stretch", key=f"chart-{name}")
    if knee:
        st.caption(f"Knee: {knee:.0f} rps — the first rate step where p{card['percentile']:g} grows "
                   f"{explore.KNEE_ELASTICITY:g}× faster than the load.")
    return figs


def key_table(res) -> dict:
    d = res.to_dict()
    lat = d["latency_ms"]
    return {"p50 (ms)": lat["p50"], "p95 (ms)": lat["p95"], "p99 (ms)": lat["p99"],
            "throughput (rps)": d["throughput_rps"], "drop rate (%)": 100 * d["drop_rate"],
            "utilization (%)": 100 * d["utilization"], "mean batch": d["mean_batch_size"],
            "queue wait (ms)": d["breakdown_ms"]["queue_wait"], "stable": d["stable"]}


def compare_view(a, b) -> None:
    """Two configs side by side; the settings and figures that differ highlighted."""
    import pandas as pd

    (sc_a, res_a, card_a), (sc_b, res_b, card_b) = a, b
    c1, c2 = st.columns(2)
    with c1:
        verdict_card(card_a, "A (pinned)")
    with c2:
        verdict_card(card_b, "B (current)")
    flat_a, flat_b = _flat(sc_a.to_dict()), _flat(sc_b.to_dict())
    keys = [k for k in flat_a if k in flat_b and not k.startswith(("name", "description", "run."))]
    diff = [(k, flat_a[k], flat_b[k]) for k in keys if flat_a[k] != flat_b[k]]
    st.markdown("**Settings that differ**" if diff else "**The two configs have the same settings**")
    if diff:
        st.dataframe(pd.DataFrame(diff, columns=["setting", "A", "B"]).astype(str), hide_index=True)
    ka, kb = key_table(res_a), key_table(res_b)
    df = pd.DataFrame({"A": ka, "B": kb}).astype(object)
    changed = [k for k in ka if ka[k] != kb[k]]
    st.markdown("**Results** (changed rows highlighted)")
    st.dataframe(df.style.apply(lambda row: ["background-color:#fff3cd" if row.name in changed else ""] * 2,
                                axis=1).format(lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)))


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "batch_latency_ms":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)
    return out


def plan_section(sc, engine: str) -> None:
    from capsim.plan import plan

    st.subheader("Plan: search batch size, delay and instances for this SLO and rate")
    if st.button("Run the planner", key="plan"):
        bar = st.progress(0.0, text="planning…")

        def progress(done: int, total: int) -> None:
            bar.progress(min(done / total, 1.0), text=f"planning: config {done} of at most {total}")

        try:
            st.session_state["plan_result"] = plan(sc, engine=engine, progress=progress).to_dict()
        except CapsimError as exc:
            st.error(str(exc))
        bar.empty()
    p = st.session_state.get("plan_result")
    if p and p["question"]["scenario"] == sc.name:
        import pandas as pd

        st.markdown(f"**{p['verdict'].upper()}** — max sustainable rate {p['max_rate_rps']:.1f} rps "
                    f"(headroom {p['headroom_pct']:+.0f} %); binding: {'; '.join(p['binding'])}")
        rows = [{"mode": a["mode"], "max batch": a["max_batch_size"], "delay ms": a["max_queue_delay_ms"],
                 "instances": a["instances"], "verdict": a["verdict"], "SLO pct ms": a["slo_observed_ms"],
                 "note": a.get("note", "")} for a in [p["recommended"], *p["alternatives"]]]
        st.dataframe(pd.DataFrame(rows), hide_index=True)
        st.caption(f"Rule: {p['rule']}. {p['evaluated_configs']} configs screened.")


def downloads(sc, engine: str) -> None:
    st.subheader("Export")
    c1, c2 = st.columns(2)
    with c1:
        if st.button("Prepare the capacity report", key="prep_report"):
            with st.spinner("simulating curves for the report…"):
                rep = report.build(sc, engine=engine)
                html_text = report.render_html(rep)
                buf = io.BytesIO()
                with zipfile.ZipFile(buf, "w") as z:
                    tmp = Path(_tmpdir()) / "report.md"
                    text, pngs, _ = report.render_markdown(rep, tmp)
                    z.writestr("report.md", text)
                    for p in pngs:
                        z.write(p, f"{tmp.stem}_files/{p.name}")
                st.session_state["report"] = (html_text, buf.getvalue(), report.render_json(rep))
        if "report" in st.session_state:
            html_text, md_zip, js = st.session_state["report"]
            st.download_button("report.html", html_text, "capsim-report.html", "text/html")
            st.download_button("report.md (zip with charts)", md_zip, "capsim-report-md.zip", "application/zip")
            st.download_button("report.json", js, "capsim-report.json", "application/json")
    with c2:
        if st.button("Sweep rates × max batch sizes", key="sweep"):
            from capsim.sweep import parse_grid, sweep, write_table

            bar = st.progress(0.0, text="sweeping…")
            largest = max(sc.service.curve_ms())
            sizes = ",".join(str(b) for b in (1, 2, 4, 8, 16, 32, 64) if b <= largest)
            data = json.loads(json.dumps(sc.to_dict()))
            data["run"].update({"requests": min(sc.run.requests, 20_000), "replications": 2,
                                "warmup_requests": min(sc.run.warmup_requests, 2_000)})
            rates = [round(r, 3) for r in explore.default_rates(sc, 8)]
            res = sweep(data, sc.base_dir, [parse_grid(f"batching.max_batch_size={sizes}")], rates, engine=engine,
                        workers=1, progress=lambda d, t: bar.progress(d / t, text=f"sweep: {d}/{t} points"))
            tmp = Path(_tmpdir()) / "sweep.csv"
            write_table(res, str(tmp))
            st.session_state["sweep_csv"] = tmp.read_bytes()
            bar.empty()
        if "sweep_csv" in st.session_state:
            st.download_button("sweep.csv", st.session_state["sweep_csv"], "capsim-sweep.csv", "text/csv")


# --------------------------------------------------------------------------- page


def main() -> None:
    st.title("capsim — what if?")
    data, base, label = choose_source()
    try:
        base_sc = parse_scenario(data, base)
    except CapsimError as exc:
        st.error(f"{label}: {exc}")
        st.stop()
    values = knob_widgets(base_sc, label)
    st.sidebar.subheader("Run")
    quick = st.sidebar.toggle("quick runs (30,000 requests × 3)", value=True, key="quick",
                              help="off: the scenario's own run length (slower, narrower intervals)")
    engine = st.sidebar.selectbox("engine", ["auto", "fast", "simpy"], key="engine")
    with_curves = st.sidebar.toggle("curves vs rate and batch size", value=True, key="curves")
    try:
        sc = knobs.apply(data, base, values)
    except CapsimError as exc:
        st.error(str(exc))
        st.stop()
    if quick:
        sc = explore.short(sc, QUICK["requests"], QUICK["replications"])
    with st.spinner("simulating…"):
        try:
            sc, res, card = evaluate(sc, engine)
        except CapsimError as exc:
            st.error(str(exc))
            st.stop()
    note = (f"{label}: {res.replications} × {sc.run.requests:,} requests, {res.engine} engine, seed {sc.run.seed}")

    compare = st.toggle("compare with a pinned config", key="compare")
    if compare:
        if st.button("pin the current config as A", key="pin") or "pinned" not in st.session_state:
            st.session_state["pinned"] = (scenario_text(sc), base)
        text_a, base_a = st.session_state["pinned"]
        compare_view(evaluate(parse_scenario(yaml.safe_load(text_a), base_a), engine), (sc, res, card))
    else:
        verdict_card(card, run_note=note)
        show_charts(sc, res, card, engine, with_curves)
    plan_section(sc, engine)
    downloads(sc, engine)
    with st.expander("scenario in full (YAML)"):
        st.code(scenario_text(sc), language="yaml")


main()
