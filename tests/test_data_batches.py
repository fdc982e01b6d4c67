"""ImageBatches and Augment: shapes, determinism per (seed, epoch), augmentation, no TensorFlow."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from edgekd.data import Augment, ImageBatches

REPO = Path(__file__).resolve().parents[1]


def random_images(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def draw_epoch(batches: ImageBatches) -> list:
    return [batches[i] for i in range(len(batches))]


def test_shapes_dtypes_and_length():
    images, labels = random_images(10), np.arange(10) % 3
    batches = ImageBatches(images, labels, batch_size=4)
    assert len(batches) == 3
    x, y = batches[0]
    assert x.dtype == np.float32 and x.shape == (4, 16, 16, 3)
    assert y.dtype == np.int32 and y.tolist() == [0, 1, 2, 0]
    np.testing.assert_array_equal(x, images[:4].astype(np.float32))
    assert batches[2][0].shape == (2, 16, 16, 3)
    with pytest.raises(IndexError):
        batches[3]
    assert len(ImageBatches(images, labels, batch_size=4, drop_remainder=True)) == 2
    only_x = ImageBatches(images, batch_size=4)[0]
    assert isinstance(only_x, np.ndarray) and only_x.shape == (4, 16, 16, 3)


def test_same_seed_and_epoch_give_same_batches():
    images, labels = random_images(40), np.arange(40) % 4
    kwargs = dict(batch_size=16, shuffle=True, augment=Augment(cutout=4), seed=3)
    a = draw_epoch(ImageBatches(images, labels, epoch=2, **kwargs))
    b = ImageBatches(images, labels, **kwargs)
    b.epoch = 2
    b_batches = [b[i] for i in reversed(range(len(b)))][::-1]  # order of requests is irrelevant
    for (xa, ya), (xb, yb) in zip(a, b_batches, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_epochs_differ_and_each_is_a_permutation():
    images = np.arange(30, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    batches = ImageBatches(images, np.arange(30), batch_size=8, shuffle=True, seed=1)
    orders = []
    for epoch in range(3):
        batches.epoch = epoch
        ids = np.concatenate([x[:, 0, 0, 0] for x, _ in draw_epoch(batches)]).astype(int)
        labels = np.concatenate([y for _, y in draw_epoch(batches)])
        np.testing.assert_array_equal(ids, labels)  # labels follow their images
        assert sorted(ids.tolist()) == list(range(30))
        orders.append(ids.tolist())
    assert orders[0] != orders[1] != orders[2]
    augmented = ImageBatches(random_images(8), batch_size=8, augment=Augment(), seed=1)
    first = augmented[0]
    augmented.epoch = 1
    assert not np.array_equal(first, augmented[0])


def test_crop_shifts_content_by_at_most_padding():
    images = random_images(32, size=12, seed=5)
    out = Augment(crop_padding=4, padding_mode="constant", flip=False)(
        images, np.random.default_rng(0)
    )
    shifts = set()
    for original, cropped in zip(images, out, strict=True):
        matches = []
        for dy in range(-4, 5):
            for dx in range(-4, 5):
                padded = np.pad(original, ((4, 4), (4, 4), (0, 0)))
                window = padded[4 + dy : 4 + dy + 12, 4 + dx : 4 + dx + 12]
                if np.array_equal(window, cropped):
                    matches.append((dy, dx))
        assert len(matches) == 1, matches
        shifts.add(matches[0])
    assert len(shifts) > 5  # offsets vary per image


def test_reflect_padding_matches_numpy():
    images = random_images(16, size=8, seed=2)
    out = Augment(crop_padding=3, flip=False)(images, np.random.default_rng(4))
    padded = np.pad(images, ((0, 0), (3, 3), (3, 3), (0, 0)), mode="reflect")
    for i in range(16):
        assert any(
            np.array_equal(padded[i, dy : dy + 8, dx : dx + 8], out[i])
            for dy in range(7)
            for dx in range(7)
        )


def test_flip_and_cutout():
    images = random_images(64, size=8, seed=3)
    out = Augment(crop_padding=0, flip=True)(images, np.random.default_rng(0))
    flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images, strict=True)]
    kept = [np.array_equal(o, i) for o, i in zip(out, images, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 16 < sum(flipped) < 48

    out = Augment(crop_padding=0, flip=False, cutout=3)(images, np.random.default_rng(0))
    for original, cut in zip(images, out, strict=True):
        changed = np.argwhere((original != cut).any(axis=-1))
        assert (cut[(original != cut).any(axis=-1)] == 0).all()
        if len(changed):
            assert (changed.max(axis=0) - changed.min(axis=0) < 3).all()
    assert (out == 0).all(axis=-1).sum() > 64  # squares were cut


def test_augment_validates():
    with pytest.raises(ValueError, match="padding_mode"):
        Augment(padding_mode="wrap")
    with pytest.raises(ValueError, match="reflect padding"):
        Augment(crop_padding=8)(random_images(2, size=8), np.random.default_rng(0))
    with pytest.raises(ValueError, match="use_multiprocessing"):
        ImageBatches(random_images(2), batch_size=1, use_multiprocessing=True)


def test_epoch_advances_only_after_a_served_epoch():
    batches = ImageBatches(random_images(9), np.zeros(9), batch_size=4, shuffle=True)
    batches.on_epoch_end()  # Keras calls this once before the first epoch
    assert batches.epoch == 0
    batches.on_epoch_begin()
    batches[0]  # a peek to build the model is not an epoch
    batches.on_epoch_end()
    assert batches.epoch == 0
    batches.on_epoch_begin()
    draw_epoch(batches)
    batches.on_epoch_end()
    assert batches.epoch == 1


def _fit_weights(images, labels, splits: list[tuple[int, int]], weights) -> list[np.ndarray]:
    """Train a tiny model over consecutive (initial_epoch, epochs) runs, each resumed afresh."""
    for initial_epoch, epochs in splits:
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input((8, 8, 3)),
                keras.layers.Rescaling(1 / 255),
                keras.layers.Flatten(),
                keras.layers.Dense(3),
            ]
        )
        model.compile(
            keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        model.set_weights(weights)
        batches = ImageBatches(
            images,
            labels,
            batch_size=8,
            shuffle=True,
            augment=Augment(2),
            seed=5,
            epoch=initial_epoch,
        )
        model.fit(batches, initial_epoch=initial_epoch, epochs=epochs, shuffle=False, verbose=0)
        weights = model.get_weights()
    return weights


def test_resumed_fit_sees_the_same_batches():
    images, labels = random_images(40, size=8, seed=9), np.arange(40) % 3
    start = [np.full((8 * 8 * 3, 3), 0.001, np.float32), np.zeros(3, np.float32)]
    straight = _fit_weights(images, labels, [(0, 3)], start)
    resumed = _fit_weights(images, labels, [(0, 1), (1, 3)], start)
    for a, b in zip(straight, resumed, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    wrong = _fit_weights(images, labels, [(0, 1), (0, 2)], start)  # epoch not set: differs
    assert not np.allclose(straight[0], wrong[0], rtol=1e-5, atol=1e-6)


def test_data_path_runs_without_tensorflow(tmp_path):
    """Under KERAS_BACKEND=jax, loading a folder and batching it never imports TensorFlow."""
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from PIL import Image
        root = {str(tmp_path / "imgs")!r}
        import os
        for c in ("a", "b"):
            os.makedirs(f"{{root}}/{{c}}")
            for i in range(3):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(f"{{root}}/{{c}}/{{i}}.png")
        import edgekd.data
        ds = edgekd.data.load_source(root, cache_dir={str(tmp_path / "cache")!r})
        train, val = edgekd.data.stratified_split(ds.train.labels, 0.34, seed=0)
        assert "keras" not in sys.modules, "edgekd.data imported keras eagerly"
        batches = edgekd.data.ImageBatches(ds.train.images[train], ds.train.labels[train],
                                           batch_size=2, shuffle=True,
                                           augment=edgekd.data.Augment(crop_padding=2))
        for x, y in batches:
            assert x.dtype == np.float32
        import keras
        assert keras.backend.backend() == "jax"
        bad = [m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow.")]
        assert not bad, bad[:5]
        print("ok", len(ds.train), len(val))
        """
    )
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok 6 2" in result.stdout


