"""TFDS sources: a fast, helpful failure offline, and prepared datasets read into arrays."""

from __future__ import annotations

import time

import numpy as np
import pytest

import edgekd.data.tfds as tfds_module
from edgekd.data import load_source
from edgekd.errors import DataError

tfds = pytest.importorskip("tensorflow_datasets")


class EdgekdToyFixed(tfds.core.GeneratorBasedBuilder):
    """30 train + 9 test random 8x8 RGB images in 3 classes, prepared locally (no download)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 3)),
                    "label": tfds.features.ClassLabel(names=["ant", "bee", "cat"]),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(30, 0), "test": self._generate_examples(9, 1)}

    def _generate_examples(self, count, seed):
        rng = np.random.default_rng(seed)
        for i in range(count):
            image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            yield i, {"image": image, "label": i % 3}


class EdgekdToyVaried(tfds.core.GeneratorBasedBuilder):
    """Grayscale images of different sizes and no test split."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 1)),
                    "label": tfds.features.ClassLabel(names=["dark", "light"]),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(6):
            size = 6 + i
            yield i, {"image": np.full((size, size + 1, 1), 40 * i, np.uint8), "label": i % 2}


def test_unprepared_dataset_offline_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    if tfds_module._reachable("www.cs.toronto.edu", 443):
        pytest.skip("online: this would download CIFAR-10")
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"cifar10.*not prepared.*folder:PATH.*cifar:PATH"):
        load_source("tfds:cifar10", cache_dir=tmp_path / "cache")
    assert time.perf_counter() - start < 20


def test_unreachable_host_message(tmp_path, monkeypatch):
    monkeypatch.setattr(tfds_module, "_reachable", lambda host, port, timeout=3.0: False)
    with pytest.raises(DataError) as caught:
        load_source("tfds:cifar10", tfds_dir=tmp_path / "tfds", cache_dir=tmp_path / "cache")
    message = str(caught.value)
    assert "www.cs.toronto.edu cannot be reached" in message
    assert "data.tfds_dir" in message and "folder:PATH" in message


def test_unknown_dataset(tmp_path):
    with pytest.raises(DataError, match=r"TFDS has no dataset 'no_such_dataset_xyz'"):
        load_source("tfds:no_such_dataset_xyz", tfds_dir=tmp_path, cache_dir=tmp_path / "c")


def test_prepared_dataset_loads_with_test_split(tmp_path):
    EdgekdToyFixed(data_dir=str(tmp_path / "tfds")).download_and_prepare()
    ds = load_source(
        "tfds:edgekd_toy_fixed",
        tfds_dir=tmp_path / "tfds",
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    assert ds.class_names == ["ant", "bee", "cat"]
    assert ds.train.images.shape == (30, 8, 8, 3) and ds.train.images.dtype == np.uint8
    assert ds.test is not None and len(ds.test) == 9
    assert np.bincount(ds.train.labels).tolist() == [10, 10, 10]
    small = load_source(
        "tfds:edgekd_toy_fixed",
        tfds_dir=tmp_path / "tfds",
        limit_per_class=2,
        image_size=4,
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    assert small.train.images.shape == (6, 4, 4, 3)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2


def test_varied_gray_dataset_needs_image_size(tmp_path):
    EdgekdToyVaried(data_dir=str(tmp_path / "tfds")).download_and_prepare()
    with pytest.raises(DataError, match=r"different sizes.*data\.image_size"):
        load_source(
            "tfds:edgekd_toy_varied",
            tfds_dir=tmp_path / "tfds",
            cache_dir=tmp_path / "cache",
            progress=False,
        )
    ds = load_source(
        "tfds:edgekd_toy_varied",
        tfds_dir=tmp_path / "tfds",
        image_size=5,
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    assert ds.test is None
    assert ds.train.images.shape == (6, 5, 5, 3)
    assert (ds.train.images[..., 0] == ds.train.images[..., 2]).all()  # gray -> RGB


@pytest.mark.parametrize(
    ("builder", "name", "kwargs"),
    [
        (EdgekdToyFixed, "edgekd_toy_fixed", {}),
        (EdgekdToyFixed, "edgekd_toy_fixed", {"limit_per_class": 2, "image_size": (5, 6)}),
        (EdgekdToyVaried, "edgekd_toy_varied", {"image_size": 7}),
    ],
    ids=["fixed", "fixed-limited-resized", "varied-gray"],
)
def test_tfds_streams_the_same_data_as_memory(tmp_path, builder, name, kwargs):
    """Through the same chunked reader, into the on-disk store: the same pixels and labels."""
    from edgekd.data.store import DiskImages

    builder(data_dir=str(tmp_path / "tfds")).download_and_prepare()
    common = {"tfds_dir": tmp_path / "tfds", "cache_dir": tmp_path / "cache", "progress": False}
    memory = load_source(f"tfds:{name}", pipeline="memory", **common, **kwargs)
    stream = load_source(f"tfds:{name}", pipeline="stream", **common, **kwargs)
    assert isinstance(stream.train.images, DiskImages)
    assert stream.fingerprint == memory.fingerprint
    for got, want in ((stream.train, memory.train), (stream.test, memory.test)):
        if want is None:
            assert got is None
            continue
        np.testing.assert_array_equal(got.images[:], want.images)
        np.testing.assert_array_equal(got.labels, want.labels)
