"""Quantisation-aware training (QAT) of an edgekd student, then a full-int8 `.tflite`.

Post-training int8 quantisation can cost a student a few points; QAT fine-tunes the model
with fake-quantisation ops in the graph (TensorFlow Model Optimization, TFMOT) so the weights
adapt to int8 rounding, keeping the distillation loss the student was trained with.

TFMOT works only on Keras 2 (`tf_keras`), and importing it sets `TF_USE_LEGACY_KERAS=1`,
which breaks Keras 3 in the same process. So the whole job runs in a child process
(`python -m edgekd.converters.qat JOB_DIR`) and the caller never imports `tf_keras` or
`tfmot`. The two exchange files in a temporary folder: `job.json` (architecture and
hyperparameters), `weights.npz` (the Keras 3 weights, per layer), `data.npz` (images, labels,
soft targets, calibration images); the child writes `model.tflite`, `logits.npy` and
`result.json` back.

In the child the student is rebuilt layer for layer in `tf_keras` (same names, same
function), the Keras 3 weights are copied by layer name, and `quantize_model` wraps it. One
layer is swapped: Keras' `Normalization` ("preprocess") has no TFMOT quantize config, so the
clone computes the same `(x - mean) / std` as a 1x1 `DepthwiseConv2D` with bias (kernel
`1/std`, bias `-mean/std`), which TFMOT quantises like any convolution. The converted file
is then fully int8 and still takes raw pixels 0..255: TFMOT's input quantiser is pinned to
[0, 255], so a uint8 input is the pixels themselves (scale 1, zero point 0).

The fine-tuning loss is the Distiller's own (`edgekd.training.losses.distillation_loss`, via
`qat_loss`): the child imports Keras 3 for its `keras.ops` alone, which on the TensorFlow
backend run on the `tf_keras` model's tensors; no Keras 3 model or layer is built there.

Before fine-tuning, the activation ranges are calibrated on the calibration images (forward
passes in training mode, no gradient steps): TFMOT's ranges start at [-6, 6] and follow a slow
moving average, so an uncalibrated QAT model starts far from the trained one (see
`_calibrate`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekd.atomic import atomic_path
from edgekd.contract import IO_DTYPES
from edgekd.recipe import DEFAULT_SOFT_WEIGHT, DEFAULT_TEMPERATURE

if TYPE_CHECKING:
    import keras

"""Input/output tensor types of the int8 file; float32 keeps quantise/dequantise inside."""

_CHILD_MODULE = "edgekd.converters.qat"
_LOG_PREFIX = "[qat] "
_PIXEL_RANGE = (0.0, 255.0)
_CALIBRATION_BATCH = 32
_NORMALIZATION_EPSILON = 1e-7  # Keras' backend.epsilon(): Normalization divides by max(std, eps)


# --------------------------------------------------------------------------------------------
# Parent side: Keras 3 only.


def qat_int8_tflite(
    model: keras.Model,
    path: str | Path,
    *,
    arch: str,
    width: int,
    num_classes: int,
    input_shape: tuple[int, int, int],
    images: np.ndarray,
    labels: np.ndarray,
    soft_targets: np.ndarray | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
    soft_weight: float = DEFAULT_SOFT_WEIGHT,
    label_smoothing: float = 0.0,
    epochs: int = 1,
    batch_size: int = 128,
    lr: float = 1e-3,
    calibration: np.ndarray,
    io_dtype: str = "uint8",
    augment_flip: bool = True,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fine-tune `model` with QAT and write a full-int8 `.tflite` to `path` (atomically).

    The loss is the Distiller's, `edgekd.training.losses.distillation_loss` (see `qat_loss`), per
    example `soft_weight * T^2 * CE(q_T, softmax(z / T)) + (1 - soft_weight) * CE(y, softmax(z))`
    with `label_smoothing` on the hard term, or that hard term alone without `soft_targets`.
    The teacher's targets are computed once per image by the caller, not per augmented view:
    the teacher is a Keras 3 model and cannot run inside the `tf_keras` process. A flipped
    image keeps its unflipped image's targets. Optimiser: SGD, momentum 0.9 (Nesterov), no
    weight decay, learning rate cosine-decayed from `lr` to 0 over the fine-tuning steps.

    Args:
        model: a trained Keras 3 edgekd classifier (`build_model` output), pixels 0..255 in.
        path: destination, ending in `.tflite`.
        arch: its registered architecture name, e.g. "resnet18".
        width: its width (channels of the stem).
        num_classes: its number of logits.
        input_shape: `(H, W, C)` of one image.
        images: uint8 (N, H, W, C) fine-tuning images.
        labels: int (N,) their labels.
        soft_targets: (N, K) teacher probabilities already tempered at `temperature`, or
            None for hard labels only.
        temperature: T of the soft term.
        soft_weight: weight of the soft term, in [0, 1].
        label_smoothing: of the hard term, in [0, 1): the recipe's, as the student trained.
        epochs: fine-tuning epochs; 0 only calibrates the quantisation ranges.
        batch_size: fine-tuning batch size.
        lr: peak learning rate.
        calibration: uint8 images that set the activation ranges before fine-tuning and form
            the converter's representative dataset.
        io_dtype: input/output tensor type, one of `IO_DTYPES`.
        augment_flip: random horizontal flips during fine-tuning.
        seed: seeds shuffling, flips and TensorFlow.
        log: receives progress lines from the child process.

    Returns:
        `{"path", "epochs", "steps", "train_s", "history", "input", "output",
        "weight_order"}`; `history` has one dict per epoch (loss, accuracy, lr), `input` and
        `output` the file's tensors (dtype, scale, zero_point), `weight_order` whether the
        Keras 3 and `tf_keras` flat weight lists line up (the copy is by layer name anyway).

    Raises:
        ValueError: bad arguments (shapes, dtypes, io_dtype, a model that does not match
            `arch`/`width`/`num_classes`/`input_shape`).
        RuntimeError: the child process failed (its stderr tail is in the message) or the
            file's input/output types are not `io_dtype`.
    """
    path = Path(path)
    if path.suffix.lower() != ".tflite":
        raise ValueError(f"{path}: a LiteRT model file must end in .tflite")
    if io_dtype not in IO_DTYPES:
        raise ValueError(f"unknown io_dtype {io_dtype!r}; expected one of {IO_DTYPES}")
    if not 0.0 <= soft_weight <= 1.0:
        raise ValueError(f"soft_weight must be in [0, 1]; received {soft_weight}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive; received {temperature}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1); received {label_smoothing}")
    if epochs < 0 or batch_size < 1 or lr < 0:
        raise ValueError(
            f"need epochs >= 0, batch_size >= 1, lr >= 0; received {epochs}, {batch_size}, {lr}"
        )
    shape = tuple(int(d) for d in input_shape)
    images = _check_pixels("images", images, shape)
    calibration = _check_pixels("calibration", calibration, shape)
    labels = np.asarray(labels).astype(np.int32).reshape(-1)
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels must be in [0, {num_classes}); found {labels.min()}..{labels.max()}"
        )
    arrays = {"images": images, "labels": labels, "calibration": calibration}
    if soft_targets is not None:
        soft = np.asarray(soft_targets, np.float32)
        if soft.shape != (len(images), num_classes):
            raise ValueError(
                f"soft_targets must have shape {(len(images), num_classes)}; got {soft.shape}"
            )
        arrays["soft_targets"] = soft

    job = {
        "mode": "qat",
        "io_dtype": io_dtype,
        "temperature": float(temperature),
        "soft_weight": float(soft_weight),
        "label_smoothing": float(label_smoothing),
        "epochs": int(epochs),
        "batch_size": int(batch_size),
        "lr": float(lr),
        "augment_flip": bool(augment_flip),
        "seed": int(seed),
    }
    spec = {"arch": arch, "width": width, "num_classes": num_classes, "input_shape": shape}
    with tempfile.TemporaryDirectory(prefix="edgekd-qat-") as tmp:
        work = Path(tmp)
        result = _run_child(work, model, spec, job, arrays, log)
        with atomic_path(path) as out:
            shutil.copyfile(work / "model.tflite", out)
            tensors = _check_file(out, io_dtype)
    return {"path": str(path), **result, **tensors}


