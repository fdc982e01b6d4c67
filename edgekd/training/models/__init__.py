"""Model zoo: CIFAR and ImageNet ResNets and keras.applications edge networks by name, plus
parameter and MAC counts.

The registry loads without Keras (recipe validation uses it); the rest loads on first use.
"""

from typing import Any

from edgekd.training.models.registry import (
    ARCHITECTURES,
    ArchSpec,
    architecture_names,
    build_model,
    inheritance_problem,
    inherits,
    weights_problem,
)

_LAZY = {
    "count_macs": "edgekd.training.models.macs",
    "count_params": "edgekd.training.models.macs",
    "model_summary_stats": "edgekd.training.models.macs",
    "CIFAR10_MEAN": "edgekd.training.models.resnet",
    "CIFAR10_STD": "edgekd.training.models.resnet",
    "cifar_resnet": "edgekd.training.models.resnet",
    "copy_weights": "edgekd.training.models.transfer",
    "WeightsUnavailableError": "edgekd.training.models.applications",
    "application_model": "edgekd.training.models.applications",
    "efficientnet_lite0": "edgekd.training.models.efficientnet",
    "imagenet_resnet": "edgekd.training.models.imagenet_resnet",
    "mobilenet_v2": "edgekd.training.models.mobilenet",
    "mobilenet_v3": "edgekd.training.models.mobilenet",
    "resnet50": "edgekd.training.models.imagenet_resnet",
}

__all__ = [
    "ARCHITECTURES",
    "ArchSpec",
    "architecture_names",
    "build_model",
    "inheritance_problem",
    "inherits",
    "weights_problem",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgekd.training.models' has no attribute {name!r}")
