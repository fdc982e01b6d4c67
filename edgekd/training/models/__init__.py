"""Model zoo: CIFAR-style ResNets by name, plus parameter and MAC counts.

The registry loads without Keras (recipe validation uses it); the rest loads on first use.
"""

from typing import Any

from edgekd.training.models.registry import (
    ARCHITECTURES,
    ArchSpec,
    architecture_names,
    build_model,
    inherits,
)

_LAZY = {
    "count_macs": "edgekd.training.models.macs",
    "count_params": "edgekd.training.models.macs",
    "model_summary_stats": "edgekd.training.models.macs",
    "CIFAR10_MEAN": "edgekd.training.models.resnet",
    "CIFAR10_STD": "edgekd.training.models.resnet",
    "cifar_resnet": "edgekd.training.models.resnet",
    "copy_weights": "edgekd.training.models.transfer",
}

__all__ = [
    "ARCHITECTURES",
    "ArchSpec",
    "architecture_names",
    "build_model",
    "inherits",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgekd.training.models' has no attribute {name!r}")
