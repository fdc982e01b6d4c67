"""Data sources: spec parsing, image folders, CIFAR batches, the decode cache, splits."""

from __future__ import annotations

import ast
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import edgekd.data.folder as folder_module
from edgekd.data import (
    ImageSet,
    SourceSpec,
    choose_per_class,
    load_source,
    parse_source,
    stratified_split,
)
from edgekd.errors import DataError

REAL_JPEGS = Path("/work/shared/data/cifar10-jpeg/train")
CIFAR10_NAMES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def write_folder(
    root: Path,
    counts: dict[str, int],
    size: tuple[int, int] = (8, 8),
    seed: int = 0,
    ext: str = ".png",
) -> dict[str, list[np.ndarray]]:
    """Write random RGB images (lossless PNG by default), `counts[class]` per class folder."""
    rng = np.random.default_rng(seed)
    written: dict[str, list[np.ndarray]] = {}
    for class_name, count in counts.items():
        (root / class_name).mkdir(parents=True, exist_ok=True)
        written[class_name] = []
        for i in range(count):
            pixels = rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / class_name / f"{i:04d}{ext}")
            written[class_name].append(pixels)
    return written


def write_cifar(root: Path, *, hundred: bool = False, per_batch: int = 6, seed: int = 0) -> dict:
    """Write fake CIFAR python batches in the real format (pickled dicts of numpy arrays)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    names = [f"class{i}" for i in range(5)] if hundred else CIFAR10_NAMES
    label_key = b"fine_labels" if hundred else b"labels"

    def batch(file: str) -> dict:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, len(names), per_batch)]
        content = {b"batch_label": file.encode(), b"data": data, label_key: labels}
        if hundred:
            content[b"coarse_labels"] = [0] * per_batch
        with open(root / file, "wb") as handle:
            pickle.dump(content, handle, protocol=2)
        return content

    if hundred:
        meta = {b"fine_label_names": [n.encode() for n in names], b"coarse_label_names": [b"x"]}
        train_files, test_file, meta_file = ["train"], "test", "meta"
    else:
        meta = {b"label_names": [n.encode() for n in names], b"num_cases_per_batch": per_batch}
        train_files = [f"data_batch_{i}" for i in range(1, 6)]
        test_file, meta_file = "test_batch", "batches.meta"
    with open(root / meta_file, "wb") as handle:
        pickle.dump(meta, handle, protocol=2)
    return {
        "names": names,
        "train": [batch(file) for file in train_files],
        "test": batch(test_file),
        "label_key": label_key,
    }


# -- spec parsing --------------------------------------------------------------------------


def test_parse_prefixed_specs(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("EDGEKD_TEST_DATA", "/data/x")
    assert parse_source("folder:/a/b") == SourceSpec("folder", "/a/b")
    assert parse_source("cifar:~/c10") == SourceSpec("cifar", f"{tmp_path}/c10")
    assert parse_source("folder:$EDGEKD_TEST_DATA/imgs") == SourceSpec("folder", "/data/x/imgs")
    assert parse_source("tfds:cifar10") == SourceSpec("tfds", "cifar10")
    assert str(parse_source("folder:/a/b")) == "folder:/a/b"
    assert str(SourceSpec("tfds", "cifar10")) == "tfds:cifar10"


def test_parse_autodetects_bare_paths(tmp_path):
    write_cifar(tmp_path / "c10")
    write_cifar(tmp_path / "c100", hundred=True)
    write_cifar(tmp_path / "archive" / "cifar-10-batches-py")
    write_folder(tmp_path / "imgs", {"a": 1})
    assert parse_source(str(tmp_path / "c10")).kind == "cifar"
    assert parse_source(str(tmp_path / "c100")).kind == "cifar"
    assert parse_source(str(tmp_path / "archive")).kind == "cifar"
    assert parse_source(str(tmp_path / "imgs")) == SourceSpec("folder", str(tmp_path / "imgs"))
    assert parse_source(str(tmp_path / "missing")).kind == "folder"
    assert parse_source("relative/dir").kind == "folder"


@pytest.mark.parametrize("spec", ["s3:bucket/data", "imagenet:train", "", "folder:"])
def test_parse_rejects_unknown_prefix(spec):
    with pytest.raises(ValueError, match="folder:PATH"):
        parse_source(spec)


# -- image folders ---------------------------------------------------------------------------


def test_folder_loads_classes_in_sorted_order(tmp_path):
    written = write_folder(tmp_path, {"zebra": 2, "ant": 3, "Moth": 1})
    (tmp_path / ".hidden").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / ".hidden" / "x.png")
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    (tmp_path / "ant" / "._0000.png").write_bytes(b"macOS resource fork")
    Image.fromarray(written["zebra"][0]).save(tmp_path / "zebra" / "UPPER.PNG")

    ds = load_source(f"folder:{tmp_path}", cache_dir=tmp_path / "cache", progress=False)
    assert ds.class_names == ["Moth", "ant", "zebra"]
    assert ds.test is None
    assert ds.train.images.dtype == np.uint8 and ds.train.images.shape == (7, 8, 8, 3)
    assert ds.train.labels.dtype == np.int32
    assert ds.train.labels.tolist() == [0, 1, 1, 1, 2, 2, 2]
    np.testing.assert_array_equal(ds.train.images[1], written["ant"][0])
    np.testing.assert_array_equal(ds.train.images[6], written["zebra"][0])  # UPPER.PNG last


def test_limit_per_class_is_seeded_and_decodes_only_chosen(tmp_path, monkeypatch):
    write_folder(tmp_path / "d", {"a": 20, "b": 3, "c": 20})
    decoded = []
    real_decode = folder_module._decode
    monkeypatch.setattr(
        folder_module, "_decode", lambda path, size: decoded.append(path) or real_decode(path, size)
    )

    def load(seed: int, cache: str):
        return load_source(
            f"folder:{tmp_path / 'd'}",
            limit_per_class=5,
            seed=seed,
            cache_dir=tmp_path / cache,
            progress=False,
        )

    first = load(1, "c1")
    assert np.bincount(first.train.labels).tolist() == [5, 3, 5]
    assert len(decoded) <= 13 + 1  # the chosen files (+ the first one again, for its size)
    again = load(1, "c2")  # another cache: decoded afresh, same choice
    np.testing.assert_array_equal(first.train.images, again.train.images)
    other = load(2, "c3")
    assert not np.array_equal(first.train.images, other.train.images)
    assert first.fingerprint != other.fingerprint


def test_image_size_resizes_mixed_sizes(tmp_path):
    write_folder(tmp_path, {"a": 2}, size=(8, 8))
    write_folder(tmp_path, {"b": 2}, size=(12, 10), seed=1)
    ds = load_source(
        f"folder:{tmp_path}", image_size=6, cache_dir=tmp_path / "cache", progress=False
    )
    assert ds.train.images.shape == (4, 6, 6, 3)


def test_mixed_sizes_without_image_size_names_the_odd_file(tmp_path):
    write_folder(tmp_path, {"a": 3, "b": 3}, size=(8, 8))
    Image.new("RGB", (10, 12)).save(tmp_path / "b" / "odd.png")
    with pytest.raises(DataError, match=r"odd\.png is 12x10.*data\.image_size"):
        load_source(f"folder:{tmp_path}", cache_dir=tmp_path / "cache", progress=False)


def test_corrupt_image_names_the_file(tmp_path):
    write_folder(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "b" / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(DataError, match=r"b/broken\.jpg"):
        load_source(f"folder:{tmp_path}", cache_dir=tmp_path / "cache", progress=False)


def test_folder_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match=r"nowhere does not exist"):
        load_source(f"folder:{tmp_path / 'nowhere'}", cache_dir=tmp_path / "c")
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "flat" / "x.png")
    with pytest.raises(DataError, match=r"flat has no class sub-folders"):
        load_source(f"folder:{tmp_path / 'flat'}", cache_dir=tmp_path / "c")
    write_folder(tmp_path / "nested" / "train", {"a": 1})
    with pytest.raises(DataError, match=r"nested/train holds no images.*did you mean"):
        load_source(f"folder:{tmp_path / 'nested'}", cache_dir=tmp_path / "c")


def test_real_jpeg_sample(tmp_path):
    """A seeded sample of the real CIFAR-10 JPEGs decodes to 32x32 RGB in label order."""
    if not REAL_JPEGS.is_dir():
        pytest.skip(f"{REAL_JPEGS} not present")
    rng = np.random.default_rng(0)
    for class_name in CIFAR10_NAMES:
        (tmp_path / class_name).mkdir()
        for i in rng.choice(5000, 3, replace=False):
            os.symlink(REAL_JPEGS / class_name / f"{i:04d}.jpg", tmp_path / class_name / f"{i}.jpg")
    ds = load_source(str(tmp_path), cache_dir=tmp_path / ".cache", progress=False)
    assert ds.class_names == CIFAR10_NAMES
    assert ds.train.images.shape == (30, 32, 32, 3)
    assert ds.train.images.std() > 20  # real content, not blank


# -- cache -----------------------------------------------------------------------------------


def test_second_load_reads_the_cache(tmp_path, monkeypatch):
    write_folder(tmp_path / "d", {"a": 3, "b": 2})
    first = load_source(f"folder:{tmp_path / 'd'}", cache_dir=tmp_path / "cache", progress=False)
    entries = list((tmp_path / "cache").iterdir())
    assert len(entries) == 1 and entries[0].suffix == ".npz"

    def no_decode(path, size):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(folder_module, "_decode", no_decode)
    second = load_source(f"folder:{tmp_path / 'd'}", cache_dir=tmp_path / "cache")
    assert second.fingerprint == first.fingerprint
    np.testing.assert_array_equal(second.train.images, first.train.images)
    assert second.class_names == first.class_names
    assert str(second.source) == f"folder:{tmp_path / 'd'}"

    # A changed file changes the key: decoded again.
    Image.new("RGB", (8, 8), "red").save(tmp_path / "d" / "a" / "0000.png")
    with pytest.raises(AssertionError, match="decoded although cached"):
        load_source(f"folder:{tmp_path / 'd'}", cache_dir=tmp_path / "cache")


def test_corrupt_cache_entry_is_rebuilt(tmp_path, capsys):
    write_folder(tmp_path / "d", {"a": 3, "b": 2})
    first = load_source(f"folder:{tmp_path / 'd'}", cache_dir=tmp_path / "cache", progress=False)
    (entry,) = (tmp_path / "cache").iterdir()
    data = entry.read_bytes()
    entry.write_bytes(data[: len(data) // 2])  # truncated
    again = load_source(f"folder:{tmp_path / 'd'}", cache_dir=tmp_path / "cache", progress=False)
    assert again.fingerprint == first.fingerprint
    assert "ignoring unreadable cache entry" in capsys.readouterr().err
    assert entry.read_bytes() == data  # rewritten whole
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [entry.name]  # no temp files


def test_default_cache_dir_from_env(tmp_path, monkeypatch):
    write_folder(tmp_path / "d", {"a": 1})
    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "envcache"))
    load_source(f"folder:{tmp_path / 'd'}", progress=False)
    assert len(list((tmp_path / "envcache").glob("*.npz"))) == 1


def test_fingerprint_follows_content_not_path(tmp_path):
    write_folder(tmp_path / "one", {"a": 2, "b": 2}, seed=3)
    write_folder(tmp_path / "two", {"a": 2, "b": 2}, seed=3)
    write_folder(tmp_path / "three", {"a": 2, "b": 2}, seed=4)
    prints = [
        load_source(
            f"folder:{tmp_path / name}", cache_dir=tmp_path / "c", progress=False
        ).fingerprint
        for name in ("one", "two", "three")
    ]
    assert prints[0] == prints[1] != prints[2]
    assert len(prints[0]) == 64


# -- CIFAR -----------------------------------------------------------------------------------


def test_cifar10_batches(tmp_path):
    fake = write_cifar(tmp_path / "c10")
    ds = load_source(f"cifar:{tmp_path / 'c10'}", cache_dir=tmp_path / "cache", progress=False)
    assert ds.class_names == CIFAR10_NAMES
    assert ds.train.images.shape == (30, 32, 32, 3) and ds.train.images.dtype == np.uint8
    assert ds.test is not None and ds.test.images.shape == (6, 32, 32, 3)
    rows = fake["train"][1][b"data"]
    # Channel-first rows: pixel (y, x) of channel c sits at c * 1024 + y * 32 + x.
    assert ds.train.images[6, 2, 5, 1] == rows[0, 1 * 1024 + 2 * 32 + 5]
    np.testing.assert_array_equal(ds.train.images[6, :, :, 0], rows[0, :1024].reshape(32, 32))
    assert ds.train.labels.tolist() == sum((b[b"labels"] for b in fake["train"]), [])
    assert ds.test.labels.tolist() == fake["test"][b"labels"]


def test_cifar100_batches_and_limit(tmp_path):
    fake = write_cifar(tmp_path / "c100", hundred=True, per_batch=40)
    ds = load_source(str(tmp_path / "c100"), cache_dir=tmp_path / "cache", progress=False)
    assert ds.source.kind == "cifar"
    assert ds.class_names == fake["names"]
    assert ds.train.labels.tolist() == fake["train"][0][b"fine_labels"]
    small = load_source(
        str(tmp_path / "c100"),
        limit_per_class=2,
        image_size=16,
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    assert np.bincount(small.train.labels).max() == 2
    assert small.train.images.shape[1:] == (16, 16, 3)
    assert small.test is not None and np.bincount(small.test.labels).max() <= 2


def test_cifar_pickled_by_numpy1_loads(tmp_path):
    """Files pickled with numpy < 2 name numpy.core.multiarray._reconstruct."""
    write_cifar(tmp_path)
    batch = tmp_path / "data_batch_1"
    raw = batch.read_bytes()
    assert b"cnumpy._core.multiarray\n_reconstruct" in raw
    batch.write_bytes(raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))
    ds = load_source(f"cifar:{tmp_path}", cache_dir=tmp_path / "cache", progress=False)
    assert len(ds.train) == 30


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("where", ["batch", "value", "meta"])
def test_malicious_pickle_is_refused_and_not_run(tmp_path, where):
    write_cifar(tmp_path / "c10")
    marker = tmp_path / "pwned"
    payload = _Payload(marker)
    if where == "batch":
        target, content = tmp_path / "c10" / "data_batch_3", payload
    elif where == "value":
        target, content = tmp_path / "c10" / "test_batch", {b"data": payload, b"labels": []}
    else:
        target, content = tmp_path / "c10" / "batches.meta", {b"label_names": [payload]}
    target.write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(
        DataError,
        match=rf"refusing to unpickle (posix|os|nt)\.system in .*"
        rf"{target.name}",
    ):
        load_source(f"cifar:{tmp_path / 'c10'}", cache_dir=tmp_path / "cache")
    assert not marker.exists()


def test_refuses_other_globals_and_odd_codecs(tmp_path):
    write_cifar(tmp_path)
    evil = b"\x80\x02cbuiltins\neval\nq\x00X\x0b\x00\x00\x00print('hi')q\x01\x85q\x02Rq\x03."
    (tmp_path / "test_batch").write_bytes(evil)
    with pytest.raises(DataError, match=r"refusing to unpickle builtins\.eval"):
        load_source(f"cifar:{tmp_path}", cache_dir=tmp_path / "cache")
    # _codecs.encode is allowed only for latin-1 (how Python 3 writes bytes in protocol 2).
    rot = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x06\x00\x00\x00rot_13\x86R."
    (tmp_path / "test_batch").write_bytes(rot)
    with pytest.raises(DataError, match=r"cannot read CIFAR file .*test_batch"):
        load_source(f"cifar:{tmp_path}", cache_dir=tmp_path / "cache")


def test_cifar_errors(tmp_path):
    with pytest.raises(DataError, match=r"CIFAR folder .*nothing does not exist"):
        load_source(f"cifar:{tmp_path / 'nothing'}", cache_dir=tmp_path / "c")
    write_cifar(tmp_path / "c10")
    (tmp_path / "c10" / "data_batch_2").write_bytes(b"\x80\x02}q\x00(X")  # truncated
    with pytest.raises(DataError, match=r"cannot read CIFAR file .*data_batch_2"):
        load_source(f"cifar:{tmp_path / 'c10'}", cache_dir=tmp_path / "c")
    (tmp_path / "c10" / "data_batch_2").write_bytes(
        pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, protocol=2)
    )
    with pytest.raises(DataError, match=r"data_batch_2: 'data' is uint8 \(2, 100\)"):
        load_source(f"cifar:{tmp_path / 'c10'}", cache_dir=tmp_path / "c")


# -- splits ----------------------------------------------------------------------------------


def test_stratified_split_proportions_and_determinism():
    labels = np.repeat(np.arange(4), [100, 50, 3, 1])
    train, val = stratified_split(labels, 0.2, seed=7)
    assert np.bincount(labels[val], minlength=4).tolist() == [20, 10, 1, 0]
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(labels)))
    again = stratified_split(labels, 0.2, seed=7)
    np.testing.assert_array_equal(val, again[1])
    assert not np.array_equal(val, stratified_split(labels, 0.2, seed=8)[1])
    train0, val0 = stratified_split(labels, 0.0, seed=7)
    assert len(val0) == 0 and len(train0) == len(labels)
    pairs = np.array([0, 0, 1, 1])
    _, tiny = stratified_split(pairs, 0.01, seed=0)
    assert pairs[tiny].tolist() == [0, 1]  # at least one per class of 2+
    with pytest.raises(ValueError, match="val_fraction"):
        stratified_split(labels, 1.0, seed=0)


def test_choose_per_class_and_imageset_subset():
    labels = np.array([0] * 10 + [1] * 2)
    chosen = choose_per_class(labels, 3, seed=1)
    assert np.bincount(labels[chosen]).tolist() == [3, 2]
    np.testing.assert_array_equal(chosen, choose_per_class(labels, 3, seed=1))
    images = np.arange(12 * 2 * 2 * 3, dtype=np.uint8).reshape(12, 2, 2, 3)
    subset = ImageSet(images, labels, ["x", "y"]).subset(chosen)
    assert len(subset) == 5 and subset.class_names == ["x", "y"]
    np.testing.assert_array_equal(subset.images, images[chosen])


# -- optional dependencies -------------------------------------------------------------------


def test_missing_tensorflow_datasets_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import now fails
    with pytest.raises(DataError, match=r'pip install "edgekd\[tfds\]".*folder:PATH'):
        load_source("tfds:cifar10", tfds_dir=tmp_path, cache_dir=tmp_path / "cache")


def test_only_tfds_module_imports_tensorflow_and_only_lazily():
    """TensorFlow never at module level, and only in the TFDS and TFRecord readers; Keras
    only in batches.py."""
    package = Path(folder_module.__file__).parent
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text())
        top_level = set()
        for node in tree.body:
            if isinstance(node, ast.Import):
                top_level.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                top_level.add(node.module.split(".")[0])
        assert not top_level & {"tensorflow", "tensorflow_datasets"}, path.name
        if path.name != "batches.py":
            assert "keras" not in top_level, path.name
        if path.name not in ("tfds.py", "tfrecord.py"):
            assert "import tensorflow" not in path.read_text(), path.name
