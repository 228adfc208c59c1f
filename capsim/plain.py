"""Results as plain JSON data."""

from __future__ import annotations

import math


def finite(o):
    """Plain JSON data: non-finite floats (nothing to measure) become null, numpy scalars Python ones."""
    if isinstance(o, dict):
        return {k: finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [finite(v) for v in o]
    if hasattr(o, "item"):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o
