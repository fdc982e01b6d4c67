"""The streaming pipeline: the on-disk image store, and batches equal to the in-memory path's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekd.data import Augment, EnrichedBatches, ImageBatches, load_source
from edgekd.data.source import stream_path
from edgekd.data.store import DiskImages, take_rows, write_store
from edgekd.errors import DataError
from tests.test_data_source import write_cifar, write_folder


def _store(tmp_path: Path, n: int = 23, shape=(5, 7, 3), seed: int = 0):
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    path = tmp_path / "rows.npy"
    write_store(path, array.shape, (array[i : i + 4] for i in range(0, n, 4)))
    return array, DiskImages(path)


def test_store_is_an_npy_file_numpy_reads(tmp_path):
    array, disk = _store(tmp_path)
    assert (np.load(disk.path) == array).all()
    assert disk.shape == array.shape and len(disk) == len(array) and disk.ndim == 4
    assert disk.dtype == np.uint8 and disk.nbytes == array.nbytes


KEYS = [
    3,
    -1,
    slice(None),
    slice(2, 11),
    slice(20, 2, -3),
    np.array([5, 3, 3, 22, 0, 1, 2, 3]),  # unsorted, repeated, runs of neighbours
    np.array([-2, 4]),
    np.arange(23) % 3 == 0,  # a mask
    (slice(1, 4), slice(None), slice(None, None, -1)),  # rows, then a flip of the columns
    np.array([], np.int64),
]


@pytest.mark.parametrize("key", KEYS, ids=range(len(KEYS)))
def test_indexing_matches_numpy(tmp_path, key):
    array, disk = _store(tmp_path)
    got = disk[key]
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, array[key])


def test_views_read_nothing_until_indexed_and_compose(tmp_path):
    array, disk = _store(tmp_path)
    rng = np.random.default_rng(1)
    outer = rng.permutation(23)[:15]
    inner = rng.integers(0, 15, 40)
    view = take_rows(disk, outer).take(inner)
    assert isinstance(view, DiskImages) and view.shape == (40, 5, 7, 3)
    np.testing.assert_array_equal(view[:], array[outer][inner])
    np.testing.assert_array_equal(np.asarray(view), array[outer][inner])
    np.testing.assert_array_equal(np.concatenate(list(view.chunks(7))), array[outer][inner])
    # In memory, take_rows copies as fancy indexing does.
    np.testing.assert_array_equal(take_rows(array, outer), array[outer])


def test_out_of_range_is_an_index_error(tmp_path):
    _, disk = _store(tmp_path)
    for key in (23, -24, np.array([0, 23])):
        with pytest.raises(IndexError):
            disk[key]
    with pytest.raises(IndexError):
        disk[np.ones(5, bool)]


def test_a_short_or_long_write_leaves_no_store(tmp_path):
    path = tmp_path / "rows.npy"
    chunk = np.zeros((4, 2, 2, 3), np.uint8)
    with pytest.raises(DataError, match="4 rows written, 5 expected"):
        write_store(path, (5, 2, 2, 3), [chunk])
    with pytest.raises(DataError, match="uint8"):
        write_store(path, (4, 2, 2, 3), [chunk.astype(np.float32)])
    assert list(tmp_path.iterdir()) == []


def test_a_truncated_store_is_named(tmp_path):
    _, disk = _store(tmp_path)
    data = disk.path.read_bytes()
    disk.path.write_bytes(data[:-10])
    with pytest.raises(DataError, match=r"rows\.npy.*truncated"):
        DiskImages(disk.path)


def _both(tmp_path: Path, source: str, **kwargs):
    common = {"cache_dir": tmp_path / "cache", "progress": False, **kwargs}
    memory = load_source(source, pipeline="memory", **common)
    stream = load_source(source, pipeline="stream", **common)
    return memory, stream


def _assert_same_data(memory, stream):
    assert memory.pipeline == "memory" and stream.pipeline == "stream"
    assert isinstance(stream.train.images, DiskImages)
    assert stream.fingerprint == memory.fingerprint
    np.testing.assert_array_equal(stream.train.images[:], memory.train.images)
    np.testing.assert_array_equal(stream.train.labels, memory.train.labels)
    assert stream.class_names == memory.class_names


def test_folder_streams_the_same_pixels_resized(tmp_path):
    root = tmp_path / "images"
    write_folder(root, {"a": 7, "b": 5}, size=(12, 10))
    write_folder(root, {"c": 6}, size=(9, 14), seed=2)
    memory, stream = _both(tmp_path, f"folder:{root}", image_size=(8, 11), limit_per_class=5)
    _assert_same_data(memory, stream)
    assert stream.train.images.shape == (15, 8, 11, 3)


def test_cifar_streams_the_same_pixels_resized(tmp_path):
    write_cifar(tmp_path / "cifar", per_batch=8)
    memory, stream = _both(tmp_path, f"cifar:{tmp_path / 'cifar'}", image_size=40)
    _assert_same_data(memory, stream)
    np.testing.assert_array_equal(stream.test.images[:], memory.test.images)
    assert stream.train.images.shape[1:] == (40, 40, 3)


AUGMENTS = [
    None,
    Augment(),
    Augment(crop="resized", cutout=4, flip=True),
    Augment(crop_padding=2, padding_mode="constant", flip=False),
]


@pytest.mark.parametrize("augment", AUGMENTS, ids=["none", "pad", "resized-cutout", "constant"])
def test_streamed_batches_equal_in_memory_batches(tmp_path, augment):
    """The same seed gives the same batches, epoch after epoch, from disk as from memory."""
    root = tmp_path / "images"
    write_folder(root, {"a": 9, "b": 8, "c": 7}, size=(16, 16))
    memory, stream = _both(tmp_path, f"folder:{root}")
    split = np.random.default_rng(0).permutation(24)[:19]
    train_m, train_s = memory.train.subset(split), stream.train.subset(split)
    kwargs = {"batch_size": 6, "shuffle": True, "augment": augment, "seed": 11}
    a = ImageBatches(train_m.images, train_m.labels, **kwargs)
    b = ImageBatches(train_s.images, train_s.labels, **kwargs)
    assert b.prefetch > 0 and a.prefetch == 0  # streamed batches are made ahead on threads
    for epoch in (0, 1, 5):
        a.epoch = b.epoch = epoch
        for i in range(len(a)):
            (xa, ya), (xb, yb) = a[i], b[i]
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
    for i in (3, 0, 2, 2):  # out of order, repeated: made on the spot, the same
        np.testing.assert_array_equal(a[i][0], b[i][0])
    group = train_m.labels == 1
    ea = EnrichedBatches(train_m.images, train_m.labels, in_group=group, share=0.5, **kwargs)
    eb = EnrichedBatches(train_s.images, train_s.labels, in_group=group, share=0.5, **kwargs)
    for i in range(len(ea)):
        np.testing.assert_array_equal(ea[i][0], eb[i][0])


def test_auto_streams_above_the_memory_limit(tmp_path):
    root = tmp_path / "images"
    write_folder(root, {"a": 4, "b": 4}, size=(10, 10))
    common = {"cache_dir": tmp_path / "cache", "progress": False, "pipeline": "auto"}
    # 8 images of 20x20x3 = 9,600 bytes.
    assert (
        load_source(f"folder:{root}", image_size=20, memory_limit_gb=1e-5, **common).pipeline
        == "memory"
    )
    assert (
        load_source(f"folder:{root}", image_size=20, memory_limit_gb=9e-6, **common).pipeline
        == "stream"
    )
    cifar = tmp_path / "cifar"
    write_cifar(cifar, per_batch=8)  # 40 training images of 32x32x3 = 122,880 bytes
    loaded = load_source(f"cifar:{cifar}", memory_limit_gb=1e-4, **common)
    assert loaded.pipeline == "stream"


def test_a_damaged_store_is_rebuilt(tmp_path, capsys):
    root = tmp_path / "images"
    write_folder(root, {"a": 3, "b": 3}, size=(8, 8))
    memory, stream = _both(tmp_path, f"folder:{root}")
    store = stream.train.images.path
    store.write_bytes(store.read_bytes()[:-5])
    again = load_source(f"folder:{root}", pipeline="stream", cache_dir=tmp_path / "cache",
                        progress=False)  # fmt: skip
    assert "damaged image store" in capsys.readouterr().err
    _assert_same_data(memory, again)


def test_an_odd_size_while_streaming_names_the_file_and_leaves_no_store(tmp_path):
    root = tmp_path / "images"
    write_folder(root, {"a": 3, "b": 3}, size=(8, 8))
    Image.new("RGB", (10, 12)).save(root / "b" / "odd.png")
    with pytest.raises(DataError, match=r"odd\.png is 12x10.*data\.image_size"):
        load_source(f"folder:{root}", pipeline="stream", cache_dir=tmp_path / "cache",
                    progress=False)  # fmt: skip
    assert not list((tmp_path / "cache").glob("*.stream*"))


def test_the_store_lives_in_the_cache_named_by_the_cache_key(tmp_path):
    root = tmp_path / "images"
    write_folder(root, {"a": 2, "b": 2}, size=(8, 8))
    stream = load_source(f"folder:{root}", pipeline="stream", cache_dir=tmp_path / "cache",
                         progress=False)  # fmt: skip
    folder = stream.train.images.path.parent
    assert folder.parent == tmp_path / "cache" and folder.suffix == ".stream"
    assert stream_path(tmp_path / "cache", "folder", folder.stem.split("-", 2)[2]) == folder


def test_jax_fit_on_streamed_batches_equals_fit_in_memory(tmp_path):
    """On JAX, two epochs of `fit` from the on-disk store (batches made ahead on threads)
    leave the weights two epochs from memory leave."""
    import os
    import subprocess
    import sys
    import textwrap

    root = tmp_path / "images"
    write_folder(root, {"a": 10, "b": 10, "c": 10}, size=(12, 12))
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        import keras
        from edgekd.data import Augment, ImageBatches, load_source
        weights = {{}}
        for pipeline in ("memory", "stream"):
            ds = load_source({str(root)!r}, cache_dir={str(tmp_path / "cache")!r},
                             pipeline=pipeline, progress=False)
            batches = ImageBatches(ds.train.images, ds.train.labels, batch_size=8, shuffle=True,
                                   augment=Augment(crop_padding=2, cutout=3), seed=4,
                                   drop_remainder=True)
            keras.utils.set_random_seed(0)
            model = keras.Sequential([keras.Input((12, 12, 3)), keras.layers.Rescaling(1 / 255),
                                      keras.layers.Conv2D(4, 3), keras.layers.Flatten(),
                                      keras.layers.Dense(3)])
            model.compile(optimizer=keras.optimizers.SGD(0.1),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            model.fit(batches, epochs=2, shuffle=False, verbose=0)
            weights[pipeline] = [np.asarray(w) for w in model.get_weights()]
            print(pipeline, type(ds.train.images).__name__, batches.prefetch > 0)
        for a, b in zip(weights["memory"], weights["stream"], strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
        print("same weights")
        """
    )
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(Path(__file__).parents[1])}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stream DiskImages True" in result.stdout
    assert "same weights" in result.stdout
