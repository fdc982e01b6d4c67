"""Learning-rate schedules stepped per batch, written in `keras.ops` and serialisable."""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="edgekd")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `peak_lr`, then cosine decay to `final_lr`.

    Args:
        peak_lr: float. Learning rate at the end of warm-up.
        total_steps: int. Steps of the whole run.
        warmup_steps: int. Steps of linear warm-up. Defaults to 0.
        final_lr: float. Learning rate at `total_steps`. Defaults to 0.
    """

    def __init__(
        self, peak_lr: float, total_steps: int, warmup_steps: int = 0, final_lr: float = 0.0
    ) -> None:
        self.peak_lr = float(peak_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.final_lr = float(final_lr)

    def __call__(self, step: Any) -> Any:
        step = ops.cast(step, "float32")
        warm = float(max(self.warmup_steps, 1))
        decay = float(max(self.total_steps - self.warmup_steps, 1))
        progress = ops.clip((step - self.warmup_steps) / decay, 0.0, 1.0)
        cosine = self.final_lr + (self.peak_lr - self.final_lr) * 0.5 * (
            1.0 + ops.cos(math.pi * progress)
        )
        warmup = self.peak_lr * step / warm
        return ops.where(step < self.warmup_steps, warmup, cosine)

    def get_config(self) -> dict[str, Any]:
        return {
            "peak_lr": self.peak_lr,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "final_lr": self.final_lr,
        }


@keras.saving.register_keras_serializable(package="edgekd")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """Piecewise-linear one-cycle: `peak_lr / 10` up to `peak_lr` at `peak_at`, down to `final_lr`.

    Args:
        peak_lr: float. Highest learning rate.
        total_steps: int. Steps of the whole run.
        peak_at: float. Share of the run at which the peak is reached. Defaults to 0.25.
        final_lr: float. Learning rate at `total_steps`. Defaults to 0.
    """

    def __init__(
        self, peak_lr: float, total_steps: int, peak_at: float = 0.25, final_lr: float = 0.0
    ) -> None:
        self.peak_lr = float(peak_lr)
        self.total_steps = int(total_steps)
        self.peak_at = float(peak_at)
        self.final_lr = float(final_lr)

    def __call__(self, step: Any) -> Any:
        step = ops.cast(step, "float32")
        peak_step = max(self.peak_at * self.total_steps, 1.0)
        start = self.peak_lr / 10.0
        up = start + (self.peak_lr - start) * step / peak_step
        down_frac = ops.clip((step - peak_step) / max(self.total_steps - peak_step, 1.0), 0.0, 1.0)
        down = self.peak_lr + (self.final_lr - self.peak_lr) * down_frac
        return ops.where(step < peak_step, up, down)

    def get_config(self) -> dict[str, Any]:
        return {
            "peak_lr": self.peak_lr,
            "total_steps": self.total_steps,
            "peak_at": self.peak_at,
            "final_lr": self.final_lr,
        }


def build_schedule(
    name: str,
    *,
    peak_lr: float,
    steps_per_epoch: int,
    epochs: int,
    warmup_epochs: float = 0.0,
    final_lr_fraction: float = 0.0,
    peak_at: float = 0.25,
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The schedule a recipe's `schedule:` section names, in optimizer steps."""
    total = steps_per_epoch * epochs
    final = peak_lr * final_lr_fraction
    if name == "cosine":
        return WarmupCosine(peak_lr, total, round(warmup_epochs * steps_per_epoch), final)
    if name == "onecycle":
        return OneCycle(peak_lr, total, peak_at, final)
    if name == "constant":
        return peak_lr
    raise ValueError(f"unknown schedule {name!r}; expected cosine, onecycle or constant")


@keras.saving.register_keras_serializable(package="edgekd")
class Ramp:
    """A value that moves from `start` to `end` over `total_steps` (then stays at `end`).

    For distillation's temperature and soft-target weight, which the seed leaves static.
    Computed from the optimizer's step inside the train step, so it needs no callback,
    resumes with the optimizer, and works under any backend and `tf.distribute`.

    Args:
        start: float. Value at step 0.
        end: float | None. Value from `total_steps` on; None means constant `start`.
        total_steps: int. Length of the ramp in optimizer steps.
        shape: "linear" or "cosine" (half-cosine: slow, fast, slow). Defaults to "linear".
    """

    def __init__(
        self, start: float, end: float | None = None, total_steps: int = 1, shape: str = "linear"
    ) -> None:
        if shape not in ("linear", "cosine"):
            raise ValueError(f"unknown ramp shape {shape!r}; expected linear or cosine")
        self.start = float(start)
        self.end = self.start if end is None else float(end)
        self.total_steps = max(int(total_steps), 1)
        self.shape = shape

    @property
    def constant(self) -> bool:
        return self.start == self.end

    def __call__(self, step: Any) -> Any:
        if self.constant:
            return ops.convert_to_tensor(self.start, "float32")
        frac = ops.clip(ops.cast(step, "float32") / float(self.total_steps), 0.0, 1.0)
        if self.shape == "cosine":
            frac = 0.5 * (1.0 - ops.cos(math.pi * frac))
        return self.start + (self.end - self.start) * frac

    def get_config(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "total_steps": self.total_steps,
                "shape": self.shape}  # fmt: skip

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Ramp:
        return cls(**config)
