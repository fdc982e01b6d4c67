"""CIFAR-10 and CIFAR-100 "python version" folders, read without unpickling arbitrary objects.

The batches are Python pickles. A pickle can name any importable callable and have it called
while loading, so they go through an unpickler that resolves only what a numpy array needs;
anything else is refused before it can run.
"""

from __future__ import annotations

import codecs
import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.data.cache import FileStat
from edgekd.data.imageset import ImageSet
from edgekd.errors import DataError

# The function numpy's ndarray.__reduce__ names, found without importing numpy.core (which
# numpy 2 deprecates): "numpy.core.multiarray" in numpy 1 pickles, "numpy._core..." in numpy 2.
_reconstruct = np.ndarray((0,)).__reduce__()[0]


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """`_codecs.encode` as Python 3 protocol-2 pickles use it for bytes: latin-1 only."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin-1", errors)


_ALLOWED: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Python 3 writes bytes in protocol 2 as _codecs.encode(str, "latin1"); Python 2 (the
    # official CIFAR files) does not. Allowed only with the latin-1 codec.
    ("_codecs", "encode"): _latin1_encode,
}


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals a numpy array needs."""

    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED.get((module, name))
        if allowed is None:
            raise DataError(
                f"refusing to unpickle {module}.{name} in {self.path}: a CIFAR batch holds only "
                "numpy arrays, lists and bytes; this file is not a CIFAR batch (or was tampered "
                "with). Download CIFAR again from https://www.cs.toronto.edu/~kriz/cifar.html"
            )
        return allowed


def unpickle(path: Path) -> Any:
    """Load a pickle that may contain only numpy arrays and plain Python containers.

    Raises:
        DataError: the file is missing, truncated or names anything else.
    """
    try:
        with open(path, "rb") as handle:
            return _ArrayUnpickler(handle, path).load()
    except DataError:
        raise
    except FileNotFoundError as exc:
        raise DataError(f"CIFAR file {path} is missing; download CIFAR again") from exc
    except Exception as exc:  # truncated or garbled: pickle raises many kinds
        raise DataError(f"cannot read CIFAR file {path}: {exc}; download CIFAR again") from exc


@dataclass(frozen=True)
class _Layout:
    """File names and dictionary keys of one CIFAR variant."""

    name: str
    train: tuple[str, ...]
    test: str
    meta: str
    names_key: bytes
    labels_key: bytes


_CIFAR10 = _Layout(
    "CIFAR-10",
    tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test_batch",
    "batches.meta",
    b"label_names",
    b"labels",
)
_CIFAR100 = _Layout("CIFAR-100", ("train",), "test", "meta", b"fine_label_names", b"fine_labels")
# The folders the official archives extract to, accepted one level down.
_ARCHIVE_DIRS = ("cifar-10-batches-py", "cifar-100-python")


def _layout(folder: Path) -> _Layout | None:
    for layout in (_CIFAR10, _CIFAR100):
        if (folder / layout.train[0]).is_file() and (folder / layout.meta).is_file():
            return layout
    return None


def find_cifar_dir(path: Path) -> Path | None:
    """The folder holding CIFAR python batches: `path` itself or its extracted archive folder."""
    path = Path(path)
    for folder in (path, *(path / name for name in _ARCHIVE_DIRS)):
        if folder.is_dir() and _layout(folder) is not None:
            return folder
    return None


def _resolve(path: str | Path) -> tuple[Path, _Layout]:
    path = Path(path)
    folder = find_cifar_dir(path)
    if folder is None:
        what = "does not exist" if not path.exists() else "holds no CIFAR python batches"
        raise DataError(
            f"CIFAR folder {path} {what}; expected data_batch_1..5, test_batch and "
            "batches.meta (CIFAR-10) or train, test and meta (CIFAR-100), as extracted from "
            "cifar-10-python.tar.gz / cifar-100-python.tar.gz"
        )
    layout = _layout(folder)
    assert layout is not None
    return folder, layout


def cifar_file_stats(path: str | Path) -> list[FileStat]:
    """(name, size, mtime_ns) of the batch files, for the cache key."""
    folder, layout = _resolve(path)
    stats = []
    for name in (*layout.train, layout.test, layout.meta):
        file = folder / name
        if file.is_file():
            stat = file.stat()
            stats.append((name, stat.st_size, stat.st_mtime_ns))
    return stats


def load_cifar(path: str | Path) -> tuple[ImageSet, ImageSet | None]:
    """Load a CIFAR-10 or CIFAR-100 python-version folder as (train, test).

    The test split is None when the test batch is absent.

    Raises:
        DataError: a batch is missing, malformed, or holds anything but arrays and lists.
    """
    folder, layout = _resolve(path)
    meta = unpickle(folder / layout.meta)
    names = _field(meta, layout.names_key, folder / layout.meta)
    class_names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]

    parts = [_read_batch(folder / name, layout, len(class_names)) for name in layout.train]
    train = ImageSet(
        np.concatenate([images for images, _ in parts]),
        np.concatenate([labels for _, labels in parts]),
        class_names,
    )
    test = None
    if (folder / layout.test).is_file():
        images, labels = _read_batch(folder / layout.test, layout, len(class_names))
        test = ImageSet(images, labels, class_names)
    return train, test


def _field(batch: Any, key: bytes, path: Path) -> Any:
    if not isinstance(batch, dict):
        raise DataError(f"{path} is not a CIFAR batch (it holds a {type(batch).__name__})")
    for candidate in (key, key.decode()):
        if candidate in batch:
            return batch[candidate]
    raise DataError(f"{path} has no {key.decode()!r} entry; is it a {key.decode()} CIFAR file?")


def _read_batch(path: Path, layout: _Layout, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch file as (N, 32, 32, 3) uint8 images and (N,) int32 labels."""
    batch = unpickle(path)
    data = np.asarray(_field(batch, b"data", path))
    labels = np.asarray(_field(batch, layout.labels_key, path), dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        raise DataError(
            f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072); "
            f"is it a {layout.name} python-version batch?"
        )
    in_range = labels.size == 0 or (labels.min() >= 0 and labels.max() < num_classes)
    if labels.shape != (len(data),) or not in_range:
        raise DataError(
            f"{path}: expected {len(data)} labels in 0..{num_classes - 1}, got shape "
            f"{labels.shape}; download {layout.name} again"
        )
    # Rows are channel-first, row-major: (N, 3, 32, 32) -> NHWC.
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels.astype(np.int32)
