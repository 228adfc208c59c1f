"""The real system: an inference server, a load generator, and the comparison of measured
latency with capsim's prediction (``capsim serve``, ``capsim load``, ``capsim validate``)."""

from __future__ import annotations

from capsim.errors import CapsimError


def require_serve() -> None:
    """aiohttp (the ``serve`` extra) or a one-line error saying how to install it."""
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        raise CapsimError("capsim serve/load/validate: needs aiohttp; pip install -e '.[serve]'") from None
