"""Image batches for `model.fit` / `evaluate` / `predict` on any Keras backend.

Batches are cut from numpy arrays, or read from an on-disk store (`DiskImages`, the streaming
pipeline), and augmented with vectorised numpy per batch: the same code and the same pixels
on both paths, so they give the same batches. Nothing here touches TensorFlow; on the
TensorFlow backend Keras feeds these batches through `tf.data` with prefetching.

Every random choice of a batch is drawn from a generator seeded by (seed, epoch, batch
index): a batch is the same whichever worker thread computes it and in whatever order Keras
asks for it, and a resumed run that sets `epoch` sees exactly the batches of an
uninterrupted one.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from edgekd.data.store import DiskImages

# First words of the SeedSequence entropy, keeping the shuffle and augment streams apart.
_SHUFFLE_STREAM = 0x5348554646  # "SHUFF"
_AUGMENT_STREAM = 0x4155474D  # "AUGM"

PADDING_MODES = ("reflect", "constant")
CROPS = ("pad", "resized")
STREAM_WORKERS = max(2, min(4, os.cpu_count() or 2))  # threads making batches ahead
STREAM_PREFETCH = 2 * STREAM_WORKERS  # batches made ahead when images come from disk
RESIZED_CROP_TRIES = 10  # candidate boxes drawn per image, as torchvision's RandomResizedCrop


@dataclass(frozen=True)
class Augment:
    """Training augmentation: a random crop, horizontal flip, cutout.

    Attributes:
        crop: str. "pad" (pad, then crop back to the original size: a random shift, the
            CIFAR recipe) or "resized" (Inception-style random resized crop: a box of a random
            share `scale` of the area and aspect ratio in `ratio`, resized back bilinearly;
            the ImageNet recipe, for large images). Defaults to "pad".
        crop_padding: int. Pixels of padding on each side before a random crop back to the
            original size, i.e. a random shift of up to this many pixels; "pad" only.
            0 = off. Defaults to 4.
        padding_mode: str. "reflect" (mirror the border, no artificial black edges) or
            "constant" (zeros). Defaults to "reflect".
        flip: bool. Mirror half of the images left-right. Defaults to True.
        cutout: int. Side of a square set to zero at a random centre (clipped at the
            border), DeVries & Taylor 2017. 0 = off. Defaults to 0.
    """

    crop_padding: int = 4
    padding_mode: str = "reflect"
    flip: bool = True
    cutout: int = 0
    crop: str = "pad"
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def __post_init__(self) -> None:
        if self.crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {self.crop!r}")
        if not (0 < self.scale[0] <= self.scale[1] <= 1 and 0 < self.ratio[0] <= self.ratio[1]):
            raise ValueError(
                f"scale must be 0 < low <= high <= 1 and ratio 0 < low <= high, got "
                f"{self.scale} and {self.ratio}"
            )
        if self.padding_mode not in PADDING_MODES:
            raise ValueError(
                f"padding_mode must be one of {PADDING_MODES}, got {self.padding_mode!r}"
            )
        if self.crop_padding < 0 or self.cutout < 0:
            raise ValueError(
                f"crop_padding and cutout must be >= 0, got {self.crop_padding} and {self.cutout}"
            )

    def __call__(
        self, images: np.ndarray, rng: np.random.Generator, part: tuple[int, int] | None = None
    ) -> np.ndarray:
        """Augment a batch of (B, H, W, C) images; returns a new array of the same dtype.

        `part` = (start, total): the images are rows start.. of a batch of `total`. The random
        draws are the whole batch's, so a worker's share of a batch is augmented exactly as
        it would be in the whole batch.
        """
        count, height, width, _ = images.shape
        start, batch = part if part is not None else (0, count)
        mine = slice(start, start + count)
        pad = self.crop_padding
        if self.crop == "resized":
            boxes = resized_crop_boxes(batch, height, width, rng, self.scale, self.ratio)
            images = resample_boxes(images, *(b[mine] for b in boxes))
        elif pad:
            if self.padding_mode == "reflect" and pad >= min(height, width):
                raise ValueError(
                    f"reflect padding of {pad} px needs images larger than that, got "
                    f"{height}x{width}; use padding_mode='constant' or less padding"
                )
            padded = _pad(images, pad, self.padding_mode)
            top = rng.integers(0, 2 * pad + 1, batch)[mine]
            left = rng.integers(0, 2 * pad + 1, batch)[mine]
            # windows[b, y, x] is the (C, H, W) crop at offset (y, x); gather one per image.
            windows = sliding_window_view(padded, (height, width), axis=(1, 2))
            images = windows[np.arange(count), top, left].transpose(0, 2, 3, 1)
        else:
            images = images.copy()
        if self.flip:
            flipped = np.flatnonzero(rng.random(batch)[mine] < 0.5)
            images[flipped] = images[flipped, :, ::-1]
        if self.cutout:
            self._cut_out(images, rng, mine, batch)
        return images

    def _cut_out(
        self, images: np.ndarray, rng: np.random.Generator, mine: slice, total: int
    ) -> None:
        """Zero a cutout x cutout square per image, in place, centred uniformly at random."""
        batch, height, width, _ = images.shape
        size = self.cutout
        if size > min(height, width):
            raise ValueError(f"cutout of {size} px is larger than the {height}x{width} images")
        top = rng.integers(0, height, total)[mine] - size // 2
        left = rng.integers(0, width, total)[mine] - size // 2
        # Work on one size x size window per image, moved inside the image where the square
        # sticks out, and zero only the window cells the square covers: no full-size mask.
        win_top = np.clip(top, 0, height - size)
        win_left = np.clip(left, 0, width - size)
        span = np.arange(size)
        rows = win_top[:, None] + span - top[:, None]  # position in the square, (B, size)
        cols = win_left[:, None] + span - left[:, None]
        in_rows = (rows >= 0) & (rows < size)
        in_cols = (cols >= 0) & (cols < size)
        covered = in_rows[:, :, None] & in_cols[:, None, :]  # (B, size, size)
        windows = sliding_window_view(images, (size, size), axis=(1, 2), writeable=True)
        picked = (np.arange(batch), win_top, win_left)
        windows[picked] = windows[picked] * ~covered[:, None]  # (B, C, size, size)


def random_resized_crop(
    images: np.ndarray,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> np.ndarray:
    """Crop each (H, W) image to a random box and resize it back to (H, W), bilinearly
    (`resized_crop_boxes`, then `resample_boxes`)."""
    batch, height, width, _ = images.shape
    boxes = resized_crop_boxes(batch, height, width, rng, scale, ratio)
    return resample_boxes(images, *boxes)


def resized_crop_boxes(
    batch: int,
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(top, left, box height, box width) per image, as torchvision's RandomResizedCrop draws
    them: up to ten candidates of area ``uniform(scale) * H * W`` and aspect ratio
    log-uniform in ``ratio``; the first that fits is taken (else the whole image), at a
    uniform position."""
    area = rng.uniform(scale[0], scale[1], (batch, RESIZED_CROP_TRIES)) * height * width
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]), (batch, RESIZED_CROP_TRIES)))
    box_w = np.rint(np.sqrt(area * aspect)).astype(np.int64)
    box_h = np.rint(np.sqrt(area / aspect)).astype(np.int64)
    fits = (box_w >= 1) & (box_h >= 1) & (box_w <= width) & (box_h <= height)
    first = fits.argmax(1)
    rows = np.arange(batch)
    box_w = np.where(fits.any(1), box_w[rows, first], width)
    box_h = np.where(fits.any(1), box_h[rows, first], height)
    top = (rng.random(batch) * (height - box_h + 1)).astype(np.int64)
    left = (rng.random(batch) * (width - box_w + 1)).astype(np.int64)
    return top, left, box_h, box_w


