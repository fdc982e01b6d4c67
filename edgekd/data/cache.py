"""On-disk cache of decoded image arrays, so a data source is decoded once, not every run.

Entries are uncompressed ``.npz`` files (decoded pixels hardly compress and an uncompressed
archive loads at disk speed), keyed by a hash of everything that shapes the arrays, and
written atomically so an interrupted run never leaves a half-written entry behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

# Bump when the cached layout or decoding changes, so old entries stop matching.
CACHE_FORMAT = 1

FileStat = tuple[str, int, int]  # (path relative to the source, size in bytes, mtime in ns)


def default_cache_dir() -> Path:
    """``$EDGEKD_CACHE`` if set, else ``~/.cache/edgekd``."""
    env = os.environ.get("EDGEKD_CACHE")
    return Path(os.path.expanduser(env)) if env else Path.home() / ".cache" / "edgekd"


def cache_key(params: dict[str, Any], files: Iterable[FileStat]) -> str:
    """sha256 hex over the load parameters and the source's file list (names, sizes, mtimes)."""
    digest = hashlib.sha256()
    header = {"format": CACHE_FORMAT, **params}
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    for name, size, mtime_ns in files:
        digest.update(f"\n{name}\t{size}\t{mtime_ns}".encode())
    return digest.hexdigest()


def cache_path(cache_dir: str | Path, kind: str, key: str) -> Path:
    """The cache file of one entry: ``<cache_dir>/data-<kind>-<key>.npz``."""
    return Path(cache_dir) / f"data-{kind}-{key}.npz"


def read_arrays(path: Path) -> dict[str, np.ndarray] | None:
    """Load every array of a cache entry; None if it is missing or unreadable (then rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            # Reading each member in full checks its CRC, so a damaged file is caught here.
            return {name: archive[name] for name in archive.files}
    except Exception as exc:  # any failure at all means "not cached"
        print(
            f"edgekd: ignoring unreadable cache entry {path} ({exc}); rebuilding it",
            file=sys.stderr,
        )
        return None


def write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> bool:
    """Write a cache entry atomically (temp file + os.replace); False, with a warning, on failure.

    A cache that cannot be written (read-only or full disk) slows the next run down but must
    not fail this one.
    """
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
        os.chmod(tmp_name, 0o644)  # mkstemp makes it private; a cache may be shared
        os.replace(tmp_name, path)
        return True
    except OSError as exc:
        print(
            f"edgekd: could not write data cache {path} ({exc}); set EDGEKD_CACHE to a "
            "writable folder to avoid decoding again next time",
            file=sys.stderr,
        )
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
        return False
