"""Data sources: parse a source spec, load it into uint8 arrays, cache the decoded result.

A source is named by a short spec string (``folder:PATH``, ``cifar:PATH``, ``tfds:NAME`` or a
bare path) so that recipes, the CLI and run manifests all speak about data the same way.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekd.data.cache import (
    cache_key,
    cache_path,
    default_cache_dir,
    read_arrays,
    write_arrays,
)
from edgekd.data.cifar import cifar_file_stats, find_cifar_dir, load_cifar
from edgekd.data.folder import (
    FolderIndex,
    chosen_files,
    decode_chunks,
    decode_folder,
    image_shape,
    scan_folder,
)
from edgekd.data.images import DECODER_VERSION
from edgekd.data.imageset import ImageSet, ImageSize, as_hw, resize_images
from edgekd.data.split import choose_per_class
from edgekd.data.store import DiskImages, write_store
from edgekd.data.tfds import TfdsSource, open_tfds, tfds_file_stats
from edgekd.data.tfrecord import TFRecordSource, open_tfrecord, tfrecord_file_stats
from edgekd.errors import DataError

SOURCE_KINDS = ("folder", "cifar", "tfds", "tfrecord")
PIPELINES = ("auto", "memory", "stream")
ChunkedSource = TfdsSource | TFRecordSource  # sources read a chunk at a time, in order
_CIFAR_ROW_BYTES = 3073  # one label byte (CIFAR-10) and 32x32x3 pixels per image in a batch file

_SPEC_FORMS = (
    "'folder:PATH' (one sub-folder of images per class), "
    "'cifar:PATH' (a CIFAR-10/100 python-version folder), "
    "'tfds:NAME' (a TensorFlow Datasets name, e.g. tfds:cifar10), "
    "'tfrecord:GLOB' (TFRecord shards of tf.train.Example images, e.g. tfrecord:data/train-*), "
    "or a bare PATH (CIFAR batches are detected, anything else is read as a folder)"
)


@dataclass(frozen=True)
class SourceSpec:
    """Where a dataset comes from: a kind ("folder", "cifar", "tfds", "tfrecord") and a path,
    TFDS name or glob of shards."""

    kind: str
    location: str

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"unknown data source kind {self.kind!r}; expected {_SPEC_FORMS}")
        if not self.location:
            raise ValueError(f"data source {self.kind!r} needs a location; expected {_SPEC_FORMS}")

    def __str__(self) -> str:
        return f"{self.kind}:{self.location}"


def parse_source(spec: str) -> SourceSpec:
    """Parse a source spec string into a `SourceSpec`.

    Paths have ``~`` and ``$VARS`` expanded but are not resolved further, so the spec stays
    as the user wrote it. A bare path is a CIFAR source when it holds CIFAR python batches
    (``data_batch_1`` + ``batches.meta``, or ``train`` + ``meta``), else an image folder.

    Args:
        spec: str. The source, e.g. ``"folder:~/data/flowers"`` or ``"tfds:cifar10"``.

    Raises:
        ValueError: the prefix is unknown or the location is empty; the message lists the
            accepted forms.
    """
    text = str(spec).strip()
    if not text:
        raise ValueError(f"empty data source; expected {_SPEC_FORMS}")
    prefix, sep, rest = text.partition(":")
    if sep and prefix in SOURCE_KINDS:
        location = rest.strip() if prefix == "tfds" else _expand(rest.strip())
        return SourceSpec(prefix, location)
    # Anything else that looks like "word:..." is a mistyped prefix (or a URL), not a path;
    # a one-letter word is a Windows drive ("C:\\data"). Name a path holding ':' as folder:PATH.
    if sep and len(prefix) > 1 and prefix.isidentifier():
        raise ValueError(
            f"unknown data source prefix {prefix!r} in {text!r}; expected {_SPEC_FORMS}"
        )
    location = _expand(text)

    kind = "cifar" if find_cifar_dir(Path(location)) is not None else "folder"
    return SourceSpec(kind, location)


def _expand(path: str) -> str:
    return os.path.expandvars(os.path.expanduser(path))


@dataclass
class Dataset:
    """A loaded source: the train split, the source's own test split if it has one, a fingerprint.

    Attributes:
        source: SourceSpec. Where the data came from.
        train: ImageSet. The training split (validation is carved out of it later).
        test: ImageSet | None. The source's test split (CIFAR ``test_batch``, TFDS ``test``);
            None for image folders.
        fingerprint: str. sha256 hex over the decoded content of train and test, so a run
            manifest can tell whether the data changed.
        pipeline: str. "memory" (images held as numpy arrays) or "stream" (as `DiskImages`
            in an on-disk store, read a batch at a time).
    """

    source: SourceSpec
    train: ImageSet
    test: ImageSet | None
    fingerprint: str
    pipeline: str = "memory"

    @property
    def class_names(self) -> list[str]:
        """The class names, in label order."""
        return self.train.class_names


def fingerprint(train: ImageSet, test: ImageSet | None) -> str:
    """sha256 hex over images, labels and class names of both splits (not over the source path)."""
    digest = hashlib.sha256()
    for name, split in (("train", train), ("test", test)):
        if split is None:
            digest.update(f"{name}:none;".encode())
            continue
        digest.update(f"{name}:{tuple(split.images.shape)};".encode())
        # Hashed a chunk at a time, so an on-disk store is never read into memory whole.
        parts = (
            split.images.chunks()
            if isinstance(split.images, DiskImages)
            else [np.ascontiguousarray(split.images)]
        )
        for part in parts:
            digest.update(memoryview(part).cast("B"))
        digest.update(split.labels.astype("<i4").tobytes())
        digest.update(("\n".join(split.class_names) + ";").encode())
    return digest.hexdigest()


def load_source(
    spec: SourceSpec | str,
    *,
    limit_per_class: int | None = None,
    seed: int = 0,
    image_size: ImageSize | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    tfds_dir: str | Path | None = None,
    pipeline: str = "memory",
    memory_limit_gb: float = 4.0,
) -> Dataset:
    """Load a data source into memory or into an on-disk store, decoding once and caching.

    The decoded arrays are cached as one ``.npz`` file keyed by the spec, the source files
    (paths, sizes, mtimes), `limit_per_class`, `seed` and `image_size`, so the second load
    of a large image folder reads one file instead of decoding every image again.

    Args:
        spec: SourceSpec | str. The source; strings go through `parse_source`.
        limit_per_class: int | None. Keep at most this many images per class, a seeded
            random choice (the same for the same seed). Image folders pick the files before
            decoding, so a quick run decodes only these. Also applied to a test split.
            Defaults to None (all images).
        seed: int. Seed of the `limit_per_class` choice. Defaults to 0.
        image_size: ImageSize | None. Resize to one side or (height, width) (bilinear) where the
            source differs. None keeps the source size, which must then be the same for
            all images. Defaults to None.
        cache_dir: str | Path | None. Where decoded arrays are cached. Defaults to
            ``$EDGEKD_CACHE`` or ``~/.cache/edgekd``.
        progress: bool. Print a one-line progress indicator to stderr while decoding.
            Defaults to True.
        tfds_dir: str | Path | None. TFDS data directory for ``tfds:`` sources. Defaults to
            ``$TFDS_DATA_DIR`` or TFDS's own default (``~/tensorflow_datasets``).
        pipeline: str. "memory": the images as numpy arrays. "stream": decoded and resized
            once, in parallel, into an on-disk store in the cache (``.stream`` folder), and
            returned as `DiskImages` that read a batch at a time, so memory does not grow
            with the data. "auto": "stream" when the decoded images would take more than
            `memory_limit_gb`. Both give the same pixels. Defaults to "memory".
        memory_limit_gb: float. The "auto" threshold. Defaults to 4.0.

    Returns:
        The `Dataset`.

    Raises:
        DataError: the source is missing, unreadable or malformed; the message names the
            file or folder and how to fix it.
    """
    if isinstance(spec, str):
        spec = parse_source(spec)
    if limit_per_class is not None and limit_per_class < 1:
        raise ValueError(f"limit_per_class must be >= 1 or None, got {limit_per_class}")
    if image_size is not None and min(as_hw(image_size)) < 1:
        raise ValueError(f"image_size must be >= 1 or None, got {image_size}")

    index = None
    if spec.kind == "folder":
        index = scan_folder(spec.location)
        files = index.file_stats()
    elif spec.kind == "cifar":
        files = cifar_file_stats(spec.location)
    elif spec.kind == "tfrecord":
        files = tfrecord_file_stats(spec.location)
    else:
        files = tfds_file_stats(spec.location, data_dir=tfds_dir)
    opened: list[ChunkedSource] = []  # a TFDS or TFRecord source, opened once when needed

    def chunked() -> ChunkedSource | None:
        """The TFDS or TFRecord source, opened on first use; None for folders and CIFAR."""
        if spec.kind not in ("tfds", "tfrecord"):
            return None
        if not opened:
            if spec.kind == "tfds":
                opened.append(open_tfds(spec.location, data_dir=tfds_dir))
            else:
                opened.append(open_tfrecord(spec.location))
        return opened[0]

    key = cache_key(
        {
            "spec": str(spec),
            "abspath": os.path.abspath(spec.location) if spec.kind != "tfds" else None,
            "tfds_dir": str(tfds_dir) if spec.kind == "tfds" and tfds_dir is not None else None,
            "limit_per_class": limit_per_class,
            "seed": seed if limit_per_class is not None else 0,
            "image_size": image_size,
            "decoder": DECODER_VERSION if spec.kind in ("folder", "tfrecord") else None,
        },
        files,
    )
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline must be one of {PIPELINES}, got {pipeline!r}")
    if pipeline == "auto":
        estimate = _decoded_bytes(spec, files, index, chunked(), limit_per_class, seed, image_size)
        pipeline = "stream" if estimate > memory_limit_gb * 1e9 else "memory"
    if pipeline == "stream":
        store = stream_path(root, spec.kind, key)
        dataset = read_stream(spec, store)
        if dataset is None:
            if store.exists():  # a damaged entry of the cache (only whole stores are renamed in)
                import shutil

                shutil.rmtree(store, ignore_errors=True)
            dataset = build_stream(
                spec, store, index, chunked(), limit_per_class, seed, image_size, progress
            )
        return dataset

    path = cache_path(root, spec.kind, key)
    cached = read_arrays(path)
    if cached is not None:
        dataset = _from_arrays(spec, cached)
        if dataset is not None:
            return dataset

    if spec.kind == "folder":
        train = decode_folder(
            index,
            limit_per_class=limit_per_class,
            seed=seed,
            image_size=image_size,
            progress=progress,
        )
        test = None
    else:
        if spec.kind == "cifar":
            train, test = load_cifar(spec.location)
        else:
            train, test = _read_chunked(chunked(), image_size, progress)
        train, test = (
            _limit_and_resize(split, limit_per_class, seed, image_size) for split in (train, test)
        )

    dataset = Dataset(spec, train, test, fingerprint(train, test))
    write_arrays(path, _to_arrays(dataset))
    return dataset


def stream_path(cache_dir: Path, kind: str, key: str) -> Path:
    """The folder of one streaming store: ``<cache_dir>/data-<kind>-<key>.stream``."""
    return cache_path(cache_dir, kind, key).with_suffix(".stream")


def _decoded_bytes(
    spec: SourceSpec,
    files: list,
    index: FolderIndex | None,
    source: ChunkedSource | None,
    limit_per_class: int | None,
    seed: int,
    image_size: ImageSize | None,
) -> int:
    """Bytes the decoded training images would take in memory, from the listing (one image
    header read at most) or the TFDS / TFRecord source's counts and first image."""
    if index is not None:
        count = len(chosen_files(index, limit_per_class, seed))
        if image_size is None:
            from PIL import Image

            with Image.open(index.root / index.files[0]) as first:
                width, height = first.size
        else:
            height, width = as_hw(image_size)
        return count * height * width * 3
    if spec.kind == "cifar":
        count = sum(size for _, size, _ in files) // _CIFAR_ROW_BYTES
        height, width = as_hw(image_size) if image_size is not None else (32, 32)
        return count * height * width * 3
    assert source is not None
    count = source.splits["train"]
    if limit_per_class is not None:
        count = min(count, limit_per_class * len(source.class_names))
    return count * int(np.prod(source.image_shape(image_size)))


