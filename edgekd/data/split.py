"""Seeded, class-stratified index selection: validation splits and per-class limits.

Both work class by class with a generator seeded by (purpose, seed, class), so a class's
choice does not move when another class gains or loses images.
"""

from __future__ import annotations

import numpy as np

# Distinct first words keep the random streams of the two selections apart for one seed.
_SPLIT_STREAM = 0x53504C4954  # "SPLIT"
_LIMIT_STREAM = 0x4C494D4954  # "LIMIT"


def _class_rng(stream: int, seed: int, label: int) -> np.random.Generator:
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.random.default_rng([stream, seed, int(label)])


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into train and validation, class by class.

    Each class with n images gives round(n * val_fraction) of them to validation, at least
    one when n >= 2, and always keeps at least one for training.

    Args:
        labels: np.ndarray. (N,) integer class labels.
        val_fraction: float. Share of each class that goes to validation, in [0, 1).
        seed: int. Seed of the random choice (>= 0); the same seed gives the same split.

    Returns:
        (train_indices, val_indices), each sorted; val is empty when val_fraction is 0.

    Example:
        >>> train, val = stratified_split(np.array([0, 0, 0, 0, 1, 1]), 0.25, seed=0)
        >>> len(train), len(val)
        (4, 2)
    """
    labels = np.asarray(labels)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0:
        return np.arange(len(labels)), np.empty(0, dtype=np.int64)
    val_parts = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        n = len(members)
        if n < 2:
            continue
        count = min(max(round(n * val_fraction), 1), n - 1)
        rng = _class_rng(_SPLIT_STREAM, seed, label)
        val_parts.append(rng.choice(members, size=count, replace=False))
    val = np.sort(np.concatenate(val_parts)) if val_parts else np.empty(0, dtype=np.int64)
    is_val = np.zeros(len(labels), dtype=bool)
    is_val[val] = True
    return np.flatnonzero(~is_val), val


def choose_per_class(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Sorted indices of at most `limit` images per class, a seeded random choice.

    Args:
        labels: np.ndarray. (N,) integer class labels.
        limit: int. Most images kept per class (>= 1).
        seed: int. Seed of the random choice (>= 0); the same seed gives the same choice.
    """
    labels = np.asarray(labels)
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    keep = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) > limit:
            members = _class_rng(_LIMIT_STREAM, seed, label).choice(members, limit, replace=False)
        keep.append(members)
    return np.sort(np.concatenate(keep)) if keep else np.empty(0, dtype=np.int64)
