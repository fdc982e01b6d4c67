"""The Distiller: its loss against hand computation, schedules, what it trains, saving,
the gated teacher in-graph, and that soft targets from a strong teacher actually help."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops

from edgekd.training.distill import Distiller, ModelTeacher, replica_share
from edgekd.training.ensemble.gated import GatedEnsemble
from edgekd.training.losses import distillation_loss, soft_cross_entropy, temper
from edgekd.training.models import build_model
from edgekd.training.schedules import Ramp

ROOT = Path(__file__).resolve().parents[1]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_loss_matches_hand_computation():
    logits = np.array([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]], np.float32)
    q = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], np.float32)
    y = np.array([0, 2])
    t, lam = 3.0, 0.75
    q_t = _softmax(np.log(q) / t)
    p_t = _softmax(logits / t)
    soft = -(q_t * np.log(p_t)).sum(-1)
    hard = -np.log(_softmax(logits)[np.arange(2), y])
    want = lam * t**2 * soft + (1 - lam) * hard

    total, s, h = distillation_loss(temper(q, t), y, logits, t, lam)
    np.testing.assert_allclose(ops.convert_to_numpy(s), soft, rtol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(h), hard, rtol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(total), want, rtol=1e-5)
    # Tempering a softmax output is the same as dividing its logits.
    np.testing.assert_allclose(
        ops.convert_to_numpy(temper(_softmax(logits), t)), p_t, rtol=1e-5, atol=1e-7
    )


def test_t_squared_scaling_is_present():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 4)).astype("float32")
    q = _softmax(rng.normal(size=(5, 4))).astype("float32")
    y = rng.integers(0, 4, 5)
    for t in (1.0, 2.0, 5.0):
        total, soft, _ = distillation_loss(temper(q, t), y, logits, t, 1.0)
        np.testing.assert_allclose(
            ops.convert_to_numpy(total), t**2 * ops.convert_to_numpy(soft), rtol=1e-6
        )
    # With lambda = 1 the total is lambda * T^2 * CE: at T=4 it is 16x the plain CE term.
    soft4 = soft_cross_entropy(temper(q, 4.0), logits, 4.0)
    total4, _, _ = distillation_loss(temper(q, 4.0), y, logits, 4.0, 1.0)
    np.testing.assert_allclose(
        ops.convert_to_numpy(total4), 16 * ops.convert_to_numpy(soft4), rtol=1e-6
    )


def test_distiller_compute_loss_equals_formula_and_tracks_parts():
    keras.utils.set_random_seed(0)
    student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    teacher_probs = np.array([[0.6, 0.3, 0.1]] * 4, np.float32)
    distiller = Distiller(
        student, lambda x: ops.convert_to_tensor(teacher_probs), temperature=2.0, soft_weight=0.5
    )
    distiller.compile(optimizer=keras.optimizers.SGD(0.0))
    x = np.random.default_rng(1).normal(size=(4, 4)).astype("float32")
    y = np.array([0, 1, 2, 0])
    logits = ops.convert_to_numpy(student(x))
    q_t = _softmax(np.log(teacher_probs) / 2.0)
    soft = -(q_t * np.log(_softmax(logits / 2.0))).sum(-1).mean()
    hard = -np.log(_softmax(logits)[np.arange(4), y]).mean()
    logs = distiller.train_on_batch(x, y, return_dict=True)
    assert logs["loss"] == pytest.approx(0.5 * 4 * soft + 0.5 * hard, rel=1e-5)
    assert logs["soft_loss"] == pytest.approx(soft, rel=1e-5)
    assert logs["hard_loss"] == pytest.approx(hard, rel=1e-5)


def test_only_student_weights_change():
    keras.utils.set_random_seed(0)
    teacher = build_model("resnet10", num_classes=4, width=4, input_shape=(16, 16, 3))
    student = build_model("resnet10", num_classes=4, width=4, input_shape=(16, 16, 3), name="s")
    before_t = [w.copy() for w in teacher.get_weights()]
    before_s = [w.copy() for w in student.get_weights()]
    distiller = Distiller(student, teacher)
    assert len(distiller.trainable_weights) == len(student.trainable_weights)
    distiller.compile(optimizer=keras.optimizers.SGD(0.1))
    x = np.random.default_rng(0).integers(0, 255, (8, 16, 16, 3)).astype("float32")
    distiller.fit(x, np.arange(8) % 4, batch_size=4, epochs=1, verbose=0)
    for a, b in zip(before_t, teacher.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # BN statistics included: teacher runs in inference
    changed = [
        not np.array_equal(a, b) for a, b in zip(before_s, student.get_weights(), strict=True)
    ]
    assert any(changed)


def test_schedules_follow_optimizer_step():
    lin = Ramp(8.0, 2.0, total_steps=10)
    cos = Ramp(0.0, 1.0, total_steps=10, shape="cosine")
    for step, want_lin, want_cos in [(0, 8.0, 0.0), (5, 5.0, 0.5), (10, 2.0, 1.0), (20, 2.0, 1.0)]:
        assert float(lin(step)) == pytest.approx(want_lin)
        assert float(cos(step)) == pytest.approx(want_cos, abs=1e-6)
    assert float(Ramp(0.0, 1.0, 10, "cosine")(2)) == pytest.approx(
        0.5 * (1 - math.cos(0.2 * math.pi))
    )
    assert float(Ramp(3.0)(123)) == 3.0

    student = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    d = Distiller(student, lambda x: ops.softmax(ops.ones((ops.shape(x)[0], 2))),
                  temperature=lin, soft_weight=Ramp(1.0, 0.0, 10))  # fmt: skip
    d.compile(optimizer=keras.optimizers.SGD(0.01))
    x, y = np.ones((4, 2), np.float32), np.zeros(4, int)
    for _ in range(5):
        d.train_on_batch(x, y)
    t, lam = d.schedule_values()
    assert float(t) == pytest.approx(5.0) and float(lam) == pytest.approx(0.5)


def test_rejects_bad_configuration():
    student = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="needs soft_weight=0"):
        Distiller(student, None)
    with pytest.raises(ValueError, match="target"):
        Distiller(student, student, target="logits")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Distiller(student, student, soft_weight=1.5)
    with pytest.raises(ValueError, match="positive"):
        Distiller(student, student, temperature=0.0)


def test_save_keeps_student_not_teacher(tmp_path):
    keras.utils.set_random_seed(0)
    teacher = build_model("resnet10", num_classes=3, width=4, input_shape=(8, 8, 3), name="t")
    student = build_model("resnet10", num_classes=3, width=4, input_shape=(8, 8, 3), name="s")
    d = Distiller(student, teacher, temperature=Ramp(6.0, 2.0, 100, "cosine"))
    d.compile(optimizer=keras.optimizers.SGD(0.05))
    x = np.random.default_rng(0).integers(0, 255, (6, 8, 8, 3)).astype("float32")
    d.fit(x, np.arange(6) % 3, epochs=1, verbose=0)
    d.save(tmp_path / "d.keras")
    student.save(tmp_path / "s.keras")
    back = keras.models.load_model(tmp_path / "d.keras")
    assert isinstance(back, Distiller) and back.temperature.get_config()["shape"] == "cosine"
    # Recompiled on load despite the overridden compile(): the optimizer state comes back.
    assert back.compiled and int(back.optimizer.iterations) == int(d.optimizer.iterations) > 0
    for a, b in zip(back.optimizer.variables, d.optimizer.variables, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(back.student.predict(x, verbose=0), student.predict(x, verbose=0))
    with pytest.raises(ValueError, match="give it a teacher"):
        back.teacher(x)
    alone = keras.models.load_model(tmp_path / "s.keras")
    assert len(alone.weights) == len(student.weights)  # no teacher weights travel with it


def test_compile_refuses_a_loss_and_keeps_the_rest():
    student = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    d = Distiller(student, None, soft_weight=0.0)
    for kwargs in ({"loss": "sparse_categorical_crossentropy"}, {"loss_weights": [1.0]}):
        with pytest.raises(ValueError, match=r"loss.*constructor.*temperature=.*soft_weight="):
            d.compile(optimizer="sgd", **kwargs)
    with pytest.raises(ValueError, match="loss="):
        d.compile("sgd", "mse")  # positionally too
    d.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=None,
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=False,
        steps_per_execution=2,
    )
    logs = d.train_on_batch(np.ones((4, 2), np.float32), np.zeros(4, int), return_dict=True)
    assert {"loss", "hard_loss", "accuracy"} <= set(logs)


def test_config_builds_on_keras_base_config():
    student = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)], name="stu")
    d = Distiller(student, student, temperature=Ramp(5.0, 2.0, 50), soft_weight=0.3,
                  target="members", label_smoothing=0.1, name="dd", trainable=False)  # fmt: skip
    config = d.get_config()
    base = keras.Model.get_config(d)  # what Keras itself records (name, trainable, dtype)
    assert {"name", "trainable", "dtype"} <= set(base)
    assert {k: config[k] for k in base} == base
    back = Distiller.from_config(config)
    assert back.name == "dd" and back.trainable is False
    assert back.dtype_policy.name == d.dtype_policy.name
    assert back.target == "members" and back.label_smoothing == 0.1
    assert back.temperature.get_config() == d.temperature.get_config()
    assert back.soft_weight.get_config() == d.soft_weight.get_config()
    assert back.student.name == "stu"
    assert back.get_config().keys() == config.keys()


def _tiny_ensemble(seed: int = 0) -> GatedEnsemble:
    keras.utils.set_random_seed(seed)
    g = build_model("resnet10", num_classes=5, width=4, input_shape=(16, 16, 3), name="g")
    s1 = build_model("resnet10", num_classes=3, width=4, input_shape=(16, 16, 3), name="s1")
    s2 = build_model("resnet10", num_classes=4, width=4, input_shape=(16, 16, 3), name="s2")
    return GatedEnsemble(
        g, [s1, s2], [[0, 1], [2, 3, 4]], 5, top_n=1, dustbin=True, batch_size=256, flip=False
    )


@pytest.mark.parametrize("gather", [True, False])
def test_gated_teacher_matches_ensemble_predict(gather):
    import tensorflow as tf

    ens = _tiny_ensemble()
    x = np.random.default_rng(0).integers(0, 255, (40, 16, 16, 3)).astype("uint8")
    want = ens.predict(x)
    teacher = ens.teacher(gather=gather)
    got = tf.function(lambda a: teacher(a))(tf.constant(x, tf.float32)).numpy()
    np.testing.assert_allclose(got, want.probs, atol=1e-5)
    # Members tempered at T=1 are the members themselves.
    got1 = ops.convert_to_numpy(teacher(x.astype("float32"), temperature=1.0))
    np.testing.assert_allclose(got1, want.probs, atol=1e-5)


def test_gated_teacher_with_no_image_for_a_specialist():
    import tensorflow as tf

    ens = _tiny_ensemble()
    ens.confidence = 1e-6  # every image is "confident": no specialist wakes
    x = np.random.default_rng(0).integers(0, 255, (8, 16, 16, 3)).astype("float32")
    got = tf.function(lambda a: ens.teacher(gather=True)(a))(tf.constant(x)).numpy()
    general = ops.convert_to_numpy(ops.softmax(ens.generalist(x)))
    np.testing.assert_allclose(got, general, atol=1e-6)


def test_members_target_tempers_before_fusion():
    ens = _tiny_ensemble(1)
    x = np.random.default_rng(2).integers(0, 255, (16, 16, 16, 3)).astype("float32")
    teacher = ens.teacher(gather=False)
    fused_then = ops.convert_to_numpy(temper(teacher(x), 4.0))
    members_then = ops.convert_to_numpy(teacher(x, temperature=4.0))
    np.testing.assert_allclose(members_then.sum(-1), 1.0, atol=1e-5)
    # Softer than the untempered ensemble, and a different distribution from the fused one.
    ent = lambda p: -(p * np.log(p + 1e-12)).sum(-1).mean()  # noqa: E731
    assert ent(members_then) > ent(ops.convert_to_numpy(teacher(x)))
    assert np.abs(members_then - fused_then).max() > 1e-4


def test_model_teacher_tempers_logits():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    x = np.ones((2, 3), np.float32)
    z = ops.convert_to_numpy(model(x))
    np.testing.assert_allclose(
        ops.convert_to_numpy(ModelTeacher(model)(x, 2.0)), _softmax(z / 2), rtol=1e-5
    )


def test_replica_share_is_identity_without_a_strategy():
    assert float(replica_share(ops.convert_to_tensor(3.0))) == 3.0


def test_soft_targets_from_a_strong_teacher_beat_hard_labels():
    """Labels drawn from a known posterior (heavy label noise): the teacher is that posterior.

    The student that sees the posterior learns the Bayes decision from 300 noisy examples;
    its hard-label twin, same init, batches and schedule, learns it worse.
    """
    rng = np.random.default_rng(0)
    d, k, n = 20, 5, 300
    w_true = rng.normal(size=(d, k)).astype("float32") * 0.6
    x = rng.normal(size=(n, d)).astype("float32")
    x_test = rng.normal(size=(4000, d)).astype("float32")
    post = _softmax(x @ w_true)
    y = np.array([rng.choice(k, p=p) for p in post])
    bayes = (x_test @ w_true).argmax(1)

    def teacher(batch):
        return ops.softmax(ops.matmul(batch, ops.convert_to_tensor(w_true)), axis=-1)

    accs = {}
    for label, soft in (("distilled", True), ("hard", False)):
        keras.utils.set_random_seed(1)
        student = keras.Sequential([keras.Input((d,)), keras.layers.Dense(k)])
        dist = Distiller(student, teacher if soft else None, temperature=2.0,
                         soft_weight=0.9 if soft else 0.0)  # fmt: skip
        dist.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
        dist.fit(x, y, batch_size=30, epochs=40, shuffle=False, verbose=0)
        accs[label] = float((student.predict(x_test, verbose=0).argmax(1) == bayes).mean())
    assert accs["distilled"] > accs["hard"] + 0.03, accs


MIRRORED = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import edgekd.training.distill as distill
    from edgekd.training.distill import Distiller

    if sys.argv[1] == "naive":  # what a plain mean loss does: no division by the replicas
        distill.replica_share = lambda v: v

    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 6)).astype("float32")
    y = (np.arange(8) % 3).astype("int32")
    w_teacher = rng.normal(size=(6, 3)).astype("float32")

    def step(strategy):
        with strategy.scope():
            keras.utils.set_random_seed(0)
            student = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, "relu"),
                                        keras.layers.Dense(3)])
            teacher = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
            teacher.set_weights([w_teacher, np.zeros(3, "float32")])
            d = Distiller(student, teacher, temperature=3.0, soft_weight=0.7)
            d.compile(optimizer=keras.optimizers.SGD(0.5))
        logs = d.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=1, verbose=0)
        return [w.tolist() for w in student.get_weights()], logs.history

    one = step(tf.distribute.get_strategy())
    two = step(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    print(json.dumps({"one": one, "two": two}))
    """
)


