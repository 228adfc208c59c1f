"""What if the prediction knew the machine's slow spells? Re-predict a recorded validation's cells
(nothing is run again) with ``service.slow_spells`` of given sizes, carried over from a side
measurement of the same kind of machine (``device-2026-11-27/stalls.py``: every 1.6 s, 0.2-0.3 s
at about x3). For each variant the calm speed is fitted so that the simulated batch-1 mean at the
calibration rate stays as calibrated (the measured means include the spells), and the model's
own spread is refitted above the calm model's (the profile: p95 / median 1.02; the co-run's
spread there includes the spells).

    python calibration/validate/compare_slow_spells.py calibration/validate/device-2026-11-27/validation.json \\
        calibration/validate/device-2026-11-27/resnet18-onnxruntime-cpu-fp32.json
"""

from __future__ import annotations

import json
import sys

import numpy as np

from capsim.validate import server_fit
from capsim.validate.validate import b1_service_times
from rederive import derive, errors  # calibration/validate/rederive.py

CALM_CV = 0.03
VARIANTS = [None] + [{"every_s": 1.6, "length_ms": length, "slowdown": 3.0, "regular": regular}
                     for length in (200.0, 250.0) for regular in (True, False)]


def main(path: str, profile: str | None = None) -> None:
    record = json.load(open(path))
    if profile:
        record["profile"] = profile
    ov, st = record["overhead"], record["settings"]
    fit_spread = server_fit.fit_spread

    def times(host):
        return b1_service_times(record["profile"], ov, host, st["instances"], st["preprocess_workers"], st["seed"])

    for spells in VARIANTS:
        def with_spells(host, service_times, spells=spells):
            if spells:
                calm_mean = np.mean(server_fit.trimmed(service_times(host)))   # as calibrated, no spells
                host.update(slow_spells=spells, spells_calm=1.0)
                for _ in range(3):
                    host["spells_calm"] *= calm_mean / np.mean(server_fit.trimmed(service_times(host)))
                host["corun"]["alone_cv"] = CALM_CV
            fit_spread(host, service_times)

        server_fit.fit_spread = with_spells   # derive() fits the spread last, with the spells in place
        try:
            host = derive(record)
        finally:
            server_fit.fit_spread = fit_spread
        e = errors(record, host)
        label = ("no spells" if not spells else
                 f"every {spells['every_s']:g} s, {spells['length_ms']:g} ms, x{spells['slowdown']:g}, "
                 + ("regular" if spells["regular"] else "random"))
        print(f"{label:40s} calm x{host.get('spells_calm', 1.0):.3f}  own cv {host['own_cv']:.3f}  "
              f"median |error| p50 {e['p50']:.1f} %  p95 {e['p95']:.1f} %", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
