"""Supervised training of one classifier, resumable at epoch boundaries.

Every epoch ends with an atomic checkpoint (weights + optimizer state) and a state file
pointing at it. A run killed at any moment — Ctrl-C or kill -9, mid-epoch or mid-write —
restarts from the last finished epoch: the model is rebuilt, compiled the same way, its
weights and optimizer slots loaded, and `fit` continues at `initial_epoch` with the same
per-epoch shuffling and augmentation as an uninterrupted run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from edgekd import atomic, interrupts
from edgekd.accelerator import Accelerator, distribution_scope, precision_policy
from edgekd.data import Augment, ImageBatches, ImageSet
from edgekd.losses import SparseCrossentropy
from edgekd.models import model_summary_stats
from edgekd.recipe import ModelTrainConfig
from edgekd.runtime.fusion import softmax
from edgekd.schedules import build_schedule

STATE = "state.json"
NO_DECAY = ["gamma", "beta", "bias"]


@dataclass
class TrainResult:
    """A trained model and its per-epoch history (all epochs, across resumes)."""

    model: keras.Model
    history: list[dict[str, float]]
    resumed_from: int


def load_state(ckpt_dir: Path) -> dict[str, Any] | None:
    """The last finished epoch's state, or None if there is none (or it is unreadable)."""
    try:
        state = json.loads((ckpt_dir / STATE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if not (ckpt_dir / state.get("checkpoint", "")).is_file():
        return None
    return state


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves weights + optimizer state after every epoch and records per-epoch metrics."""

    def __init__(self, directory: Path, history: list[dict[str, float]], images_per_epoch: int):
        super().__init__()
        self.directory = directory
        self.history = history
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
        with atomic.atomic_path(self.directory / name) as tmp:
            self.model.save(tmp)
        atomic.write_json(
            self.directory / STATE,
            {"epoch": epoch + 1, "checkpoint": name, "history": self.history},
        )
        for old in self.directory.glob("epoch-*.keras"):
            if old.name != name:
                old.unlink(missing_ok=True)


class StopOnInterrupt(keras.callbacks.Callback):
    """Re-raise a Ctrl-C that TensorFlow swallowed inside its input pipeline (see
    `edgekd.interrupts`); the last finished epoch's checkpoint stays for resuming."""

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if interrupts.requested():
            raise KeyboardInterrupt

    on_test_batch_end = on_train_batch_end


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
    val: ImageSet | None,
    workdir: Path,
    *,
    seed: int,
    augment: Augment | None,
    accel: Accelerator,
    strategy: str = "default",
    tensorboard: bool = True,
    verbose: str | int = "auto",
    log: Callable[[str], None] = print,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    wrap: Callable[[keras.Model], keras.Model] | None = None,
) -> TrainResult:
    """Train (or resume training) the model `build()` makes; checkpoints live in `workdir`.

    `train` is an image set (shuffled, augmented batches are made here) or ready batches.
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
    if val is not None and len(val):
        val_batches = ImageBatches(val.images, val.labels, batch_size=max(cfg.batch_size, 256))

    state = load_state(ckpt_dir)
    with precision_policy(accel.precision), distribution_scope(strategy):
        keras.utils.set_random_seed(seed)
        model = build()
        stats = model_summary_stats(model)
        log(
            f"{model.name}: {cfg.arch} width {cfg.width}, {stats['params']:,} params, "
            f"{stats['macs'] / 1e6:.1f}M MACs/image; {steps} steps/epoch x {cfg.epochs} epochs"
        )
        if wrap is not None:
            model = wrap(model)
        compile_classifier(model, cfg, steps, accel.jit_compile, own_loss=wrap is not None)
        if state is not None:
            model.optimizer.build(model.trainable_variables)
            model.load_weights(ckpt_dir / state["checkpoint"])
            log(f"resuming from epoch {state['epoch']}/{cfg.epochs} ({state['checkpoint']})")
    initial_epoch = state["epoch"] if state else 0
    history: list[dict[str, float]] = list(state["history"]) if state else []
    train_batches.epoch = initial_epoch

    all_callbacks: list[keras.callbacks.Callback] = [
        StopOnInterrupt(),
        EpochCheckpoint(ckpt_dir, history, steps * train_batches.batch_size),
        *callbacks,
    ]
    if tensorboard and _tensorboard_available():
        all_callbacks.append(keras.callbacks.TensorBoard(str(workdir / "tensorboard")))
    if initial_epoch < cfg.epochs:
        model.fit(
            train_batches,
            validation_data=val_batches,
            epochs=cfg.epochs,
            initial_epoch=initial_epoch,
            shuffle=False,  # ImageBatches shuffles per (seed, epoch); Keras' shuffle is unseeded
            callbacks=all_callbacks,
            verbose=verbose,
        )
    return TrainResult(model=model, history=history, resumed_from=initial_epoch)


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
