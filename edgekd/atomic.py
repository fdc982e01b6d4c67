"""Atomic file writes: a reader (or a resumed run after kill -9) sees the old file or the new
one, never half of one. Write beside the target, fsync, then `os.replace`."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix); on success it replaces `path`.

    The suffix is kept because some writers (Keras' `.keras`, `.weights.h5`) insist on it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.stem}-", suffix=path.suffix or ".tmp", dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a new empty folder beside `path`; on success it replaces the folder `path`.

    For writers that produce a directory (a SavedModel): readers see the old folder or the
    new one, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
            os.rmdir(old)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# What `atomic_path` names its temporary files: "." + stem + "-" + mkstemp's 8 characters.
_STALE = re.compile(r"^\..+-[a-z0-9_]{8}(\.[A-Za-z0-9]+)?$")


def remove_stale(directory: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files a killed writer left in `directory` (not below it).

    Only names `atomic_path` makes are touched, and only in edgekd's own folders. Call it
    while holding the run's lock, so that no live writer owns them.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for entry in directory.glob(".*"):
        if _STALE.match(entry.name) and entry.is_file() and not entry.is_symlink():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically write a text file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write JSON (indented, keys in insertion order)."""
    write_text(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Atomically write a binary file."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _jsonable(obj: Any) -> Any:
    """numpy scalars and arrays as plain JSON types."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
