"""QAT int8 export: the tf_keras clone equals the Keras 3 model, the QAT file is fully int8 with
uint8 pixels in and keeps the Keras model's accuracy, and the parent process never sees
tf_keras or TF_USE_LEGACY_KERAS (the job runs in a child process).

A tiny ResNet-10 (16x16 inputs, width 4) is trained for a few epochs on a toy task whose class
is the brightest colour channel, so accuracy is high and comparisons measure quantisation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from edgekd.converters.qat import clone_logits, qat_int8_tflite, qat_loss
from edgekd.device.runtime import load_runner
from edgekd.training.losses import distillation_loss
from edgekd.training.models import build_model

SHAPE = (16, 16, 3)
CLASSES = 3
SPEC = {"arch": "resnet10", "width": 4, "num_classes": CLASSES, "input_shape": SHAPE}
TEMPERATURE = 4.0
LABEL_SMOOTHING = 0.1
ROOT = Path(__file__).resolve().parents[1]


def toy_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` uint8 noise images whose label channel is 120 brighter, and the labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    images = rng.integers(0, 120, (n, *SHAPE))
    images[np.arange(n), :, :, labels] += 120
    return images.astype(np.uint8), labels


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(scores, axis=1) == labels))


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def hand_loss(z, y, q, t, w, eps) -> float:
    """The distillation loss by hand, in float64: w T^2 CE(q, p(T)) + (1 - w) CE_eps(y, p)."""
    z = np.asarray(z, np.float64)
    logp = log_softmax(z)
    hard = -(1 - eps) * logp[np.arange(len(y)), y] - eps * logp.mean(-1)
    if q is None:
        return float(hard.mean())
    soft = -(np.asarray(q, np.float64) * log_softmax(z / t)).sum(-1)
    return float((w * t * t * soft + (1 - w) * hard).mean())


@pytest.fixture(scope="module")
def train() -> tuple[np.ndarray, np.ndarray]:
    return toy_images(256, seed=1)


@pytest.fixture(scope="module")
def held_out() -> tuple[np.ndarray, np.ndarray]:
    return toy_images(150, seed=2)


@pytest.fixture(scope="module")
def model(train: tuple[np.ndarray, np.ndarray]) -> keras.Model:
    keras.utils.set_random_seed(0)
    m = build_model("resnet10", num_classes=CLASSES, width=4, input_shape=SHAPE)
    m.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    x, y = train
    m.fit(x.astype(np.float32), y, batch_size=32, epochs=3, verbose=0)
    return m


@pytest.fixture(scope="module")
def keras_accuracy(model: keras.Model, held_out: tuple[np.ndarray, np.ndarray]) -> float:
    x, y = held_out
    acc = accuracy(model.predict(x.astype(np.float32), verbose=0), y)
    assert acc >= 0.9, "the toy model did not learn the task; the comparisons would be noise"
    return acc


@pytest.fixture(scope="module")
def qat_runs(
    model: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, dict[str, Any]]:
    """One QAT export with soft targets and one with hard labels only (same label smoothing),
    environment recorded."""
    out = tmp_path_factory.mktemp("qat")
    x, y = train
    logits = model.predict(x.astype(np.float32), verbose=0)
    soft = keras.ops.convert_to_numpy(keras.ops.softmax(logits / TEMPERATURE, axis=-1))
    runs = {}
    for name, targets in (("soft", soft), ("hard", None)):
        before = (os.environ.get("TF_USE_LEGACY_KERAS"), "tf_keras" in sys.modules)
        lines: list[str] = []
        result = qat_int8_tflite(
            model,
            out / name / "model.tflite",
            **SPEC,
            images=x,
            labels=y,
            soft_targets=targets,
            temperature=TEMPERATURE,
            label_smoothing=LABEL_SMOOTHING,
            epochs=1,
            batch_size=64,
            calibration=x[:64],
            log=lines.append,
        )
        after = (os.environ.get("TF_USE_LEGACY_KERAS"), "tf_keras" in sys.modules)
        runs[name] = {"result": result, "log": lines, "env": (before, after)}
    return runs


def test_clone_matches_keras(model, held_out):
    x, _ = held_out
    lines: list[str] = []
    logits = clone_logits(model, **SPEC, images=x, log=lines.append)
    np.testing.assert_allclose(logits, model.predict(x.astype(np.float32), verbose=0), atol=1e-4)
    # Keras 3 and tf_keras list the weights in the same order (the copy is by name anyway).
    assert any("flat weight order matches" in line for line in lines), lines


def test_clone_matches_resnet18_random_weights(held_out):
    """Every weight random (zero-init BN scales included), two blocks per stage."""
    keras.utils.set_random_seed(3)
    m = build_model("resnet18", num_classes=5, width=4, input_shape=SHAPE, dropout=0.2)
    rng = np.random.default_rng(3)
    weights = []
    for v in m.weights:
        value = rng.normal(0.0, 0.3, v.shape)
        weights.append(np.abs(value) + 0.5 if "variance" in v.path else value)
    m.set_weights(weights)
    x = held_out[0][:20]
    spec = {**SPEC, "arch": "resnet18", "num_classes": 5}
    lines: list[str] = []
    logits = clone_logits(m, **spec, images=x, log=lines.append)
    np.testing.assert_allclose(logits, m.predict(x.astype(np.float32), verbose=0), atol=1e-4)
    assert any("flat weight order matches" in line for line in lines), lines


@pytest.mark.slow
@pytest.mark.parametrize("name", ["soft", "hard"])
def test_qat_file_is_int8_with_pixel_input(qat_runs, name):
    result = qat_runs[name]["result"]
    path = Path(result["path"])
    assert path.is_file() and path.suffix == ".tflite"
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.tflite"]  # no temp files
    assert result["input"] == {"dtype": "uint8", "scale": 1.0, "zero_point": 0}
    assert result["output"]["dtype"] == "uint8"
    assert result["epochs"] == 1 and result["steps"] == 4 and len(result["history"]) == 1
    assert np.isfinite(result["history"][0]["loss"]) and result["train_s"] > 0
    assert result["weight_order"] is True
    log = "\n".join(qat_runs[name]["log"])
    assert "calibrated activation ranges" in log and "epoch 1/1" in log and "converted" in log

    runner = load_runner(path)
    assert runner.input.dtype == "uint8" and runner.output.dtype == "uint8"
    # Full-integer graph: no float tensor anywhere.
    dtypes = {np.dtype(d["dtype"]).name for d in runner._interpreter.get_tensor_details()}
    assert dtypes <= {"uint8", "int8", "int32"}, dtypes


@pytest.mark.slow
@pytest.mark.parametrize("name", ["soft", "hard"])
def test_qat_accuracy_close_to_keras(qat_runs, held_out, keras_accuracy, name):
    x, y = held_out
    scores = load_runner(qat_runs[name]["result"]["path"]).predict(x)
    assert scores.dtype == np.float32 and scores.shape == (len(x), CLASSES)
    assert accuracy(scores, y) >= keras_accuracy - 0.05


@pytest.mark.slow
def test_parent_process_untouched(qat_runs, model, held_out):
    for run in qat_runs.values():
        before, after = run["env"]
        assert after == before
        assert after[1] is False
    assert "tf_keras" not in sys.modules
    assert "tensorflow_model_optimization" not in sys.modules
    # Keras 3 still works in this process.
    x = held_out[0][:4].astype(np.float32)
    assert model.predict(x, verbose=0).shape == (4, CLASSES)


def test_bad_arguments_raise_before_any_work(model, train, tmp_path):
    x, y = train
    args = {**SPEC, "images": x, "labels": y, "calibration": x[:8]}
    with pytest.raises(ValueError, match=r"\.tflite"):
        qat_int8_tflite(model, tmp_path / "m.bin", **args)
    with pytest.raises(ValueError, match="io_dtype"):
        qat_int8_tflite(model, tmp_path / "m.tflite", **args, io_dtype="int16")
    with pytest.raises(ValueError, match="soft_targets"):
        qat_int8_tflite(model, tmp_path / "m.tflite", **args, soft_targets=np.ones((2, 3)))
    with pytest.raises(ValueError, match="label_smoothing"):
        qat_int8_tflite(model, tmp_path / "m.tflite", **args, label_smoothing=1.0)
    with pytest.raises(ValueError, match="width"):
        qat_int8_tflite(model, tmp_path / "m.tflite", **{**args, "width": 8})
    with pytest.raises(ValueError, match="calibration"):
        qat_int8_tflite(model, tmp_path / "m.tflite", **{**args, "calibration": x[:8, :8]})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_qat_runs_with_soft_and_hard_targets_differ(qat_runs, held_out):
    """The soft term reaches the fine-tuning: same start, different loss, different file."""
    soft, hard = (qat_runs[k]["result"] for k in ("soft", "hard"))
    assert soft["history"][0]["loss"] != pytest.approx(hard["history"][0]["loss"], rel=1e-3)
    assert Path(soft["path"]).read_bytes() != Path(hard["path"]).read_bytes()


@pytest.mark.parametrize("eps", [0.0, 0.15])
@pytest.mark.parametrize("t", [1.0, 3.0])
@pytest.mark.parametrize("w", [0.0, 0.4, 1.0])
def test_qat_loss_is_the_distillation_loss(w, t, eps):
    rng = np.random.default_rng(7)
    z = rng.normal(0.0, 2.0, (32, 5)).astype(np.float32)
    y = rng.integers(0, 5, 32).astype(np.int32)
    q = rng.dirichlet(np.ones(5), 32).astype(np.float32)
    got = float(qat_loss(z, y, q, t, w, eps))
    assert got == pytest.approx(hand_loss(z, y, q, t, w, eps), rel=1e-5, abs=1e-6)
    total, _, _ = distillation_loss(q, y, z, t, w, eps)
    assert got == pytest.approx(float(np.mean(keras.ops.convert_to_numpy(total))), rel=1e-6)
    # No targets: the hard term alone, the same as soft_weight 0.
    hard = float(qat_loss(z, y, None, t, w, eps))
    assert hard == pytest.approx(hand_loss(z, y, None, t, w, eps), rel=1e-5)
    assert hard == pytest.approx(float(qat_loss(z, y, q, t, 0.0, eps)), rel=1e-6)


# The child's training step (`_train_step`, the one `_fine_tune` runs) in a tf_keras process,
# on a tiny Dense model from fixed initial weights, with and without the soft term.
TF_KERAS_STEPS = textwrap.dedent(
    """
    import json, os
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import numpy as np
    import tensorflow as tf
    import tf_keras as k2
    from edgekd.converters.qat import _train_step

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6)).astype("float32")
    y = rng.integers(0, 4, 16).astype("int32")
    q = rng.dirichlet(np.ones(4), 16).astype("float32")
    init = [rng.normal(0.0, 0.5, (6, 4)).astype("float32"), np.zeros(4, "float32")]
    runs = {}
    for name, w, soft in (("w0", 0.0, True), ("w07", 0.7, True), ("none", 0.0, False)):
        model = k2.Sequential([k2.Input((6,)), k2.layers.Dense(4)])
        model.set_weights(init)
        step = _train_step(tf, model, model.trainable_variables, k2.optimizers.SGD(0.5),
                           temperature=3.0, soft_weight=w, label_smoothing=0.1, soft=soft)
        losses = [float(step(tf.constant(x), tf.constant(y), tf.constant(q))[0])
                  for _ in range(3)]
        runs[name] = {"losses": losses, "weights": [v.tolist() for v in model.get_weights()]}
    data = {"x": x.tolist(), "y": y.tolist(), "q": q.tolist(), "w": init[0].tolist()}
    print(json.dumps({"runs": runs, "data": data}))
    """
)


def test_soft_term_changes_the_tf_keras_training_step():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "-1"}
    proc = subprocess.run(
        [sys.executable, "-c", TF_KERAS_STEPS], capture_output=True, text=True, env=env,
        cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    runs, data = out["runs"], out["data"]
    x, y, q = (np.array(data[k]) for k in ("x", "y", "q"))
    z = x @ np.array(data["w"])  # the initial logits (zero bias)
    # The first step's loss is taken before its update: the loss by hand at the start.
    assert runs["w0"]["losses"][0] == pytest.approx(hand_loss(z, y, None, 3.0, 0.0, 0.1), 1e-5)
    assert runs["w07"]["losses"][0] == pytest.approx(hand_loss(z, y, q, 3.0, 0.7, 0.1), 1e-5)
    # soft_weight 0 is hard-label training exactly; 0.7 trains to different weights.
    for a, b in zip(runs["w0"]["weights"], runs["none"]["weights"], strict=True):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(runs["w0"]["losses"], runs["none"]["losses"], rtol=1e-6)
    moved = max(
        np.abs(np.array(a) - np.array(b)).max()
        for a, b in zip(runs["w0"]["weights"], runs["w07"]["weights"], strict=True)
    )
    assert moved > 1e-2
