"""TFRecord shards: read through tf.data, decoded as image folders are, streamed or in memory."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekd.data import load_source
from edgekd.data.store import DiskImages
from edgekd.errors import DataError
from tests.test_data_source import write_folder

tf = pytest.importorskip("tensorflow")


def _example(data: bytes, label: int, text: str | None) -> bytes:
    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
        "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    }
    if text is not None:
        feature["image/class/text"] = tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[text.encode()])
        )
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_shards(folder: Path, out: Path, shards: int = 3, texts: bool = True) -> list[str]:
    """The images of a class-per-folder tree as TFRecord shards, round-robin; returns classes."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    records = [
        (path.read_bytes(), label, name if texts else None)
        for label, name in enumerate(classes)
        for path in sorted((folder / name).iterdir())
    ]
    out.mkdir(parents=True, exist_ok=True)
    writers = [tf.io.TFRecordWriter(str(out / f"train-{i:02d}.tfrecord")) for i in range(shards)]
    for i, record in enumerate(records):
        writers[i % shards].write(_example(*record))
    for writer in writers:
        writer.close()
    return classes


def test_shards_read_the_same_pixels_as_the_folder_and_stream_alike(tmp_path):
    folder = tmp_path / "images"
    write_folder(folder, {"ant": 5, "bee": 4, "cat": 6}, size=(10, 12))
    write_shards(folder, tmp_path / "shards", shards=1)
    common = {"cache_dir": tmp_path / "cache", "progress": False, "image_size": (8, 9)}
    from_folder = load_source(f"folder:{folder}", **common)
    memory = load_source(f"tfrecord:{tmp_path}/shards/train-*.tfrecord", **common)
    stream = load_source(
        f"tfrecord:{tmp_path}/shards/train-*.tfrecord", pipeline="stream", **common
    )
    assert memory.class_names == stream.class_names == ["ant", "bee", "cat"]
    np.testing.assert_array_equal(memory.train.images, from_folder.train.images)
    np.testing.assert_array_equal(memory.train.labels, from_folder.train.labels)
    assert isinstance(stream.train.images, DiskImages)
    np.testing.assert_array_equal(stream.train.images[:], memory.train.images)
    assert stream.fingerprint == memory.fingerprint == from_folder.fingerprint


def test_limit_names_from_labels_txt_and_shard_order(tmp_path):
    folder = tmp_path / "images"
    write_folder(folder, {"a": 6, "b": 6}, size=(8, 8))
    write_shards(folder, tmp_path / "shards", shards=2, texts=False)
    (tmp_path / "shards" / "labels.txt").write_text("first\nsecond\n")
    spec = f"tfrecord:{tmp_path}/shards/*.tfrecord"
    common = {"cache_dir": tmp_path / "cache", "progress": False, "limit_per_class": 2}
    memory = load_source(spec, **common)
    stream = load_source(spec, pipeline="stream", **common)
    assert memory.class_names == ["first", "second"]
    assert np.bincount(memory.train.labels).tolist() == [2, 2]
    np.testing.assert_array_equal(stream.train.images[:], memory.train.images)
    np.testing.assert_array_equal(stream.train.labels, memory.train.labels)


def test_bad_shards_are_named(tmp_path):
    with pytest.raises(DataError, match="matches no file"):
        load_source(f"tfrecord:{tmp_path}/none-*.tfrecord", cache_dir=tmp_path / "c")
    (tmp_path / "junk.tfrecord").write_bytes(b"not a record at all, not at all")
    with pytest.raises(DataError, match=r"junk\.tfrecord is not a TFRecord file"):
        load_source(f"tfrecord:{tmp_path}/junk.tfrecord", cache_dir=tmp_path / "c")
    out = tmp_path / "bad"
    out.mkdir()
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, "PNG")
    with tf.io.TFRecordWriter(str(out / "x.tfrecord")) as writer:
        writer.write(_example(buffer.getvalue(), 0, None))
        writer.write(_example(b"broken image bytes", 2, None))
    (out / "labels.txt").write_text("a\nb\n")
    with pytest.raises(
        DataError, match=r"record 1 has label 2, outside the 2 classes.*labels\.txt"
    ):
        load_source(f"tfrecord:{out}/x.tfrecord", cache_dir=tmp_path / "c", progress=False)
    (out / "labels.txt").write_text("a\nb\nc\n")
    with pytest.raises(DataError, match=r"x\.tfrecord record 1: cannot read image"):
        load_source(f"tfrecord:{out}/x.tfrecord", cache_dir=tmp_path / "c", progress=False)
