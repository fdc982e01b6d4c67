"""The Distiller: a `keras.Model` that trains a student against a frozen teacher.

Loss (the seed's): lambda * T^2 * CE(q(T), p(T)) + (1 - lambda) * CE(y, p(1)), where p is
the student's distribution and q the teacher's. T and lambda may ramp over training
(`edgekd.training.schedules.Ramp`).

The teacher is any callable from pixels to class probabilities, traced into the train
step: a `keras.Model` with logits (wrapped in `ModelTeacher`), the gated ensemble
(`GatedEnsemble.teacher()`), or a plain function. Two ways to get q(T):

- `target="fused"`: temper the teacher's distribution, q(T) = softmax(log q / T). Works
  for any teacher; for a single model it is softmax(z / T).
- `target="members"`: the teacher tempers its members before fusing them; it must accept
  `temperature=`. Gating always uses the untempered generalist.

Written beside `keras.distillation.Distiller` rather than on it: that one wants a
`keras.Model` teacher that outputs logits (a fused distribution has none), has no
schedules for T or lambda, and its loss is a plain batch mean, which under
`tf.distribute` doubles gradients on two replicas (the optimizer sums replica gradients).
Here the loss is divided by the replica count as Keras' own `Loss` does, and the tracked
`soft_loss` / `hard_loss` are the per-example means whatever the strategy.

With a `StoredTeacher` the teacher is not called at all: each batch brings the teacher's
probabilities on its own views, computed once beforehand, as y = (labels, q), and q(T) is
tempered from them as for `target="fused"` (FKD, Shen & Xing 2021).

`fit`/`evaluate`/callbacks work as for any model; `distiller.student` is the model to
keep and save. Saving the Distiller itself (as checkpoints do) stores the student and the
optimizer, not the teacher.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from edgekd.recipe import DEFAULT_SOFT_WEIGHT, DEFAULT_TEMPERATURE
from edgekd.training.losses import distillation_loss, temper
from edgekd.training.schedules import Ramp

TARGETS = ("fused", "members")


class ModelTeacher:
    """A logits model as a teacher callable: probabilities, optionally at temperature T.

    Kept as a plain object so the Distiller does not track (or save, or train) its weights.
    """

    def __init__(self, model: keras.Model) -> None:
        self.model = model

    def __call__(self, x: Any, temperature: Any = None) -> Any:
        logits = ops.cast(self.model(x, training=False), "float32")
        if temperature is not None:
            logits = logits / temperature
        return ops.softmax(logits, axis=-1)


class StoredTeacher:
    """The teacher of a Distiller whose batches bring its probabilities: y = (labels, q).

    q are the teacher's untempered probabilities on the batch's own views, computed once
    beforehand (`edgekd.training.teacher_targets`); only `target="fused"` can temper them.
    """


def as_teacher(teacher: Any) -> Callable[..., Any] | StoredTeacher | None:
    """A callable teacher: models are wrapped in `ModelTeacher`, callables pass through."""
    if teacher is None or isinstance(teacher, ModelTeacher | StoredTeacher):
        return teacher
    if isinstance(teacher, keras.Model):
        return ModelTeacher(teacher)
    if hasattr(teacher, "teacher") and callable(teacher.teacher):  # a GatedEnsemble
        return teacher.teacher()
    if callable(teacher):
        return teacher
    raise TypeError(f"teacher must be a keras.Model or a callable, got {type(teacher).__name__}")


def _ramp(value: float | Ramp | dict) -> Ramp:
    if isinstance(value, Ramp):
        return value
    if isinstance(value, dict):
        return Ramp.from_config(value)
    return Ramp(float(value))


def replica_share(value: Any) -> Any:
    """Divide a per-replica mean loss by the replica count, as Keras' `Loss` does.

    Under `tf.distribute` the optimizer sums the replicas' gradients, so each replica must
    contribute loss / replicas for the sum to be the gradient of the global mean.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1:
            return value / float(replicas)
    return value


