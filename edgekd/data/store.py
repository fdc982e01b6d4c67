"""Images on disk, read a batch at a time: the streaming pipeline's store of resized images.

A source too large for memory is decoded and resized once, in parallel, into an uncompressed
``.npy`` file of (N, H, W, 3) uint8 rows. Training then reads only the rows of each batch with
positional reads (`os.preadv`) into fresh buffers: the file's pages live in the kernel's page
cache, not in the process, so the process's memory does not grow with the dataset (a memory
map would count every page it touched in the process's resident set). Rows are the same bytes
the in-memory path would hold, so both paths give the same batches.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.errors import DataError

_READ_ROWS = 1024  # rows per read when a caller takes a whole range (fingerprint, predict)


class _File:
    """One open descriptor of a store file, shared by every view of it and closed with the last."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            os.close(self.fd)


def _read_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, offset of the first row) of an ``.npy`` file; DataError if it is not one
    of C-ordered uint8 (N, H, W, 3) rows."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read(handle)
            offset = handle.tell()
    except (OSError, ValueError) as exc:
        raise DataError(
            f"image store {path} is unreadable ({exc}); delete it to rebuild it"
        ) from None
    if fortran or dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
        raise DataError(
            f"image store {path} holds {dtype} {shape} (fortran order {fortran}), not (N, H, W, 3) "
            "uint8 rows; delete it to rebuild it"
        )
    expected = offset + int(np.prod(shape))
    if os.path.getsize(path) != expected:
        raise DataError(
            f"image store {path} is {os.path.getsize(path):,} bytes, {expected:,} expected for "
            f"{shape}: it is truncated or damaged; delete it to rebuild it"
        )
    return tuple(int(n) for n in shape), np.dtype(dtype), offset


class DiskImages:
    """A read-only (N, H, W, 3) uint8 image array kept in an ``.npy`` file, read on indexing.

    Indexing with an int, a slice, an integer array or a boolean mask returns a numpy array of
    just those rows, as indexing an in-memory array would. `take` returns another
    `DiskImages` over a subset of the rows without reading anything, so splits, class subsets
    and a specialist's share of the data cost no memory. Reads are thread-safe (positional).

    Args:
        path: str | Path. An ``.npy`` file of C-ordered (N, H, W, 3) uint8 rows.
        rows: np.ndarray | None. Rows of the file this view shows, in order. Defaults to all.
    """

    def __init__(self, path: str | Path, rows: np.ndarray | None = None) -> None:
        path = Path(path)
        self._shape, _, self._offset = _read_header(path)
        self._file = _File(path)
        self._rows = None if rows is None else np.asarray(rows, np.int64)
        if (
            self._rows is not None
            and len(self._rows)
            and (self._rows.min() < 0 or self._rows.max() >= self._shape[0])
        ):
            raise IndexError(f"rows out of range for the {self._shape[0]} rows of {path}")

    @property
    def path(self) -> Path:
        """The store file."""
        return self._file.path

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(N, H, W, 3) of this view."""
        n = self._shape[0] if self._rows is None else len(self._rows)
        return (n, *self._shape[1:])  # type: ignore[return-value]

    dtype = np.dtype(np.uint8)
    ndim = 4

    @property
    def nbytes(self) -> int:
        """Bytes the view would take in memory."""
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"DiskImages({str(self.path)!r}, shape={self.shape})"

    def _file_rows(self, key: Any) -> np.ndarray:
        """File row numbers selected by `key` (int array, bool mask or slice) of this view."""
        n = len(self)
        if isinstance(key, slice):
            index = np.arange(n)[key]
        else:
            index = np.asarray(key)
            if index.dtype == bool:
                if index.shape != (n,):
                    raise IndexError(f"boolean index of shape {index.shape} for {n} rows")
                index = np.flatnonzero(index)
            elif not np.issubdtype(index.dtype, np.integer):
                raise IndexError(f"DiskImages takes ints, slices, int arrays or masks, not {key!r}")
            index = np.where(index < 0, index + n, index)
            if index.size and (index.min() < 0 or index.max() >= n):
                raise IndexError(f"index out of range for {n} rows")
        return index if self._rows is None else self._rows[index]

    def take(self, indices: Any) -> DiskImages:
        """A view of the rows at `indices` (ints or a mask), reading nothing."""
        view = object.__new__(DiskImages)
        view._shape, view._offset, view._file = self._shape, self._offset, self._file
        view._rows = self._file_rows(indices)
        return view

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):  # images[i, ...] and the like: rows first, then the rest
            return self[key[0]][(slice(None), *key[1:])] if key else self[:]
        if isinstance(key, (int, np.integer)):
            return self[np.array([int(key)])][0]
        rows = self._file_rows(key)
        out = np.empty((len(rows), *self._shape[1:]), np.uint8)
        self._read_into(rows, out)
        return out

    def _read_into(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Read file rows into `out`, one call per run of consecutive rows."""
        if len(rows) == 0:
            return
        row_bytes = int(np.prod(self._shape[1:]))
        flat = out.reshape(len(rows), row_bytes)
        start = 0
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1 if len(rows) > 1 else np.array([], int)
        for stop in [*breaks.tolist(), len(rows)]:
            first = int(rows[start])
            buffer = memoryview(flat[start:stop]).cast("B")
            self._pread(buffer, self._offset + first * row_bytes)
            start = stop

    def _pread(self, buffer: memoryview, offset: int) -> None:
        done = 0
        while done < len(buffer):
            got = os.preadv(self._file.fd, [buffer[done:]], offset + done)
            if got == 0:
                raise DataError(f"image store {self.path} ended early; delete it to rebuild it")
            done += got

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """The whole view in memory (meant for small views: a validation split, a sample)."""
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def chunks(self, size: int = _READ_ROWS) -> Iterator[np.ndarray]:
        """The rows in order, `size` at a time: a whole pass with bounded memory."""
        for start in range(0, len(self), size):
            yield self[start : start + size]


