"""Image folders: one sub-folder per class, decoded with Pillow in a small thread pool.

Listing and decoding are separate steps: the listing (names, sizes, mtimes) keys the cache
and picks the files of a quick run, so only the chosen files are ever decoded.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekd.data.cache import FileStat
from edgekd.data.images import read_rgb
from edgekd.data.imageset import ImageSet, ImageSize, Progress, as_hw
from edgekd.data.split import choose_per_class
from edgekd.errors import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"})

# Pillow releases the GIL while decoding; a few threads keep 2-4 cores busy.
_THREADS = max(2, min(4, os.cpu_count() or 2))
_CHUNK = 256  # files per task: large enough that scheduling costs nothing


@dataclass
class FolderIndex:
    """The image files of a class-per-sub-folder tree, in class then name order."""

    root: Path
    class_names: list[str]
    files: list[str]  # paths relative to root, "class/name.jpg"
    labels: np.ndarray  # (N,) int32
    stats: list[tuple[int, int]]  # (size, mtime_ns) per file

    def file_stats(self) -> list[FileStat]:
        """(relative path, size, mtime_ns) per file, for the cache key."""
        pairs = zip(self.files, self.stats, strict=True)
        return [(name, size, mtime) for name, (size, mtime) in pairs]


def scan_folder(root: str | Path) -> FolderIndex:
    """List the class sub-folders of `root` and their image files (sorted, hidden ones skipped).

    Raises:
        DataError: `root` is missing or not a folder, has no class sub-folders, or a class
            folder holds no images.
    """
    root = Path(root)
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DataError(
            f"image folder {root} {what}; set data.path to a folder with one sub-folder of "
            "images per class (folder:PATH), a CIFAR python folder (cifar:PATH) or a TFDS "
            "name (tfds:NAME)"
        )
    class_dirs = sorted(
        entry.name
        for entry in os.scandir(root)
        if entry.is_dir() and not entry.name.startswith(".")
    )
    if not class_dirs:
        raise DataError(
            f"image folder {root} has no class sub-folders; expected one sub-folder per class, "
            f"e.g. {root / 'cat' / '0001.jpg'}"
        )
    files: list[str] = []
    labels: list[int] = []
    stats: list[tuple[int, int]] = []
    for label, class_name in enumerate(class_dirs):
        class_dir = root / class_name
        entries = sorted(
            (entry for entry in os.scandir(class_dir) if _is_image(entry)),
            key=lambda entry: entry.name,
        )
        if not entries:
            hint = ""
            if any(entry.is_dir() for entry in os.scandir(class_dir)):
                hint = f" (it holds sub-folders: did you mean folder:{class_dir}?)"
            raise DataError(
                f"class folder {class_dir} holds no images{hint}; add images with one of the "
                f"extensions {', '.join(sorted(IMAGE_EXTENSIONS))} or remove the folder"
            )
        for entry in entries:
            stat = entry.stat()
            files.append(f"{class_name}/{entry.name}")
            labels.append(label)
            stats.append((stat.st_size, stat.st_mtime_ns))
    return FolderIndex(root, class_dirs, files, np.asarray(labels, np.int32), stats)


def _is_image(entry: os.DirEntry) -> bool:
    name = entry.name
    return (
        not name.startswith(".")
        and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
        and entry.is_file()
    )


def decode_folder(
    index: FolderIndex,
    *,
    limit_per_class: int | None = None,
    seed: int = 0,
    image_size: ImageSize | None = None,
    progress: bool = True,
) -> ImageSet:
    """Decode the files of `index` (or a seeded per-class sample of them) into an ImageSet.

    Args:
        index: FolderIndex. From `scan_folder`.
        limit_per_class: int | None. Decode at most this many files per class, chosen
            before decoding. Defaults to None (all).
        seed: int. Seed of that choice. Defaults to 0.
        image_size: ImageSize | None. Resize every image to one side or (height, width) (bilinear);
            None keeps the source size, which must then be the same for every file.
            Defaults to None.
        progress: bool. Print a progress line to stderr. Defaults to True.

    Raises:
        DataError: a file cannot be decoded, or sizes differ and `image_size` is None.
    """
    chosen = chosen_files(index, limit_per_class, seed)
    paths = [index.root / index.files[i] for i in chosen]
    images = decode_images(
        paths, image_size=image_size, progress=progress, label=f"decoding {index.root}"
    )
    return ImageSet(images, index.labels[chosen], list(index.class_names))


def chosen_files(index: FolderIndex, limit_per_class: int | None, seed: int) -> np.ndarray:
    """Indices of the files a load decodes: all, or a seeded per-class sample."""
    if limit_per_class is None:
        return np.arange(len(index.files))
    return choose_per_class(index.labels, limit_per_class, seed)


def image_shape(paths: list[Path], image_size: ImageSize | None) -> tuple[int, int, int]:
    """(H, W, 3) every image will have: `image_size`, else the first file's size."""
    return (*as_hw(image_size), 3) if image_size else _decode(paths[0], None).shape