@keras.saving.register_keras_serializable(package="edgekd")
class Distiller(keras.Model):
    """Trains `student` on the teacher's soft targets and the hard labels.

    Args:
        student: keras.Model returning logits.
        teacher: keras.Model (logits), callable (pixels -> probabilities), or None. None
            trains on hard labels alone (`soft_weight` must then be 0): the control.
        temperature: float, `Ramp`, or a Ramp config dict. T. Defaults to the recipe schema's.
        soft_weight: float, `Ramp`, or config. lambda in [0, 1]. Defaults to the recipe schema's.
        target: "fused" or "members" (see the module docstring). Defaults to "fused".
        label_smoothing: for the hard-label term. Defaults to 0.
    """

    def __init__(
        self,
        student: keras.Model,
        teacher: Any = None,
        *,
        temperature: float | Ramp | dict = DEFAULT_TEMPERATURE,
        soft_weight: float | Ramp | dict = DEFAULT_SOFT_WEIGHT,
        target: str = "fused",
        label_smoothing: float = 0.0,
        name: str = "distiller",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        self.student = student
        self.temperature = _ramp(temperature)
        self.soft_weight = _ramp(soft_weight)
        for lam in (self.soft_weight.start, self.soft_weight.end):
            if not 0.0 <= lam <= 1.0:
                raise ValueError(f"soft_weight must stay in [0, 1], got {lam}")
        for t in (self.temperature.start, self.temperature.end):
            if t <= 0.0:
                raise ValueError(f"temperature must be positive, got {t}")
        self.hard_only = self.soft_weight.constant and self.soft_weight.start == 0.0
        if teacher is None and not self.hard_only:
            raise ValueError("a Distiller without a teacher needs soft_weight=0 (hard labels)")
        # A plain attribute holder: Keras tracks Layers and Variables it finds on the model,
        # and the teacher must not be trained, counted, checkpointed or saved with it.
        self._teacher_ref = [as_teacher(teacher)]
        self.stored = isinstance(self.teacher, StoredTeacher)
        if self.stored and target != "fused":
            raise ValueError(
                "stored teacher targets are the fused distribution: use target='fused'"
            )
        self.target = target
        self.label_smoothing = float(label_smoothing)
        if not self.hard_only:
            self.soft_loss_tracker = keras.metrics.Mean(name="soft_loss")
        self.hard_loss_tracker = keras.metrics.Mean(name="hard_loss")
        # Built when the student is: a checkpoint can then be loaded before the first step.
        self.built = bool(student.built)

    @property
    def teacher(self) -> Callable[..., Any] | StoredTeacher | None:
        return self._teacher_ref[0]

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        return self.student(inputs, training=training)

    def teacher_targets(self, x: Any, temperature: Any) -> Any:
        """q(T) for a batch, outside the gradient."""
        if self.target == "members":
            q = self.teacher(x, temperature=temperature)
        else:
            q = temper(self.teacher(x), temperature)
        return ops.stop_gradient(ops.cast(q, "float32"))

    def schedule_values(self) -> tuple[Any, Any]:
        """(T, lambda) at the optimizer's current step."""
        step = self.optimizer.iterations if self.optimizer is not None else 0
        return self.temperature(step), self.soft_weight(step)

    def compute_loss(
        self,
        x: Any = None,
        y: Any = None,
        y_pred: Any = None,
        sample_weight: Any = None,
        training: bool = True,
    ) -> Any:
        if y_pred is None:
            y_pred = self(x, training=training)
        logits = ops.cast(y_pred, "float32")
        temperature, lam = self.schedule_values()
        if self.stored:
            y, stored = self._split(y)
        if self.hard_only:
            targets = ops.zeros_like(logits)
            lam = ops.convert_to_tensor(0.0)
        elif self.stored:
            targets = ops.stop_gradient(temper(stored, temperature))
        else:
            targets = self.teacher_targets(x, temperature)
        total, soft, hard = distillation_loss(
            targets, y, logits, temperature, lam, self.label_smoothing
        )
        if sample_weight is not None:
            w = ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
            mean = lambda v: ops.sum(v * w) / ops.maximum(ops.sum(w), 1e-12)  # noqa: E731
        else:
            mean = ops.mean
        if not self.hard_only:
            self.soft_loss_tracker.update_state(mean(soft))
        self.hard_loss_tracker.update_state(mean(hard))
        loss = mean(total)
        if self.losses:
            loss = loss + ops.sum(self.losses)
        return replica_share(loss)

    @staticmethod
    def _split(y: Any) -> tuple[Any, Any]:
        if not isinstance(y, tuple | list) or len(y) != 2:
            raise ValueError(
                "a Distiller with a StoredTeacher needs batches of (x, (labels, teacher "
                "probabilities)), e.g. from edgekd.training.teacher_targets.TargetBatches"
            )
        return y[0], y[1]

    def compute_metrics(self, x: Any, y: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        """Keras' metrics on the labels alone (stored targets travel beside them in y)."""
        if self.stored:
            y = self._split(y)[0]
        return super().compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def compile(self, optimizer: Any = "rmsprop", loss: Any = None, **kwargs: Any) -> None:
        """Keras' `compile` without `loss`/`loss_weights`, which `compute_loss` would ignore."""
        for arg, value in (("loss", loss), ("loss_weights", kwargs.get("loss_weights"))):
            if value is not None:
                raise ValueError(
                    f"Distiller.compile() does not take {arg}=: the Distiller computes its own "
                    "loss; set it in the constructor (temperature=, soft_weight=, target=, "
                    "label_smoothing=)"
                )
        super().compile(optimizer=optimizer, **kwargs)

    def compile_from_config(self, config: dict[str, Any]) -> None:
        """Recompile on `load_model`, as Keras does (it skips models that override `compile`)."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.optimizer is not None and self.built:
            self.optimizer.build(self.trainable_variables)  # so the saved slots can load

    def get_config(self) -> dict[str, Any]:
        """Keras' base config (name, trainable, dtype) plus the student and the loss settings."""
        config = super().get_config()
        config.update(
            {
                "student": keras.saving.serialize_keras_object(self.student),
                "temperature": self.temperature.get_config(),
                "soft_weight": self.soft_weight.get_config(),
                "target": self.target,
                "label_smoothing": self.label_smoothing,
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Distiller:
        """Rebuilds without a teacher (it is not saved): for the student and its weights."""
        config = dict(config)
        student = keras.saving.deserialize_keras_object(config.pop("student"))
        lam = Ramp.from_config(config.pop("soft_weight"))
        if lam.constant and lam.start == 0.0:
            return cls(student, None, soft_weight=lam, **config)

        def missing(*_: Any, **__: Any) -> Any:
            raise ValueError("this Distiller was loaded from disk: give it a teacher to train")

        return cls(student, missing, soft_weight=lam, **config)