def take_rows(images: np.ndarray | DiskImages, indices: Any) -> np.ndarray | DiskImages:
    """Rows `indices` of an image array: a copy in memory, a view (nothing read) on disk."""
    if isinstance(images, DiskImages):
        return images.take(indices)
    return images[indices]


def write_store(path: Path, shape: tuple[int, int, int, int], chunks: Iterable[np.ndarray]) -> None:
    """Write `chunks` of (k, H, W, 3) uint8 rows, N rows in all, as the ``.npy`` store `path`.

    Written to a temporary file in the same folder and renamed when complete, so a store that
    exists is whole. Raises DataError when the chunks do not add up to `shape`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            header = {"descr": "|u1", "fortran_order": False, "shape": tuple(shape)}
            np.lib.format.write_array_header_2_0(handle, header)
            written = 0
            for chunk in chunks:
                if chunk.dtype != np.uint8 or chunk.shape[1:] != tuple(shape[1:]):
                    raise DataError(
                        f"image store {path}: a chunk of {chunk.dtype} {chunk.shape[1:]} among "
                        f"rows of uint8 {tuple(shape[1:])}"
                    )
                handle.write(np.ascontiguousarray(chunk).data)
                written += len(chunk)
            if written != shape[0]:
                raise DataError(f"image store {path}: {written} rows written, {shape[0]} expected")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def ordered_chunks(work, starts: list[int], threads: int, ahead: int = 4) -> Iterator[Any]:
    """`work(start)` for each start, run on `threads` threads and yielded in order, with at
    most `ahead` results per thread waiting: parallel decoding with bounded memory."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="edgekd-decode") as pool:
        pending = []
        queue = iter(starts)
        try:
            for start in queue:
                pending.append(pool.submit(work, start))
                if len(pending) >= threads * ahead:
                    break
            while pending:
                result = pending.pop(0).result()
                nxt = next(queue, None)
                if nxt is not None:
                    pending.append(pool.submit(work, nxt))
                yield result
        finally:
            for future in pending:
                future.cancel()