def decode_chunks(
    paths: list[Path],
    *,
    image_size: ImageSize | None = None,
    progress: bool = True,
    label: str = "decoding",
):
    """Decode image files in order, `_CHUNK` at a time on a thread pool, yielding (k, H, W, 3)
    uint8 arrays: the streaming pipeline's decoder, holding a few chunks at most.

    Raises:
        DataError: a file cannot be decoded, or (with no `image_size`) it differs in size
            from the first; the message names the file.
    """
    from edgekd.data.store import ordered_chunks

    if not paths:
        raise DataError(f"{label}: no image files to decode")
    shape = image_shape(paths, image_size)

    def work(start: int) -> np.ndarray:
        stop = min(start + _CHUNK, len(paths))
        out = np.empty((stop - start, *shape), np.uint8)
        for i in range(start, stop):
            pixels = _decode(paths[i], image_size)
            if pixels.shape != shape:
                raise DataError(
                    f"{paths[i]} is {pixels.shape[0]}x{pixels.shape[1]} (height x width) while "
                    f"{paths[0]} is {shape[0]}x{shape[1]}; set data.image_size to resize every "
                    "image to one size"
                )
            out[i - start] = pixels
        return out

    meter = Progress(label, len(paths), enabled=progress)
    for chunk in ordered_chunks(work, list(range(0, len(paths), _CHUNK)), _THREADS):
        meter.update(len(chunk))
        yield chunk
    meter.done()


def decode_images(
    paths: list[Path],
    *,
    image_size: ImageSize | None = None,
    progress: bool = True,
    label: str = "decoding",
) -> np.ndarray:
    """Decode image files to an (N, H, W, 3) uint8 RGB array with a thread pool.

    Raises:
        DataError: a file cannot be decoded (named), or sizes differ and `image_size` is None
            (a file with the odd size is named).
    """
    if not paths:
        raise DataError(f"{label}: no image files to decode")
    # The expected shape; with no image_size, the first file's (sizes are checked after).
    shape = image_shape(paths, image_size)
    out = np.empty((len(paths), *shape), dtype=np.uint8)
    sizes: list[tuple[int, int]] = [(0, 0)] * len(paths)

    def work(start: int) -> int:
        stop = min(start + _CHUNK, len(paths))
        for i in range(start, stop):
            pixels = _decode(paths[i], image_size)
            sizes[i] = pixels.shape[:2]
            if pixels.shape == shape:
                out[i] = pixels
        return stop - start

    meter = Progress(label, len(paths), enabled=progress)
    with ThreadPoolExecutor(max_workers=_THREADS, thread_name_prefix="edgekd-decode") as pool:
        futures = [pool.submit(work, start) for start in range(0, len(paths), _CHUNK)]
        try:
            for future in as_completed(futures):
                meter.update(future.result())
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    meter.done()

    counts = Counter(sizes)
    if len(counts) > 1:
        common, _ = counts.most_common(1)[0]
        odd = next(i for i, size in enumerate(sizes) if size != common)
        summary = ", ".join(f"{h}x{w}: {n}" for (h, w), n in counts.most_common(4))
        raise DataError(
            f"images differ in size ({summary}); {paths[odd]} is {sizes[odd][0]}x"
            f"{sizes[odd][1]} (height x width) while most are {common[0]}x{common[1]}; set "
            "data.image_size to resize every image to one size"
        )
    return out


def _decode(path: Path, image_size: ImageSize | None) -> np.ndarray:
    """Decode one file to (H, W, 3) uint8 RGB, resized when image_size is given."""
    try:
        return read_rgb(path, as_hw(image_size) if image_size is not None else None)
    except DataError as exc:
        raise DataError(
            f"{exc}; delete or replace the file (or move it out of the data folder)"
        ) from None