def clone_logits(
    model: keras.Model,
    *,
    arch: str,
    width: int,
    num_classes: int,
    input_shape: tuple[int, int, int],
    images: np.ndarray,
    log: Callable[[str], None] = print,
) -> np.ndarray:
    """Logits of the `tf_keras` clone of `model` (before quantisation), from a child process.

    For checking that the clone QAT starts from computes the same function as `model`.
    """
    shape = tuple(int(d) for d in input_shape)
    arrays = {"images": _check_pixels("images", images, shape)}
    spec = {"arch": arch, "width": width, "num_classes": num_classes, "input_shape": shape}
    with tempfile.TemporaryDirectory(prefix="edgekd-qat-") as tmp:
        work = Path(tmp)
        _run_child(work, model, spec, {"mode": "logits"}, arrays, log)
        return np.load(work / "logits.npy")


def _check_pixels(name: str, images: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """`images` as a non-empty uint8 (N, *shape) array of pixels 0..255."""
    x = np.asarray(images)
    if x.ndim != 4 or len(x) == 0 or x.shape[1:] != shape:
        raise ValueError(f"{name} must be a non-empty (N, {shape}) array; got shape {x.shape}")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.number) or x.min() < 0 or x.max() > 255:
            raise ValueError(f"{name} must be pixels 0..255 (uint8); got dtype {x.dtype}")
        x = np.round(x).astype(np.uint8)
    return x


