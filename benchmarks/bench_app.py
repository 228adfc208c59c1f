"""How fast the what-if app answers a slider move (issue 5's target: under 1 s on a built-in scenario).

Run from the repository root::

    python benchmarks/bench_app.py

It drives app.py headless with streamlit.testing's AppTest (the same script run Streamlit does
for a browser, without the websocket round trip) and prints, for every built-in scenario, the
time of the first render (imports, compiled-engine load) and of reruns after moving the
offered-rate slider to rates not seen before (so nothing comes from the cache), with and without
the curves (latency vs rate, vs max batch size). The cached rerun (moving back to a seen rate) is
the baseline measured in the same run.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TARGET_S = 1.0


def main() -> int:
    from streamlit.testing.v1 import AppTest

    from capsim import scenarios
    from capsim.config import load_scenario

    print(f"capsim app benchmark: AppTest reruns of app.py, python {sys.version.split()[0]}")
    print(f"{'scenario':30s}{'first s':>9s}{'move, curves s':>16s}{'move, no curves s':>19s}{'cached s':>10s}")
    worst = 0.0
    for name in scenarios.names():
        at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300)
        t = time.perf_counter()
        at.run()
        at.selectbox(key="builtin").set_value(name).run()
        first = time.perf_counter() - t
        rate = load_scenario(name).arrivals.offered_rps()

        def move(factor: float) -> float:
            t0 = time.perf_counter()
            at.slider(key="offered_rps").set_value(round(rate * factor, 2)).run()
            assert not at.exception, at.exception
            return time.perf_counter() - t0

        with_curves = statistics.median(move(f) for f in (0.8, 0.85, 0.9))
        at.toggle(key="curves").set_value(False).run()
        no_curves = statistics.median(move(f) for f in (0.7, 0.75, 0.95))
        cached = statistics.median(move(0.8) for _ in range(3))
        worst = max(worst, with_curves)
        print(f"{name:30s}{first:9.2f}{with_curves:16.2f}{no_curves:19.2f}{cached:10.2f}")
    print(f"\nslowest slider move with curves: {worst:.2f} s   target < {TARGET_S:g} s   "
          f"{'MET' if worst < TARGET_S else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
