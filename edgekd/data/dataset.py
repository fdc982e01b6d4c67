"""A recipe's data: the source loaded, classes chosen, validation split off the training data.

Training and evaluation both come through here, so `edgekd eval` sees exactly the
validation images the run held out.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekd.data import (
    ImageSet,
    SourceSpec,
    label_map,
    load_source,
    parse_source,
    stratified_split,
)
from edgekd.data.store import take_rows
from edgekd.errors import DataError
from edgekd.recipe import DataConfig, Recipe
from edgekd.recipe.schema import _unknown


@dataclass
class PreparedData:
    """Train/validation (and test, if the source has one) splits over `class_names`."""

    source: SourceSpec
    class_names: list[str]
    train: ImageSet
    val: ImageSet
    test: ImageSet | None
    fingerprint: str
    pipeline: str = "memory"

    def summary(self) -> dict:
        """What the manifest records about the data."""
        return {
            "source": str(self.source),
            "fingerprint": self.fingerprint,
            "classes": self.class_names,
            "image_shape": list(self.train.images.shape[1:]),
            "pipeline": self.pipeline,
            "num_train": len(self.train),
            "num_val": len(self.val),
            "num_test": len(self.test) if self.test is not None else 0,
        }


def source_of(recipe: Recipe, spec: str | None = None, key: str = "data.path") -> SourceSpec:
    """Parse and check a source spec; errors name the recipe key (or the --data option)."""
    text = recipe.data.path if spec is None else spec
    try:
        source = parse_source(text)
    except ValueError as exc:
        raise recipe.error(key, str(exc)) from None
    if source.kind in ("folder", "cifar") and not Path(source.location).exists():
        raise recipe.error(
            key, f"{source.kind} {source.location!r} does not exist (cwd: {os.getcwd()})"
        )
    return source


def select_classes(
    images: ImageSet, classes: tuple[str, ...] | None, recipe: Recipe, key: str = "data.classes"
) -> ImageSet:
    """Keep only `classes` (in that order), relabelled 0..k-1; unknown names are recipe errors."""
    if classes is None:
        return images
    index = {name: i for i, name in enumerate(images.class_names)}
    for i, name in enumerate(classes):
        if name not in index:
            raise recipe.error(f"{key}[{i}]", _unknown("class", name, images.class_names))
    new_labels = label_map(images.class_names, classes)[images.labels]
    keep = np.flatnonzero(new_labels >= 0)
    return ImageSet(take_rows(images.images, keep), new_labels[keep], list(classes))


def align_classes(images: ImageSet, class_names: list[str], where: str) -> ImageSet:
    """Relabel an image set onto a run's class order; its classes must all be known there."""
    index = {name: i for i, name in enumerate(class_names)}
    unknown = [c for c in images.class_names if c not in index]
    if unknown:
        raise DataError(
            f"{where}: class {unknown[0]!r} is not one of the run's classes "
            f"({', '.join(class_names)})"
        )
    return ImageSet(images.images, label_map(images.class_names, class_names)[images.labels],
                    list(class_names))


def _load(recipe: Recipe, source: SourceSpec, progress: bool, limit: bool = True):
    cfg: DataConfig = recipe.data
    return load_source(
        source,
        limit_per_class=cfg.limit_per_class if limit else None,
        pipeline=cfg.pipeline,
        memory_limit_gb=cfg.memory_limit_gb,
        seed=recipe.seed,
        image_size=cfg.image_size,
        cache_dir=cfg.cache_dir,
        progress=progress,
    )


def prepare_data(recipe: Recipe, *, progress: bool = True) -> PreparedData:
    """Load the recipe's source and split it; nothing is written but the decode cache."""
    source = source_of(recipe)
    if source.kind == "tfds" and recipe.data.tfds_dir:
        os.environ.setdefault("TFDS_DATA_DIR", recipe.data.tfds_dir)
    ds = _load(recipe, source, progress)
    train = select_classes(ds.train, recipe.data.classes, recipe)
    test = select_classes(ds.test, recipe.data.classes, recipe) if ds.test is not None else None
    tr_idx, va_idx = stratified_split(train.labels, recipe.data.val_fraction, recipe.seed)
    fingerprint = hashlib.sha256(
        f"{ds.fingerprint}:{','.join(train.class_names)}".encode()
    ).hexdigest()[:16]
    return PreparedData(
        source=source,
        class_names=list(train.class_names),
        train=train.subset(tr_idx),
        val=train.subset(va_idx),
        test=test,
        fingerprint=fingerprint,
        pipeline=ds.pipeline,
    )


def load_eval_data(recipe: Recipe, spec: str, class_names: list[str]) -> ImageSet:
    """All images of another source (e.g. a held-out test folder), in the run's class order."""
    source = source_of(recipe, spec, key="--data")
    ds = _load(recipe, source, progress=True, limit=False)
    images = ds.test if ds.test is not None else ds.train
    return align_classes(images, class_names, where=f"--data {spec}")