def resample_boxes(
    images: np.ndarray, top: np.ndarray, left: np.ndarray, box_h: np.ndarray, box_w: np.ndarray
) -> np.ndarray:
    """Each image's box resized to the image's (H, W) with bilinear interpolation at pixel
    centres (``align_corners=False``, clamped at the box's edge pixels): a box of the whole
    image returns it unchanged.

    Pillow's crop and resize, as torchvision's RandomResizedCrop does on PIL images: in C and
    outside the GIL, 20x faster than vectorised numpy at 224 px, so batch threads keep up.
    A box is never larger than its image, so this only ever upsamples, where Pillow's
    bilinear filter is the textbook one."""
    from PIL import Image

    if images.dtype != np.uint8 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"resized crops take uint8 images of 1, 3 or 4 channels, got "
                         f"{images.dtype} {images.shape}")  # fmt: skip
    batch, height, width, _ = images.shape
    out = np.empty_like(images)
    for b in range(batch):
        y, x, h, w = int(top[b]), int(left[b]), int(box_h[b]), int(box_w[b])
        if (h, w) == (height, width):
            out[b] = images[b]
            continue
        crop = np.ascontiguousarray(images[b, y : y + h, x : x + w])
        pil = Image.fromarray(crop[..., 0] if crop.shape[-1] == 1 else crop)
        resized = np.asarray(pil.resize((width, height), Image.Resampling.BILINEAR))
        out[b] = resized.reshape(out[b].shape)
    return out