# The random resized crop (data.augment.crop: resized).


def _bilinear_reference(image: np.ndarray, top: int, left: int, bh: int, bw: int) -> np.ndarray:
    """Pixel by pixel: output centre -> box coordinate, clamped, four neighbours weighted."""
    height, width, _ = image.shape
    out = np.zeros(image.shape, np.float64)
    for i in range(height):
        for j in range(width):
            y = min(max(top + (i + 0.5) * bh / height - 0.5, top), top + bh - 1)
            x = min(max(left + (j + 0.5) * bw / width - 0.5, left), left + bw - 1)
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            y1, x1 = min(y0 + 1, top + bh - 1), min(x0 + 1, left + bw - 1)
            dy, dx = y - y0, x - x0
            out[i, j] = ((1 - dy) * ((1 - dx) * image[y0, x0] + dx * image[y0, x1])
                         + dy * ((1 - dx) * image[y1, x0] + dx * image[y1, x1]))  # fmt: skip
    return np.rint(out).astype(np.uint8)


def test_resample_matches_the_pixel_by_pixel_reference():
    from edgekd.data.batches import resample_boxes

    images = random_images(4, size=9, seed=2)
    top, left = np.array([0, 2, 5, 0]), np.array([0, 1, 3, 4])
    box_h, box_w = np.array([9, 4, 3, 9]), np.array([9, 7, 2, 5])
    got = resample_boxes(images, top, left, box_h, box_w)
    for b in range(4):
        want = _bilinear_reference(images[b], top[b], left[b], box_h[b], box_w[b])
        assert np.abs(got[b].astype(int) - want).max() <= 1, b  # float32 vs float64 rounding
    np.testing.assert_array_equal(got[0], images[0])  # the whole image comes back unchanged


