"""Run an exported gated ensemble (`edgekd export --members`) without TensorFlow or Keras.

The `members/` folder holds `ensemble.json` and one file per member and format/precision.
`EnsembleRunner` reproduces `edgekd.training.ensemble.gated.GatedEnsemble.predict`: the generalist
runs on every image, the gate picks specialists from its top-n classes, each specialist runs
only on the images that woke it (gather -> run -> scatter), and the softmaxed outputs are
fused by the numpy port of the KL solver (`edgekd.maths.fusion`). The exported files
output logits, with any dustbin prior correction already inside the specialists' logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.contract import (
    ENSEMBLE_FILE,
    EnsembleSpec,
    member_names,
    read_ensemble_spec,
    variant_key,
)
from edgekd.device.runtime.base import Runner
from edgekd.device.runtime.loader import load_runner
from edgekd.maths.fusion import fuse, gate, membership_matrix, softmax

__all__ = ["EnsembleResult", "EnsembleRunner", "member_path"]

_FORMATS = ("tflite", "onnx")


@dataclass
class EnsembleResult:
    """Fused probabilities plus which specialists ran on which image."""

    probs: np.ndarray  # (N, K) fused
    general: np.ndarray  # (N, K) the generalist's own
    active: np.ndarray  # (N, M) 0/1
    views: int = 1  # 2 with flip averaging: every member runs on the image and its mirror

    @property
    def activation_rate(self) -> np.ndarray:
        """Share of images on which each specialist ran, (M,)."""
        if len(self.active) == 0:
            return np.zeros(self.active.shape[1], np.float32)
        return self.active.mean(0)

    @property
    def members_per_image(self) -> float:
        """Model runs per image on average: the generalist plus the woken specialists, on
        each view."""
        if len(self.active) == 0 or self.active.shape[1] == 0:
            return float(self.views)
        return float(self.views * (1.0 + self.active.sum(1).mean()))


def member_path(folder: Path, rel: Any, manifest: Path, name: str) -> Path:
    """The member file `rel` names, confined to `folder`: a relative path with no '..' that
    does not lead outside it through a symlink. Anything else is refused, never followed."""
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        raise ValueError(f"{manifest}: member {name!r}: file name {rel!r} is not a file name")
    candidate = Path(rel)
    if candidate.is_absolute() or ".." in candidate.parts:
        raise ValueError(
            f"{manifest}: member {name!r}: {rel!r} points outside {folder}; member files "
            "must be inside the members folder"
        )
    path = folder / candidate
    root = folder.resolve()
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        raise ValueError(
            f"{manifest}: member {name!r}: {rel!r} leads outside {folder} (a symlink to "
            f"{resolved}); member files must be inside the members folder"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path}: named by {manifest} for {name!r}, missing")
    return path


class EnsembleRunner:
    """The gated ensemble of an exported `members/` folder, on LiteRT or ONNX Runtime.

    Args:
        members_dir: the folder with `ensemble.json` and the member files.
        format: "tflite" or "onnx".
        precision: as exported, e.g. "float32", "float16", "dynamic", "int8".
        threads: runtime threads per member (None: the runtime's default).
        **runner_options: passed to every member's runner (`batch_size`, tflite `xnnpack`).

    Attributes:
        classes: class names, in output order.
        groups: class indices each specialist covers.
        files: member name ("generalist", "specialist_0", ...) -> model file.
        runtime: the runtime name of the generalist's runner ("litert", "onnxruntime", ...).
        spec: the parsed `ensemble.json` (`edgekd.contract.EnsembleSpec`).

    Raises:
        FileNotFoundError: no `ensemble.json`, or a member file it names is missing.
        ValueError: an unreadable or malformed `ensemble.json` (`edgekd.contract.
            ContractError`, naming the key), an unknown format, a member without the
            requested format/precision, or a member whose output width does not fit its group.
    """

    def __init__(
        self,
        members_dir: str | Path,
        *,
        format: str = "tflite",  # noqa: A002  (the export's own word for it)
        precision: str = "float32",
        threads: int | None = None,
        **runner_options: Any,
    ) -> None:
        self.members_dir = Path(members_dir)
        manifest = self.members_dir / ENSEMBLE_FILE
        if not manifest.is_file():
            raise FileNotFoundError(
                f"{manifest}: no such file; point at the members/ folder written by "
                "`edgekd export --members`"
            )
        if format not in _FORMATS:
            raise ValueError(f"format must be one of {_FORMATS}, got {format!r}")
        self.spec: EnsembleSpec = read_ensemble_spec(manifest)
        self.format, self.precision = format, precision
        spec = self.spec
        self.classes: list[str] = list(spec.classes)
        self.num_classes = len(self.classes)
        self.groups: list[list[int]] = [list(g) for g in spec.groups]
        self.membership = membership_matrix(self.groups, self.num_classes)
        self.dustbin, self.flip = spec.dustbin, spec.flip
        self.top_n, self.confidence = spec.top_n, spec.confidence
        self.iterations, self.tol, self.eps = spec.iterations, spec.tol, spec.eps
        self.files = self._files(manifest)
        self._load(manifest, threads, runner_options)

    def _files(self, manifest: Path) -> dict[str, Path]:
        """Each member's file at the requested format and precision, inside the folder."""
        key = variant_key(self.format, self.precision)
        files: dict[str, Path] = {}
        for name, available in (self.spec.members or {}).items():  # the reader requires them
            if key not in available:
                raise ValueError(
                    f"{manifest}: member {name!r} has no {key!r} file (it has: "
                    f"{', '.join(sorted(available)) or 'none'}); export that format and "
                    "precision, or pick one it has"
                )
            files[name] = member_path(self.members_dir, available[key], manifest, name)
        return files

    def _load(self, manifest: Path, threads: int | None, runner_options: dict[str, Any]) -> None:
        def load(name: str, width: int) -> Runner:
            runner = load_runner(self.files[name], threads=threads, **runner_options)
            got = runner.output.shape[-1] if runner.output.shape else None
            if got is not None and got != width:
                raise ValueError(
                    f"{self.files[name]}: {got} outputs, but {manifest} implies {width} for "
                    f"{name!r}"
                )
            return runner

        generalist, *specialists = member_names(len(self.groups))
        self.generalist = load(generalist, len(self.spec.outputs(generalist)))
        self.specialists: list[Runner] = [
            load(name, len(self.spec.outputs(name))) for name in specialists
        ]
        self.runtime: str = str(getattr(self.generalist, "runtime", ""))

    def predict(self, images: np.ndarray) -> EnsembleResult:
        """Fused class probabilities for RGB pixel images 0..255 (N, H, W, 3)."""
        images = np.asarray(images)
        general = self._probs(self.generalist, images)
        n, m = len(images), len(self.groups)
        if m == 0 or n == 0:
            return EnsembleResult(general, general, np.zeros((n, m), np.float32))
        active = gate(general, self.membership, top_n=self.top_n, confidence=self.confidence)
        p_in = np.zeros((n, m, self.num_classes), np.float32)
        p_dust = np.zeros((n, m), np.float32)
        for s, runner in enumerate(self.specialists):
            idx = np.flatnonzero(active[:, s] > 0)
            if idx.size == 0:
                continue
            # Only the images that woke this specialist; all of them without a copy.
            some = images if idx.size == n else images[idx]
            self._place(p_in, p_dust, idx, s, self._probs(runner, some))
        probs = fuse(
            general, p_in, p_dust, active, self.membership,
            dustbin=self.dustbin, iterations=self.iterations, tol=self.tol, eps=self.eps,
        )  # fmt: skip
        return EnsembleResult(probs, general, active, 2 if self.flip else 1)

    def predict_one(self, image: np.ndarray) -> EnsembleResult:
        """The same for one image (H, W, 3) or (1, H, W, 3), for batch-1 latency: no gather,
        each woken specialist sees the image itself. Returns a result with N = 1."""
        x = np.asarray(image)
        if x.ndim == 3:
            x = x[None]
        if len(x) != 1:
            raise ValueError(f"predict_one takes one image, got shape {x.shape}")
        general = self._probs(self.generalist, x)
        m = len(self.groups)
        active = gate(general, self.membership, top_n=self.top_n, confidence=self.confidence)
        if m == 0 or not active.any():
            return EnsembleResult(general, general, active.reshape(1, m))
        p_in = np.zeros((1, m, self.num_classes), np.float32)
        p_dust = np.zeros((1, m), np.float32)
        row = np.zeros(1, np.int64)
        for s in np.flatnonzero(active[0] > 0):
            self._place(p_in, p_dust, row, int(s), self._probs(self.specialists[s], x))
        probs = fuse(
            general, p_in, p_dust, active, self.membership,
            dustbin=self.dustbin, iterations=self.iterations, tol=self.tol, eps=self.eps,
        )  # fmt: skip
        return EnsembleResult(probs, general, active, 2 if self.flip else 1)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Fused probabilities (N, K)."""
        return self.predict(images).probs

    def _probs(self, runner: Runner, images: np.ndarray) -> np.ndarray:
        """A member's probabilities; averaged with the mirror images' when `tta.flip` is set."""
        probs = softmax(runner.predict(images))
        if self.flip:
            probs = 0.5 * (probs + softmax(runner.predict(images[:, :, ::-1])))
        return probs

    def _place(
        self, p_in: np.ndarray, p_dust: np.ndarray, idx: np.ndarray, s: int, probs: np.ndarray
    ) -> None:
        """Scatter specialist s's probabilities for rows idx into p_in / p_dust."""
        group = self.groups[s]
        p_in[idx[:, None], s, np.asarray(group)[None, :]] = probs[:, : len(group)]
        if self.dustbin:
            p_dust[idx, s] = probs[:, -1]

    def __repr__(self) -> str:
        return (
            f"EnsembleRunner({str(self.members_dir)!r}, format={self.format!r}, "
            f"precision={self.precision!r}, runtime={self.runtime!r}, "
            f"specialists={len(self.specialists)}, top_n={self.top_n}, "
            f"confidence={self.confidence})"
        )
