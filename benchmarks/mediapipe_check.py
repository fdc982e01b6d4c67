"""MediaPipe Tasks' ImageClassifier against LiteRT on a run's exported `.tflite` files.

An app embeds the `.tflite` and runs it with MediaPipe; this checks, on the run's own
validation images, that MediaPipe loads every exported file from its metadata alone and
ranks each image as LiteRT does: top-1 index, category name (from the packed labels) and
score. One table: file, images, top-1 agreement, name agreement, largest score difference,
MediaPipe's accuracy.

    python benchmarks/mediapipe_check.py runs/cifar10-cpu --limit 1000
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from edgekd.converters.tflite_metadata import read_labels
from edgekd.data.dataset import prepare_data
from edgekd.device.runtime.tflite import TFLiteRunner
from edgekd.recipe import build_recipe
from edgekd.tables import format_table
from edgekd.training.run import RunDir


def mediapipe_top1(path: Path, images: np.ndarray) -> tuple[np.ndarray, list[str], np.ndarray]:
    """MediaPipe's top-1 index, category name and score per image (uint8 RGB, model size)."""
    import mediapipe as mp
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    options = vision.ImageClassifierOptions(
        base_options=BaseOptions(model_asset_path=str(path)), max_results=1
    )
    index, names, scores = [], [], []
    with vision.ImageClassifier.create_from_options(options) as classifier:
        for image in images:
            result = classifier.classify(
                mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image))
            )
            top = result.classifications[0].categories[0]
            index.append(top.index)
            names.append(top.category_name)
            scores.append(top.score)
    return np.asarray(index), names, np.asarray(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run directory exported with `edgekd export`")
    parser.add_argument(
        "--limit", type=int, default=1000, help="validation images, a seeded sample (1000)"
    )
    args = parser.parse_args()

    run = RunDir.open_existing(args.run)
    val = prepare_data(build_recipe(run.manifest["recipe"]), progress=False).val
    # A seeded sample: the split keeps classes together, so its first images are not one.
    pick = np.sort(np.random.default_rng(0).permutation(len(val.images))[: args.limit])
    images, labels = val.images[pick], val.labels[pick]
    headers = ["file", "images", "top-1 = LiteRT %", "name = labels %", "max |score diff|",
               "MediaPipe top-1 %"]  # fmt: skip
    rows = []
    for path in sorted((args.run / "export").glob("*.tflite")):
        names = read_labels(path)
        litert = TFLiteRunner(path).predict(images)
        index, mp_names, scores = mediapipe_top1(path, images)
        named = [n == names[i] for n, i in zip(mp_names, litert.argmax(1), strict=True)]
        rows.append([
            path.name, str(len(images)),
            f"{100 * np.mean(index == litert.argmax(1)):.2f}", f"{100 * np.mean(named):.2f}",
            f"{np.abs(scores - litert.max(1)).max():.2e}", f"{100 * np.mean(index == labels):.2f}",
        ])  # fmt: skip
    print(format_table(headers, rows))


if __name__ == "__main__":
    main()