def _mirrored(mode: str) -> dict:
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "CUDA_VISIBLE_DEVICES": "-1"}
    proc = subprocess.run(
        [sys.executable, "-c", MIRRORED, mode], capture_output=True, text=True, env=env,
        cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_mirrored_on_two_cpus_gives_the_one_device_update():
    out = _mirrored("scaled")
    (w1, h1), (w2, h2) = out["one"], out["two"]
    for a, b in zip(w1, w2, strict=True):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-5, atol=1e-6)
    for key in ("loss", "soft_loss", "hard_loss"):  # tracked as global means on both
        assert h1[key][0] == pytest.approx(h2[key][0], rel=1e-5), key


def test_mirrored_check_catches_unscaled_loss():
    """The comparison above can fail: without the division the update doubles."""
    out = _mirrored("naive")
    (w1, _), (w2, _) = out["one"], out["two"]
    diffs = [np.abs(np.array(a) - np.array(b)).max() for a, b in zip(w1, w2, strict=True)]
    assert max(diffs) > 1e-3


@pytest.mark.parametrize("gather", [True, False])
def test_flip_averaged_teacher_matches_predict_and_is_mirror_invariant(gather):
    import tensorflow as tf

    ens = _tiny_ensemble(3)
    x = np.random.default_rng(4).integers(0, 255, (24, 16, 16, 3)).astype("uint8")
    plain = ens.predict(x).probs
    ens.flip = True
    want = ens.predict(x)
    assert want.views == 2 and not np.allclose(want.probs, plain, atol=1e-4)
    # The image and its mirror get the same answer: each member sees both.
    mirrored = ens.predict(x[:, :, ::-1])
    np.testing.assert_allclose(mirrored.probs, want.probs, atol=1e-5)
    teacher = ens.teacher(gather=gather)
    got = tf.function(lambda a: teacher(a))(tf.constant(x, tf.float32)).numpy()
    np.testing.assert_allclose(got, want.probs, atol=1e-5)
    # By hand: the generalist's flip-averaged probabilities gate and enter the fusion.
    general = ops.convert_to_numpy(
        0.5 * (ops.softmax(ens.generalist(x.astype("float32")))
               + ops.softmax(ens.generalist(x[:, :, ::-1].astype("float32"))))
    )  # fmt: skip
    np.testing.assert_allclose(want.general, general, atol=1e-6)
    # The generalist's probabilities can be handed in (unmirrored), as eval does.
    given = ens.predict(x, general=ops.convert_to_numpy(ops.softmax(ens.generalist(x))))
    np.testing.assert_allclose(given.probs, want.probs, atol=1e-5)
