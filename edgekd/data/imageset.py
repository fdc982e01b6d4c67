"""Images in memory, the relabelling that readers and consumers share, and load progress.

The readers (folder, CIFAR, TFDS) and the source dispatcher all build on these, so they
live apart from `source.py`, and nothing here imports a reader.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

import numpy as np

from edgekd.data.store import take_rows


@dataclass
class ImageSet:
    """Images and integer labels: in memory, or on disk when the data is streamed.

    Attributes:
        images: np.ndarray | DiskImages. (N, H, W, 3) uint8 RGB; a `DiskImages` store reads
            only the rows a batch indexes.
        labels: np.ndarray. (N,) int32, an index into `class_names`.
        class_names: list[str]. The class names, in label order.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be an (N, H, W, 3) uint8 array, got {self.images.dtype} "
                f"{self.images.shape}"
            )
        self.labels = np.asarray(self.labels, dtype=np.int32)
        if self.labels.shape != (len(self.images),):
            raise ValueError(
                f"labels must have shape ({len(self.images)},), got {self.labels.shape}"
            )
        self.class_names = [str(name) for name in self.class_names]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        """Number of classes (`len(class_names)`), whether or not each one has images."""
        return len(self.class_names)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the images."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    def subset(self, indices: np.ndarray) -> ImageSet:
        """Return the images at `indices` (a copy; a view that reads nothing on disk), with the
        same class names."""
        indices = np.asarray(indices)
        images = take_rows(self.images, indices)
        return ImageSet(images, self.labels[indices], list(self.class_names))

    def resized(self, image_size: ImageSize) -> ImageSet:
        """Return the set resized to `image_size` (bilinear, Pillow); self if equal."""
        if self.image_size == as_hw(image_size):
            return self
        return ImageSet(resize_images(self.images, image_size), self.labels, self.class_names)


ImageSize = int | tuple[int, int] | list[int]
"""An image size: one side (square), or (height, width)."""


def as_hw(size: ImageSize) -> tuple[int, int]:
    """(height, width) of a size given as one side (a square) or as (height, width)."""
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def resize_images(images: np.ndarray, image_size: ImageSize) -> np.ndarray:
    """Resize (N, H, W, 3) uint8 images to `image_size` with Pillow's bilinear filter."""
    from PIL import Image

    height, width = as_hw(image_size)
    out = np.empty((len(images), height, width, 3), np.uint8)
    for i, image in enumerate(images):
        pil = Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR)
        out[i] = np.asarray(pil)
    return out


def label_map(from_names: Sequence[str], to_names: Sequence[str]) -> np.ndarray:
    """Index array taking a label over `from_names` to one over `to_names`, -1 where a
    class is not among `to_names`: `label_map(a, b)[labels]` relabels."""
    index = {name: i for i, name in enumerate(to_names)}
    return np.array([index.get(name, -1) for name in from_names], np.int32)


class Progress:
    """A one-line progress indicator on stderr, refreshed every `every` items."""

    def __init__(
        self,
        label: str,
        total: int,
        *,
        every: int = 5000,
        enabled: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        self.label = label
        self.total = total
        self.every = every
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.count = 0
        self._next = every
        self._start = time.perf_counter()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, n: int) -> None:
        """Add `n` finished items; print when a multiple of `every` is crossed."""
        self.count += n
        if self.enabled and self.count >= self._next and self.count < self.total:
            self._next = (self.count // self.every + 1) * self.every
            self._write(f"{self.label}: {self.count:,}/{self.total:,} images", final=False)

    def done(self) -> None:
        """Print the final line with the elapsed time."""
        if self.enabled:
            seconds = time.perf_counter() - self._start
            self._write(f"{self.label}: {self.count:,} images in {seconds:.1f} s", final=True)

    def _write(self, text: str, *, final: bool) -> None:
        if self._tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