_STORE_META = "meta.npz"


def read_stream(spec: SourceSpec, store: Path) -> Dataset | None:
    """The Dataset of a complete streaming store; None if it is missing or unreadable."""
    meta = read_arrays(store / _STORE_META) if store.is_dir() else None
    if meta is None:
        return None
    try:
        class_names = [str(name) for name in meta["class_names"].tolist()]
        splits = [_stored_split(store, split, meta, class_names) for split in ("train", "test")]
        return Dataset(spec, splits[0], splits[1], str(meta["fingerprint"]), pipeline="stream")
    except (KeyError, ValueError, DataError) as exc:
        import sys

        print(f"edgekd: ignoring damaged image store {store} ({exc}); rebuilding it",
              file=sys.stderr)  # fmt: skip
        return None


def _stored_split(
    store: Path, split: str, meta: dict[str, np.ndarray], class_names: list[str]
) -> ImageSet | None:
    """One split of a store: its rows (all, or the `<split>_rows` chosen) and labels."""
    if f"{split}_labels" not in meta:
        return None
    images = DiskImages(store / f"{split}.npy", rows=meta.get(f"{split}_rows"))
    return ImageSet(images, meta[f"{split}_labels"], class_names)


def build_stream(
    spec: SourceSpec,
    store: Path,
    index: FolderIndex | None,
    source: ChunkedSource | None,
    limit_per_class: int | None,
    seed: int,
    image_size: ImageSize | None,
    progress: bool,
) -> Dataset:
    """Decode and resize a source once into the streaming store `store`, a split at a time.

    An image folder is decoded on a thread pool a chunk at a time, straight to disk; a TFDS
    or TFRecord split is read through `tf.data` a chunk at a time, straight to disk (with
    `limit_per_class`, the store keeps every image and the split is a view of the chosen
    rows). CIFAR batches (small by nature) are read whole, then resized to disk in chunks.
    The store is built in a temporary folder renamed when whole: an interrupted build leaves
    nothing that a later load would take for a store.
    """
    import shutil
    import tempfile

    store.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=store.parent, prefix=store.name + ".", suffix=".tmp"))
    try:
        meta: dict[str, np.ndarray] = {}
        if index is not None:
            chosen = chosen_files(index, limit_per_class, seed)
            paths = [index.root / index.files[i] for i in chosen]
            chunks = decode_chunks(paths, image_size=image_size, progress=progress,
                                   label=f"decoding {index.root} to {store.name}")  # fmt: skip
            write_store(tmp / "train.npy", (len(paths), *image_shape(paths, image_size)), chunks)
            meta["train_labels"] = index.labels[chosen]
            class_names = list(index.class_names)
        elif spec.kind == "cifar":
            train, test = load_cifar(spec.location)
            class_names = list(train.class_names)
            for name, split in (("train", train), ("test", test)):
                split = _limit_and_resize(split, limit_per_class, seed, None)
                if split is None:
                    continue
                size = as_hw(image_size) if image_size is not None else split.image_size
                write_store(tmp / f"{name}.npy", (len(split), *size, 3),
                            _resized_chunks(split.images, image_size))  # fmt: skip
                meta[f"{name}_labels"] = split.labels
            del train, test
        else:
            assert source is not None
            class_names = list(source.class_names)
            shape = source.image_shape(image_size)
            for name, count in source.splits.items():
                labels: list[np.ndarray] = []

                def images(name=name, labels=labels):
                    for chunk, chunk_labels in source.chunks(name, image_size, progress):
                        labels.append(chunk_labels)
                        yield chunk

                write_store(tmp / f"{name}.npy", (count, *shape), images())
                meta[f"{name}_labels"] = np.concatenate(labels)
                if limit_per_class is not None:  # the store keeps all; the view the choice
                    rows = choose_per_class(meta[f"{name}_labels"], limit_per_class, seed)
                    meta[f"{name}_rows"] = rows
                    meta[f"{name}_labels"] = meta[f"{name}_labels"][rows]
        sets = [_stored_split(tmp, name, meta, class_names) for name in ("train", "test")]
        meta["class_names"] = np.array(class_names, dtype=str)
        meta["fingerprint"] = np.array(fingerprint(sets[0], sets[1]))
        del sets
        if not write_arrays(tmp / _STORE_META, meta):
            raise DataError(f"cannot write the image store {store}; set data.cache_dir or "
                            "EDGEKD_CACHE to a writable folder with room for it")  # fmt: skip
        try:
            os.replace(tmp, store)
        except OSError:  # another process finished the same store first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    dataset = read_stream(spec, store)
    if dataset is None:
        raise DataError(f"the image store {store} just written cannot be read back")
    return dataset