def _pad(images: np.ndarray, pad: int, mode: str) -> np.ndarray:
    """Pad height and width by `pad` on each side; faster than np.pad for small batches."""
    batch, height, width, channels = images.shape
    out = np.zeros((batch, height + 2 * pad, width + 2 * pad, channels), images.dtype)
    out[:, pad : pad + height, pad : pad + width] = images
    if mode == "reflect":
        # Mirror without repeating the edge pixel, as np.pad(mode="reflect") does.
        out[:, pad : pad + height, :pad] = images[:, :, pad:0:-1]
        out[:, pad : pad + height, pad + width :] = images[:, :, width - 2 : width - 2 - pad : -1]
        out[:, :pad] = out[:, 2 * pad : pad : -1]
        out[:, pad + height :] = out[:, pad + height - 2 : height - 2 : -1]
    return out


class ImageBatches(keras.utils.PyDataset):
    """Batches of float32 pixels (0..255) and int32 labels, shuffled and augmented per epoch.

    The models normalise pixels themselves, so batches carry raw pixel values. The order
    and augmentation of epoch e depend only on (seed, e). `epoch` advances at the end of each
    epoch in which every batch was served; set it before a resumed `fit(initial_epoch=k)`
    (``batches.epoch = k``) to replay the uninterrupted run. Pass ``shuffle=False`` to
    `fit`: this class shuffles the images itself, while Keras would shuffle the batch order
    with Python's unseeded `random`.

    Args:
        images: np.ndarray | DiskImages. (N, H, W, C) images, usually uint8; from an on-disk
            store (the streaming pipeline), each batch reads only its rows.
        labels: np.ndarray | None. (N,) integer labels; None yields only x (predict).
        batch_size: int. Images per batch.
        shuffle: bool. Shuffle the images each epoch. Defaults to False.
        augment: Augment | None. Augmentation; None = off. Defaults to None.
        seed: int. Seed of shuffle and augmentation (>= 0). Defaults to 0.
        epoch: int. Epoch the next batches belong to. Defaults to 0.
        drop_remainder: bool. Drop the last, smaller batch. Defaults to False.
        prefetch: int | None. Batches of the epoch made ahead, on `STREAM_WORKERS` threads,
            when batches are asked for in order (as `fit` does); 0 = none. Batches stay a
            function of (seed, epoch, index), so this changes speed only. Defaults to None:
            `STREAM_PREFETCH` for images on disk, 0 in memory. Keras' own `workers` would
            prefetch too, but fetch whole epochs during `fit`'s one-batch build pass and so
            advance `epoch` early.
        **kwargs: `workers` and `max_queue_size` of `keras.utils.PyDataset` (worker threads;
            multiprocessing would copy the arrays into every process and is refused).

    Example:
        >>> train = ImageBatches(x, y, batch_size=256, shuffle=True, augment=Augment())
        >>> model.fit(train, epochs=30, shuffle=False)
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | None = None,
        *,
        batch_size: int,
        shuffle: bool = False,
        augment: Augment | None = None,
        seed: int = 0,
        epoch: int = 0,
        drop_remainder: bool = False,
        prefetch: int | None = None,
        **kwargs,
    ) -> None:
        if kwargs.get("use_multiprocessing"):
            raise ValueError(
                "ImageBatches holds its images in memory: use worker threads (workers=N), "
                "not use_multiprocessing=True, which would copy them into every process"
            )
        if not isinstance(images, DiskImages):
            images = np.asarray(images)
        super().__init__(**kwargs)
        if images.ndim != 4:
            raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}")
        if labels is not None:
            labels = np.asarray(labels, dtype=np.int32)
            if labels.shape != (len(images),):
                raise ValueError(
                    f"labels must have shape ({len(images)},) to match images, got {labels.shape}"
                )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if drop_remainder and len(images) < batch_size:
            raise ValueError(
                f"drop_remainder=True with {len(images)} images and batch_size {batch_size} "
                "leaves no batch; lower batch_size"
            )
        self.images = images
        self.labels = labels
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.seed = seed
        self.drop_remainder = drop_remainder
        self.prefetch = (
            STREAM_PREFETCH
            if prefetch is None and isinstance(images, DiskImages)
            else (prefetch or 0)
        )
        if self.prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        self._pool = None
        self._ahead: dict[tuple[int, int], Any] = {}
        self._lock = threading.Lock()
        self._order_cache: tuple[int, np.ndarray] | None = None
        self.shard_index, self.shards = 0, 1
        self.epoch = epoch

    def shard(self, index: int, count: int) -> None:
        """Serve only worker `index`'s share of every batch, of `count` equal shares.

        Each worker reads and augments only its rows of the global batch (the same rows,
        order and augmentation the whole batch would have), so `count` workers together
        train on exactly the batches one process would. Needs equal shares:
        `drop_remainder=True` and a batch size divisible by `count`.
        """
        if not 0 <= index < count:
            raise ValueError(f"shard index {index} is not in 0..{count - 1}")
        if count > 1 and (not self.drop_remainder or self.batch_size % count):
            raise ValueError(
                f"sharding over {count} workers needs drop_remainder=True and a batch size "
                f"divisible by {count}, got batch_size {self.batch_size}"
            )
        self.shard_index, self.shards = index, count
        self._ahead.clear()

    def _share(self, rows: int) -> slice:
        """This worker's rows of a batch of `rows`."""
        each = rows // self.shards
        return slice(self.shard_index * each, (self.shard_index + 1) * each)

    @property
    def epoch(self) -> int:
        """The epoch whose order and augmentation the batches follow."""
        return self._epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        if value < 0:
            raise ValueError(f"epoch must be >= 0, got {value}")
        self._epoch = int(value)
        self._served = np.zeros(len(self), dtype=bool)
        self._begun = False

    def __len__(self) -> int:
        if self.drop_remainder:
            return len(self.images) // self.batch_size
        return math.ceil(len(self.images) / self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """The image order of `epoch`: a seeded permutation when shuffling, else 0..N-1."""
        cached = self._order_cache
        if cached is not None and cached[0] == epoch:
            return cached[1]
        if self.shuffle:
            rng = np.random.default_rng([_SHUFFLE_STREAM, self.seed, epoch])
            order = rng.permutation(len(self.images))
        else:
            order = np.arange(len(self.images))
        self._order_cache = (epoch, order)
        return order

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} out of range for {len(self)} batches")
        epoch = self._epoch
        batch = self.batch_of(epoch, index)
        if epoch == self._epoch:  # not set to another epoch meanwhile
            self._served[index] = True
        return batch

    def batch_of(self, epoch: int, index: int):
        """Batch `index` of `epoch`, made ahead when prefetching; for callers that count
        epochs themselves (`__getitem__` serves the current `epoch`)."""
        return self._prefetched(epoch, index) if self.prefetch else self.make_batch(epoch, index)

    def make_batch(self, epoch: int, index: int):
        """Batch `index` of `epoch`: x, or (x, labels). A pure function of (seed, epoch, index)."""
        chosen = self.order(epoch)[index * self.batch_size : (index + 1) * self.batch_size]
        total = len(chosen)
        share = self._share(total)
        chosen = chosen[share]
        x = self.images[chosen]
        if self.augment is not None:
            rng = np.random.default_rng([_AUGMENT_STREAM, self.seed, epoch, index])
            x = self.augment(x, rng, (share.start, total))
        x = x.astype(np.float32)
        if self.labels is None:
            return x
        return x, self.labels[chosen]

    def _prefetched(self, epoch: int, index: int):
        """Batch `index`, made ahead on a worker thread if it was asked for in order; the
        next `prefetch` batches of the epoch are started before this one is awaited."""
        from concurrent.futures import ThreadPoolExecutor

        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(STREAM_WORKERS, thread_name_prefix="edgekd-batch")
            future = self._ahead.pop((epoch, index), None)
            for stale in [k for k in self._ahead if k[0] != epoch or k[1] < index]:
                self._ahead.pop(stale).cancel()
            for nxt in range(index + 1, min(index + 1 + self.prefetch, len(self))):
                if (epoch, nxt) not in self._ahead:
                    self._ahead[(epoch, nxt)] = self._pool.submit(self.make_batch, epoch, nxt)
        return future.result() if future is not None else self.make_batch(epoch, index)

    def on_epoch_begin(self) -> None:
        """Mark that Keras started an epoch (see `on_epoch_end`)."""
        self._begun = True

    def on_epoch_end(self) -> None:
        """Advance `epoch` when an epoch began and all of its batches were served.

        Keras also calls this before the first epoch, and may draw a batch or two to build
        the model; neither counts as an epoch.
        """
        if self._begun and self._served.all():
            self.epoch = self._epoch + 1


