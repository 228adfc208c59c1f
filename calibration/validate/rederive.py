"""A recorded validation predicted again (nothing is run again), for the ``compare_*.py`` scripts
beside it: the host calibration derived from the record's raw keys as ``capsim validate`` derives
it, and the cells' median errors with that calibration."""

from __future__ import annotations

import numpy as np

from capsim.plan import with_rate
from capsim.simulate import simulate
from capsim.validate import idle, server_fit
from capsim.validate.validate import (TARGET_MAX_LOAD, _err, account_idle, b1_service_times, b1_simulation,
                                      bracket_host, decode_ms, scenario_for, share_cores, window_percentiles)


def derive(record: dict, fit_strength: bool = False, fit_decode: bool = False, strength: float | None = None) -> dict:
    """CPU sharing (with the record's co-run), the after-idle extra, optionally the overlap strength
    (fitted, or a given ``strength``) and the decode's speed in the server, and the model's own spread."""
    ov, st = record["overhead"], record["settings"]
    raw = record["overhead"]["host"]
    host = bracket_host(raw, None)
    if raw.get("speed_swings"):   # a what-if's (compare_speed_swings.py): before the spread's fit
        host["speed_swings"] = raw["speed_swings"]
    share_cores(host, ov, st.get("threads"), st["instances"], cores=raw["sharing"]["cores"], corun=raw["corun"])
    if raw.get("idle_runs"):   # fitted to the server's own batch-1 runs (records from v on)
        host["after_idle_fit"] = idle.fit_in_server(host["idle_runs"])
        account_idle(host, host["after_idle_fit"])
    else:                      # the quiet process's fit, as recorded
        account_idle(host, raw.get("after_idle"))
    args, rest = (record["profile"], ov), (st["instances"], st["preprocess_workers"], st["seed"])
    if strength is None and st.get("overlap_fit") is False:   # a set share the record was predicted with
        strength = st.get("overlap_strength")                   # (records before 2026-11-28: the co-run as measured)
    if fit_strength:
        server_fit.fit(host, ov)
    elif strength is not None and strength != 1.0:
        server_fit.set_strength(host, ov, strength)
    if fit_decode:
        server_fit.fit_decode_speed(host, ov, lambda h: decode_ms(*b1_simulation(*args, h, *rest)))
    server_fit.fit_spread(host, lambda h: b1_service_times(*args, h, *rest))
    return host


def errors(record: dict, host: dict, decode: bool = False) -> dict[str, float]:
    """Median |error| of p50 and p95 over the cells at loads <= 0.85, each predicted as its runs
    measure it; with ``decode`` also of the cells' mean decode (long-run simulation)."""
    ov, st = record["overhead"], record["settings"]
    errs = {"p50": [], "p95": [], **({"decode": []} if decode else {})}
    for c in record["cells"]:
        if c["load"] > TARGET_MAX_LOAD:
            continue
        sc = scenario_for(record["profile"], ov, c["max_batch_size"], c["max_queue_delay_ms"], st["instances"],
                          st["preprocess_workers"], c["rate_rps"], st["seed"], host)
        pred = window_percentiles(sc, st["duration_s"], [st["seed"] + r for r in range(st["repeat"])])
        for k in ("p50", "p95"):
            e = _err(pred.get(k), c["measured"][k])
            if e is not None:
                errs[k].append(abs(e))
        if decode:
            sim = simulate(with_rate(sc, c["rate_rps"]))
            errs["decode"].append(abs(_err(decode_ms(sim, sc), c["stages"]["decode"][1])))
    return {k: float(np.median(v)) for k, v in errs.items()}
