"""The gated ensemble's values: batched gather -> run -> scatter equals the dense
computation, the gate wakes the specialists a constructed generalist answer implies, and the
fused answer is the TF-free runtime's (`edgekd.maths.fusion`) on the same inputs."""

from __future__ import annotations

import numpy as np
import pytest

from edgekd.maths import fusion as nfusion
from edgekd.training.ensemble import fuse, gate, membership_matrix, scatter_specialist
from edgekd.training.ensemble.gated import GatedEnsemble
from edgekd.training.models import build_model
from edgekd.training.trainer import predict_probs

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
    return GatedEnsemble(
        gen, specs, GROUPS, num_classes=5, top_n=2, batch_size=16, dustbin=True, flip=False
    )


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (40, 8, 8, 3)).astype(np.uint8)


def test_gathered_equals_dense(ensemble, images):
    out = ensemble.predict(images)
    general = predict_probs(ensemble.generalist, images)
    membership = membership_matrix(GROUPS, 5)
    active = np.asarray(gate(general, membership, top_n=2), np.float32)
    assert 0 < active.mean() < 1, "some images skip a specialist: the gather path runs"
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
    quiet = GatedEnsemble(
        ensemble.generalist,
        ensemble.specialists,
        GROUPS,
        5,
        confidence=1e-6,
        top_n=1,
        dustbin=True,
        batch_size=256,
        flip=False,
    )
    out = quiet.predict(images)
    assert out.active.sum() == 0
    np.testing.assert_allclose(out.probs, out.general, atol=1e-7)


# A generalist answer per row, built so the top-2 classes (and so the gate) are known. Class 4
# is in no group; GROUPS = [[0, 1], [1, 2, 3]].
GENERAL = np.array(
    [
        [0.60, 0.05, 0.05, 0.05, 0.25],  # top {0, 4}: group 0 only
        [0.05, 0.60, 0.05, 0.05, 0.25],  # top {1, 4}: class 1 is in both groups
        [0.05, 0.05, 0.30, 0.55, 0.05],  # top {3, 2}: group 1 only
        [0.02, 0.02, 0.02, 0.02, 0.92],  # sure (>= confidence 0.9): nobody
        [0.30, 0.02, 0.02, 0.36, 0.30],  # top {3, 0} (4 loses the tie to 0): both
    ],
    np.float32,
)
EXPECTED_ACTIVE = [[1, 0], [1, 1], [0, 1], [0, 0], [1, 1]]


def test_gate_wakes_the_specialists_the_top_classes_imply(ensemble, images):
    confident = GatedEnsemble(
        ensemble.generalist,
        ensemble.specialists,
        GROUPS,
        5,
        top_n=2,
        confidence=0.9,
        dustbin=True,
        batch_size=256,
        flip=False,
    )
    out = confident.predict(images[: len(GENERAL)], general=GENERAL)
    np.testing.assert_array_equal(out.active, EXPECTED_ACTIVE)
    np.testing.assert_array_equal(out.general, GENERAL)
    np.testing.assert_array_equal(out.probs[3], GENERAL[3])  # nobody woke: p_g itself
    assert np.all(out.probs >= 0) and np.allclose(out.probs.sum(1), 1.0, atol=1e-5)
    # Woken specialists move the answer: every other row differs from the generalist's.
    moved = np.abs(out.probs - GENERAL).max(1)
    assert np.all(moved[[0, 1, 2, 4]] > 1e-3), moved
    # A specialist's mass stays on its own classes: a row only group 0 woke keeps the
    # generalist's split of the classes outside group 0 (2, 3, 4), up to a common factor.
    outside = out.probs[0, 2:] / GENERAL[0, 2:]
    np.testing.assert_allclose(outside, outside[0], rtol=1e-4)
    assert out.activation_rate.tolist() == pytest.approx([0.6, 0.6])
    assert out.members_per_image == pytest.approx(1 + 6 / 5)


def test_fused_answer_is_the_tf_free_runtimes(ensemble, images):
    """The same generalist and specialist probabilities through edgekd.maths.fusion (numpy,
    what the device runs) give the same gate and the same fused probabilities."""
    x = images[: len(GENERAL)]
    out = ensemble.predict(x, general=GENERAL)
    membership = nfusion.membership_matrix(GROUPS, 5)
    active = nfusion.gate(GENERAL, membership, top_n=2)
    np.testing.assert_array_equal(out.active, active)
    p_in = np.zeros((len(x), 2, 5), np.float32)
    p_dust = np.zeros((len(x), 2), np.float32)
    for m, model in enumerate(ensemble.specialists):
        rows = np.flatnonzero(active[:, m])
        p_in[rows, m], p_dust[rows, m] = nfusion.scatter_specialist(
            predict_probs(model, x[rows]), GROUPS[m], 5
        )
    want = nfusion.fuse(GENERAL, p_in, p_dust, active, membership, iterations=50)
    np.testing.assert_allclose(out.probs, want, atol=1e-5)
    # And the fused q is the objective's minimum: no better than the generalist's own answer
    # or a random point of the simplex.
    best = nfusion.fusion_objective(want, GENERAL, p_in, p_dust, active, membership)
    rival = np.random.default_rng(1).dirichlet(np.ones(5), size=len(x)).astype(np.float32)
    for other in (GENERAL, rival):
        worse = nfusion.fusion_objective(other, GENERAL, p_in, p_dust, active, membership)
        assert np.all(best <= worse + 1e-6), (best, worse)


def test_call_is_the_fused_probabilities_and_macs_follow_activation(ensemble, images):
    assert ensemble.macs_per_image(100, [10, 20], [0.5, 0.25]) == pytest.approx(110.0)
    flip = GatedEnsemble(
        ensemble.generalist,
        ensemble.specialists,
        GROUPS,
        5,
        flip=True,
        top_n=1,
        dustbin=True,
        batch_size=256,
    )
    assert flip.macs_per_image(100, [10, 20], [0.5, 0.25]) == pytest.approx(220.0)  # 2 views
    called = ensemble(images[:6])
    np.testing.assert_allclose(called, ensemble.predict(images[:6]).probs, atol=1e-7)
    assert called.shape == (6, 5) and np.allclose(called.sum(1), 1.0, atol=1e-5)
    zeros = ensemble(np.zeros((3, 8, 8, 3), np.uint8))
    np.testing.assert_allclose(zeros, np.repeat(zeros[:1], 3, axis=0), atol=1e-6)  # same image


def test_images_on_disk_are_predicted_in_chunks_alike(ensemble, images, tmp_path, monkeypatch):
    """A streamed set is read and run a chunk at a time, with the same answer."""
    import edgekd.training.ensemble.gated as gated_module
    from edgekd.data.store import DiskImages, write_store

    pixels = np.asarray(images, np.uint8)
    write_store(tmp_path / "rows.npy", pixels.shape, [pixels])
    monkeypatch.setattr(gated_module, "PREDICT_ROWS", 3)
    whole = ensemble.predict(pixels)
    chunked = ensemble.predict(DiskImages(tmp_path / "rows.npy"))
    np.testing.assert_allclose(chunked.probs, whole.probs, atol=1e-6)
    np.testing.assert_array_equal(chunked.active, whole.active)
