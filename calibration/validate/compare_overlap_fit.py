"""Re-predict a recorded validation's cells with and without the overlap-strength fit, on the
same measurements (the recorded calibrations and cells; nothing is run again).

    python calibration/validate/compare_overlap_fit.py calibration/validate/vm-2core-2026-11-26i/validation.json

The record must come from a run with ``--overlap-fit`` (batch 1 timed at two rates). Each variant
derives the prediction from the same bracketed calibration, as ``capsim validate`` does: the
co-run's speeds as measured (``s = 1``) or scaled by the fitted strength, each with the model's
own spread fitted to the measured batch-1 spread. Prints the median |error| of p50 and p95 over
loads <= 0.85 for each variant.
"""

from __future__ import annotations

import json
import sys

from rederive import derive, errors  # calibration/validate/rederive.py


def main(path: str) -> None:
    record = json.load(open(path))
    if "compute_ratio_light" not in record["overhead"]["host"]:
        sys.exit(f"{path}: no light-rate calibration in this record (run capsim validate with --overlap-fit)")
    for label, fit_strength in (("co-run as measured (s = 1)", False), ("fitted strength", True)):
        host = derive(record, fit_strength=fit_strength)
        e = errors(record, host)
        s = host.get("overlap_strength", 1.0)
        print(f"{label:28s} s {s:.2f}  own cv {host['own_cv']:.2f}  median |error| p50 {e['p50']:.1f} %  "
              f"p95 {e['p95']:.1f} %")


if __name__ == "__main__":
    main(sys.argv[1])
