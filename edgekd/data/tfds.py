"""TensorFlow Datasets sources, read a chunk at a time into numpy arrays.

`tensorflow_datasets` (and through it TensorFlow) is imported inside the functions that need
it, so the rest of edgekd runs where neither is installed. A dataset that is not prepared yet
is downloaded only after a quick reachability check of its download hosts: offline, TFDS
itself retries for minutes before giving up, and the user wants to hear within seconds how
to point at local files instead.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.data.cache import FileStat
from edgekd.data.imageset import ImageSize, Progress, as_hw, resize_images
from edgekd.errors import DataError

CONNECT_TIMEOUT_S = 3.0
_INSTALL_HINT = 'pip install "edgekd[tfds]"'
_LOCAL_HINT = (
    "point data.path at local files instead (folder:PATH for one sub-folder of images per "
    "class, cifar:PATH for a CIFAR python-version folder), or set data.tfds_dir to a folder "
    "where the dataset is already prepared (run `tfds build {name} --data_dir DIR` on a "
    "machine that is online and copy DIR over)"
)


def default_data_dir() -> Path:
    """``$TFDS_DATA_DIR`` if set, else TFDS's default ``~/tensorflow_datasets``."""
    env = os.environ.get("TFDS_DATA_DIR")
    return Path(os.path.expanduser(env)) if env else Path.home() / "tensorflow_datasets"


def tfds_file_stats(name: str, *, data_dir: str | Path | None = None) -> list[FileStat]:
    """(relative path, size, mtime_ns) of the prepared files of `name`, for the cache key.

    Reads the folder only (no TFDS import), so a cached load never touches TensorFlow. Empty
    when the dataset is not prepared yet.
    """
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    folder = root / name.split(":")[0]
    stats = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            stat = path.stat()
            stats.append((path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns))
    return stats


