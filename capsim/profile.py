"""Calibration profiles: measured service times of a real model on real hardware, as JSON.

``capsim calibrate`` writes them (capsim/calibrate/); the simulator reads them here, with no ML
library: a scenario's ``service: {profile: path}`` takes its batch curve (the median per batch
size), its measured samples (``variability: {distribution: empirical}``), its pre/post-processing
times and its multi-instance contention table from the profile.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from capsim.errors import CapsimError

FORMAT_VERSION = 1


class ProfileError(CapsimError):
    """A profile that cannot be read or used; the message names the file and the fix."""


@dataclass
class Profile:
    """A loaded calibration profile (the JSON data, plus where it came from)."""

    data: dict
    path: str = ""

    # -- identity
    @property
    def model(self) -> dict:
        return self.data["model"]

    @property
    def hardware(self) -> dict:
        return self.data["hardware"]

    @property
    def label(self) -> str:
        m, h = self.model, self.hardware
        dev = h.get("gpu_name") if h.get("device") == "cuda" else h.get("cpu_model")
        return f"{m['name']} {m['backend']} {m['precision']} on {dev or h.get('device', '?')}"

    # -- timings
    @property
    def batches(self) -> list[dict]:
        return sorted(self.data["batches"], key=lambda b: b["batch_size"])

    def curve_ms(self) -> dict[int, float]:
        """Median compute time by measured batch size: the simulator's service curve."""
        return {int(b["batch_size"]): float(b["median_ms"]) for b in self.batches}

    def samples_ms(self) -> dict[int, np.ndarray]:
        """Measured per-call samples by batch size (only sizes that stored samples)."""
        return {int(b["batch_size"]): np.asarray(b["samples_ms"], dtype=float)
                for b in self.batches if b.get("samples_ms")}

    def stage_ms(self, stage: str) -> float | None:
        """Median per-image time of the ``preprocess`` or ``postprocess`` stage, when measured."""
        s = self.data.get(stage)
        return float(s["median_ms"]) if s else None

    def contention(self) -> dict[int, float]:
        """Slowdown factor by number of concurrently busy instances (empty when not measured)."""
        c = self.data.get("contention")
        if not c:
            return {}
        return {int(k): float(v["factor"]) for k, v in c["table"].items()}

    def to_json(self) -> str:
        return json.dumps(self.data, indent=1)


