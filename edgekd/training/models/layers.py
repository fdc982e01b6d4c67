"""Small layers that travel inside saved and exported models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="edgekd")
class LogitAdjustment(keras.layers.Layer):
    """Adds a fixed vector to the logits: a prior correction that exports with the model.

    A specialist trained on enriched batches sees its group's classes more often than the
    world does; adding log(true prior / training prior) to each logit (Hinton et al. add the
    log of the oversampling factor to the dustbin) makes its probabilities calibrated again.

    Args:
        bias: sequence of float. One value per logit.
    """

    def __init__(self, bias: Sequence[float], **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.bias = [float(b) for b in bias]

    def call(self, logits: Any) -> Any:
        return ops.cast(logits, "float32") + ops.convert_to_tensor(self.bias, "float32")

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "bias": self.bias}
