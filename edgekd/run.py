"""The run directory: a manifest plus one sub-folder per stage.

The manifest (`manifest.json`) holds the resolved recipe, the data fingerprint, package
versions and, per stage, its status, input hash, metrics and artifact paths. A stage whose
hash still matches and whose status is `done` is skipped; a changed hash reruns it (and,
because hashes chain, every stage downstream of it).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import platform
import shutil
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from edgekd import __version__, atomic
from edgekd.errors import RunDirError

MANIFEST = "manifest.json"


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
            return json.loads(file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise RunDirError(f"{file}: unreadable manifest ({exc})") from None

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

    def reset_stage(self, stage: str, stage_hash: str) -> StageRecord:
        """Forget a stage's previous results (its inputs changed) and mark it running."""
        shutil.rmtree(self.stage_dir(stage), ignore_errors=True)
        rec = StageRecord(status="running", hash=stage_hash, started=now())
        self.set_stage(stage, rec)
        return rec

    def save(self) -> None:
        atomic.write_json(self.path / MANIFEST, self.manifest)


def _yaml(obj: Any) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False)