_ENRICH_STREAM = 0x454E5249  # "ENRI"


def _cycled(rng: np.random.Generator, pool: np.ndarray, count: int) -> np.ndarray:
    """`count` indices drawn from `pool` without replacement, reshuffling each pass."""
    passes = -(-count // len(pool))
    return np.concatenate([rng.permutation(pool) for _ in range(passes)])[:count]


class EnrichedBatches(ImageBatches):
    """Training batches in which a fixed share comes from chosen images (a specialist's group).

    Hinton et al. train each specialist on data "enriched" with its classes: every batch holds
    `round(share * batch_size)` images of the group and the rest from the other classes, each
    pool cycled without replacement. An epoch has as many batches as plain batches would.
    Order and augmentation depend only on (seed, epoch), as in `ImageBatches`.

    Args:
        images: np.ndarray. (N, H, W, C) images.
        labels: np.ndarray. (N,) integer labels (a specialist's own label space).
        in_group: np.ndarray. (N,) bool, True for images of the group's classes.
        share: float. Share of each batch taken from the group, in (0, 1).
        **kwargs: as `ImageBatches` (batch_size, augment, seed, epoch, drop_remainder).
    """

    def __init__(self, images, labels, *, in_group: np.ndarray, share: float, **kwargs) -> None:
        kwargs["shuffle"] = True
        super().__init__(images, labels, **kwargs)
        in_group = np.asarray(in_group, bool)
        if in_group.shape != (len(self.images),):
            raise ValueError(f"in_group must have shape ({len(self.images)},)")
        if not 0.0 < share < 1.0:
            raise ValueError(f"share must be in (0, 1), got {share}")
        self.in_pool = np.flatnonzero(in_group)
        self.out_pool = np.flatnonzero(~in_group)
        if len(self.in_pool) == 0:
            raise ValueError("no image belongs to the group")
        self.share = share
        self.per_batch_in = (
            self.batch_size
            if len(self.out_pool) == 0
            else min(max(1, round(share * self.batch_size)), self.batch_size - 1)
        )

    def order(self, epoch: int) -> np.ndarray:
        cached = self._order_cache
        if cached is not None and cached[0] == epoch:
            return cached[1]
        rng = np.random.default_rng([_ENRICH_STREAM, self.seed, epoch])
        batches, n_in = len(self), self.per_batch_in
        n_out = self.batch_size - n_in
        rows = [_cycled(rng, self.in_pool, batches * n_in).reshape(batches, n_in)]
        if n_out:
            rows.append(_cycled(rng, self.out_pool, batches * n_out).reshape(batches, n_out))
        order = np.concatenate(rows, axis=1).reshape(-1)
        self._order_cache = (epoch, order)
        return order
