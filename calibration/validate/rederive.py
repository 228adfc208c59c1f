"""The host calibration a recorded validation's prediction would use, derived again from the
record's raw keys as ``capsim validate`` derives it: CPU sharing (with the record's co-run), the
after-idle extra, optionally the overlap strength and the decode's speed in the server, and the
model's own spread. Shared by the ``compare_*.py`` scripts beside it (nothing is run again)."""

from __future__ import annotations

from capsim.validate import server_fit
from capsim.validate.validate import (account_idle, b1_service_times, b1_simulation, bracket_host, decode_ms,
                                      share_cores)


def derive(record: dict, fit_strength: bool = False, fit_decode: bool = False) -> dict:
    ov, st = record["overhead"], record["settings"]
    raw = record["overhead"]["host"]
    host = bracket_host(raw, None)
    share_cores(host, ov, st.get("threads"), st["instances"], cores=raw["sharing"]["cores"], corun=raw["corun"])
    account_idle(host, raw.get("after_idle"))
    args, rest = (record["profile"], ov), (st["instances"], st["preprocess_workers"], st["seed"])
    if fit_strength:
        server_fit.fit(host, ov)
    if fit_decode:
        server_fit.fit_decode_speed(host, ov, lambda h: decode_ms(*b1_simulation(*args, h, *rest)))
    server_fit.fit_spread(host, lambda h: b1_service_times(*args, h, *rest))
    return host
