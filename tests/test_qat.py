"""QAT int8 export: the tf_keras clone equals the Keras 3 model, the QAT file is fully int8 with
uint8 pixels in and keeps the Keras model's accuracy, and the parent process never sees
tf_keras or TF_USE_LEGACY_KERAS (the job runs in a child process).

A tiny ResNet-10 (16x16 inputs, width 4) is trained for a few epochs on a toy task whose class
is the brightest colour channel, so accuracy is high and comparisons measure quantisation.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from edgekd.converters.qat import clone_logits, qat_int8_tflite
from edgekd.models import build_model
from edgekd.runtime import load_runner

SHAPE = (16, 16, 3)
CLASSES = 3
SPEC = {"arch": "resnet10", "width": 4, "num_classes": CLASSES, "input_shape": SHAPE}
TEMPERATURE = 4.0


def toy_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` uint8 noise images whose label channel is 120 brighter, and the labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    images = rng.integers(0, 120, (n, *SHAPE))
    images[np.arange(n), :, :, labels] += 120
    return images.astype(np.uint8), labels


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(scores, axis=1) == labels))


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
    """One QAT export with soft targets and one with hard labels only, environment recorded."""
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


@pytest.mark.parametrize("name", ["soft", "hard"])
def test_qat_accuracy_close_to_keras(qat_runs, held_out, keras_accuracy, name):
    x, y = held_out
    scores = load_runner(qat_runs[name]["result"]["path"]).predict(x)
    assert scores.dtype == np.float32 and scores.shape == (len(x), CLASSES)
    assert accuracy(scores, y) >= keras_accuracy - 0.05


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
    with pytest.raises(ValueError, match="width"):
        qat_int8_tflite(model, tmp_path / "m.tflite", **{**args, "width": 8})
    with pytest.raises(ValueError, match="calibration"):
        qat_int8_tflite(model, tmp_path / "m.tflite", **{**args, "calibration": x[:8, :8]})
    assert list(tmp_path.iterdir()) == []
