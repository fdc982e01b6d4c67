"""MobileNetV2 and MobileNetV3 from keras.applications, under edgekd's model contract.

``width`` is the width multiplier in percent: ``alpha = width / 100``, so width 100 is the
published network, 35 is MobileNetV2-0.35 and 75 MobileNetV3-0.75. keras.applications has
ImageNet weights at widths 35, 50, 75, 100, 130 and 140 (V2), 75 and 100 (V3) and 100
(V3 minimalistic).

Preprocessing is the one the ImageNet weights expect, ``(x - 127.5) / 127.5``, in the
``"preprocess"`` layer. Below 96 px the stem convolution (``Conv1`` in V2, ``conv`` in V3)
runs at stride 1, so a 32-px image keeps 2x2 positions at the end instead of 1x1; see
``applications.application_model`` for the other edits (BatchNormalization momentum).

MobileNetV3's last 1x1 convolution (1024 units in Small, 1280 in Large), which
keras.applications leaves out of ``include_top=False``, is the Dense ``"head_hidden"`` here,
so the model has the published layers; its ImageNet weights are not in keras' no-top file, so
it starts random. The minimalistic variants use ReLU, 3x3 kernels and no squeeze-and-excite
blocks: no hard-swish and no sigmoid gates, which quantise best to int8.
"""

from __future__ import annotations

import functools
from typing import Literal

import keras

from edgekd.training.models.applications import application_model, width_multiplier

_MEAN = (127.5, 127.5, 127.5)
_STD = (127.5, 127.5, 127.5)
_LAST_POINT = {"small": 1024, "large": 1280}


def mobilenet_v2(
    *,
    num_classes: int,
    width: int = 100,
    input_shape: tuple[int, int, int] = (224, 224, 3),
    weights: str | None = None,
    bn_momentum: float = 0.9,
    dropout: float = 0.0,
    name: str = "mobilenetv2",
) -> keras.Model:
    """Build MobileNetV2 (Sandler et al., 2018) as an edgekd classifier.

    Args:
        num_classes: int. Number of logits the head returns.
        width: int. Width multiplier in percent. Defaults to `100` (alpha 1.0).
        input_shape: tuple of int. ``(height, width, 3)``, at least 32 px. Defaults to
            `(224, 224, 3)`.
        weights: str or None. None, ``"imagenet"`` or the path of keras' no-top weights
            file. Defaults to `None`.
        bn_momentum: float. Momentum of every BatchNormalization. Defaults to `0.9`.
        dropout: float. Dropout rate before the head. Defaults to `0.0`.
        name: str. Name of the model. Defaults to `"mobilenetv2"`.

    Returns:
        An uncompiled ``keras.Model``: pixels 0..255 in, logits out.
    """
    alpha = width_multiplier(width)
    return application_model(
        functools.partial(keras.applications.MobileNetV2, alpha=alpha),
        arch="mobilenetv2",
        num_classes=num_classes,
        input_shape=input_shape,
        mean=_MEAN,
        std=_STD,
        weights=weights,
        bn_momentum=bn_momentum,
        dropout=dropout,
        small_stem={"Conv1": {"strides": [1, 1]}},
        name=name,
    )


def mobilenet_v3(
    size: Literal["small", "large"],
    *,
    num_classes: int,
    minimalistic: bool = False,
    width: int = 100,
    input_shape: tuple[int, int, int] = (224, 224, 3),
    weights: str | None = None,
    bn_momentum: float = 0.9,
    dropout: float = 0.0,
    name: str | None = None,
) -> keras.Model:
    """Build MobileNetV3 Small or Large (Howard et al., 2019) as an edgekd classifier.

    Args:
        size: "small" or "large".
        num_classes: int. Number of logits the head returns.
        minimalistic: bool. ReLU, 3x3 kernels, no squeeze-and-excite. Defaults to `False`.
        width: int. Width multiplier in percent. Defaults to `100` (alpha 1.0).
        input_shape: tuple of int. ``(height, width, 3)``, at least 32 px. Defaults to
            `(224, 224, 3)`.
        weights: str or None. None, ``"imagenet"`` or the path of keras' no-top weights
            file. Defaults to `None`.
        bn_momentum: float. Momentum of every BatchNormalization. Defaults to `0.9`.
        dropout: float. Dropout rate before the head. Defaults to `0.0`.
        name: str or None. Name of the model. Defaults to the registry name, e.g.
            `"mobilenetv3small_minimalistic"`.

    Returns:
        An uncompiled ``keras.Model``: pixels 0..255 in, logits out.
    """
    if size not in _LAST_POINT:
        raise ValueError(f"`size` must be 'small' or 'large'; received {size!r}.")
    arch = f"mobilenetv3{size}" + ("_minimalistic" if minimalistic else "")
    alpha = width_multiplier(width)
    constructor = {
        "small": keras.applications.MobileNetV3Small,
        "large": keras.applications.MobileNetV3Large,
    }[size]
    last_point = _LAST_POINT[size]
    if alpha > 1.0:  # as keras.applications widens it
        last_point = _make_divisible(last_point * alpha)
    return application_model(
        functools.partial(
            constructor, alpha=alpha, minimalistic=minimalistic, include_preprocessing=False
        ),
        arch=arch,
        num_classes=num_classes,
        input_shape=input_shape,
        mean=_MEAN,
        std=_STD,
        weights=weights,
        bn_momentum=bn_momentum,
        dropout=dropout,
        small_stem={"conv": {"strides": [1, 1]}},
        hidden=(last_point, "relu" if minimalistic else "hard_silu"),
        name=name or arch,
    )


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to a multiple of ``divisor``, losing at most 10% (MobileNets' rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded
