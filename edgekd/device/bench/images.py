"""The images accuracy is measured on: the run's own validation split where the run is known."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgekd.contract import LABELS_FILE
from edgekd.device.bench.options import BenchError
from edgekd.device.bench.targets import readable_spec, student_cards
from edgekd.device.predict import read_image
from edgekd.errors import DataError, RecipeError

if TYPE_CHECKING:
    from edgekd.recipe import Recipe


@dataclass
class EvalImages:
    """The benchmark images, in the model's class order, and where they came from."""

    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) int32
    source: str
    selection: str


def read_classes(export_dir: Path) -> list[str]:
    """Class names from labels.txt (else members/ensemble.json, else a student card)."""
    labels = export_dir / LABELS_FILE
    if labels.is_file():
        try:
            text = labels.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BenchError(f"{labels}: unreadable ({type(exc).__name__}: {exc})") from None
        names = [line.strip() for line in text.splitlines() if line.strip()]
        if names:
            return names
    spec = readable_spec(export_dir)
    if spec is not None:
        return list(spec.classes)
    for card in student_cards(export_dir):
        if card.classes:
            return list(card.classes)
    raise BenchError(f"{labels}: no such file; bench needs the class names of {export_dir}")


def _first_per_class(labels: np.ndarray, candidates: np.ndarray, per_class: int) -> np.ndarray:
    """The first `per_class` of `candidates` (sorted indices) from each class, in order."""
    picked = [candidates[labels[candidates] == c][:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picked)) if picked else np.empty(0, np.int64)


