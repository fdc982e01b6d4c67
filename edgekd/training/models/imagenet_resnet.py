"""ImageNet-style ResNets (He et al., 2016): ResNet-18 of BasicBlocks, and keras' ResNet-50.

The ImageNet stem, a 7x7 stride-2 convolution and a 3x3 stride-2 max-pool, quarters the
image before the first stage, and the stages halve it three more times: a total stride of 32.
That suits images of 96 px and up; the registry refuses smaller ones (for 32-px images use
the CIFAR ResNets of ``resnet.py``, whose stem keeps the resolution).

``imagenet_resnet`` builds the BasicBlock networks (keras.applications has no ResNet-18):
``resnet.cifar_resnet`` with its ImageNet stem, so the layer names are the CIFAR ResNets'
plus ``"stem_pool"``; ``width`` is the channels of the stem and first stage, as there.

``resnet50`` is ``keras.applications.ResNet50`` under edgekd's contract (see
``applications.application_model``). ``width`` is the channels of its stem (64 is the
published network); other widths scale every convolution by ``width / 64``. Its ImageNet
weights expect Caffe preprocessing: BGR channels minus the ImageNet mean, no scaling. Here
"preprocess" subtracts the mean in RGB order and, when weights are loaded, the stem kernel's
input channels are reversed, so the model takes RGB pixels like every other one.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from edgekd.training.models.applications import application_model
from edgekd.training.models.resnet import cifar_resnet

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""Per-channel mean of the ImageNet training set, pixels scaled to ``[0, 1]``."""

IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""Per-channel standard deviation of the ImageNet training set, pixels scaled to ``[0, 1]``."""

CAFFE_MEAN_RGB: tuple[float, float, float] = (123.68, 116.779, 103.939)
"""The mean pixel keras' ResNet-50 weights expect subtracted (``mode="caffe"``), RGB order."""


def imagenet_resnet(
    blocks_per_stage: Sequence[int],
    *,
    num_classes: int,
    width: int = 64,
    input_shape: tuple[int, int, int] = (224, 224, 3),
    bn_momentum: float = 0.9,
    bn_epsilon: float = 1e-5,
    dropout: float = 0.0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    zero_init_residual: bool = True,
    name: str = "resnet_imagenet",
) -> keras.Model:
    """Build an ImageNet-style ResNet of BasicBlocks as a Functional model.

    Pixels ``0..255`` in, float32 logits out; "preprocess" computes
    ``(x - mean * 255) / (std * 255)`` per channel, as in ``resnet.cifar_resnet``.

    Args:
        blocks_per_stage: sequence of int. BasicBlocks in each of the four stages, e.g.
            ``[2, 2, 2, 2]`` for ResNet-18.
        num_classes: int. Number of logits the head returns.
        width: int. Channels of the stem and the first stage; stage ``i`` (from 0) has
            ``width * 2**i``. Defaults to `64`.
        input_shape: tuple of int. ``(height, width, channels)``. Defaults to `(224, 224, 3)`.
        bn_momentum: float. Momentum of every BatchNormalization. Defaults to `0.9`.
        bn_epsilon: float. Epsilon of every BatchNormalization. Defaults to `1e-5`.
        dropout: float. Dropout rate before the head; ``0`` adds no layer. Defaults to `0.0`.
        mean: sequence of float. Per-channel mean of pixels scaled to ``[0, 1]``. Defaults
            to `IMAGENET_MEAN`.
        std: sequence of float. Per-channel standard deviation of pixels scaled to
            ``[0, 1]``. Defaults to `IMAGENET_STD`.
        zero_init_residual: bool. Start each block's last BN scale at zero. Defaults to
            `True`.
        name: str. Name of the model. Defaults to `"resnet_imagenet"`.

    Returns:
        An uncompiled ``keras.Model``.

    Example:

    >>> model = imagenet_resnet([2, 2, 2, 2], num_classes=10, width=16, input_shape=(96, 96, 3))
    >>> model(np.zeros((1, 96, 96, 3), "float32")).shape
    (1, 10)
    """
    return cifar_resnet(
        blocks_per_stage,
        num_classes=num_classes,
        width=width,
        input_shape=input_shape,
        bn_momentum=bn_momentum,
        bn_epsilon=bn_epsilon,
        dropout=dropout,
        mean=mean,
        std=std,
        zero_init_residual=zero_init_residual,
        stem="imagenet",
        name=name,
    )


def resnet50(
    *,
    num_classes: int,
    width: int = 64,
    input_shape: tuple[int, int, int] = (224, 224, 3),
    weights: str | None = None,
    bn_momentum: float = 0.9,
    dropout: float = 0.0,
    name: str = "resnet50",
) -> keras.Model:
    """Build ``keras.applications.ResNet50`` as an edgekd classifier (see the module docstring).

    Args:
        num_classes: int. Number of logits the head returns.
        width: int. Channels of the stem; every convolution scales by ``width / 64``.
            Defaults to `64` (the published network; the only width with weights).
        input_shape: tuple of int. ``(height, width, 3)``. Defaults to `(224, 224, 3)`.
        weights: str or None. None, ``"imagenet"`` or the path of keras' no-top weights
            file. Defaults to `None`.
        bn_momentum: float. Momentum of every BatchNormalization. Defaults to `0.9`.
        dropout: float. Dropout rate before the head. Defaults to `0.0`.
        name: str. Name of the model. Defaults to `"resnet50"`.

    Returns:
        An uncompiled ``keras.Model``: RGB pixels 0..255 in, logits out.
    """
    if width < 1:
        raise ValueError(f"`width` must be a positive integer; received {width}.")
    return application_model(
        keras.applications.ResNet50,
        arch="resnet50",
        num_classes=num_classes,
        input_shape=input_shape,
        mean=CAFFE_MEAN_RGB,
        std=(1.0, 1.0, 1.0),
        weights=weights,
        bn_momentum=bn_momentum,
        dropout=dropout,
        filter_scale=None if width == 64 else (width, 64),
        after_load=_stem_takes_rgb,
        name=name,
    )


def _stem_takes_rgb(backbone: keras.Model) -> None:
    """Reverse the input channels of the stem kernel: weights made for BGR then take RGB."""
    stem = backbone.get_layer("conv1_conv")
    kernel, *rest = stem.get_weights()
    stem.set_weights([kernel[:, :, ::-1, :], *rest])
