"""EfficientNet-Lite0, built by keras.applications' EfficientNet builder.

keras.applications ships EfficientNet B0-B7 and V2, all with swish activations and
squeeze-and-excite gates (sigmoid): both quantise poorly to int8, which is why Google made
the Lite variants for mobile accelerators (Tan & Le; tensorflow/tpu's ``efficientnet/lite``).
Lite0 is B0 with ReLU6 for swish and no squeeze-and-excite, and the same blocks, kernels,
strides and widths at width 100. keras.applications has no Lite0 constructor, but the builder
behind ``EfficientNetB0`` (``keras.src.applications.efficientnet.EfficientNet``) takes the
activation and the block list, so Lite0 is that builder with ``activation="relu6"`` and
``se_ratio`` 0 in every block. keras.applications has no Lite weights: ``weights`` takes None
or a file saved from this backbone, not ``"imagenet"``.

``width`` is the width coefficient in percent (100 = Lite0). Unlike the Lite family, which
keeps its stem and last convolution fixed when it scales, the builder scales every layer.
Preprocessing is Lite's, ``(x - 127) / 128``; keras' own Rescaling and Normalization layers
are removed. Below 96 px the stem convolution runs at stride 1 (its padding made symmetric),
so a 32-px image ends in a 2x2 map.
"""

from __future__ import annotations

import functools

import keras

from edgekd.training.models.applications import application_model, width_multiplier


def efficientnet_lite0(
    *,
    num_classes: int,
    width: int = 100,
    input_shape: tuple[int, int, int] = (224, 224, 3),
    weights: str | None = None,
    bn_momentum: float = 0.9,
    dropout: float = 0.0,
    name: str = "efficientnet_lite0",
) -> keras.Model:
    """Build EfficientNet-Lite0 as an edgekd classifier (see the module docstring).

    Args:
        num_classes: int. Number of logits the head returns.
        width: int. Width coefficient in percent. Defaults to `100` (Lite0).
        input_shape: tuple of int. ``(height, width, 3)``, at least 32 px. Defaults to
            `(224, 224, 3)`.
        weights: str or None. None, or the path of a weights file saved from this backbone;
            keras.applications has no ImageNet weights for it. Defaults to `None`.
        bn_momentum: float. Momentum of every BatchNormalization. Defaults to `0.9`.
        dropout: float. Dropout rate before the head (Lite0 trains with 0.2). Defaults to
            `0.0`.
        name: str. Name of the model. Defaults to `"efficientnet_lite0"`.

    Returns:
        An uncompiled ``keras.Model``: pixels 0..255 in, logits out.

    Raises:
        ValueError: ``weights="imagenet"``.
    """
    from keras.src.applications import efficientnet as builder

    if weights == "imagenet":
        raise ValueError(
            "efficientnet_lite0: keras.applications has no ImageNet weights for EfficientNet-"
            "Lite; use weights: null, or pick mobilenetv2 / mobilenetv3* / resnet50."
        )
    blocks = [{**block, "se_ratio": 0.0} for block in builder.DEFAULT_BLOCKS_ARGS]
    return application_model(
        functools.partial(
            builder.EfficientNet,
            width_coefficient=width_multiplier(width),
            depth_coefficient=1.0,
            default_size=224,
            activation="relu6",
            blocks_args=blocks,
            name="efficientnet_lite0",
        ),
        arch="efficientnet_lite0",
        num_classes=num_classes,
        input_shape=input_shape,
        mean=(127.0, 127.0, 127.0),
        std=(128.0, 128.0, 128.0),
        weights=weights,
        bn_momentum=bn_momentum,
        dropout=dropout,
        small_stem={
            "stem_conv": {"strides": [1, 1]},
            "stem_conv_pad": {"padding": [[1, 1], [1, 1]]},
        },
        drop_classes=("Rescaling", "Normalization"),
        name=name,
    )
