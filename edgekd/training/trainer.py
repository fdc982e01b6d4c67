"""Supervised training of one classifier, resumable at epoch boundaries.

Every epoch ends with an atomic checkpoint (weights + optimizer state) and a state file
pointing at it. A run killed at any moment — Ctrl-C or kill -9, mid-epoch or mid-write —
restarts from the last finished epoch: the model is rebuilt, compiled the same way, its
weights and optimizer slots loaded, and `fit` continues at `initial_epoch` with the same
per-epoch shuffling and augmentation as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from edgekd import atomic
from edgekd.data import Augment, ImageBatches, ImageSet
from edgekd.errors import TrainingError
from edgekd.maths.fusion import softmax
from edgekd.recipe import ModelTrainConfig
from edgekd.training import interrupts
from edgekd.training.accelerator import Accelerator, distribution_scope, precision_policy
from edgekd.training.losses import SparseCrossentropy
from edgekd.training.models import model_summary_stats
from edgekd.training.run import digest_mismatch, file_digest
from edgekd.training.schedules import build_schedule

STATE = "state.json"
NO_DECAY = ["gamma", "beta", "bias"]


@dataclass
class TrainResult:
    """A trained model and its per-epoch history (all epochs, across resumes).

    `model` is what was fit (a Distiller around a student, say); `plain` is the trained
    network itself, ready to predict and save in this process (under `multi_worker`, a copy
    outside the strategy, whose predictions need no other worker).
    """

    model: keras.Model
    history: list[dict[str, float]]
    resumed_from: int
    plain: keras.Model | None = None

    def __post_init__(self) -> None:
        if self.plain is None:
            self.plain = getattr(self.model, "student", self.model)


def _unusable(point: Any, ckpt_dir: Path, epochs: int) -> str | None:
    """Why a recorded resume point cannot be used, or None if it can."""
    if not isinstance(point, dict):
        return "not a record"
    epoch, name = point.get("epoch"), point.get("checkpoint")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or not 1 <= epoch <= epochs:
        return f"epoch {epoch!r} is not in 1..{epochs}"
    if name != f"epoch-{epoch:04d}.keras":
        return f"checkpoint {name!r} does not match epoch {epoch}"
    history = point.get("history")
    if not isinstance(history, list) or len(history) != epoch:
        return f"its history does not have {epoch} epochs"
    path = ckpt_dir / name
    if not path.is_file():
        return f"{name} is missing"
    return digest_mismatch(path, point, name)


def load_state(
    ckpt_dir: Path, epochs: int, log: Callable[[str], None] = print
) -> dict[str, Any] | None:
    """The newest intact resume point (the last epoch's, else the one before), or None.

    Each point is checked against what was written (epoch range, size, sha256), so a
    truncated or hand-edited checkpoint falls back to the previous one or to a fresh start,
    and says which, instead of crashing every rerun.
    """
    path = ckpt_dir / STATE
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log(f"{path}: unreadable ({type(exc).__name__}); starting this stage afresh")
        return None
    points = [state, state.get("previous")] if isinstance(state, dict) else [state]
    for i, point in enumerate(points):
        if point is None:
            break
        why = _unusable(point, ckpt_dir, epochs)
        if why is None:
            if i:
                log(f"{path}: falling back to the checkpoint of epoch {point['epoch']}")
            return point
        log(f"{path}: {'last' if i == 0 else 'previous'} checkpoint unusable: {why}")
    log(f"{path}: no intact checkpoint; starting this stage afresh")
    return None


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves weights + optimizer state after every epoch and records per-epoch metrics."""

    def __init__(
        self,
        directory: Path,
        history: list[dict[str, float]],
        images_per_epoch: int,
        last: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.directory = directory
        self.history = history
        self._last = {k: v for k, v in last.items() if k != "previous"} if last else None
        self.images_per_epoch = images_per_epoch
        self._t0 = 0.0
        self._train_s = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._t0 = time.perf_counter()
        self._train_s = 0.0

    def on_test_begin(self, logs: dict | None = None) -> None:
        # Validation inside fit: the training part of the epoch ends here.
        if self._t0 and not self._train_s:
            self._train_s = time.perf_counter() - self._t0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        train_s = self._train_s or (time.perf_counter() - self._t0)
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
        row["train_s"] = round(train_s, 2)
        row["images_per_s"] = round(self.images_per_epoch / max(train_s, 1e-9), 1)
        self.history.append(row)
        name = f"epoch-{epoch + 1:04d}.keras"
        path = self.directory / name
        with atomic.atomic_path(path) as tmp:
            self.model.save(tmp)
        point = {
            "epoch": epoch + 1, "checkpoint": name, **file_digest(path),
            "history": list(self.history),
        }  # fmt: skip
        # The previous epoch's file stays until this one is recorded, so a truncated or lost
        # newest checkpoint falls back to it.
        previous, self._last = self._last, point
        atomic.write_json(self.directory / STATE, {**point, "previous": previous})
        keep = {name, previous["checkpoint"]} if previous else {name}
        for old in self.directory.glob("epoch-*.keras"):
            if old.name not in keep:
                old.unlink(missing_ok=True)


class StopOnInterrupt(keras.callbacks.Callback):
    """Re-raise a Ctrl-C that TensorFlow swallowed inside its input pipeline (see
    `edgekd.training.interrupts`); the last finished epoch's checkpoint stays for resuming."""

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if interrupts.requested():
            raise KeyboardInterrupt

    on_test_batch_end = on_train_batch_end


class StopOnNonFinite(keras.callbacks.Callback):
    """Fail the stage when the loss stops being a number: a diverged model must never be
    checkpointed or recorded as a finished stage. Listed before the checkpoint callback."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch

    def _check(self, logs: dict | None, where: str) -> None:
        for key, value in (logs or {}).items():
            if "loss" in key and not np.all(np.isfinite(np.asarray(value, np.float64))):
                raise TrainingError(
                    f"{self.name}: {key} became {float(np.asarray(value))} at {where}; nothing "
                    "from this epoch was kept. Lower optimizer.lr, or check the data and the "
                    "recipe's numbers"
                )

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._check(logs, f"epoch {self.epoch + 1}, step {batch + 1}")

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._check(logs, f"the end of epoch {epoch + 1}")


def compile_classifier(
    model: keras.Model,
    cfg: ModelTrainConfig,
    steps_per_epoch: int,
    jit_compile: bool,
    own_loss: bool = False,
) -> None:
    """SGD + schedule + (smoothed) cross-entropy, as the recipe's model section says.

    `own_loss`: the model computes its loss itself (the Distiller); only the optimizer,
    schedule and metrics are set here.
    """
    opt = cfg.optimizer
    schedule = build_schedule(
        cfg.schedule.name,
        peak_lr=opt.lr,
        steps_per_epoch=steps_per_epoch,
        epochs=cfg.epochs,
        warmup_epochs=cfg.schedule.warmup_epochs,
        final_lr_fraction=cfg.schedule.final_lr_fraction,
        peak_at=cfg.schedule.peak_at,
    )
    optimizer = keras.optimizers.SGD(
        learning_rate=schedule,
        momentum=opt.momentum,
        nesterov=opt.nesterov,
        weight_decay=opt.weight_decay or None,
    )
    if opt.weight_decay:
        optimizer.exclude_from_weight_decay(var_names=NO_DECAY)
    model.compile(
        optimizer=optimizer,
        loss=None if own_loss else SparseCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=jit_compile,
    )


def train_classifier(
    build: Callable[[], keras.Model],
    cfg: ModelTrainConfig,
    train: ImageSet | ImageBatches,
    val: ImageSet | ImageBatches | None,
    workdir: Path,
    *,
    seed: int,
    augment: Augment | None,
    accel: Accelerator,
    tensorboard: bool = True,
    verbose: str | int = "auto",
    log: Callable[[str], None] = print,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    wrap: Callable[[keras.Model], keras.Model] | None = None,
) -> TrainResult:
    """Train (or resume training) the model `build()` makes; checkpoints live in `workdir`.

    `train` is an image set (shuffled, augmented batches are made here) or ready batches;
    `val` likewise (ready batches when they carry more than labels, e.g. stored targets).
    `wrap` turns the built model into the one that is fit and computes its own loss (the
    Distiller around a student); it is called inside the distribution scope.
    """
    ckpt_dir = workdir / "checkpoint"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(train, ImageBatches):
        train_batches = train  # e.g. EnrichedBatches for a specialist
    else:
        train_batches = ImageBatches(
            train.images,
            train.labels,
            batch_size=cfg.batch_size,
            shuffle=True,
            augment=augment,
            seed=seed,
            drop_remainder=True,
        )
    steps = len(train_batches)
    val_batches = None
    if isinstance(val, ImageBatches):
        val_batches = val
    elif val is not None and len(val):
        val_batches = ImageBatches(val.images, val.labels, batch_size=max(cfg.batch_size, 256))

    multi_worker = accel.distribution == "multi_worker"
    if multi_worker:
        from edgekd.training import cluster

        joined = cluster.current()
        if joined is not None:
            train_batches.shard(joined.index, joined.size)
    atomic.remove_stale(ckpt_dir)
    state = load_state(ckpt_dir, cfg.epochs, log)
    with precision_policy(accel.precision), distribution_scope(accel.distribution):

        def fresh() -> tuple[keras.Model, str]:
            keras.utils.set_random_seed(seed)
            model = build()
            stats = model_summary_stats(model)
            log(
                f"{model.name}: {cfg.arch} width {cfg.width}, {stats['params']:,} params, "
                f"{stats['macs'] / 1e6:.1f}M MACs/image; {steps} steps/epoch x {cfg.epochs} epochs"
            )
            name = model.name
            if accel.distribution != "none":
                sync_batchnorm(model, True)
            if wrap is not None:
                model = wrap(model)
            compile_classifier(model, cfg, steps, accel.jit_compile, own_loss=wrap is not None)
            return model, name

        model, name = fresh()
        if state is not None:
            try:
                model.optimizer.build(model.trainable_variables)
                model.load_weights(ckpt_dir / state["checkpoint"])
                log(f"resuming from epoch {state['epoch']}/{cfg.epochs} ({state['checkpoint']})")
            except Exception as exc:  # noqa: BLE001 - any unreadable file means the same: restart
                log(f"{ckpt_dir / state['checkpoint']}: cannot load ({type(exc).__name__}); "
                    "starting this stage afresh")  # fmt: skip
                state = None
                model, name = fresh()
    initial_epoch = state["epoch"] if state else 0
    history: list[dict[str, float]] = list(state["history"]) if state else []
    train_batches.epoch = initial_epoch

    all_callbacks: list[keras.callbacks.Callback] = [
        StopOnInterrupt(),
        StopOnNonFinite(name),
        EpochCheckpoint(ckpt_dir, history, steps * train_batches.batch_size, last=state),
        *callbacks,
    ]
    if tensorboard and _tensorboard_available():
        all_callbacks.append(keras.callbacks.TensorBoard(str(workdir / "tensorboard")))
    fit_input: Any = train_batches
    if multi_worker:
        # Validation runs on each worker's own copy of the model (LocalValidation, listed
        # before the checkpoint so its figures are recorded), outside the collective steps.
        checkpoint = next(c for c in all_callbacks if isinstance(c, EpochCheckpoint))
        all_callbacks.insert(2, LocalValidation(val_batches, checkpoint))
        val_batches = None
        if accel.backend == "tensorflow":
            from edgekd.training import distributed_input

            fit_input = distributed_input.for_fit(model, train_batches)
    # JAX distributes each batch when fit draws it: the distribution must be set then too.
    fit_scope = (
        distribution_scope(accel.distribution)
        if accel.backend == "jax"
        else contextlib.nullcontext()
    )
    if initial_epoch < cfg.epochs:
        with fit_scope:
            model.fit(
                fit_input,
                validation_data=val_batches,
                epochs=cfg.epochs,
                initial_epoch=initial_epoch,
                shuffle=False,  # ImageBatches shuffles per (seed, epoch); Keras: unseeded
                callbacks=all_callbacks,
                verbose=verbose,
            )
    net = getattr(model, "student", model)
    if accel.distribution != "none":
        sync_batchnorm(net, False)
    plain = detached(net) if multi_worker else net
    return TrainResult(model=model, history=history, resumed_from=initial_epoch, plain=plain)


def sync_batchnorm(model: keras.Model, on: bool) -> None:
    """Batch statistics over the global batch (TensorFlow's synchronized BatchNormalization).

    Data parallelism then gives the update one device would on the whole batch, as
    `keras.distribution.DataParallel` does on JAX by construction. Turned off after training,
    so saved models load on every backend (only TensorFlow accepts the flag).
    """
    if keras.backend.backend() != "tensorflow":
        return
    from keras.src.backend.tensorflow import nn as tf_nn

    tf_nn._compute_moments_sync = synchronized_moments
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = on


def synchronized_moments(x: Any, axes: Any, keepdims: bool) -> tuple[Any, Any]:
    """Batch mean and variance over every replica's rows, in two passes.

    Keras' synchronized batch norm takes the variance as E[x^2] - E[x]^2 of summed
    partial sums. Where a channel's mean is large against its spread, that difference
    cancels most digits, and the rounding of the workers' partial sums moved two workers'
    weights off one process's: 1.6e-4 after 15 steps of the smoke generalist, 6.7e-6 in two
    passes. Here the global mean is reduced first and the variance is the mean squared
    deviation from it, as the unsynchronized layer computes it.
    """
    import tensorflow as tf
    from keras.src.backend.tensorflow import nn as tf_nn

    context = tf.distribute.get_replica_context()
    if not context:
        return tf_nn._compute_moments(x, axes, keepdims)
    total = tf.reduce_sum(x, axis=axes, keepdims=True)
    count = tf.reduce_sum(tf.ones_like(x), axis=axes, keepdims=True)
    total = context.all_reduce(tf.distribute.ReduceOp.SUM, total)
    count = context.all_reduce(tf.distribute.ReduceOp.SUM, count)
    mean = tf.math.divide_no_nan(total, count)
    squares = tf.reduce_sum(tf.square(x - tf.stop_gradient(mean)), axis=axes, keepdims=True)
    variance = tf.math.divide_no_nan(context.all_reduce(tf.distribute.ReduceOp.SUM, squares), count)
    if not keepdims:
        mean, variance = tf.squeeze(mean, axes), tf.squeeze(variance, axes)
    return mean, variance


def detached(model: keras.Model) -> keras.Model:
    """A copy of `model` made outside any distribution strategy, with its weights: its
    predictions run in this process alone, never waiting on another worker."""
    with local_only():
        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
    return copy


@contextlib.contextmanager
def local_only() -> Iterator[None]:
    """No JAX distribution for a block (fit sets one): arrays made and batches fed stay in
    this process. TensorFlow's strategies belong to their models and need nothing here."""
    if keras.backend.backend() != "jax":
        yield
        return
    from keras import distribution as kd

    previous = kd.distribution()
    kd.set_distribution(None)
    try:
        yield
    finally:
        kd.set_distribution(previous)


class LocalValidation(keras.callbacks.Callback):
    """`val_accuracy` and `val_loss` (cross-entropy) after each epoch, from this worker's
    detached copy of the network: what `fit`'s validation reports, with no collective step."""

    def __init__(self, val: ImageBatches | None, checkpoint: EpochCheckpoint) -> None:
        super().__init__()
        self.val = val
        self.checkpoint = checkpoint

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.val is None or logs is None or self.val.labels is None:
            return
        self.checkpoint.on_test_begin()  # the epoch's training time ends here, as in fit
        net = detached(getattr(self.model, "student", self.model))
        with local_only():
            logits = predict_logits(net, self.val.images, batch_size=self.val.batch_size)
        probs = softmax(logits)
        labels = self.val.labels
        picked = np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)
        logs["val_accuracy"] = float((probs.argmax(1) == labels).mean())
        logs["val_loss"] = float(-np.log(picked).mean())


def _tensorboard_available() -> bool:
    """TensorBoard logs need tf.summary: the TensorFlow backend and the tensorboard package."""
    if keras.backend.backend() != "tensorflow":
        return False
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def predict_logits(model: keras.Model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Raw model outputs (float32) for pixel images, batched, on any backend.

    Every batch is padded to `batch_size`, so the compiled predict step is traced once and
    reused across calls (the gated ensemble calls this per specialist on ragged subsets).
    """
    n = len(images)
    out = np.zeros((n, model.output_shape[-1]), np.float32)
    for start in range(0, n, batch_size):
        chunk = np.asarray(images[start : start + batch_size], np.float32)
        if len(chunk) < batch_size:
            pad = np.zeros((batch_size - len(chunk), *chunk.shape[1:]), np.float32)
            chunk = np.concatenate([chunk, pad])
        out[start : start + batch_size] = np.asarray(model.predict_on_batch(chunk))[: n - start]
    return out


def predict_probs(model: keras.Model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Softmax probabilities (float32) of `predict_logits`, computed in float64."""
    return softmax(predict_logits(model, images, batch_size))
