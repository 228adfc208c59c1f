"""Numerical fidelity of a reduced-precision model (FP16 / INT8) against its FP32 twin.

Accuracy checks here compare against the FP32 output of the *same weights on
the same inputs*: the reference is the FP32 model's output, the candidate the
FP16/INT8 model's output for identical input batches. The zoo's models have
random weights, so there is no dataset accuracy to report; "top-1 agreement"
means agreement with the FP32 model's own predictions, not with labels.

numpy only: no torch / onnxruntime import.
"""

from __future__ import annotations

import numpy as np

__all__ = ["compare"]


def _class_axis(ndim: int) -> int:
    """Axis holding the class scores for the output layouts the zoo produces."""
    if ndim == 2:  # classification [B, C]
        return 1
    if ndim == 4:  # segmentation [B, C, H, W]: per-pixel class
        return 1
    return -1  # detection [B, N, K] and anything else: the last axis


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Compare a candidate output with the FP32 reference output of the same model.

    The reference must be the FP32 output of the same weights on the same
    inputs (random weights: no dataset accuracy). Both arrays have the same
    shape with the batch on axis 0.

    Returns a dict:

    * ``top1_agreement`` - fraction of predictions whose argmax matches the
      reference: per row of a classification ``[B, C]`` output (argmax over
      axis 1), per pixel of a segmentation ``[B, C, H, W]`` output (argmax over
      axis 1), per box of a detection ``[B, N, K]`` output (argmax over the last
      axis). ``None`` for a 1-D output, which has no class axis.
    * ``max_abs_diff`` / ``mean_abs_diff`` - over all elements.
    * ``cosine_similarity`` - cosine between each sample's flattened reference
      and candidate, averaged over samples (1.0 where both are all zeros, 0.0
      where only one is).
    * ``samples`` - B.
    """
    ref = np.asarray(reference)
    cand = np.asarray(candidate)
    if ref.shape != cand.shape:
        raise ValueError(f"shape mismatch: reference {ref.shape} vs candidate {cand.shape}")
    if ref.ndim == 0 or ref.shape[0] == 0:
        raise ValueError(f"need a non-empty batch on axis 0, got shape {ref.shape}")
    ref64 = ref.astype(np.float64, copy=False)
    cand64 = cand.astype(np.float64, copy=False)
    b = ref.shape[0]

    top1: float | None
    if ref.ndim >= 2:
        axis = _class_axis(ref.ndim)
        top1 = float(np.mean(np.argmax(ref64, axis=axis) == np.argmax(cand64, axis=axis)))
    else:
        top1 = None

    diff = np.abs(ref64 - cand64)
    r = ref64.reshape(b, -1)
    c = cand64.reshape(b, -1)
    nr = np.linalg.norm(r, axis=1)
    nc = np.linalg.norm(c, axis=1)
    dot = np.einsum("ij,ij->i", r, c)
    both_zero = (nr == 0) & (nc == 0)
    denom = nr * nc
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(denom > 0, dot / np.where(denom > 0, denom, 1.0), 0.0)
    cos = np.where(both_zero, 1.0, np.clip(cos, -1.0, 1.0))

    return {
        "top1_agreement": top1,
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "cosine_similarity": float(cos.mean()),
        "samples": int(b),
    }