def _model_spec(model: keras.Model, spec: dict[str, Any]) -> dict[str, Any]:
    """What the child needs to rebuild `model`: architecture, constants, weight names."""
    from edgekd.training.models.registry import get_arch_spec

    shape = tuple(spec["input_shape"])
    if tuple(model.inputs[0].shape[1:]) != shape:
        raise ValueError(
            f"model takes {tuple(model.inputs[0].shape[1:])} images, input_shape is {shape}"
        )
    if int(model.outputs[0].shape[-1]) != spec["num_classes"]:
        raise ValueError(
            f"model has {model.outputs[0].shape[-1]} logits, num_classes is {spec['num_classes']}"
        )
    if int(model.get_layer("stem_conv").filters) != spec["width"]:
        raise ValueError(
            f"model's stem has {model.get_layer('stem_conv').filters} channels, width is "
            f"{spec['width']}"
        )
    preprocess = model.get_layer("preprocess")
    bn = model.get_layer("stem_bn")
    dropout = [layer.rate for layer in model.layers if layer.name == "dropout"]
    return {
        **spec,
        "input_shape": list(shape),
        "blocks": list(get_arch_spec(spec["arch"]).blocks),
        "bn_momentum": float(bn.momentum),
        "bn_epsilon": float(bn.epsilon),
        "dropout": float(dropout[0]) if dropout else 0.0,
        "head": model.layers[-1].name,
        "name": model.name,
        "mean": np.asarray(preprocess.mean, np.float64).reshape(-1).tolist(),
        "variance": np.asarray(preprocess.variance, np.float64).reshape(-1).tolist(),
        "layers": [layer.name for layer in model.layers],
        "weights": [[w.path, list(w.shape)] for w in model.weights],
    }


