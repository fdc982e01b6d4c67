"""Losses, in `keras.ops` so they run on any backend and reduce correctly under
`tf.distribute` (Keras' `Loss` base scales by the global batch)."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="edgekd")
class SparseCrossentropy(keras.losses.Loss):
    """Cross-entropy from integer labels and logits, with optional label smoothing.

    Keras' `SparseCategoricalCrossentropy` has no label smoothing; one-hot labels would
    cost memory and a second input path, so smoothing is applied here in closed form:
    (1 - eps) * NLL(y) + eps * mean_k(-log p_k).

    Args:
        label_smoothing: float in [0, 1). Defaults to 0.
    """

    def __init__(self, label_smoothing: float = 0.0, name: str = "sparse_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        logp = ops.log_softmax(ops.cast(y_pred, "float32"), axis=-1)
        labels = ops.cast(ops.reshape(y_true, (-1, 1)), "int32")
        nll = -ops.squeeze(ops.take_along_axis(logp, labels, axis=-1), axis=-1)
        if self.label_smoothing == 0.0:
            return nll
        uniform = -ops.mean(logp, axis=-1)
        return (1.0 - self.label_smoothing) * nll + self.label_smoothing * uniform

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def temper(probs: Any, temperature: Any, eps: float = 1e-30) -> Any:
    """softmax(log p / T): a distribution made softer (T > 1) or sharper (T < 1).

    For a model's softmax output this equals softmax(logits / T), so a fused distribution
    with no logits of its own is tempered the same way.
    """
    logp = ops.log(ops.maximum(ops.cast(probs, "float32"), eps))
    return ops.softmax(logp / temperature, axis=-1)


def soft_cross_entropy(targets: Any, logits: Any, temperature: Any = 1.0) -> Any:
    """Per-example CE(q, softmax(z / T)) = -sum_k q_k log p_k(T), without the T^2 factor.

    Args:
        targets: (B, K) probabilities q (already tempered as wanted).
        logits: (B, K) the student's logits z.
        temperature: scalar T.
    """
    logp = ops.log_softmax(ops.cast(logits, "float32") / temperature, axis=-1)
    return -ops.sum(ops.cast(targets, "float32") * logp, axis=-1)


def hard_cross_entropy(labels: Any, logits: Any, label_smoothing: float = 0.0) -> Any:
    """Per-example CE(y, softmax(z)) from integer labels, with optional label smoothing."""
    return SparseCrossentropy(label_smoothing).call(labels, logits)


def distillation_loss(
    targets: Any,
    labels: Any,
    logits: Any,
    temperature: Any,
    soft_weight: Any,
    label_smoothing: float = 0.0,
) -> tuple[Any, Any, Any]:
    """The seed's loss, per example: lambda T^2 CE(q(T), p(T)) + (1 - lambda) CE(y, p(1)).

    T^2 keeps the soft term's gradient on the scale of the hard one as T grows (Hinton et
    al.: soft-target gradients shrink as 1/T^2).

    Args:
        targets: (B, K) the teacher's tempered distribution q(T).
        labels: (B,) integer labels y.
        logits: (B, K) the student's logits.
        temperature: scalar T.
        soft_weight: scalar lambda in [0, 1].
        label_smoothing: for the hard term. Defaults to 0.

    Returns:
        `(total, soft, hard)`, each of shape (B,); `soft` is CE(q(T), p(T)) without T^2.
    """
    soft = soft_cross_entropy(targets, logits, temperature)
    hard = hard_cross_entropy(labels, logits, label_smoothing)
    total = soft_weight * temperature**2 * soft + (1.0 - soft_weight) * hard
    return total, soft, hard
