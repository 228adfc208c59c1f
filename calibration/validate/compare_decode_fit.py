"""Re-predict a recorded validation's cells with the decode's co-run speeds as measured and with
one speed fitted in the server (``server_fit.fit_decode_speed``), on the same measurements (the
recorded calibrations and cells; nothing is run again).

    python calibration/validate/compare_decode_fit.py calibration/validate/vm-2core-2026-11-26p/validation.json

Records before q timed the decode beside the largest batch only: that one speed stands for every
size; later ones timed it beside each size. Each variant derives the prediction from the same bracketed
calibration, as ``capsim validate`` does (CPU sharing, after idle, the model's own spread fitted
to the measured batch-1 spread). Prints, for each variant, the decode's speeds, the simulated
decode at the calibration rate against the measured one, the median |error| of the cells' decode
means, and the median |error| of p50 and p95 over loads <= 0.85.
"""

from __future__ import annotations

import json
import sys

from capsim.validate.validate import b1_simulation, decode_ms
from rederive import derive, errors  # calibration/validate/rederive.py


def main(path: str) -> None:
    record = json.load(open(path))
    st = record["settings"]
    for label, fit_decode in (("co-run speeds as measured", False), ("fitted in the server", True)):
        host = derive(record, fit_decode=fit_decode)
        ov = host["sharing"]["overlap"]
        speeds = (", ".join(f"b{b} x{v:.2f}" for b, v in sorted(ov["preprocess_speed_by_batch"].items()))
                  if "preprocess_speed_by_batch" in ov else f"x{ov['preprocess_speed']:.2f} for every size")
        b1 = decode_ms(*b1_simulation(record["profile"], record["overhead"], host, st["instances"],
                                      st["preprocess_workers"], st["seed"] + 1))
        e = errors(record, host, decode=True)
        print(f"{label:26s} decode {speeds} (b1 run {b1:.2f} vs {host['decode_ms']:.2f} ms measured)  "
              f"median |error| decode {e['decode']:.1f} %  p50 {e['p50']:.1f} %  p95 {e['p95']:.1f} %", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
