"""Specialist training parts: enriched batches, label mapping, prior correction, init."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from edgekd.data import EnrichedBatches
from edgekd.maths.specialist import (
    dustbin_correction,
    specialist_labels,
    specialist_metrics,
)
from edgekd.training.models.layers import LogitAdjustment


def test_specialist_labels_map_outsiders_to_dustbin():
    labels = np.array([0, 1, 2, 3, 4, 2])
    assert specialist_labels(labels, [2, 4], 5).tolist() == [2, 2, 0, 2, 1, 0]


def test_enriched_batches_hold_the_share_and_cycle_pools():
    labels = np.arange(100) % 10
    images = np.zeros((100, 4, 4, 3), np.uint8)
    in_group = np.isin(labels, [3, 5])  # 20% of images
    b = EnrichedBatches(images, labels, in_group=in_group, share=0.5, batch_size=10, seed=1)
    assert len(b) == 10 and b.per_batch_in == 5
    order = b.order(0).reshape(10, 10)
    assert in_group[order].sum(1).tolist() == [5] * 10  # every batch: half from the group
    first_pass = order[:, :5].reshape(-1)[:20]
    assert sorted(first_pass) == sorted(np.flatnonzero(in_group))  # no repeat within a pass
    assert not np.array_equal(b.order(0), b.order(1))
    again = EnrichedBatches(images, labels, in_group=in_group, share=0.5, batch_size=10, seed=1)
    assert np.array_equal(again.order(3), b.order(3))


def test_dustbin_correction_restores_true_odds():
    # Group is 20% of the data but half of each batch: the dustbin was under-seen 0.8 vs 0.5
    # while the group was over-seen 0.2 vs 0.5: odds ratio (0.8/0.5)/(0.2/0.5) = 4.
    assert dustbin_correction(0.2, 0.5) == pytest.approx(math.log(4.0))
    assert dustbin_correction(0.3, 0.3) == pytest.approx(0.0)


def test_corrected_model_probabilities_follow_bayes():
    # A model whose training prior was enriched: shifting logits by log(true/train prior)
    # recovers the posterior under the true prior.
    inputs = keras.Input((3,))
    model = keras.Model(inputs, LogitAdjustment([0.0, 0.0, math.log(4.0)])(inputs))
    logits = np.log(np.array([[0.25, 0.25, 0.5]], np.float32))
    out = np.asarray(model(logits))
    probs = np.exp(out) / np.exp(out).sum()
    expected = np.array([0.25, 0.25, 2.0]) / 2.5
    np.testing.assert_allclose(probs[0], expected, rtol=1e-6)
    restored = keras.Model.from_config(model.get_config())
    np.testing.assert_allclose(np.asarray(restored(logits)), out)


def test_specialist_metrics_by_hand():
    labels = np.array([0, 1, 2, 2, 1])
    group = [1, 2]  # specialist space: class1->0, class2->1, dustbin->2
    probs = np.array(
        [[0.1, 0.1, 0.8], [0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.3, 0.2, 0.5], [0.2, 0.1, 0.7]]
    )
    m = specialist_metrics(probs, labels, group, num_classes=3, dustbin=True)
    assert m["own_class_accuracy"] == pytest.approx(2 / 4)  # 3, 4 went to the dustbin
    assert m["group_accuracy"] == pytest.approx(3 / 4)  # among its two classes only row 3 is wrong
    assert m["dustbin_accuracy"] == pytest.approx(1.0)
