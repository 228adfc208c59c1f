"""Built-in scenarios: the seed document's worked examples and mini challenge."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml


def _dir():
    return resources.files(__name__)


def names() -> list[str]:
    """Names of the built-in scenarios, sorted."""
    return sorted(p.name[: -len(".yaml")] for p in _dir().iterdir() if p.name.endswith(".yaml"))


def text(name: str) -> str:
    """The YAML text of a built-in scenario."""
    return (_dir() / f"{name}.yaml").read_text()


def data(name: str) -> dict:
    """The plain data of a built-in scenario."""
    return yaml.safe_load(text(name))


def project_dir() -> Path:
    """The checkout capsim runs from (it holds the shipped calibration/ profiles that built-in
    scenarios refer to); meaningless for an installed wheel, where those profiles are absent."""
    return Path(__file__).resolve().parents[2]