def _run_child(
    work: Path,
    model: keras.Model,
    spec: dict[str, Any],
    job: dict[str, Any],
    arrays: dict[str, np.ndarray],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Write the job files to `work`, run the child on them, return its `result.json`."""
    model_spec = _model_spec(model, spec)
    weights: dict[str, np.ndarray] = {}
    for layer in model.layers:
        for i, value in enumerate(layer.get_weights()):
            weights[f"{layer.name}:{i}"] = value
    np.savez(work / "weights.npz", **weights)
    np.savez(work / "data.npz", **arrays)
    (work / "job.json").write_text(json.dumps({**job, "model": model_spec}), encoding="utf-8")

    env = {**os.environ}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["TF_USE_LEGACY_KERAS"] = "1"  # the child's environment only, never ours
    stderr_path = work / "stderr.txt"
    with open(stderr_path, "w", encoding="utf-8") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", _CHILD_MODULE, str(work)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            text=True,
        )
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                if line.startswith(_LOG_PREFIX):
                    log(line[len(_LOG_PREFIX) :].rstrip("\n"))
            code = proc.wait()
        except BaseException:  # e.g. KeyboardInterrupt: do not leave the child training
            proc.kill()
            proc.wait()
            raise
        finally:
            proc.stdout.close()
    if code != 0 or not (work / "result.json").is_file():
        tail = stderr_path.read_text(encoding="utf-8", errors="replace")[-4000:]
        raise RuntimeError(f"the QAT child process failed (exit code {code}):\n{tail}")
    return json.loads((work / "result.json").read_text(encoding="utf-8"))


def _check_file(path: Path, io_dtype: str) -> dict[str, Any]:
    """The file's input/output tensors; fail if their types are not `io_dtype`."""
    from edgekd.device.runtime.tflite import TFLiteRunner

    runner = TFLiteRunner(path)
    got = (runner.input.dtype, runner.output.dtype)
    if got != (io_dtype, io_dtype):
        raise RuntimeError(f"{path}: asked for {io_dtype} input and output, the file has {got}")
    return {
        name: {"dtype": t.dtype, "scale": t.scale, "zero_point": t.zero_point}
        for name, t in (("input", runner.input), ("output", runner.output))
    }


# --------------------------------------------------------------------------------------------
# Both sides: the loss (Keras 3's `keras.ops`, which the child imports beside `tf_keras`).


def qat_loss(
    logits: Any,
    labels: Any,
    targets: Any,
    temperature: float,
    soft_weight: float,
    label_smoothing: float = 0.0,
) -> Any:
    """The batch-mean QAT loss: the Distiller's own `distillation_loss`, not a copy of it.

    `targets` None (no teacher) leaves the hard term alone. In `keras.ops`, which on the
    TensorFlow backend run on the `tf_keras` child's tensors inside its `tf.function` step.
    """
    from keras import ops

    from edgekd.training.losses import distillation_loss, hard_cross_entropy

    if targets is None:
        return ops.mean(hard_cross_entropy(labels, logits, label_smoothing))
    total, _, _ = distillation_loss(
        targets, labels, logits, temperature, soft_weight, label_smoothing
    )
    return ops.mean(total)


# --------------------------------------------------------------------------------------------
# Child side: tf_keras + TFMOT, run only as `python -m edgekd.converters.qat JOB_DIR`.


def _say(message: str) -> None:
    """A progress line for the parent's `log`."""
    print(f"{_LOG_PREFIX}{message}", flush=True)


def _build_clone(k2: Any, cfg: dict[str, Any]) -> Any:
    """The edgekd CIFAR ResNet (`edgekd.training.models.resnet.cifar_resnet`) in `tf_keras`.

    Same layer names and function; "preprocess" is a 1x1 `DepthwiseConv2D` with bias instead
    of `Normalization` (see the module docstring); its weights are set in `_copy_weights`.
    """
    layers = k2.layers
    bn = {"momentum": cfg["bn_momentum"], "epsilon": cfg["bn_epsilon"]}

    def conv(filters: int, size: int, strides: int, name: str) -> Any:
        return layers.Conv2D(
            filters, size, strides=strides, padding="same", use_bias=False, name=name
        )

    inputs = k2.Input(shape=tuple(cfg["input_shape"]), dtype="float32", name="pixels")
    x = layers.DepthwiseConv2D(1, use_bias=True, trainable=False, name="preprocess")(inputs)
    x = conv(cfg["width"], 3, 1, "stem_conv")(x)
    x = layers.BatchNormalization(name="stem_bn", **bn)(x)
    x = layers.ReLU(name="stem_relu")(x)
    for stage, (num_blocks, stride) in enumerate(
        zip(cfg["blocks"], (1, 2, 2, 2), strict=True), start=1
    ):
        filters = cfg["width"] * 2 ** (stage - 1)
        for block in range(1, num_blocks + 1):
            name = f"stage{stage}_block{block}"
            strides = stride if block == 1 else 1
            shortcut = x
            if strides != 1 or x.shape[-1] != filters:
                shortcut = conv(filters, 1, strides, f"{name}_shortcut_conv")(x)
                shortcut = layers.BatchNormalization(name=f"{name}_shortcut_bn", **bn)(shortcut)
            y = conv(filters, 3, strides, f"{name}_conv1")(x)
            y = layers.BatchNormalization(name=f"{name}_bn1", **bn)(y)
            y = layers.ReLU(name=f"{name}_relu1")(y)
            y = conv(filters, 3, 1, f"{name}_conv2")(y)
            y = layers.BatchNormalization(name=f"{name}_bn2", **bn)(y)
            y = layers.Add(name=f"{name}_add")([shortcut, y])
            x = layers.ReLU(name=f"{name}_out")(y)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if cfg["dropout"] > 0:
        x = layers.Dropout(cfg["dropout"], name="dropout")(x)
    outputs = layers.Dense(cfg["num_classes"], name=cfg["head"])(x)
    return k2.Model(inputs, outputs, name=cfg["name"])


def _copy_weights(clone: Any, cfg: dict[str, Any], weights: Any) -> bool:
    """Copy the Keras 3 weights into `clone` by layer name; return whether flat orders match.

    Raises if the two models do not have the same layers or weight shapes.
    """
    names = {layer.name for layer in clone.layers}
    if names != set(cfg["layers"]):
        raise ValueError(
            "the tf_keras clone does not have the Keras model's layers: missing "
            f"{sorted(set(cfg['layers']) - names)}, extra {sorted(names - set(cfg['layers']))}"
        )
    for layer in clone.layers:
        if layer.name == "preprocess":
            mean = np.asarray(cfg["mean"], np.float64)
            variance = np.asarray(cfg["variance"], np.float64)
            std = np.maximum(np.sqrt(variance), _NORMALIZATION_EPSILON)
            kernel = (1.0 / std).reshape(1, 1, -1, 1)
            layer.set_weights([kernel.astype(np.float32), (-mean / std).astype(np.float32)])
            continue
        values = []
        while f"{layer.name}:{len(values)}" in weights:
            values.append(weights[f"{layer.name}:{len(values)}"])
        expected = [tuple(w.shape) for w in layer.weights]
        if [v.shape for v in values] != expected:
            raise ValueError(
                f"layer {layer.name!r}: Keras weights {[v.shape for v in values]} do not fit "
                f"the tf_keras clone's {expected}"
            )
        layer.set_weights(values)
    # The flat lists (`get_weights()`), the preprocessing layer left out: Keras 3's
    # Normalization with given mean/variance has no weights, the clone's depthwise conv has 2.
    ours = [
        (w.name.split(":")[0], tuple(w.shape))
        for w in clone.weights
        if not w.name.startswith("preprocess/")
    ]
    theirs = [(p, tuple(s)) for p, s in cfg["weights"]]
    return ours == theirs


@contextlib.contextmanager
def _ema_decay(quant_ops: Any, decay: Any) -> Iterator[None]:
    """Make TFMOT's moving-average range quantisers use `decay` instead of 0.999.

    `MovingAverageQuantizer` hard-codes `ema_decay=0.999` and its ranges start at [-6, 6]:
    a few calibration batches would move them by well under 1%. Calibration runs with the
    decay of a running mean (0, 1/2, 2/3, ...), so the ranges become the mean batch min/max.
    """
    original = quant_ops.MovingAvgQuantize

    def patched(*args: Any, **kwargs: Any) -> Any:
        kwargs["ema_decay"] = decay
        return original(*args, **kwargs)

    quant_ops.MovingAvgQuantize = patched
    try:
        yield
    finally:
        quant_ops.MovingAvgQuantize = original


def _child(work: Path) -> None:
    """Run the job in `work` (see the module docstring); TF_USE_LEGACY_KERAS=1 is set."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf
    import tf_keras as k2

    job = json.loads((work / "job.json").read_text(encoding="utf-8"))
    cfg = job["model"]
    data = dict(np.load(work / "data.npz"))
    clone = _build_clone(k2, cfg)
    with np.load(work / "weights.npz") as weights:
        order = _copy_weights(clone, cfg, weights)
    _say(f"tf_keras clone built; flat weight order {'matches' if order else 'differs'}")

    if job["mode"] == "logits":
        logits = clone.predict(data["images"].astype(np.float32), batch_size=64, verbose=0)
        np.save(work / "logits.npy", logits.astype(np.float32))
        (work / "result.json").write_text(json.dumps({"weight_order": order}), encoding="utf-8")
        return

    import tensorflow_model_optimization as tfmot
    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops

    tf.random.set_seed(job["seed"])
    qat = tfmot.quantization.keras.quantize_model(clone)
    _pin_input_range(qat)
    _calibrate(tf, qat, quant_ops, data["calibration"])
    history, steps, train_s = _fine_tune(tf, k2, qat, job, data)
    _convert(tf, qat, job, data["calibration"], work / "model.tflite")
    result = {
        "epochs": job["epochs"],
        "steps": steps,
        "train_s": train_s,
        "history": history,
        "weight_order": order,
    }
    (work / "result.json").write_text(json.dumps(result), encoding="utf-8")


def _trained_variables(qat: Any) -> list[Any]:
    """The variables fine-tuning updates: all trainable ones but the preprocessing constants.

    Keras' Normalization has no trainable weights and its depthwise stand-in must not train
    either: a kernel on raw pixels (gradients ~255x those elsewhere) is wrecked by the first
    step. The clone's `trainable=False` is not enough: TFMOT's wrapper lists a quantised
    kernel among its own trainable weights whatever the inner layer says.
    """
    wrapper = next(
        layer for layer in qat.layers if getattr(layer, "layer", layer).name == "preprocess"
    )
    frozen = {id(v) for v in wrapper.weights}
    return [v for v in qat.trainable_variables if id(v) not in frozen]


def _pin_input_range(qat: Any) -> None:
    """Fix the input quantiser's range to pixels [0, 255] (the exported-model contract).

    TFMOT's input `QuantizeLayer` keeps the min/max of every value seen; pinned to 0..255 the
    file's uint8 input is the pixels themselves (scale 1, zero point 0), whatever range the
    calibration images happen to span.
    """
    layer = next(layer for layer in qat.layers if type(layer).__name__ == "QuantizeLayer")
    bounds = {"_min": _PIXEL_RANGE[0], "_max": _PIXEL_RANGE[1]}
    pinned = 0
    for var in layer.weights:  # quantize_layer/quantize_layer_min:0, ..._max:0, ...step:0
        suffix = var.name.split(":")[0][-4:]
        if suffix in bounds:
            var.assign(np.full(var.shape, bounds[suffix], np.float32))
            pinned += 1
    if pinned != 2:
        raise RuntimeError(f"expected min and max variables in {layer.name}: {layer.weights}")


def _batch_norms(qat: Any) -> list[Any]:
    """The BatchNormalization layers inside the QAT model's wrappers."""
    found = []
    for layer in qat.layers:
        inner = getattr(layer, "layer", layer)
        if type(inner).__name__ == "BatchNormalization":
            found.append(inner)
    return found


def _calibrate(tf: Any, qat: Any, quant_ops: Any, calibration: np.ndarray) -> None:
    """Set the activation ranges from the calibration images before any fine-tuning.

    QAT range quantisers start at [-6, 6] (moving-average min/max) and mean nothing until
    calibrated. So the model runs forward in training mode (which is when the quantisers
    update) over the calibration batches, without applying gradients (learning rate 0, in
    effect), with a running-mean decay (`_ema_decay`). BatchNormalization is frozen meanwhile
    (`trainable=False` runs it in inference mode), so the trained moving statistics are not
    overwritten by calibration batches and the ranges are those the converted model sees.
    """
    decay = tf.Variable(0.0, trainable=False, dtype=tf.float32)
    norms = _batch_norms(qat)
    for bn in norms:
        bn.trainable = False
    try:
        with _ema_decay(quant_ops, decay):
            step = tf.function(lambda x: qat(x, training=True), reduce_retracing=True)
            starts = range(0, len(calibration), _CALIBRATION_BATCH)
            for k, start in enumerate(starts):
                decay.assign(k / (k + 1))
                step(tf.constant(calibration[start : start + _CALIBRATION_BATCH], tf.float32))
    finally:
        for bn in norms:
            bn.trainable = True
    _say(f"calibrated activation ranges on {len(calibration)} images")


def _train_step(
    tf: Any,
    model: Any,
    variables: list[Any],
    optimizer: Any,
    *,
    temperature: float,
    soft_weight: float,
    label_smoothing: float,
    soft: bool,
) -> Callable[[Any, Any, Any], tuple[Any, Any]]:
    """One compiled fine-tuning step `(x, y, q) -> (mean loss, correct count)` on `qat_loss`.

    Updates `variables` only; `q` (the batch's soft targets) is ignored when `soft` is False.
    """

    @tf.function(reduce_retracing=True)
    def step(x: Any, y: Any, q: Any) -> tuple[Any, Any]:
        with tf.GradientTape() as tape:
            z = tf.cast(model(x, training=True), tf.float32)
            targets = q if soft else None
            loss = qat_loss(z, y, targets, temperature, soft_weight, label_smoothing)
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(z, -1, tf.int32), y), tf.float32))
        return loss, correct

    return step