@dataclass
class TfdsSource:
    """A prepared TFDS image classification dataset, ready to read a split at a time."""

    name: str
    builder: Any
    class_names: list[str]
    splits: dict[str, int]  # "train" and, if there is one, "test": number of examples
    static_shape: tuple  # the image feature's shape; None where sizes vary

    def image_shape(self, image_size: ImageSize | None) -> tuple[int, int, int]:
        """(H, W, 3) of the images read with `image_size`; DataError if sizes vary and no
        `image_size` is given."""
        if image_size is not None:
            return (*as_hw(image_size), 3)
        if None in self.static_shape[:2]:
            raise DataError(
                f"TFDS dataset {self.name!r} has images of different sizes; set "
                "data.image_size to resize them to one size"
            )
        return (int(self.static_shape[0]), int(self.static_shape[1]), 3)

    def chunks(
        self, split: str, image_size: ImageSize | None, progress: bool = True, size: int = 1024
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(images, labels) of `split` in order, `size` at a time: (k, H, W, 3) uint8 RGB,
        resized (Pillow, bilinear) to `image_size` where it differs; memory stays bounded."""
        import tensorflow_datasets as tfds
        from PIL import Image

        shape = self.image_shape(image_size)
        meter = Progress(f"reading tfds:{self.name} {split}", self.splits[split], enabled=progress)
        fixed = None not in self.static_shape
        dataset = self.builder.as_dataset(
            split=split, as_supervised=True, batch_size=size if fixed else None
        )
        pending_images: list[np.ndarray] = []
        pending_labels: list[int] = []
        for images, labels in tfds.as_numpy(dataset):
            if fixed:
                images = _to_rgb(np.asarray(images))
                if images.shape[1:] != shape:
                    images = resize_images(images, shape[:2])
                meter.update(len(images))
                yield images, np.asarray(labels, np.int32)
                continue
            pil = Image.fromarray(_to_rgb(images))
            if pil.size != (shape[1], shape[0]):
                pil = pil.resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
            pending_images.append(np.asarray(pil))
            pending_labels.append(int(labels))
            if len(pending_images) == size:
                meter.update(size)
                yield np.stack(pending_images), np.asarray(pending_labels, np.int32)
                pending_images, pending_labels = [], []
        if pending_images:
            meter.update(len(pending_images))
            yield np.stack(pending_images), np.asarray(pending_labels, np.int32)
        meter.done()


def open_tfds(name: str, *, data_dir: str | Path | None = None) -> TfdsSource:
    """Open a TFDS image classification dataset, preparing it first if need be.

    Raises:
        DataError: tensorflow_datasets is missing, the name is unknown, the dataset is not
            prepared and its download host is unreachable, or it is not an image
            classification dataset.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as exc:
        raise DataError(
            f"data source tfds:{name} needs tensorflow-datasets: {_INSTALL_HINT}; or "
            + _LOCAL_HINT.format(name=name)
        ) from exc

    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    try:
        builder = tfds.builder(name, data_dir=str(data_dir))
    except tfds.core.registered.DatasetNotFoundError as exc:
        raise DataError(
            f"TFDS has no dataset {name!r}; check the name at "
            "https://www.tensorflow.org/datasets/catalog/overview"
        ) from exc
    if not builder.is_prepared():
        _prepare(builder, name, data_dir)

    image_key, label_key = _supervised_keys(builder, name)
    label_feature = builder.info.features[label_key]
    class_names = [str(n) for n in getattr(label_feature, "names", None) or []]
    if not class_names:
        raise DataError(f"TFDS dataset {name!r}: label {label_key!r} is not a class label")
    splits = builder.info.splits
    if "train" not in splits:
        raise DataError(
            f"TFDS dataset {name!r} has no 'train' split (it has {', '.join(splits)}); "
            "use a dataset with a train split"
        )
    counts = {split: splits[split].num_examples for split in ("train", "test") if split in splits}
    shape = tuple(builder.info.features[image_key].shape)
    return TfdsSource(name, builder, class_names, counts, shape)


def _prepare(builder: Any, name: str, data_dir: Path) -> None:
    """Download and prepare `builder`, failing within seconds when its hosts are unreachable."""
    urls = list(getattr(builder, "url_infos", None) or {})
    if not urls and builder.info.homepage:
        urls = [builder.info.homepage]
    hosts = sorted({urllib.parse.urlsplit(url).hostname for url in urls} - {None})
    for host in hosts:
        target = _connect_target(host)
        if not _reachable(*target):
            via = f" (via proxy {target[0]}:{target[1]})" if target[0] != host else ""
            raise DataError(
                f"TFDS dataset {name!r} is not prepared in {data_dir} and its download host "
                f"{host} cannot be reached{via} within {CONNECT_TIMEOUT_S:.0f} s (offline?); "
                + _LOCAL_HINT.format(name=name)
            )
    try:
        builder.download_and_prepare()
    except Exception as exc:  # network, checksum, manual-download and disk errors alike
        raise DataError(
            f"could not download and prepare TFDS dataset {name!r} into {data_dir}: {exc}; "
            + _LOCAL_HINT.format(name=name)
        ) from exc


def _connect_target(host: str) -> tuple[str, int]:
    """(host, port) a download of `host` connects to first: the HTTPS proxy if one applies."""
    proxy = urllib.request.getproxies().get("https")
    if proxy and not urllib.request.proxy_bypass(host):
        parts = urllib.parse.urlsplit(proxy if "//" in proxy else f"http://{proxy}")
        if parts.hostname:
            return parts.hostname, parts.port or 8080
    return host, 443


def _reachable(host: str, port: int, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether a TCP connection to host:port opens within `timeout` seconds, DNS included."""
    found: list[Any] = []

    def resolve() -> None:
        with contextlib.suppress(OSError):
            found.extend(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))

    # getaddrinfo has no timeout of its own and can hang for long without a network.
    resolver = threading.Thread(target=resolve, daemon=True, name="edgekd-dns")
    resolver.start()
    resolver.join(timeout)
    if not found:
        return False
    family, kind, proto, _, address = found[0]
    try:
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(timeout)
            sock.connect(address)
        return True
    except OSError:
        return False


def _supervised_keys(builder: Any, name: str) -> tuple[str, str]:
    keys = builder.info.supervised_keys
    if not keys or len(keys) < 2 or not all(isinstance(k, str) for k in keys[:2]):
        raise DataError(
            f"TFDS dataset {name!r} has no (image, label) supervised keys; edgekd reads image "
            "classification datasets only"
        )
    image_key, label_key = keys[0], keys[1]
    shape = builder.info.features[image_key].shape
    if len(shape) != 3 or shape[-1] not in (1, 3, 4):
        raise DataError(
            f"TFDS dataset {name!r}: {image_key!r} has shape {shape}, expected images "
            "(height, width, 1|3|4 channels)"
        )
    return image_key, label_key


def _to_rgb(images: np.ndarray) -> np.ndarray:
    """Gray to RGB by repetition, RGBA to RGB by dropping alpha; (..., H, W, C) uint8."""
    channels = images.shape[-1]
    if channels == 1:
        images = np.repeat(images, 3, axis=-1)
    elif channels == 4:
        images = images[..., :3]
    return np.ascontiguousarray(images, dtype=np.uint8)
