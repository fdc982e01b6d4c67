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