def _fine_tune(
    tf: Any, k2: Any, qat: Any, job: dict[str, Any], data: dict[str, np.ndarray]
) -> tuple[list[dict[str, float]], int, float]:
    """QAT fine-tuning with the distillation loss; returns (history, steps, seconds)."""
    images, labels = data["images"], data["labels"]
    soft = data.get("soft_targets")
    n, batch = len(images), job["batch_size"]
    steps_per_epoch = -(-n // batch)
    total = steps_per_epoch * job["epochs"]
    if total == 0:
        return [], 0, 0.0
    schedule = k2.optimizers.schedules.CosineDecay(job["lr"], decay_steps=total, alpha=0.0)
    optimizer = k2.optimizers.SGD(learning_rate=schedule, momentum=0.9, nesterov=True)
    num_classes = int(qat.outputs[0].shape[-1])
    step = _train_step(
        tf, qat, _trained_variables(qat), optimizer,
        temperature=float(job["temperature"]), soft_weight=float(job["soft_weight"]),
        label_smoothing=float(job["label_smoothing"]), soft=soft is not None,
    )  # fmt: skip

    rng = np.random.default_rng(job["seed"])
    empty = np.zeros((n, num_classes), np.float32)
    history: list[dict[str, float]] = []
    start_time = time.perf_counter()
    for epoch in range(1, job["epochs"] + 1):
        order = rng.permutation(n)
        loss_sum = correct_sum = 0.0
        for start in range(0, n, batch):
            idx = order[start : start + batch]
            x = images[idx]
            if job["augment_flip"]:
                flip = rng.random(len(idx)) < 0.5
                x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
            q = (soft if soft is not None else empty)[idx]
            loss, correct = step(
                tf.constant(x, tf.float32), tf.constant(labels[idx], tf.int32), tf.constant(q)
            )
            loss_sum += float(loss) * len(idx)
            correct_sum += float(correct)
        row = {
            "epoch": epoch,
            "loss": loss_sum / n,
            "accuracy": correct_sum / n,
            "lr": float(schedule(optimizer.iterations)),
        }
        history.append(row)
        _say(f"epoch {epoch}/{job['epochs']}: loss {row['loss']:.4f}, acc {row['accuracy']:.4f}")
    return history, total, time.perf_counter() - start_time


def _convert(tf: Any, qat: Any, job: dict[str, Any], calibration: np.ndarray, out: Path) -> None:
    """The QAT model as a full-int8 `.tflite`: builtin int8 ops only, `io_dtype` I/O."""

    def representative() -> Iterator[list[np.ndarray]]:
        for i in range(len(calibration)):
            yield [calibration[i : i + 1].astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(qat)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if job["io_dtype"] != "float32":
        io_type = tf.uint8 if job["io_dtype"] == "uint8" else tf.int8
        converter.inference_input_type = io_type
        converter.inference_output_type = io_type
    out.write_bytes(converter.convert())
    _say(f"converted: {out.stat().st_size} bytes, {job['io_dtype']} input/output")


def main(argv: list[str] | None = None) -> int:
    """Child entry point: `python -m edgekd.converters.qat JOB_DIR`."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m edgekd.converters.qat JOB_DIR", file=sys.stderr)
        return 2
    _child(Path(args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