def load_profile(path: str | Path) -> Profile:
    """Read and check a profile; a missing or malformed file raises :class:`ProfileError`."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(f"profile {p} not found; measure one with capsim calibrate or pick one from calibration/") \
            from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProfileError(f"profile {p} is not a readable JSON calibration profile ({exc.__class__.__name__})") \
            from None
    problems = check_profile(data)
    if problems:
        raise ProfileError(f"profile {p} is not a valid calibration profile: {problems[0]}")
    return Profile(data, str(p))


def check_profile(data: Any) -> list[str]:
    """Structural problems of profile data, one line each (empty when valid)."""
    if not isinstance(data, dict):
        return ["must be a JSON object"]
    out = []
    if data.get("capsim_profile") != FORMAT_VERSION:
        out.append(f"capsim_profile: must be {FORMAT_VERSION}, got {data.get('capsim_profile')!r}")
    for key in ("model", "hardware", "batches"):
        if key not in data:
            out.append(f"{key}: missing")
    if out:
        return out
    for key in ("name", "backend", "precision"):
        if key not in data["model"]:
            out.append(f"model.{key}: missing")
    batches = data["batches"]
    if not isinstance(batches, list) or not batches:
        return out + ["batches: must list at least one measured batch size"]
    for i, b in enumerate(batches):
        if not isinstance(b, dict) or not isinstance(b.get("batch_size"), int) or b["batch_size"] < 1:
            out.append(f"batches[{i}].batch_size: must be a whole number >= 1")
            continue
        med = b.get("median_ms")
        if not isinstance(med, (int, float)) or not med > 0:
            out.append(f"batches[{i}].median_ms: must be > 0")
    return out


# --------------------------------------------------------------------------- fingerprint matching


def mismatch(profile: Profile, model: str | None, hardware: str | None) -> str | None:
    """Why the profile does not fit the scenario's declared model / hardware, or None when it does.

    The model must match by name; the hardware matches when the declared text occurs (case
    insensitive) in the profile's CPU model, GPU name or host name.
    """
    if model and model.lower() != str(profile.model.get("name", "")).lower():
        return (f"profile {profile.path} measured model {profile.model.get('name')!r} but the scenario declares "
                f"service.model {model!r}")
    if hardware:
        h = profile.hardware
        where = " | ".join(str(h.get(k) or "") for k in ("cpu_model", "gpu_name", "hostname"))
        if hardware.lower() not in where.lower():
            return (f"profile {profile.path} was measured on {where.strip(' |')!r} but the scenario declares "
                    f"service.hardware {hardware!r}")
    return None


# --------------------------------------------------------------------------- Triton perf_analyzer import

_BATCH_COLUMNS = ("batch size", "batch_size", "batch")
_INFER_COLUMN = "server compute infer"


def from_perf_analyzer(files: list[str], model: str = "imported", hardware: str = "") -> dict:
    """Build profile data from Triton perf_analyzer CSV files (``-f results.csv``).

    Each file's ``Server Compute Infer`` column (microseconds per inference request) gives the
    batch's compute time; the batch size comes from a ``Batch Size`` column, a ``FILE@B`` suffix, or
    a ``b8``/``batch8`` in the file name. The lowest-concurrency row is taken, since higher
    concurrency adds queueing that the simulator models itself. perf_analyzer keeps only averages,
    so the profile has no samples and no intervals.
    """
    points: dict[int, dict] = {}
    for spec in files:
        path, _, forced = spec.partition("@")
        p = Path(path)
        try:
            with open(p, newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
        except FileNotFoundError:
            raise ProfileError(f"--from-perf-analyzer: {p} not found") from None
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise ProfileError(f"--from-perf-analyzer: cannot read {p} as CSV ({exc.__class__.__name__})") from None
        if not rows:
            raise ProfileError(f"--from-perf-analyzer: {p} has no rows")
        cols = {c.strip().lower(): c for c in rows[0] if c}
        if _INFER_COLUMN not in cols:
            raise ProfileError(f"--from-perf-analyzer: {p} has no 'Server Compute Infer' column; export it with "
                               "perf_analyzer -f FILE --verbose-csv")
        batch_col = next((cols[c] for c in _BATCH_COLUMNS if c in cols), None)
        conc_col = cols.get("concurrency")
        default_b = None
        if forced:
            if not forced.isdigit() or int(forced) < 1:
                raise ProfileError(f"--from-perf-analyzer: {spec}: the batch size after @ must be a whole number >= 1")
            default_b = int(forced)
        elif batch_col is None:
            m = re.search(r"(?:^|[^a-z])(?:b|batch|bs)[_-]?(\d+)", p.stem.lower())
            if not m:
                raise ProfileError(f"--from-perf-analyzer: {p}: no batch size; add a 'Batch Size' column or write "
                                   f"{p}@B (e.g. {p}@8)")
            default_b = int(m.group(1))
        for i, row in enumerate(rows, start=2):
            try:
                b = default_b if default_b is not None else int(float(row[batch_col]))
                infer_ms = float(row[cols[_INFER_COLUMN]]) / 1000.0
                conc = float(row[conc_col]) if conc_col else 0.0
            except (TypeError, ValueError):
                raise ProfileError(f"--from-perf-analyzer: {p} line {i}: not a number in the batch, concurrency or "
                                   "Server Compute Infer column") from None
            if b < 1 or not infer_ms > 0:
                raise ProfileError(f"--from-perf-analyzer: {p} line {i}: batch size must be >= 1 and Server Compute "
                                   "Infer > 0")
            if b not in points or conc < points[b]["concurrency"]:
                points[b] = {"concurrency": conc, "infer_ms": infer_ms, "file": str(p)}
    batches = [{
        "batch_size": b, "median_ms": pt["infer_ms"], "mean_ms": pt["infer_ms"], "p95_ms": None, "p99_ms": None,
        "ci_ms": None, "stable": None, "reps": None, "samples_ms": [], "images_per_s": b / pt["infer_ms"] * 1000.0,
        "source": f"{pt['file']} (concurrency {pt['concurrency']:g})",
    } for b, pt in sorted(points.items())]
    return {
        "capsim_profile": FORMAT_VERSION,
        "model": {"name": model, "task": "unknown", "input_shape": None, "precision": "unknown",
                  "backend": "triton", "backend_version": None, "provider": "perf_analyzer"},
        "hardware": {"device": "unknown", "cpu_model": hardware or None, "gpu_name": hardware or None},
        "source": "perf_analyzer",
        "settings": {"method": "imported from perf_analyzer (averages only)"},
        "batches": batches,
        "max_feasible_batch": max(points),
        "failures": [],
        "preprocess": None, "postprocess": None, "contention": None, "fidelity": None,
    }
