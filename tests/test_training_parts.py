"""Schedules, losses, metrics, atomic writes and the resumable trainer, on tiny inputs."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from edgekd import atomic
from edgekd.data import ImageSet
from edgekd.recipe import ModelTrainConfig
from edgekd.training import accelerator
from edgekd.training.evaluate import Evaluation, confusion_matrix, per_class_table
from edgekd.training.losses import SparseCrossentropy
from edgekd.training.models import build_model
from edgekd.training.schedules import OneCycle, WarmupCosine, build_schedule
from edgekd.training.trainer import predict_probs, train_classifier


def test_warmup_cosine_values():
    s = WarmupCosine(peak_lr=1.0, total_steps=110, warmup_steps=10, final_lr=0.1)
    assert float(s(0)) == pytest.approx(0.0)
    assert float(s(5)) == pytest.approx(0.5)
    assert float(s(10)) == pytest.approx(1.0)
    assert float(s(60)) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert float(s(110)) == pytest.approx(0.1)
    assert float(s(500)) == pytest.approx(0.1)


def test_onecycle_values():
    s = OneCycle(peak_lr=1.0, total_steps=100, peak_at=0.2, final_lr=0.0)
    assert float(s(0)) == pytest.approx(0.1)
    assert float(s(10)) == pytest.approx(0.55)
    assert float(s(20)) == pytest.approx(1.0)
    assert float(s(60)) == pytest.approx(0.5)
    assert float(s(100)) == pytest.approx(0.0)


@pytest.mark.parametrize("cls", [WarmupCosine, OneCycle])
def test_schedules_round_trip(cls):
    s = cls(0.3, 1000)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(s))
    assert type(again) is cls and again.get_config() == s.get_config()


def test_build_schedule_steps_per_epoch():
    s = build_schedule("cosine", peak_lr=0.2, steps_per_epoch=10, epochs=5, warmup_epochs=1)
    assert isinstance(s, WarmupCosine) and s.total_steps == 50 and s.warmup_steps == 10
    assert build_schedule("constant", peak_lr=0.2, steps_per_epoch=10, epochs=5) == 0.2


def test_sparse_crossentropy_matches_hand_computation():
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]], np.float32)
    labels = np.array([0, 1])
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    nll = -logp[np.arange(2), labels]
    eps = 0.2
    expected = np.mean((1 - eps) * nll + eps * (-logp.mean(1)))
    got = float(SparseCrossentropy(label_smoothing=eps)(labels, logits))
    assert got == pytest.approx(expected, rel=1e-6)
    # Same as Keras' one-hot loss with its own smoothing.
    ref = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=eps)
    assert got == pytest.approx(float(ref(np.eye(3)[labels], logits)), rel=1e-5)
    assert float(SparseCrossentropy()(labels, logits)) == pytest.approx(nll.mean(), rel=1e-6)


def test_confusion_and_per_class():
    labels = np.array([0, 0, 1, 1, 1, 2])
    preds = np.array([0, 1, 1, 1, 0, 2])
    cm = confusion_matrix(labels, preds, 3)
    assert cm.tolist() == [[1, 1, 0], [1, 2, 0], [0, 0, 1]]
    probs = np.eye(3)[preds]
    ev = Evaluation.from_probs(probs, labels, ["a", "b", "c"])
    assert ev.accuracy == pytest.approx(4 / 6)
    assert ev.per_class == pytest.approx({"a": 0.5, "b": 2 / 3, "c": 1.0})
    table = per_class_table({"generalist": ev, "other": ev}, baseline="generalist")
    assert table.splitlines()[3] == "| b     |          66.67 |     66.67 |       +0.00 |"


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "x.json"
    atomic.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text().strip().startswith("{") and list(tmp_path.iterdir()) == [target]


def _tiny_data(n: int = 96, classes: int = 3, seed: int = 0) -> ImageSet:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    base = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]])[labels]
    images = np.clip(base[:, None, None, :] + rng.normal(0, 30, (n, 8, 8, 3)), 0, 255)
    return ImageSet(images.astype(np.uint8), labels.astype(np.int32), ["r", "g", "b"])


def _cfg(epochs: int) -> ModelTrainConfig:
    return ModelTrainConfig(
        arch="resnet10", width=4, epochs=epochs, batch_size=16,
        schedule={"name": "cosine", "warmup_epochs": 0.5},
    )  # fmt: skip


def _build():
    return build_model("resnet10", num_classes=3, width=4, input_shape=(8, 8, 3))


class _StopAfter(keras.callbacks.Callback):
    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 >= self.epochs:
            self.model.stop_training = True


def test_resumed_training_equals_uninterrupted(tmp_path):
    data = _tiny_data()
    accel = accelerator.resolve("float32", False)
    kwargs = dict(seed=3, augment=None, accel=accel, tensorboard=False, verbose=0)
    straight = train_classifier(_build, _cfg(3), data, None, tmp_path / "a", **kwargs)
    # A 3-epoch run stopped after epoch 2 (as a kill would leave it), then run again.
    first = train_classifier(
        _build, _cfg(3), data, None, tmp_path / "b", **kwargs, callbacks=[_StopAfter(2)]
    )
    assert len(first.history) == 2
    resumed = train_classifier(_build, _cfg(3), data, None, tmp_path / "b", **kwargs)
    assert resumed.resumed_from == 2 and len(resumed.history) == 3
    for w_a, w_b in zip(straight.model.weights, resumed.model.weights, strict=True):
        np.testing.assert_allclose(np.asarray(w_a), np.asarray(w_b), rtol=1e-5, atol=1e-6)
    assert int(resumed.model.optimizer.iterations) == int(straight.model.optimizer.iterations)


def test_mixed_precision_keeps_float32_logits(tmp_path):
    data = _tiny_data(48)
    accel = accelerator.resolve("mixed_bfloat16", False)
    result = train_classifier(
        _build, _cfg(1), data, data, tmp_path, seed=0, augment=None, accel=accel,
        tensorboard=False, verbose=0,
    )  # fmt: skip
    assert result.model.dtype_policy.name == "mixed_bfloat16"
    probs = predict_probs(result.model, data.images)
    assert probs.dtype == np.float32 and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    assert keras.config.dtype_policy().name == "float32"  # policy restored afterwards


def test_distiller_resume_equals_uninterrupted(tmp_path):
    """A Distiller checkpoint carries the student and optimizer (not the teacher) and resumes."""
    from edgekd.training.distill import Distiller, ModelTeacher
    from edgekd.training.schedules import Ramp

    data = _tiny_data()
    accel = accelerator.resolve("float32", False)
    keras.utils.set_random_seed(7)
    teacher = ModelTeacher(_build())

    def wrap(student):
        return Distiller(student, teacher, temperature=Ramp(6.0, 2.0, 12), soft_weight=0.7)

    kwargs = dict(seed=3, augment=None, accel=accel, tensorboard=False, verbose=0, wrap=wrap)
    straight = train_classifier(_build, _cfg(3), data, None, tmp_path / "a", **kwargs)
    first = train_classifier(
        _build, _cfg(3), data, None, tmp_path / "b", **kwargs, callbacks=[_StopAfter(2)]
    )
    assert len(first.history) == 2 and "soft_loss" in first.history[0]
    resumed = train_classifier(_build, _cfg(3), data, None, tmp_path / "b", **kwargs)
    assert resumed.resumed_from == 2
    a, b = straight.model.student.weights, resumed.model.student.weights
    for w_a, w_b in zip(a, b, strict=True):
        np.testing.assert_allclose(np.asarray(w_a), np.asarray(w_b), rtol=1e-5, atol=1e-6)
    # The temperature ramp is read from the restored optimizer step.
    assert float(resumed.model.schedule_values()[0]) == pytest.approx(2.0)
