"""The run directory: a manifest plus one sub-folder per stage.

The manifest (`manifest.json`) holds the resolved recipe, the data fingerprint, package
versions and, per stage, its status, input hash, metrics and artifact paths. A stage whose
hash still matches, whose status is `done` and whose files are the ones it wrote (size and
sha256) is skipped; a changed hash reruns it (and, because hashes chain, every stage
downstream of it). Results a rerun replaces are moved to `.previous/`, never deleted, and one
process at a time writes to a run (an OS lock on `.lock`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import filelock

from edgekd import __version__, atomic
from edgekd.errors import RunDirError, reason

MANIFEST = "manifest.json"
LOCK = ".lock"  # held (flock) by the one process writing the run; the OS frees it on death
OWNER = ".lock-owner.json"  # who holds it, for the message the second writer gets
PREVIOUS = ".previous"  # where results a rerun replaces are moved


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a run's numbers (absent ones omitted)."""
    out = {"edgekd": __version__, "python": platform.python_version()}
    for name in ("keras", "tensorflow", "jax", "jaxlib", "numpy", "pillow"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def now() -> str:
    """UTC timestamp, ISO 8601, seconds."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class StageRecord:
    """What the manifest says about one stage."""

    status: str = "pending"  # pending | running | done
    hash: str = ""
    started: str | None = None
    finished: str | None = None
    wall_s: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # artifact: size, sha256


def file_digest(path: Path) -> dict[str, Any]:
    """Size and sha256 of a file, as the manifest records them."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}


def digest_mismatch(path: Path, want: dict[str, Any], name: str) -> str | None:
    """Why `path` is not the file `want` ({size, sha256}, either may be absent) describes."""
    size, sha = want.get("size"), want.get("sha256")
    if size is not None and path.stat().st_size != size:
        return f"{name} is {path.stat().st_size:,} bytes, {size:,} were written"
    if sha is not None and file_digest(path)["sha256"] != sha:
        return f"{name} changed since it was written (sha256 differs)"
    return None


def check_run_path(path: Path) -> None:
    """Refuse a path that cannot be a run: a file, below a file, or a folder of other things."""
    for parent in [*reversed(path.parents), path]:
        if parent.exists() and not parent.is_dir():
            what = "the run directory" if parent == path else "a folder above the run directory"
            raise RunDirError(f"{parent}: is a file, but {what} must be a folder")
    if path.is_dir() and not (path / MANIFEST).exists():
        try:
            entries = [e.name for e in path.iterdir() if e.name not in (LOCK, OWNER)]
        except OSError as exc:
            raise RunDirError(f"{path}: cannot list: {exc.strerror or exc}") from None
        if entries:
            shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
            raise RunDirError(
                f"{path}: not empty and not an edgekd run (no {MANIFEST}; holds {shown}). "
                "Give a new or empty folder with --run-dir"
            )


class RunDir:
    """A run directory on disk; every write goes through `atomic`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.manifest: dict[str, Any] = {}
        if (self.path / MANIFEST).is_file():
            self.manifest = self._read_manifest()

    @classmethod
    def open_existing(cls, path: str | Path) -> RunDir:
        """Open a run for reading; a clear error if it is not one."""
        path = Path(path)
        if not (path / MANIFEST).is_file():
            raise RunDirError(
                f"{path}: not a run directory (no {MANIFEST}); run `edgekd train RECIPE` first"
            )
        return cls(path)

    def _read_manifest(self) -> dict[str, Any]:
        file = self.path / MANIFEST
        try:
            manifest = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RunDirError(
                f"{file}: unreadable manifest ({type(exc).__name__}: {exc}). Restore it, or "
                "train into a new --run-dir"
            ) from None
        stages = manifest.get("stages", {}) if isinstance(manifest, dict) else None
        if not isinstance(stages, dict) or not all(
            isinstance(v, dict) and set(v) <= set(StageRecord.__dataclass_fields__)
            for v in stages.values()
        ):
            raise RunDirError(
                f"{file}: not an edgekd manifest (no mapping of stage records). Restore it, or "
                "train into a new --run-dir"
            )
        return manifest

    @contextlib.contextmanager
    def lock(self, command: str | None = None) -> Iterator[None]:
        """Hold the run's writer lock; a second writer gets a RunDirError naming the holder.

        The lock is flock(2) on `.lock`, so a killed holder never blocks the next run. Stale
        temporary files from a killed writer are removed once the lock is ours.
        """
        check_run_path(self.path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"{self.path}: cannot create: {exc.strerror or exc}") from None
        lock = filelock.FileLock(self.path / LOCK, timeout=0)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise RunDirError(
                f"{self.path}: in use by {self._holder()}; wait for it to end"
            ) from None
        try:
            atomic.write_json(
                self.path / OWNER,
                {"pid": os.getpid(), "command": command or " ".join(sys.argv), "since": now()},
            )
            for folder in self._own_folders():
                atomic.remove_stale(folder)
            if (self.path / MANIFEST).is_file():
                self.manifest = self._read_manifest()  # another writer may have changed it
            yield
        finally:
            (self.path / OWNER).unlink(missing_ok=True)
            lock.release()

    def _own_folders(self) -> list[Path]:
        """The run folder and the folders edgekd writes below it (stages, export, members),
        two levels deep; `.previous/` is left as it was."""
        out = [self.path]
        for child in self.path.iterdir():
            if child.is_dir() and not child.is_symlink() and child.name != PREVIOUS:
                out.append(child)
                out += [g for g in child.iterdir() if g.is_dir() and not g.is_symlink()]
        return out

    def _holder(self) -> str:
        try:
            owner = json.loads((self.path / OWNER).read_text(encoding="utf-8"))
            return f"PID {int(owner['pid'])} ({owner['command']}, since {owner['since']})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another edgekd process"

    @property
    def exists(self) -> bool:
        return bool(self.manifest)

    def stage_dir(self, stage: str) -> Path:
        return self.path / stage

    def stage(self, stage: str) -> StageRecord:
        raw = self.manifest.get("stages", {}).get(stage)
        return StageRecord(**raw) if raw else StageRecord()

    def artifact(self, stage: str, key: str) -> Path:
        """Absolute path of a recorded artifact; error if the stage never wrote it."""
        rec = self.stage(stage)
        if key not in rec.artifacts:
            raise RunDirError(f"{self.path}: stage {stage!r} has no artifact {key!r}")
        return self.path / rec.artifacts[key]

    def begin(
        self, recipe: dict[str, Any], recipe_source: str | None, data: dict[str, Any]
    ) -> None:
        """Create the directory (if needed) and record recipe, data and versions."""
        self.path.mkdir(parents=True, exist_ok=True)
        m = self.manifest
        m.setdefault("created", now())
        m["updated"] = now()
        m["recipe"] = recipe
        m["recipe_source"] = recipe_source
        m["data"] = data
        m["versions"] = package_versions()
        m.setdefault("stages", {})
        self.save()
        atomic.write_text(self.path / "recipe.yaml", _yaml(recipe))

    def set_stage(self, stage: str, rec: StageRecord) -> None:
        self.manifest.setdefault("stages", {})[stage] = rec.__dict__.copy()
        self.manifest["updated"] = now()
        self.save()

    def reset_stage(self, stage: str, stage_hash: str) -> tuple[StageRecord, Path | None]:
        """Start a stage afresh: its folder is moved to `.previous/`, not deleted.

        Returns the new record and where the earlier folder went (None if there was none).
        """
        moved = self.set_aside(self.stage_dir(stage), stage)
        rec = StageRecord(status="running", hash=stage_hash, started=now())
        self.set_stage(stage, rec)
        return rec, moved

    def set_aside(self, folder: Path, label: str) -> Path | None:
        """Move `folder` to `.previous/<label>-<UTC time>/`; None if it does not exist."""
        if not folder.exists():
            return None
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
        target = self.path / PREVIOUS / f"{label}-{stamp}"
        n = 1
        while target.exists():
            n += 1
            target = self.path / PREVIOUS / f"{label}-{stamp}-{n}"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(folder, target)
        return target

    def intact(self, stage: str) -> str | None:
        """Why a finished stage's files are not the ones it wrote, or None if they are."""
        for key in self.stage(stage).artifacts:
            why = self.damage(stage, key)
            if why:
                return why
        return None

    def damage(self, stage: str, key: str) -> str | None:
        """Why one artifact is not the file its stage wrote (size, sha256), or None."""
        rec = self.stage(stage)
        rel = rec.artifacts[key]
        path = self.path / rel
        if not path.is_file():
            return f"{rel} is missing"
        return digest_mismatch(path, rec.files.get(key, {}), rel)  # {}: kept no checksums yet

    def read_json(self, stage: str, key: str, *required: str) -> dict[str, Any]:
        """A stage's JSON artifact, checked like `load_model`; `required` keys must be there."""
        path = self.artifact(stage, key)
        why = self.damage(stage, key)
        if why:
            raise RunDirError(f"{path}: {why}. `edgekd train` on this run redoes the stage")
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RunDirError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
        missing = [k for k in required if not isinstance(value, dict) or k not in value]
        if missing:
            raise RunDirError(f"{path}: not what stage {stage!r} writes (no {', '.join(missing)})")
        return value

    def load_model(self, stage: str, key: str) -> Any:
        """A stage's Keras model, checked against the manifest first; any damage or refusal
        (Keras safe mode included) is a RunDirError naming the file."""
        path = self.artifact(stage, key)
        why = self.damage(stage, key)
        if why:
            raise RunDirError(
                f"{path}: {why}. `edgekd train` on this run redoes the stage "
                "(the damaged folder is kept in .previous/)"
            )
        import keras

        import edgekd.training.losses  # noqa: F401  (serialisable objects inside saved models)
        import edgekd.training.models.layers  # noqa: F401
        import edgekd.training.schedules  # noqa: F401

        try:
            return keras.models.load_model(path, compile=False)
        except Exception as exc:  # noqa: BLE001 - Keras raises many kinds for one meaning
            raise RunDirError(f"{path}: not a Keras model edgekd can load: {reason(exc)}") from None

    def save(self) -> None:
        atomic.write_json(self.path / MANIFEST, self.manifest)


# Besides hidden names (`.previous/`, the lock, its owner file, half-written temporary files).
MIRROR_SKIPS = ("tensorboard",)


def mirror_run(chief: Path, mirror: Path) -> None:
    """Make `mirror` a copy of the chief's run directory (its manifest, stages, checkpoints
    and stored targets; no hidden files, such as `.previous/`, locks and files being written,
    and no TensorBoard logs).

    A multi_worker worker other than the chief trains in such a mirror, refreshed before each
    stage: it then takes the chief's decisions (skip, resume from which checkpoint, start
    afresh) and reads the chief's upstream results, and never writes the shared run. Only
    files whose size or modification time differ from the chief's are copied again, so a
    refresh costs what changed since the last one, not the whole run.
    """
    mirror.mkdir(parents=True, exist_ok=True)
    kept: set[Path] = set()
    if chief.is_dir():
        for folder, dirs, files in os.walk(chief):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d not in MIRROR_SKIPS]
            rel = Path(folder).relative_to(chief)
            (mirror / rel).mkdir(exist_ok=True)
            kept.add(rel)
            for name in files:
                if name.startswith("."):
                    continue
                src, dst = Path(folder) / name, mirror / rel / name
                kept.add(rel / name)
                if not (dst.is_file() and _stamp(dst) == _stamp(src)):
                    shutil.copy2(src, dst)  # keeps the chief's mtime for the next comparison
    for folder, dirs, files in os.walk(mirror, topdown=False):
        rel = Path(folder).relative_to(mirror)
        for name in files:
            if rel / name not in kept:
                (Path(folder) / name).unlink()
        for name in dirs:
            path = Path(folder) / name
            if rel / name in kept:
                continue
            if path.is_symlink():
                path.unlink()
            else:
                shutil.rmtree(path)


def _stamp(path: Path) -> tuple[int, int]:
    """Size and modification time: what tells a mirrored file from a changed one."""
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _yaml(obj: Any) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False)
