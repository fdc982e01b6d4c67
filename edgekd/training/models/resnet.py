"""ResNets of BasicBlocks (He et al., 2016) as Keras 3 Functional models.

The CIFAR variant differs from the ImageNet one in its stem: a single 3x3
stride-1 convolution and no max-pool, so a 32x32 image keeps its resolution
through the first stage (``stem="cifar"``, the default). The ImageNet stem, a 7x7
stride-2 convolution and a 3x3 stride-2 max-pool named ``"stem_pool"``, quarters the
image first (``stem="imagenet"``, for 96 px and up; see ``imagenet_resnet.py``).
Stages of BasicBlocks follow with widths ``[w, 2w, 4w, 8w]`` and strides
``[1, 2, 2, 2]``, then global average pooling, optional dropout and a Dense head that
returns logits.

The model takes raw RGB pixels in ``0..255`` and normalises them itself in a
``Normalization`` layer named ``"preprocess"``, so the saved ``.keras`` file
and any TFLite export need no separate preprocessing step.

Layer names are stable and independent of the width (``"stem_conv"``,
``"stage1_block1_conv1"``, ..., ``"head"``): weights are copied between models
by layer name, e.g. from a generalist into its specialists.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
"""Per-channel mean of the CIFAR-10 training set, pixels scaled to ``[0, 1]``."""

CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
"""Per-channel standard deviation of the CIFAR-10 training set, pixels scaled to ``[0, 1]``."""

_STAGE_STRIDES: tuple[int, ...] = (1, 2, 2, 2)
_STAGE_WIDTH_MULTIPLIERS: tuple[int, ...] = (1, 2, 4, 8)
STEMS: tuple[str, ...] = ("cifar", "imagenet")


def _conv(filters: int, kernel_size: int, strides: int, name: str) -> keras.layers.Conv2D:
    """Return a bias-free, He-initialised ``Conv2D`` with "same" padding.

    Args:
        filters: int. Number of output channels.
        kernel_size: int. Side of the square kernel.
        strides: int. Stride in both spatial dimensions.
        name: str. Layer name.
    """
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=name,
    )


def _batch_norm(
    name: str, *, momentum: float, epsilon: float, zero_gamma: bool = False
) -> keras.layers.BatchNormalization:
    """Return a ``BatchNormalization`` over the channel axis.

    Args:
        name: str. Layer name.
        momentum: float. Momentum of the moving mean and variance.
        epsilon: float. Added to the variance to avoid dividing by zero.
        zero_gamma: bool. Initialise the scale ``gamma`` to zeros instead of ones.
            Defaults to `False`.
    """
    return keras.layers.BatchNormalization(
        momentum=momentum,
        epsilon=epsilon,
        gamma_initializer="zeros" if zero_gamma else "ones",
        name=name,
    )


def basic_block(
    x: keras.KerasTensor,
    filters: int,
    *,
    strides: int,
    name: str,
    bn_momentum: float = 0.9,
    bn_epsilon: float = 1e-5,
    zero_init_residual: bool = True,
) -> keras.KerasTensor:
    """Apply a BasicBlock: two 3x3 conv + BN, a shortcut, the sum and a ReLU.

    The shortcut is the identity when the shape is unchanged and a 1x1
    conv + BN projection otherwise (stride other than 1 or a new width).

    Args:
        x: KerasTensor. Block input, channels last.
        filters: int. Output channels of both convolutions.
        strides: int. Stride of the first convolution and of the projection.
        name: str. Prefix of every layer name in the block, e.g. ``"stage2_block1"``.
        bn_momentum: float. Momentum of every BatchNormalization. Defaults to `0.9`.
        bn_epsilon: float. Epsilon of every BatchNormalization. Defaults to `1e-5`.
        zero_init_residual: bool. Initialise the last BN's ``gamma`` to zeros so
            that the residual branch starts at zero and the block at the
            shortcut. Defaults to `True`.

    Returns:
        The block output, a KerasTensor with ``filters`` channels.
    """
    bn = {"momentum": bn_momentum, "epsilon": bn_epsilon}
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _conv(filters, 1, strides, f"{name}_shortcut_conv")(x)
        shortcut = _batch_norm(f"{name}_shortcut_bn", **bn)(shortcut)

    y = _conv(filters, 3, strides, f"{name}_conv1")(x)
    y = _batch_norm(f"{name}_bn1", **bn)(y)
    y = keras.layers.ReLU(name=f"{name}_relu1")(y)
    y = _conv(filters, 3, 1, f"{name}_conv2")(y)
    y = _batch_norm(f"{name}_bn2", zero_gamma=zero_init_residual, **bn)(y)

    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def cifar_resnet(
    blocks_per_stage: Sequence[int],
    *,
    num_classes: int,
    width: int = 64,
    input_shape: tuple[int, int, int] = (32, 32, 3),
    bn_momentum: float = 0.9,
    bn_epsilon: float = 1e-5,
    dropout: float = 0.0,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
    zero_init_residual: bool = True,
    stem: str = "cifar",
    head_name: str = "head",
    name: str = "resnet",
) -> keras.Model:
    """Build a CIFAR-style ResNet of BasicBlocks as a Functional model.

    The model maps raw RGB pixels (float32, ``0..255``, channels last) to
    ``num_classes`` float32 logits, also under a ``mixed_float16`` or
    ``mixed_bfloat16`` dtype policy. Its first layer, ``"preprocess"``,
    computes ``(x - mean * 255) / (std * 255)`` per channel.

    Args:
        blocks_per_stage: sequence of int. Number of BasicBlocks in each of the
            four stages, e.g. ``[2, 2, 2, 2]`` for ResNet-18.
        num_classes: int. Number of logits the head returns.
        width: int. Channels of the stem and the first stage; stage ``i``
            (from 0) has ``width * 2**i``. Defaults to `64`.
        input_shape: tuple of int. ``(height, width, channels)`` of one image.
            Defaults to `(32, 32, 3)`.
        bn_momentum: float. Momentum of every BatchNormalization. Defaults to
            `0.9`; Keras' usual 0.99 leaves the moving statistics unsettled
            after a few short epochs.
        bn_epsilon: float. Epsilon of every BatchNormalization. Defaults to `1e-5`.
        dropout: float. Dropout rate before the head; ``0`` adds no Dropout
            layer. Defaults to `0.0`.
        mean: sequence of float. Per-channel mean of pixels scaled to
            ``[0, 1]``. Defaults to `CIFAR10_MEAN`.
        std: sequence of float. Per-channel standard deviation of pixels scaled
            to ``[0, 1]``. Defaults to `CIFAR10_STD`.
        zero_init_residual: bool. Initialise the scale of the last BN in each
            block to zeros, so a fresh block starts as its shortcut; this
            steadies short schedules. Defaults to `True`.
        stem: str. ``"cifar"`` (3x3 stride-1 convolution) or ``"imagenet"`` (7x7
            stride-2 convolution and 3x3 stride-2 max-pool). Defaults to `"cifar"`.
        head_name: str. Name of the Dense head, the one layer whose weights
            depend on ``num_classes``. Defaults to `"head"`.
        name: str. Name of the model. Defaults to `"resnet"`.

    Returns:
        An uncompiled ``keras.Model``.

    Example:

    >>> model = cifar_resnet([2, 2, 2, 2], num_classes=10, width=16)
    >>> model(np.zeros((1, 32, 32, 3), "float32")).shape
    (1, 10)
    """
    blocks = [int(b) for b in blocks_per_stage]
    if len(blocks) != len(_STAGE_STRIDES) or any(b < 1 for b in blocks):
        raise ValueError(
            f"`blocks_per_stage` must be {len(_STAGE_STRIDES)} positive integers, one per "
            f"stage; received {list(blocks_per_stage)}. Example: [2, 2, 2, 2] for ResNet-18."
        )
    if num_classes < 1:
        raise ValueError(f"`num_classes` must be a positive integer; received {num_classes}.")
    if width < 1:
        raise ValueError(f"`width` must be a positive integer; received {width}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be in [0, 1); received {dropout}.")
    channels = input_shape[-1]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(
            f"`mean` and `std` need one value per input channel ({channels}); received "
            f"mean={tuple(mean)} and std={tuple(std)}."
        )
    if any(s <= 0 for s in std):
        raise ValueError(f"`std` values must be positive; received {tuple(std)}.")
    if stem not in STEMS:
        raise ValueError(f"`stem` must be one of {STEMS}; received {stem!r}.")

    bn = {"momentum": bn_momentum, "epsilon": bn_epsilon}

    inputs = keras.Input(shape=input_shape, dtype="float32", name="pixels")
    # Normalise in float32 whatever the dtype policy: pixels reach 255.
    x = keras.layers.Normalization(
        axis=-1,
        mean=[float(m) * 255.0 for m in mean],
        variance=[(float(s) * 255.0) ** 2 for s in std],
        dtype="float32",
        name="preprocess",
    )(inputs)

    imagenet = stem == "imagenet"
    x = _conv(width, 7 if imagenet else 3, 2 if imagenet else 1, "stem_conv")(x)
    x = _batch_norm("stem_bn", **bn)(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    if imagenet:
        x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)

    for stage, (num_blocks, stride, multiplier) in enumerate(
        zip(blocks, _STAGE_STRIDES, _STAGE_WIDTH_MULTIPLIERS, strict=True), start=1
    ):
        for block in range(1, num_blocks + 1):
            x = basic_block(
                x,
                width * multiplier,
                strides=stride if block == 1 else 1,
                name=f"stage{stage}_block{block}",
                bn_momentum=bn_momentum,
                bn_epsilon=bn_epsilon,
                zero_init_residual=zero_init_residual,
            )

    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    # float32 so that mixed precision still returns float32 logits.
    outputs = keras.layers.Dense(num_classes, dtype="float32", name=head_name)(x)
    return keras.Model(inputs, outputs, name=name)