def test_resized_crop_boxes_follow_scale_and_ratio():
    from edgekd.data.batches import resized_crop_boxes

    rng = np.random.default_rng(0)
    top, left, bh, bw = resized_crop_boxes(4000, 64, 48, rng, (0.25, 0.5), (0.5, 2.0))
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + bh <= 64).all() and (left + bw <= 48).all()
    share = bh * bw / (64 * 48)
    aspect = bw / bh
    assert share.min() > 0.2 and share.max() < 0.56  # rounding to whole pixels
    assert aspect.min() > 0.45 and aspect.max() < 2.2
    assert len(np.unique(top)) > 20 and len(np.unique(left)) > 20  # positions vary
    # no box can fit: the whole image
    top, left, bh, bw = resized_crop_boxes(5, 8, 8, rng, (1.0, 1.0), (4.0, 4.0))
    assert (bh == 8).all() and (bw == 8).all() and (top == 0).all() and (left == 0).all()


def test_resized_crop_augment_is_seeded_and_keeps_shape():
    images = random_images(6, size=20, seed=1)
    aug = Augment(crop="resized", flip=False)
    a = aug(images, np.random.default_rng(3))
    assert a.shape == images.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, aug(images, np.random.default_rng(3)))
    assert not np.array_equal(a, images)
    whole = Augment(crop="resized", scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False)
    np.testing.assert_array_equal(whole(images, np.random.default_rng(0)), images)
    with pytest.raises(ValueError, match="crop must be one of"):
        Augment(crop="zoom")


def test_auto_crop_is_resized_from_96_px():
    from edgekd.recipe.schema import AugmentConfig

    auto = AugmentConfig()
    assert (auto.crop_for(32), auto.crop_for(95), auto.crop_for(96)) == ("pad", "pad", "resized")
    assert AugmentConfig(crop="pad").crop_for(224) == "pad"
