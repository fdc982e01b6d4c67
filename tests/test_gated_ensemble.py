"""The gated ensemble's batched gather -> run -> scatter equals the dense computation."""

from __future__ import annotations

import numpy as np
import pytest

from edgekd.ensemble import fuse, gate, membership_matrix, scatter_specialist
from edgekd.ensemble.gated import GatedEnsemble
from edgekd.models import build_model
from edgekd.trainer import predict_probs

GROUPS = [[0, 1], [1, 2, 3]]


@pytest.fixture(scope="module")
def ensemble() -> GatedEnsemble:
    import keras

    keras.utils.set_random_seed(0)
    gen = build_model("resnet10", num_classes=5, width=4, input_shape=(8, 8, 3))
    specs = [
        build_model("resnet10", num_classes=len(g) + 1, width=4, input_shape=(8, 8, 3))
        for g in GROUPS
    ]
    return GatedEnsemble(gen, specs, GROUPS, num_classes=5, top_n=2, batch_size=16)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (40, 8, 8, 3)).astype(np.uint8)


def test_gathered_equals_dense(ensemble, images):
    out = ensemble.predict(images)
    general = predict_probs(ensemble.generalist, images)
    membership = membership_matrix(GROUPS, 5)
    active = np.asarray(gate(general, membership, top_n=2), np.float32)
    p_in = np.zeros((len(images), 2, 5), np.float32)
    p_dust = np.zeros((len(images), 2), np.float32)
    for m, model in enumerate(ensemble.specialists):  # every specialist on every image
        scattered, dust = scatter_specialist(predict_probs(model, images), GROUPS[m], 5)
        p_in[:, m], p_dust[:, m] = np.asarray(scattered), np.asarray(dust)
    dense = np.asarray(fuse(general, p_in, p_dust, active, membership, iterations=50))
    np.testing.assert_allclose(out.probs, dense, atol=1e-6)
    np.testing.assert_array_equal(out.active, active)
    np.testing.assert_allclose(out.probs.sum(1), 1.0, atol=1e-5)
    # Precomputed generalist probabilities give the same answer without rerunning it.
    np.testing.assert_allclose(ensemble.predict(images, general=general).probs, out.probs)


def test_confident_generalist_wakes_nobody(ensemble, images):
    quiet = GatedEnsemble(ensemble.generalist, ensemble.specialists, GROUPS, 5, confidence=1e-6)
    out = quiet.predict(images)
    assert out.active.sum() == 0
    np.testing.assert_allclose(out.probs, out.general, atol=1e-7)


def test_macs_follow_activation(ensemble):
    assert ensemble.macs_per_image(100, [10, 20], [0.5, 0.25]) == pytest.approx(110.0)
    assert ensemble(np.zeros((3, 8, 8, 3), np.uint8)).shape == (3, 5)
