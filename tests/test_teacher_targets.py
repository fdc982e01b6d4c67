"""Stored teacher targets: the store, the labelling pass, and that a student trained on
stored targets is the student online distillation trains, step for step."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from edgekd.data import Augment, ImageBatches
from edgekd.errors import RecipeError
from edgekd.recipe import load_recipe, stable_digest
from edgekd.training.distill import Distiller, ModelTeacher, StoredTeacher
from edgekd.training.teacher_targets import (
    TargetBatches,
    TargetStore,
    label_epochs,
)

from .conftest import read_manifest, run_cli

K = 4


def _data(n: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 8, 8, 3)).astype(np.uint8), rng.integers(0, K, n)


def _model(seed: int, name: str) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(K)(x), name=name)


STREAM = dict(batch_size=16, shuffle=True, augment=Augment(crop_padding=2), seed=3,
              drop_remainder=True)  # fmt: skip


def test_store_round_trip_and_validation(tmp_path):
    store = TargetStore(tmp_path, {"teacher": "a", "seed": 0}, K)
    assert store.path.name == stable_digest({"seed": 0, "teacher": "a"})  # order does not matter
    assert TargetStore(tmp_path, {"teacher": "b", "seed": 0}, K).path != store.path
    assert store.load(0, 8) is None
    q = np.random.default_rng(0).dirichlet(np.ones(K), 8).astype(np.float32)
    store.write(0, q, 1.5)
    store.write(1, q, 2.0)
    np.testing.assert_array_equal(store.load(0, 8), q)
    assert store.load(0, 9) is None  # another stream's length: not these targets
    assert store.label_seconds(2) == 3.5 and store.label_seconds(1) == 1.5
    store.epoch_path(1).write_bytes(b"not an array")
    assert store.load(1, 8) is None
    # A store.json written for other inputs is not believed.
    (store.path / "store.json").write_text(json.dumps({"inputs": {"x": 1}, "label_s": {"1": 9}}))
    assert store.label_seconds(1) == 0.0
    assert not list(store.path.glob(".*"))  # no temporary files left behind


def test_label_epochs_stores_the_teachers_output_on_each_batch(tmp_path):
    images, labels = _data()
    teacher = _model(1, "teacher")
    batches = ImageBatches(images, labels, **STREAM)
    store = TargetStore(tmp_path, {"t": 1}, K)
    lines: list[str] = []
    spent = label_epochs(ModelTeacher(teacher), batches, store, 2, lines.append)
    assert spent > 0 and len(lines) == 2 and "epoch 2/2" in lines[1]
    assert batches.epoch == 0  # restored
    rows = len(batches) * STREAM["batch_size"]
    for epoch in range(2):
        batches.epoch = epoch
        want = np.concatenate(
            [keras.ops.convert_to_numpy(keras.ops.softmax(teacher(batches[i][0])))
             for i in range(len(batches))]
        )  # fmt: skip
        np.testing.assert_allclose(store.load(epoch, rows), want, atol=1e-6)
    assert not np.allclose(store.load(0, rows), store.load(1, rows))  # new views each epoch
    # Stored epochs are not labelled again; a third is added.
    assert label_epochs(ModelTeacher(teacher), batches, store, 2, lines.append) == 0.0
    label_epochs(ModelTeacher(teacher), batches, store, 3, lines.append)
    assert len(lines) == 3 and "epoch 3/3" in lines[2]


def test_stored_targets_train_the_same_student_as_online_distillation(tmp_path):
    images, labels = _data(64)
    teacher = _model(1, "teacher")
    store = TargetStore(tmp_path, {"t": 1}, K)
    label_epochs(ModelTeacher(teacher), ImageBatches(images, labels, **STREAM), store, 2)
    rows = (64 // STREAM["batch_size"]) * STREAM["batch_size"]

    def train(stored: bool) -> tuple[list[np.ndarray], dict]:
        student = _model(2, "student")
        d = Distiller(
            student, StoredTeacher() if stored else teacher, temperature=3.0, soft_weight=0.7
        )
        d.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), metrics=["accuracy"])
        if stored:
            batches = TargetBatches(
                images, labels, targets=lambda e: store.load(e, rows), **STREAM
            )
        else:
            batches = ImageBatches(images, labels, **STREAM)
        hist = d.fit(batches, epochs=2, shuffle=False, verbose=0)
        return student.get_weights(), hist.history

    online_w, online_h = train(stored=False)
    stored_w, stored_h = train(stored=True)
    for a, b in zip(online_w, stored_w, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    for key in ("loss", "soft_loss", "hard_loss", "accuracy"):
        np.testing.assert_allclose(online_h[key], stored_h[key], rtol=1e-4)
    assert not np.allclose(online_w[-1], _model(2, "student").get_weights()[-1])  # it trained


def test_stored_teacher_refuses_what_it_cannot_do():
    images, labels = _data(32)
    with pytest.raises(ValueError, match="target='fused'"):
        Distiller(_model(0, "s"), StoredTeacher(), target="members")
    d = Distiller(_model(0, "s"), StoredTeacher(), soft_weight=0.5)
    d.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="labels, teacher probabilities"):
        d.fit(ImageBatches(images, labels, batch_size=16), epochs=1, verbose=0)
    short = TargetBatches(images, labels, batch_size=16, targets=lambda e: np.zeros((20, K)))
    with pytest.raises(ValueError, match="end at row 20"):
        short[1]


def test_recipe_refuses_stored_targets_with_member_tempering():
    with pytest.raises(RecipeError, match=r"student\.targets"):
        load_recipe("smoke", ["student.targets=stored", "student.target=members"])
    assert load_recipe("smoke", ["student.targets=stored"]).student.targets == "stored"
    # The default stays out of the stage hashes: runs made before the option keep theirs.
    plain = load_recipe("smoke")
    assert plain.digest("student") == load_recipe("smoke", ["student.targets=online"]).digest(
        "student"
    )
    assert plain.digest("student") != load_recipe("smoke", ["student.targets=stored"]).digest(
        "student"
    )


@pytest.mark.slow  # two student stages end to end (~1 min); the equivalence test runs by default
def test_student_stage_labels_once_and_a_second_student_reuses_the_targets(smoke_run):
    run_dir = smoke_run[0]
    stored = ["--set", "student.targets=stored", "--set", "student.control=false"]
    first = run_cli("train", str(run_dir / "recipe.yaml"), "--run-dir", str(run_dir), *stored)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "teacher targets, epoch 1/" in first.stdout + first.stderr
    student = read_manifest(run_dir)["stages"]["student"]["metrics"]
    # the labelling time is recorded (rounded to 0.1 s: on the smoke run it can be 0.0)
    assert student["targets"] == "stored" and student["teacher_targets_s"] >= 0
    (store,) = (run_dir / "targets").iterdir()
    epochs = sorted(p.name for p in store.glob("epoch-*.npy"))
    assert len(epochs) == student["epochs"]
    # Another student (another width, the same batches) reads the same store and labels nothing.
    second = run_cli(
        "train", str(run_dir / "recipe.yaml"), "--run-dir", str(run_dir), *stored,
        "--set", "student.width=2", "--set", "student.init=scratch",
    )  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    assert "teacher targets, epoch" not in second.stdout + second.stderr
    again = read_manifest(run_dir)["stages"]["student"]["metrics"]
    assert again["teacher_targets_s"] == pytest.approx(student["teacher_targets_s"], abs=0.2)
    assert sorted(p.name for p in store.glob("epoch-*.npy")) == epochs