def _decode(paths: Sequence[Path], size: tuple[int, int]) -> np.ndarray:
    """Decode image files to (N, H, W, 3) uint8 RGB at `size` with a few threads."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return np.stack(list(pool.map(lambda p: read_image(p, size), paths)))


def _folder_images(
    root: str,
    classes: list[str],
    per_class: int,
    size: tuple[int, int],
    *,
    recipe: Recipe | None = None,
) -> tuple[np.ndarray, np.ndarray, str]:
    """First `per_class` images per class of an image folder, relabelled to `classes`.

    With `recipe` (the run's, validated) the candidates are the run's own validation
    images, chosen exactly as training chose them, so accuracy is measured on images no
    model trained on; otherwise every image of the folder is a candidate.
    """
    from edgekd.data.folder import scan_folder
    from edgekd.data.imageset import label_map
    from edgekd.data.split import choose_per_class, stratified_split

    index = scan_folder(root)
    folder_labels = index.labels
    chosen = np.arange(len(folder_labels))
    names = list(index.class_names)
    how = "first {n} per class, by file name"
    if recipe is not None:
        if recipe.data.limit_per_class:
            chosen = choose_per_class(folder_labels, recipe.data.limit_per_class, recipe.seed)
        names = list(recipe.data.classes or names)
    unknown = [n for n in index.class_names if n not in classes]
    if unknown and recipe is None:
        raise DataError(
            f"{root}: class folder {unknown[0]!r} is not one of the model's classes "
            f"({', '.join(classes)})"
        )
    # Relabel onto `names` (the run's class selection, dropping other folders)...
    to_names = label_map(index.class_names, names)
    relabelled = to_names[folder_labels[chosen]]
    keep = relabelled >= 0
    chosen, relabelled = chosen[keep], relabelled[keep]
    if recipe is not None:
        fraction = recipe.data.val_fraction
        if fraction > 0:
            _, val = stratified_split(relabelled, fraction, recipe.seed)
            chosen, relabelled = chosen[val], relabelled[val]
            how = "the run's validation split, first {n} per class"
        else:
            how = "first {n} per class (the run has no validation split: training images)"
    # ... then onto the model's class order.
    missing = [n for n in names if n not in classes]
    if missing:
        raise DataError(f"{root}: class {missing[0]!r} is not one of the model's classes")
    to_model = label_map(names, classes)
    labels = to_model[relabelled]
    pick = _first_per_class(labels, np.arange(len(labels)), per_class)
    paths = [index.root / index.files[i] for i in chosen[pick]]
    if not paths:
        raise DataError(f"{root}: no images of the model's classes ({', '.join(classes)})")
    return _decode(paths, size), labels[pick], how.format(n=per_class)


def _run_recipe(export_dir: Path) -> tuple[Recipe, Path] | None:
    """The validated recipe and the directory of the run that wrote `export_dir`: the
    export's parent, else the run a student card names; None when neither has a recipe.

    Raises:
        BenchError: a recipe.yaml is there but does not validate (and no other one does).
    """
    from edgekd.recipe import load_recipe

    candidates = [export_dir.parent]
    run = next((card.run for card in student_cards(export_dir) if card.run), None)
    if run:
        candidates.append(Path(run))
    errors: list[str] = []
    for run_dir in candidates:
        path = run_dir / "recipe.yaml"
        if path.is_file():
            try:
                return load_recipe(path), run_dir
            except RecipeError as exc:
                errors.append(str(exc))
    if errors:
        raise BenchError(
            f"{errors[0]} (bench takes its images from the run's recipe: fix it, or pass "
            "--data folder:PATH)"
        )
    return None


def load_eval_images(
    export_dir: Path,
    data_spec: str | None,
    limit: int,
    size: tuple[int, int],
    classes: list[str],
) -> EvalImages:
    """`limit` images spread evenly over the classes (the first limit/K of each).

    With `data_spec` (folder:PATH, a bare folder, or cifar:PATH) the candidates are all of
    that source (a CIFAR source's test batch). Without it, the run's own data as its
    recipe.yaml names it, restricted to the run's validation split.
    """
    from edgekd.data.source import parse_source

    per_class = max(1, limit // len(classes))
    recipe, run_dir = None, export_dir.parent
    if data_spec is None:
        found = _run_recipe(export_dir)
        if found is None:
            raise BenchError(
                f"{export_dir}: no --data given and no run recipe beside the export to take "
                "the images from; pass --data folder:PATH (one sub-folder per class)"
            )
        recipe, run_dir = found
        data_spec = recipe.data.path
    try:
        spec = parse_source(data_spec)
    except ValueError as exc:
        raise BenchError(f"--data {data_spec}: {exc}") from exc
    location = spec.location
    if recipe is not None and not Path(location).is_absolute():
        # Recipe paths are relative to where training ran; try the usual places.
        bases = [Path.cwd(), run_dir, run_dir.parent, run_dir.parent.parent]
        found_at = next((b / location for b in bases if (b / location).exists()), None)
        location = os.path.normpath(found_at) if found_at is not None else location
    if not Path(location).exists():
        where = "--data" if recipe is None else f"{run_dir / 'recipe.yaml'} data.path"
        raise DataError(
            f"{where} {data_spec}: {location} does not exist; pass --data folder:PATH, a "
            "folder with one sub-folder of images per class"
        )
    if spec.kind == "folder":
        images, labels, how = _folder_images(location, classes, per_class, size, recipe=recipe)
    elif spec.kind == "cifar":
        from edgekd.data.source import load_source

        ds = load_source(f"cifar:{location}", progress=False)
        pool = ds.test if ds.test is not None else ds.train
        unknown = [n for n in pool.class_names if n not in classes]
        if unknown:
            raise DataError(f"{location}: class {unknown[0]!r} is not one of the model's classes")
        to_model = np.array([classes.index(n) for n in pool.class_names], np.int32)
        labels_all = to_model[pool.labels]
        pick = _first_per_class(labels_all, np.arange(len(labels_all)), per_class)
        images = pool.images[pick]
        if images.shape[1:3] != size:
            from PIL import Image

            bilinear = Image.Resampling.BILINEAR
            resized = [Image.fromarray(im).resize((size[1], size[0]), bilinear) for im in images]
            images = np.stack([np.asarray(im) for im in resized])
        labels = labels_all[pick]
        split = "test batch" if ds.test is not None else "training batches"
        how = f"first {per_class} per class of the {split}"
    else:
        raise BenchError(
            f"--data {data_spec}: {spec.kind} sources need TensorFlow, which bench does not "
            "use; pass an image folder (folder:PATH)"
        )
    return EvalImages(images, labels.astype(np.int32), f"{spec.kind}:{location}", how)
