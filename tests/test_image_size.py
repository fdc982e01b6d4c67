"""`data.image_size` as one side or [height, width]: data, augmentation, models, and (slow) the
whole path from training to an exported file that `predict` feeds by resizing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekd.data import load_source
from edgekd.data.imageset import as_hw, resize_images
from tests.conftest import run_cli
from tests.synthetic import make_folder


def test_as_hw_reads_a_side_or_a_pair():
    assert as_hw(32) == (32, 32)
    assert as_hw((24, 40)) == (24, 40) and as_hw([24, 40]) == (24, 40)


def test_resize_images_takes_height_then_width():
    images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    assert resize_images(images, (12, 20)).shape == (2, 12, 20, 3)
    assert resize_images(images, 8).shape == (2, 8, 8, 3)


def test_folder_loads_at_height_by_width(tmp_path: Path):
    data = make_folder(tmp_path / "data", classes=2, per_class=3, size=32)
    dataset = load_source(f"folder:{data}", image_size=(24, 40), cache_dir=tmp_path / "cache")
    assert dataset.train.images.shape == (6, 24, 40, 3)
    again = load_source(f"folder:{data}", image_size=(24, 40), cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(again.train.images, dataset.train.images)  # from the cache
    square = load_source(f"folder:{data}", image_size=24, cache_dir=tmp_path / "cache")
    assert square.train.images.shape == (6, 24, 24, 3)


@pytest.mark.parametrize("crop", ["pad", "resized"])
def test_augment_keeps_a_non_square_shape(crop: str):
    from edgekd.data import Augment

    images = np.random.default_rng(1).integers(0, 256, (5, 24, 40, 3), dtype=np.uint8)
    out = Augment(crop=crop, cutout=4)(images, np.random.default_rng(2))
    assert out.shape == images.shape and out.dtype == np.uint8


def test_models_take_non_square_inputs():
    from edgekd.training.models import build_model

    model = build_model("resnet10", num_classes=3, width=4, input_shape=(24, 40, 3))
    assert model(np.zeros((2, 24, 40, 3), np.float32)).shape == (2, 3)


@pytest.mark.slow
@pytest.mark.e2e
def test_train_export_predict_at_height_by_width(tmp_path: Path):
    """A generalist trained on 24x40 images exports a 24x40 contract, and `edgekd predict`
    resizes a 32x32 photo to it."""
    data = make_folder(tmp_path / "data", classes=3, per_class=12, size=32)
    run_dir = tmp_path / "run"
    proc = run_cli(
        "train", "smoke", "--run-dir", str(run_dir), "-q",
        "--set", f"data.path=folder:{data}", "--set", "data.limit_per_class=null",
        "--set", "data.image_size=[24, 40]", "--set", "train.stages=[generalist]",
        "--set", "generalist.batch_size=8",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["data"]["image_shape"] == [24, 40, 3]
    proc = run_cli(
        "export", str(run_dir), "--float", "--format", "tflite", "--set", "export.model=generalist"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = json.loads((run_dir / "export" / "generalist.tflite.json").read_text())
    assert card["input"]["shape"][1:] == [24, 40, 3]
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(photo)
    proc = run_cli("predict", str(run_dir / "export" / "generalist.tflite"), str(photo))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "class_" in proc.stdout
