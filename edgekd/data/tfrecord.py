"""TFRecord shards of `tf.train.Example` images, read through `tf.data` a chunk at a time.

The layout is the one of TF-slim, the TF Model Garden and most ImageNet converters: each
record holds the encoded image under ``image/encoded`` and its class index under
``image/class/label``, optionally its class name under ``image/class/text``. Class names
come from a ``labels.txt`` beside the shards (line i names class i), else from
``image/class/text``, else are the indices themselves. Images are decoded with Pillow, as
image folders and `edgekd predict` decode them, so a model sees the same pixels whatever
the container. TensorFlow is imported inside the functions that need it.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekd.data.cache import FileStat
from edgekd.data.images import decode_rgb
from edgekd.data.imageset import ImageSize, Progress, as_hw
from edgekd.errors import DataError

IMAGE_KEY = "image/encoded"
LABEL_KEY = "image/class/label"
TEXT_KEY = "image/class/text"
LABELS_FILE = "labels.txt"
_THREADS = max(2, min(4, os.cpu_count() or 2))


def shard_files(pattern: str) -> list[Path]:
    """The shards a glob pattern names, sorted; DataError if it names none."""
    files = sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern)) if Path(p).is_file())
    if not files:
        raise DataError(
            f"tfrecord:{pattern} matches no file; give a glob of TFRecord shards, e.g. "
            "tfrecord:data/train-*.tfrecord"
        )
    return files


def tfrecord_file_stats(pattern: str) -> list[FileStat]:
    """(path, size, mtime_ns) of the shards and of labels.txt, for the cache key."""
    files = shard_files(pattern)
    labels = files[0].parent / LABELS_FILE
    stats = []
    for path in [*files, *([labels] if labels.is_file() else [])]:
        stat = path.stat()
        stats.append((str(path), stat.st_size, stat.st_mtime_ns))
    return stats


@dataclass
class TFRecordSource:
    """TFRecord shards read once for their labels, ready to decode a chunk at a time."""

    pattern: str
    files: list[Path]
    class_names: list[str]
    labels: np.ndarray
    splits: dict[str, int] = field(default_factory=dict)  # {"train": number of records}
    first_shape: tuple[int, int, int] | None = None  # the first record's (H, W, 3), once read

    def _records(self) -> Iterator[tuple[bytes, int]]:
        """(encoded image, label) of every record, in shard order, through `tf.data`."""
        import tensorflow as tf

        spec = {
            IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
            LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
        }
        dataset = tf.data.TFRecordDataset([str(f) for f in self.files])
        dataset = dataset.map(
            lambda record: tf.io.parse_single_example(record, spec),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        ).prefetch(tf.data.AUTOTUNE)
        for example in dataset.as_numpy_iterator():
            yield example[IMAGE_KEY], int(example[LABEL_KEY])

    def image_shape(self, image_size: ImageSize | None) -> tuple[int, int, int]:
        """(H, W, 3) of the images read: `image_size`, else the first record's size."""
        if image_size is not None:
            return (*as_hw(image_size), 3)
        if self.first_shape is None:  # decoded once, however often asked
            data, _ = next(self._records())
            self.first_shape = decode_rgb(data, f"{self.files[0]} record 0").shape
        return self.first_shape

    def chunks(
        self, split: str, image_size: ImageSize | None, progress: bool = True, size: int = 256
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(images, labels), `size` records at a time, decoded on a thread pool, in order.

        Raises:
            DataError: a record does not decode, or (no `image_size`) differs in size from
                the first; the message names the record.
        """
        from concurrent.futures import ThreadPoolExecutor

        shape = self.image_shape(image_size)
        hw = as_hw(image_size) if image_size is not None else None
        meter = Progress(f"reading tfrecord:{self.pattern}", len(self.labels), enabled=progress)

        def decode(item: tuple[int, bytes]) -> np.ndarray:
            index, data = item
            where = f"tfrecord:{self.pattern} record {index}"
            pixels = decode_rgb(data, where, hw)
            if pixels.shape != shape:
                raise DataError(
                    f"{where} is {pixels.shape[0]}x{pixels.shape[1]} (height x width) while "
                    f"the first is {shape[0]}x{shape[1]}; set data.image_size to resize every "
                    "image to one size"
                )
            return pixels

        with ThreadPoolExecutor(_THREADS, thread_name_prefix="edgekd-tfrecord") as pool:
            batch: list[tuple[int, bytes]] = []
            labels: list[int] = []
            for index, (data, label) in enumerate(self._records()):
                batch.append((index, data))
                labels.append(label)
                if len(batch) == size:
                    yield np.stack(list(pool.map(decode, batch))), np.asarray(labels, np.int32)
                    meter.update(len(batch))
                    batch, labels = [], []
            if batch:
                yield np.stack(list(pool.map(decode, batch))), np.asarray(labels, np.int32)
                meter.update(len(batch))
        meter.done()


def open_tfrecord(pattern: str) -> TFRecordSource:
    """Read the labels (and class names) of every record once, without decoding images.

    Raises:
        DataError: no shard matches, TensorFlow is missing, a record lacks the features, a
            label is outside the classes of labels.txt, or class names disagree.
    """
    files = shard_files(pattern)
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise DataError(f"tfrecord:{pattern} needs TensorFlow: pip install tensorflow") from exc

    spec = {
        LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
        TEXT_KEY: tf.io.FixedLenFeature([], tf.string, default_value=b""),
    }
    labels: list[int] = []
    texts: dict[int, str] = {}
    for shard in files:
        dataset = tf.data.TFRecordDataset(str(shard)).map(
            lambda record: tf.io.parse_single_example(record, spec)
        )
        try:
            for index, example in enumerate(dataset.as_numpy_iterator()):
                label, text = int(example[LABEL_KEY]), example[TEXT_KEY].decode("utf-8")
                if text and texts.setdefault(label, text) != text:
                    raise DataError(
                        f"{shard} record {index}: label {label} is named {text!r}, earlier "
                        f"{texts[label]!r}; one name per class index"
                    )
                labels.append(label)
        except tf.errors.OpError as exc:
            raise DataError(
                f"{shard} is not a TFRecord file of tf.train.Example images with "
                f"{IMAGE_KEY!r} and {LABEL_KEY!r} ({exc.message.splitlines()[0]})"
            ) from None
    if not labels:
        raise DataError(f"tfrecord:{pattern} holds no records")
    array = np.asarray(labels, np.int64)
    names_file = files[0].parent / LABELS_FILE
    if names_file.is_file():
        class_names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
    elif texts:
        class_names = [texts.get(i, str(i)) for i in range(int(array.max()) + 1)]
    else:
        class_names = [str(i) for i in range(int(array.max()) + 1)]
    bad = np.flatnonzero((array < 0) | (array >= len(class_names)))
    if len(bad):
        raise DataError(
            f"tfrecord:{pattern}: record {bad[0]} has label {array[bad[0]]}, outside the "
            f"{len(class_names)} classes 0..{len(class_names) - 1}"
            + (f" named in {names_file}" if names_file.is_file() else "")
        )
    return TFRecordSource(pattern, files, class_names, array.astype(np.int32),
                          {"train": len(array)})  # fmt: skip
