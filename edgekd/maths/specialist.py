"""A specialist's label space: its group's classes in order, then one dustbin for the rest.

Training, eval and export all map labels into this space and score in it.
"""

from __future__ import annotations

import math

import numpy as np


def specialist_labels(labels: np.ndarray, group: list[int], num_classes: int) -> np.ndarray:
    """Labels in a specialist's space: position in the group, or len(group) (the dustbin)."""
    mapping = np.full(num_classes, len(group), np.int32)
    mapping[np.asarray(group)] = np.arange(len(group), dtype=np.int32)
    return mapping[labels]


def dustbin_correction(prior_in: float, share: float) -> float:
    """log(true/training odds of the dustbin): added to its logit after enriched training."""
    return math.log((1.0 - prior_in) / (1.0 - share)) - math.log(prior_in / share)


def specialist_metrics(
    probs: np.ndarray, labels: np.ndarray, group: list[int], num_classes: int, dustbin: bool
) -> dict[str, float]:
    """Accuracy on its own classes (argmax over all outputs), among its classes only, and
    how often images of other classes land in the dustbin."""
    in_group = np.isin(labels, group)
    spec = specialist_labels(labels, group, num_classes)
    pred = probs.argmax(1)
    own = float((pred[in_group] == spec[in_group]).mean()) if in_group.any() else float("nan")
    among = probs[:, : len(group)].argmax(1)
    group_acc = float((among[in_group] == spec[in_group]).mean()) if in_group.any() else 0.0
    out = ~in_group
    dust = float((pred[out] == len(group)).mean()) if dustbin and out.any() else float("nan")
    return {"own_class_accuracy": own, "group_accuracy": group_acc, "dustbin_accuracy": dust}
