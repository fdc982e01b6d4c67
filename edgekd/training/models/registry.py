"""Named architectures, keras-hub-preset style: a name resolves to a ResNet depth.

Recipes name an architecture (``"resnet18"``); ``build_model`` turns the name
plus a class count and width into a Keras model. The parameter counts in the
descriptions are for ``width=64`` and ``num_classes=10``, moving BN statistics
excluded (the figure papers quote).
"""

from __future__ import annotations

import difflib
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
        blocks: tuple of int. BasicBlocks in each of the four stages.
        description: str. One line for listings: depth, layout and size.
    """

    name: str
    blocks: tuple[int, ...]
    description: str


ARCHITECTURES: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in (
        ArchSpec(
            name="resnet10",
            blocks=(1, 1, 1, 1),
            description="CIFAR ResNet-10, BasicBlocks [1, 1, 1, 1]; 4.90M params at width 64.",
        ),
        ArchSpec(
            name="resnet14",
            blocks=(1, 1, 2, 2),
            description="CIFAR ResNet-14, BasicBlocks [1, 1, 2, 2]; 10.80M params at width 64. "
            "A ResNet-18 less the second block of the two high-resolution stages, which cost "
            "most of its time on a CPU.",
        ),
        ArchSpec(
            name="resnet18",
            blocks=(2, 2, 2, 2),
            description="CIFAR ResNet-18, BasicBlocks [2, 2, 2, 2]; 11.17M params at width 64.",
        ),
        ArchSpec(
            name="resnet34",
            blocks=(3, 4, 6, 3),
            description="CIFAR ResNet-34, BasicBlocks [3, 4, 6, 3]; 21.28M params at width 64.",
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


def inherits(arch: str, width: int, source_arch: str, source_width: int) -> bool:
    """Whether a model can start from another's weights, copied layer by layer by name.

    True when the widths match and every stage of ``arch`` has at most as many blocks
    as ``source_arch``'s: a ResNet-10 takes the stem, the first block of each stage
    (projection included) and the head of a ResNet-18 or -34, the layer-dropping
    initialisation DistilBERT uses for its student.
    """
    spec, source = get_arch_spec(arch), get_arch_spec(source_arch)
    return width == source_width and all(
        b <= s for b, s in zip(spec.blocks, source.blocks, strict=True)
    )


def build_model(arch: str, *, num_classes: int, width: int = 64, **kwargs: Any) -> keras.Model:
    """Build the registered architecture ``arch`` as a Functional model.

    Args:
        arch: str. A registered name; see ``architecture_names()``.
        num_classes: int. Number of logits the head returns.
        width: int. Channels of the stem and the first stage. Defaults to `64`.
        **kwargs: Further keyword arguments of ``cifar_resnet`` (``dropout``,
            ``bn_momentum``, ``input_shape``, ...). ``name`` defaults to ``arch``.

    Returns:
        An uncompiled ``keras.Model``.

    Raises:
        ValueError: ``arch`` is not registered.

    Example:

    >>> model = build_model("resnet18", num_classes=10, width=16)
    >>> model.name
    'resnet18'
    """
    from edgekd.training.models.resnet import cifar_resnet

    spec = get_arch_spec(arch)
    kwargs.setdefault("name", spec.name)
    return cifar_resnet(spec.blocks, num_classes=num_classes, width=width, **kwargs)
