"""Named architectures, keras-hub-preset style: a name resolves to a family and its options.

Recipes name an architecture (``"resnet18"``, ``"mobilenetv3small_minimalistic"``);
``build_model`` turns the name plus a class count and width into a Keras model that takes
RGB pixels ``0..255``, normalises them in its ``"preprocess"`` layer and returns logits from
its ``"head"`` layer. The families:

- ``resnet``: CIFAR ResNets of BasicBlocks (``resnet.py``), 3x3 stride-1 stem; ``width`` is
  the channels of the stem and first stage. Counts in the descriptions: width 64, 10 classes.
- ``resnet_imagenet``: the same blocks behind the ImageNet stem (7x7/2 and a max-pool), and
  keras' ResNet-50 (``imagenet_resnet.py``); inputs of at least 96 px; ``width`` as above.
- ``mobilenetv2``, ``mobilenetv3*``, ``efficientnet_lite0``: keras.applications backbones
  (``mobilenet.py``, ``efficientnet.py``); ``width`` is the width multiplier in percent
  (100 = alpha 1.0); inputs of at least 32 px, with a stride-1 stem below 96 px.

Counts in the descriptions of the last two: the default width, 1000 classes, 224 px, all
weights (BatchNormalization's moving statistics included, as keras.applications' own table
counts them), MACs as ``macs.count_macs`` counts them.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras

# Keras is imported only when a model is built: the recipe validates architecture names
# through this module, and a bad recipe should be reported without loading TensorFlow.


@dataclass(frozen=True)
class ArchSpec:
    """One registered architecture.

    Args:
        name: str. Registry key, also the default model name.
        family: str. Weights copy by layer name between models of one family only.
        builder: str. ``"module:function"`` under ``edgekd.training.models`` that builds it.
        description: str. One line for listings: layout and size.
        blocks: tuple of int. BasicBlocks in each of the four stages (block families), or
            ``()``: then a model inherits only from its own architecture.
        options: tuple of (str, value) pairs. Further keyword arguments of the builder.
        default_width: int. The ``width`` of the published network.
        min_size: int. Smallest input side in pixels.
        backbone: bool. Built from keras.applications, so ``weights`` takes a weights file.
        imagenet_widths: tuple of int. Widths keras.applications has ImageNet weights for.
    """

    name: str
    family: str
    builder: str
    description: str
    blocks: tuple[int, ...] = ()
    options: tuple[tuple[str, Any], ...] = ()
    default_width: int = 64
    min_size: int = 32
    backbone: bool = False
    imagenet_widths: tuple[int, ...] = ()


_CIFAR = "resnet:cifar_resnet"
_MOBILENET_V3 = "mobilenet:mobilenet_v3"
IMAGENET_STYLE_MIN_SIZE = 96
"""Smallest input of the ImageNet-style ResNets (total stride 32)."""

ARCHITECTURES: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in (
        ArchSpec(
            name="resnet10",
            family="resnet",
            builder=_CIFAR,
            min_size=1,  # "same"-padded strides: any size ends in a >= 1x1 map
            blocks=(1, 1, 1, 1),
            description="CIFAR ResNet-10, BasicBlocks [1, 1, 1, 1]; 4.90M params at width 64.",
        ),
        ArchSpec(
            name="resnet14",
            family="resnet",
            builder=_CIFAR,
            min_size=1,  # "same"-padded strides: any size ends in a >= 1x1 map
            blocks=(1, 1, 2, 2),
            description="CIFAR ResNet-14, BasicBlocks [1, 1, 2, 2]; 10.80M params at width 64. "
            "A ResNet-18 less the second block of the two high-resolution stages, which cost "
            "most of its time on a CPU.",
        ),
        ArchSpec(
            name="resnet18",
            family="resnet",
            builder=_CIFAR,
            min_size=1,  # "same"-padded strides: any size ends in a >= 1x1 map
            blocks=(2, 2, 2, 2),
            description="CIFAR ResNet-18, BasicBlocks [2, 2, 2, 2]; 11.17M params at width 64.",
        ),
        ArchSpec(
            name="resnet34",
            family="resnet",
            builder=_CIFAR,
            min_size=1,  # "same"-padded strides: any size ends in a >= 1x1 map
            blocks=(3, 4, 6, 3),
            description="CIFAR ResNet-34, BasicBlocks [3, 4, 6, 3]; 21.28M params at width 64.",
        ),
        ArchSpec(
            name="resnet18_imagenet",
            family="resnet_imagenet",
            builder="imagenet_resnet:imagenet_resnet",
            blocks=(2, 2, 2, 2),
            min_size=IMAGENET_STYLE_MIN_SIZE,
            description="ImageNet ResNet-18: 7x7/2 stem and max-pool, BasicBlocks [2, 2, 2, 2]; "
            "11.70M params, 1.81G MACs.",
        ),
        ArchSpec(
            name="resnet50",
            family="resnet50",
            builder="imagenet_resnet:resnet50",
            min_size=IMAGENET_STYLE_MIN_SIZE,
            backbone=True,
            imagenet_widths=(64,),
            description="keras.applications ResNet-50, bottleneck blocks [3, 4, 6, 3]; "
            "25.64M params, 3.86G MACs (He et al.'s v1: stride in the first 1x1 conv).",
        ),
        ArchSpec(
            name="mobilenetv2",
            family="mobilenetv2",
            builder="mobilenet:mobilenet_v2",
            default_width=100,
            backbone=True,
            imagenet_widths=(35, 50, 75, 100, 130, 140),
            description="keras.applications MobileNetV2, width = alpha in percent; "
            "3.54M params, 301M MACs.",
        ),
        ArchSpec(
            name="mobilenetv3small",
            family="mobilenetv3small",
            builder=_MOBILENET_V3,
            options=(("size", "small"),),
            default_width=100,
            backbone=True,
            imagenet_widths=(75, 100),
            description="keras.applications MobileNetV3-Small (hard-swish, squeeze-and-excite), "
            "width = alpha in percent; 2.55M params, 57M MACs.",
        ),
        ArchSpec(
            name="mobilenetv3small_minimalistic",
            family="mobilenetv3small_minimalistic",
            builder=_MOBILENET_V3,
            options=(("size", "small"), ("minimalistic", True)),
            default_width=100,
            backbone=True,
            imagenet_widths=(100,),
            description="MobileNetV3-Small minimalistic: ReLU, 3x3 kernels, no "
            "squeeze-and-excite (quantises best); 2.06M params, 52M MACs.",
        ),
        ArchSpec(
            name="mobilenetv3large",
            family="mobilenetv3large",
            builder=_MOBILENET_V3,
            options=(("size", "large"),),
            default_width=100,
            backbone=True,
            imagenet_widths=(75, 100),
            description="keras.applications MobileNetV3-Large (hard-swish, squeeze-and-excite), "
            "width = alpha in percent; 5.51M params, 217M MACs.",
        ),
        ArchSpec(
            name="mobilenetv3large_minimalistic",
            family="mobilenetv3large_minimalistic",
            builder=_MOBILENET_V3,
            options=(("size", "large"), ("minimalistic", True)),
            default_width=100,
            backbone=True,
            imagenet_widths=(100,),
            description="MobileNetV3-Large minimalistic: ReLU, 3x3 kernels, no "
            "squeeze-and-excite (quantises best); 3.95M params, 209M MACs.",
        ),
        ArchSpec(
            name="efficientnet_lite0",
            family="efficientnet_lite0",
            builder="efficientnet:efficientnet_lite0",
            default_width=100,
            backbone=True,
            description="EfficientNet-Lite0 (B0 with ReLU6, no squeeze-and-excite) from keras' "
            "EfficientNet builder, no ImageNet weights; 4.69M params, 385M MACs.",
        ),
    )
}
"""Registered architectures by name."""


def architecture_names() -> list[str]:
    """Return the registered architecture names, sorted."""
    return sorted(ARCHITECTURES)


def get_arch_spec(arch: str) -> ArchSpec:
    """Return the spec registered as ``arch``.

    Args:
        arch: str. A registered name, e.g. ``"resnet18"``.

    Raises:
        ValueError: ``arch`` is not registered; the message suggests the
            closest name and lists the available ones.
    """
    try:
        return ARCHITECTURES[arch]
    except KeyError:
        pass
    names = architecture_names()
    close = difflib.get_close_matches(str(arch), names, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else "."
    raise ValueError(f"unknown architecture '{arch}'{hint} Available: {', '.join(names)}")


def inheritance_problem(arch: str, width: int, source_arch: str, source_width: int) -> str | None:
    """Why a model cannot start from another's weights copied by layer name, or None if it can.

    It can when both are of one family at one width and, in the block families, every stage
    of ``arch`` has at most as many blocks as ``source_arch``'s: a ResNet-10 takes the stem,
    the first block of each stage (projection included) and the head of a ResNet-18 or -34,
    the layer-dropping initialisation DistilBERT uses for its student. The other families
    inherit only from their own architecture.
    """
    spec, source = get_arch_spec(arch), get_arch_spec(source_arch)
    if spec.family != source.family:
        kin = [s.name for s in ARCHITECTURES.values() if s.family == source.family]
        return (
            f"it needs an architecture of the generalist's family ({', '.join(kin)}), "
            f"whose layers have the same names and shapes"
        )
    if width != source_width:
        return f"it needs the generalist's width ({source_width})"
    if spec.blocks and any(b > s for b, s in zip(spec.blocks, source.blocks, strict=True)):
        return f"it needs at most the generalist's blocks per stage ({source_arch})"
    return None


def inherits(arch: str, width: int, source_arch: str, source_width: int) -> bool:
    """Whether a model can start from another's weights, copied layer by layer by name.

    See ``inheritance_problem``.
    """
    return inheritance_problem(arch, width, source_arch, source_width) is None


def weights_problem(arch: str, width: int | None, weights: str | None) -> str | None:
    """Why ``arch`` at ``width`` cannot load ``weights``, or None if it can (or they are None).

    Checks what needs no file or network: that the architecture is a keras.applications
    backbone, and for ``"imagenet"`` that keras.applications has weights at that width.
    """
    if weights is None:
        return None
    spec = get_arch_spec(arch)
    if not spec.backbone:
        return (
            f"{arch} is built here, not from keras.applications, and has no pretrained "
            "weights; leave `weights` unset (null)"
        )
    if weights != "imagenet":
        return None
    width = spec.default_width if width is None else width
    if width not in spec.imagenet_widths:
        if not spec.imagenet_widths:
            return f"keras.applications has no ImageNet weights for {arch}"
        allowed = ", ".join(str(w) for w in spec.imagenet_widths)
        return (
            f"keras.applications has ImageNet weights for {arch} at width {allowed} only, "
            f"not {width}"
        )
    return None


def build_model(
    arch: str, *, num_classes: int, width: int | None = None, **kwargs: Any
) -> keras.Model:
    """Build the registered architecture ``arch`` as a Functional model.

    Args:
        arch: str. A registered name; see ``architecture_names()``.
        num_classes: int. Number of logits the head returns.
        width: int or None. The family's width: channels of the stem and first stage
            (ResNets) or the width multiplier in percent (MobileNets, EfficientNet-Lite).
            Defaults to `None`: the spec's ``default_width`` (64, or 100).
        **kwargs: Further keyword arguments of the family's builder (``dropout``,
            ``bn_momentum``, ``input_shape``, ``weights``, ...). ``name`` defaults to
            ``arch``; ``weights`` (None, "imagenet" or a file) to None.

    Returns:
        An uncompiled ``keras.Model``.

    Raises:
        ValueError: ``arch`` is not registered, the input is smaller than it allows, or it
            cannot take ``weights``.

    Example:

    >>> model = build_model("resnet18", num_classes=10, width=16)
    >>> model.name
    'resnet18'
    """
    spec = get_arch_spec(arch)
    width = spec.default_width if width is None else width
    kwargs.setdefault("name", spec.name)
    if kwargs.get("weights") is None:
        kwargs.pop("weights", None)
    problem = weights_problem(arch, width, kwargs.get("weights"))
    if problem:
        raise ValueError(f"{arch} cannot load weights={kwargs['weights']!r}: {problem}.")
    input_shape = kwargs.get("input_shape")
    if input_shape is not None and min(input_shape[:2]) < spec.min_size:
        hint = ""
        if spec.min_size == IMAGENET_STYLE_MIN_SIZE:
            hint = " For small images use the CIFAR ResNets (resnet10, resnet14, resnet18)."
        raise ValueError(
            f"{arch} needs inputs of at least {spec.min_size}x{spec.min_size} px; received "
            f"input_shape={tuple(input_shape)}.{hint}"
        )
    module, function = spec.builder.split(":")
    build = getattr(importlib.import_module(f"edgekd.training.models.{module}"), function)
    if spec.blocks:
        kwargs["blocks_per_stage"] = spec.blocks
    return build(num_classes=num_classes, width=width, **dict(spec.options), **kwargs)
