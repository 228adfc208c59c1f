"""Test helper: a scenario dict with some dotted-path fields changed (None removes a field)."""

from __future__ import annotations

import copy


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
