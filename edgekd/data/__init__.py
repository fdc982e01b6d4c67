"""Data sources (image folders, CIFAR python batches, TFDS), splits and training batches.

`ImageBatches` and `Augment` need Keras and are imported on first use, so loading and
splitting data works without importing Keras at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgekd.data.imageset import ImageSet, label_map
from edgekd.data.source import Dataset, SourceSpec, load_source, parse_source
from edgekd.data.split import choose_per_class, stratified_split

if TYPE_CHECKING:
    from edgekd.data.batches import Augment, EnrichedBatches, ImageBatches

__all__ = [
    "Augment",
    "Dataset",
    "EnrichedBatches",
    "ImageBatches",
    "ImageSet",
    "SourceSpec",
    "choose_per_class",
    "label_map",
    "load_source",
    "parse_source",
    "stratified_split",
]


def __getattr__(name: str):
    if name in ("Augment", "EnrichedBatches", "ImageBatches"):
        from edgekd.data import batches

        return getattr(batches, name)
    raise AttributeError(f"module 'edgekd.data' has no attribute {name!r}")
