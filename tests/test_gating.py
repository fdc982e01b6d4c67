"""Gating: top-n candidate masks, which specialists they activate, the confidence
shortcut, and the per-specialist plan for batched inference."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from edgekd.training.ensemble.fusion import membership_matrix
from edgekd.training.ensemble.gating import activation_plan, gate, top_n_candidates

P = np.array(
    [
        [0.70, 0.20, 0.05, 0.05],  # clear winner: class 0, then 1
        [0.10, 0.15, 0.25, 0.50],  # class 3, then 2
        [0.25, 0.25, 0.25, 0.25],  # all tied
        [0.05, 0.40, 0.45, 0.10],  # class 2, then 1
    ],
    np.float32,
)
GROUPS = [[0, 1], [2], [1, 3]]


def np_(x):
    return keras.ops.convert_to_numpy(x)


def test_top_n_masks():
    np.testing.assert_array_equal(
        np_(top_n_candidates(P, 1)), [[1, 0, 0, 0], [0, 0, 0, 1], [1, 0, 0, 0], [0, 0, 1, 0]]
    )
    top2 = np_(top_n_candidates(P, 2))
    np.testing.assert_array_equal(
        top2, [[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 0, 0], [0, 1, 1, 0]]
    )  # ties go to the lower class index
    assert top2.dtype == np.float32
    np.testing.assert_array_equal(np_(top_n_candidates(P, 9)), np.ones_like(P))  # n > K: all


def test_top_n_rejects_zero():
    with pytest.raises(ValueError, match="top_n"):
        top_n_candidates(P, 0)


def test_gate_intersects_groups():
    mem = membership_matrix(GROUPS, 4)
    np.testing.assert_array_equal(np_(gate(P, mem)), [[1, 0, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(
        np_(gate(P, mem, top_n=2)), [[1, 0, 1], [0, 1, 1], [1, 0, 1], [1, 1, 1]]
    )
    # Overlapping groups: class 1 sits in groups 0 and 2, so both fire for it.
    one = np.array([[0.1, 0.6, 0.2, 0.1]], np.float32)
    np.testing.assert_array_equal(np_(gate(one, mem)), [[1, 0, 1]])


def test_gate_confidence_skips_sure_images():
    mem = membership_matrix(GROUPS, 4)
    active = np_(gate(P, mem, top_n=2, confidence=0.5))
    # rows 0 (0.70) and 1 (0.50, at the threshold) are sure enough: no specialist
    np.testing.assert_array_equal(active, [[0, 0, 0], [0, 0, 0], [1, 0, 1], [1, 1, 1]])
    assert active.dtype == np.float32
    np.testing.assert_array_equal(np_(gate(P, mem, confidence=1.0)), np_(gate(P, mem)))


def test_gate_shape_error():
    with pytest.raises(ValueError, match="membership"):
        gate(P, membership_matrix(GROUPS, 5))


def test_activation_plan():
    active = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 0], [1, 0, 1]], np.float32)
    plan = activation_plan(active)
    assert len(plan) == 3
    np.testing.assert_array_equal(plan[0], [0, 2, 3])
    np.testing.assert_array_equal(plan[1], [])
    np.testing.assert_array_equal(plan[2], [0, 1, 3])
    assert all(p.dtype == np.int64 for p in plan)
    # From a tensor and from bools alike; gather -> scatter round-trips.
    assert [p.tolist() for p in activation_plan(keras.ops.convert_to_tensor(active))] == [
        p.tolist() for p in plan
    ]
    assert [p.tolist() for p in activation_plan(active > 0)] == [p.tolist() for p in plan]
    with pytest.raises(ValueError, match="shape"):
        activation_plan(np.ones(3))


def test_gate_then_plan_covers_every_active_pair():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(6), size=50).astype(np.float32)
    mem = membership_matrix([[0, 1, 2], [2, 3], [4, 5]], 6)
    active = np_(gate(p, mem, top_n=2))
    plan = activation_plan(active)
    rebuilt = np.zeros_like(active)
    for m, rows in enumerate(plan):
        rebuilt[rows, m] = 1.0
    np.testing.assert_array_equal(rebuilt, active)
    # Every image activates at least one specialist: these groups cover all classes.
    assert active.sum(-1).min() >= 1
