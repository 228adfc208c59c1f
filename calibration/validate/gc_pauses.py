"""Run a capsim command with Python's garbage collections timed (``gc.callbacks``): every
collection's generation, length (ms) and wall time go to a JSON file when the command ends.

    python calibration/validate/gc_pauses.py gc.json serve --model resnet18 ...
"""

from __future__ import annotations

import atexit
import gc
import json
import sys
import time

_pauses: list[tuple[int, float, float]] = []
_began = [0.0]


def _timed(phase: str, info: dict) -> None:
    if phase == "start":
        _began[0] = time.perf_counter()
    else:
        _pauses.append((info["generation"], (time.perf_counter() - _began[0]) * 1000.0, time.time()))


def _dump() -> None:
    with open(sys.argv[1], "w") as fh:
        json.dump(_pauses, fh)


if __name__ == "__main__":
    gc.callbacks.append(_timed)
    atexit.register(_dump)
    from capsim.cli import main

    sys.exit(main(sys.argv[2:]))
