"""The engine's fast path (a contiguous queue, no per-request bookkeeping) and its general path
(caps and timeouts in force) must give identical traces when the caps and timeouts never bite."""

import numpy as np
import pytest

from capsim.config import parse_scenario
from capsim.simulate import run_replication

FIELDS = ("entry", "dispatch", "start", "end", "done", "latency_ms", "batch_size", "instance", "drop_reason")


def _scenario(mode: str, instances: int, preferred: list[int], queue: dict) -> dict:
    return {
        "arrivals": {"process": "bursty", "rate_rps": 60, "burst_rate_rps": 400, "mean_burst_s": 0.2,
                     "mean_calm_s": 1.0},
        "service": {"batch_latency_ms": {1: 6, 2: 7, 4: 9, 8: 14}, "variability": {"distribution": "gamma", "cv": 0.3},
                    "preprocess": {"ms": 1, "workers": 1}, "postprocess": {"ms": 0.5, "workers": 2},
                    "contention": {2: 1.3, 3: 1.5}},
        "batching": {"mode": mode, "max_batch_size": 8, "max_queue_delay_ms": 3,
                     "preferred_batch_sizes": preferred},
        "instances": instances,
        "queue": queue,
        "run": {"requests": 6000, "warmup_requests": 100, "replications": 1, "seed": 11},
    }


@pytest.mark.parametrize("mode,instances,preferred", [("triton", 1, []), ("triton", 3, [4]), ("timer", 2, [])])
def test_fast_and_general_paths_agree(mode, instances, preferred):
    fast = run_replication(parse_scenario(_scenario(mode, instances, preferred, {})), 0)
    general = run_replication(parse_scenario(_scenario(mode, instances, preferred,
                                                       {"max_size": 10**6, "timeout_ms": 10**7})), 0)
    assert fast.batch_size.max() > 1  # batching really happened
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(fast, f), getattr(general, f), err_msg=f)