def _read_chunked(
    source: ChunkedSource, image_size: ImageSize | None, progress: bool
) -> tuple[ImageSet, ImageSet | None]:
    """(train, test) of a TFDS or TFRecord source, in memory."""
    sets: list[ImageSet | None] = []
    for split in ("train", "test"):
        if split not in source.splits:
            sets.append(None)
            continue
        parts = list(source.chunks(split, image_size, progress))
        images = np.concatenate([images for images, _ in parts])
        labels = np.concatenate([labels for _, labels in parts])
        sets.append(ImageSet(images, labels, source.class_names))
    return sets[0], sets[1]


def _resized_chunks(images: np.ndarray, image_size: ImageSize | None, size: int = 1024):
    """`images` a chunk at a time, resized (as `ImageSet.resized`) when `image_size` differs."""
    for start in range(0, len(images), size):
        chunk = images[start : start + size]
        if image_size is not None and chunk.shape[1:3] != as_hw(image_size):
            chunk = resize_images(chunk, image_size)
        yield chunk


def _limit_and_resize(
    split: ImageSet | None, limit_per_class: int | None, seed: int, image_size: ImageSize | None
) -> ImageSet | None:
    if split is None:
        return None
    if limit_per_class is not None:
        split = split.subset(choose_per_class(split.labels, limit_per_class, seed))
    if image_size is not None:
        split = split.resized(image_size)
    return split


def _to_arrays(dataset: Dataset) -> dict[str, np.ndarray]:
    arrays = {
        "train_images": dataset.train.images,
        "train_labels": dataset.train.labels,
        "class_names": np.array(dataset.train.class_names, dtype=str),
        "fingerprint": np.array(dataset.fingerprint),
    }
    if dataset.test is not None:
        arrays["test_images"] = dataset.test.images
        arrays["test_labels"] = dataset.test.labels
    return arrays


def _from_arrays(spec: SourceSpec, arrays: dict[str, np.ndarray]) -> Dataset | None:
    """Rebuild a Dataset from cached arrays; None if the entry does not have the right shape."""
    try:
        class_names = [str(name) for name in arrays["class_names"].tolist()]
        train = ImageSet(arrays["train_images"], arrays["train_labels"], class_names)
        test = None
        if "test_images" in arrays:
            test = ImageSet(arrays["test_images"], arrays["test_labels"], class_names)
        return Dataset(spec, train, test, str(arrays["fingerprint"]))
    except (KeyError, ValueError):
        return None
