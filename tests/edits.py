"""Test helpers: a scenario dict with some dotted-path fields changed (None removes a field), and
hand-made arrival streams for hand-computed timelines."""

from __future__ import annotations

import copy

import numpy as np

from capsim.arrivals import ArrivalStream


def edited(base: dict, **edits) -> dict:
    """A deep copy of ``base`` with each ``"a.b.c": value`` set (``None``: the field removed)."""
    data = copy.deepcopy(base)
    for path, value in edits.items():
        node = data
        *head, last = path.split(".")
        for k in head:
            node = node.setdefault(k, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return data


def stream(times_s) -> ArrivalStream:
    """One source's arrivals at ``times_s`` (seconds), frames numbered from 0."""
    n = len(times_s)
    return ArrivalStream(np.asarray(times_s, float), np.zeros(n, np.int32), np.arange(n), 1)
