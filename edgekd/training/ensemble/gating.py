"""Gating: which specialists an image activates, from the generalist's top-n classes."""

from __future__ import annotations

from typing import Any

import numpy as np
from keras import ops

__all__ = ["activation_plan", "gate", "top_n_candidates"]


def top_n_candidates(p_general: Any, n: int) -> Any:
    """Return a 0/1 mask of each row's n most probable classes.

    Ties go to the lower class index, as `keras.ops.top_k` breaks them.

    Args:
        p_general: tensor (B, K). The generalist's class probabilities (or logits; only
            the order matters).
        n: int >= 1. How many candidates per row; more than K means all K.

    Returns:
        float32 tensor (B, K) with exactly min(n, K) ones per row.

    Raises:
        ValueError: if `n` < 1.
    """
    if int(n) < 1:
        raise ValueError(f"top_n must be >= 1, got {n!r}.")
    p = ops.cast(ops.convert_to_tensor(p_general), "float32")
    num_classes = p.shape[-1]
    n = min(int(n), int(num_classes))
    _, idx = ops.top_k(p, k=n, sorted=False)
    return ops.sum(ops.one_hot(idx, num_classes, dtype="float32"), axis=1)


def gate(
    p_general: Any, membership: Any, *, top_n: int = 1, confidence: float | None = None
) -> Any:
    """Decide which specialists each image activates.

    Specialist m is active for image b when its class set intersects b's top-n classes
    under the generalist. With `confidence` set, an image whose top generalist probability
    is at least `confidence` activates no specialist: the generalist answers alone.

    Args:
        p_general: tensor (B, K). The generalist's class probabilities.
        membership: array (M, K) of 0/1 (see `membership_matrix`).
        top_n: int >= 1. How many of the generalist's top classes count. Defaults to 1.
        confidence: float or None. Skip specialists for images at least this confident.
            Defaults to None (never skip).

    Returns:
        float32 tensor (B, M) of 0/1.

    Raises:
        ValueError: if the shapes disagree or `top_n` < 1.
    """
    p = ops.cast(ops.convert_to_tensor(p_general), "float32")
    mem = ops.cast(ops.convert_to_tensor(membership), "float32")
    if len(p.shape) != 2 or len(mem.shape) != 2 or p.shape[-1] != mem.shape[-1]:
        raise ValueError(
            f"expected p_general (B, K) and membership (M, K); got shapes {tuple(p.shape)} "
            f"and {tuple(mem.shape)}."
        )
    hits = ops.matmul(top_n_candidates(p, top_n), ops.transpose(mem))  # (B, M) overlap sizes
    active = ops.cast(hits > 0.5, "float32")
    if confidence is not None:
        unsure = ops.max(p, axis=-1, keepdims=True) < float(confidence)
        active = active * ops.cast(unsure, "float32")
    return active


def activation_plan(active: Any) -> list[np.ndarray]:
    """List, for each specialist, the images that activate it.

    For batched inference: gather those images, run the specialist once on them, and
    scatter its outputs back.

    Args:
        active: array (B, M), bool or 0/1 (a tensor converts too).

    Returns:
        M int64 arrays, ascending row indices into the batch.
    """
    a = np.asarray(ops.convert_to_numpy(active) if not isinstance(active, np.ndarray) else active)
    if a.ndim != 2:
        raise ValueError(f"active must have shape (batch, specialists), got {a.shape}.")
    on = a > 0
    return [np.flatnonzero(on[:, m]).astype(np.int64) for m in range(on.shape[1])]
