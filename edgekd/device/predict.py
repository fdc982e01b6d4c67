"""`edgekd predict`: top-k labels for a few images from an exported .tflite/.onnx file, or
from the exported gated ensemble (`members/`), saying which specialists each image woke.

Runs on a device that has only the runtime wheels (`pip install "edgekd[runtime]"`): nothing
here imports TensorFlow or Keras, only numpy, Pillow and `edgekd.device.runtime`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekd.contract import (
    ENSEMBLE_FILE,
    LABELS_FILE,
    ContractError,
    card_of,
    file_name,
    format_of,
    outputs_probabilities,
)
from edgekd.data.images import read_rgb
from edgekd.errors import DataError, EdgekdError, reason
from edgekd.maths.fusion import softmax

# Which file an export folder's prediction uses, best first: the int8 student is the one a
# device ships (in ONNX the TensorRT Q/DQ file, else the CPU-flavoured one); float32 is the
# fallback when int8 was not exported.
STUDENT_PREFERENCE = tuple(
    file_name("student", fmt, precision, cpu=cpu)
    for fmt in ("tflite", "onnx")
    for precision, cpu in (("int8", False), ("int8", True), ("float32", False))
    if not cpu or fmt == "onnx"
)
# The formats a file given by path may be in: those with a runtime here.
_RUNNABLE = ("tflite", "onnx", "tensorrt")


class ModelError(EdgekdError):
    """A model file, export folder or labels file is missing or cannot be loaded."""


@dataclass
class Prediction:
    """The top-k classes of one image, best first; `woke` lists the specialists it woke
    (each by its classes) when the gated ensemble made it, and is None otherwise."""

    image: Path
    labels: list[str]
    scores: list[float]
    woke: list[list[str]] | None = None


def members_folder(path: str | Path) -> Path | None:
    """The folder holding `ensemble.json`: `path` itself or its `members/`, else None."""
    p = Path(path)
    for folder in (p, p / "members"):
        if (folder / ENSEMBLE_FILE).is_file():
            return folder
    return None


def resolve_model(path: str | Path) -> Path:
    """The model file `path` names: a .tflite/.onnx/TensorRT engine file, or the preferred
    student of an export folder (int8 .tflite, else float32 .tflite, else .onnx)."""
    p = Path(path)
    if p.is_dir():
        for name in STUDENT_PREFERENCE:
            if (p / name).is_file():
                return p / name
        raise ModelError(
            f"{p}: no student model in this folder (looked for {', '.join(STUDENT_PREFERENCE)}); "
            "point at an `edgekd export` folder or a .tflite/.onnx file"
        )
    if not p.exists():
        raise ModelError(f"{p}: no such model file or export folder")
    if format_of(p) not in _RUNNABLE:
        raise ModelError(
            f"{p}: unknown model format {p.suffix!r} (expected .tflite, .onnx, or a TensorRT "
            ".engine/.plan)"
        )
    return p


def read_labels(model: Path, num_outputs: int | None = None) -> list[str]:
    """Class names for `model`: labels.txt beside it, else the classes of its model card."""
    labels_file = model.parent / LABELS_FILE
    if labels_file.is_file():
        try:
            text = labels_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelError(f"{labels_file}: unreadable ({reason(exc)})") from None
        names = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        try:
            card = card_of(model)
        except ContractError as exc:
            raise ModelError(str(exc)) from None
        names = list(card.classes or ()) if card is not None else []
        if not names:
            raise ModelError(
                f"{labels_file}: no such file (needed to name {model.name}'s outputs); copy "
                "labels.txt from the export folder next to the model"
            )
    if num_outputs is not None and len(names) != num_outputs:
        raise ModelError(
            f"{labels_file}: {len(names)} labels, but {model.name} has {num_outputs} outputs"
        )
    return names


def _card(model: Path):
    """The model card beside `model` (None when there is none)."""
    try:
        return card_of(model)
    except ContractError as exc:
        raise ModelError(str(exc)) from None


def read_image(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """One image file as (H, W, 3) uint8 RGB, decoded as training decodes it (see
    `edgekd.data.images`), resized to `size` = (height, width) when given."""
    return read_rgb(path, size)


def load_model(path: Path, threads: int | None = None):
    """A runner for `path`, with a missing runtime or a broken file turned into ModelError."""
    from edgekd.device.runtime import load_runner

    try:
        return load_runner(path, threads=threads)
    except ImportError as exc:
        raise ModelError(
            f"{path}: cannot load it: {exc}; install the runtimes with "
            'pip install "edgekd[runtime]"'
        ) from exc
    except Exception as exc:  # noqa: BLE001 - runtimes raise their own kinds (InvalidProtobuf, ...)
        raise ModelError(f"{path}: cannot load it: {reason(exc)}") from None


def load_ensemble(folder: Path, fmt: str, precision: str, threads: int | None):
    """An EnsembleRunner for an exported members/ folder, errors turned into ModelError."""
    from edgekd.device.runtime.ensemble import EnsembleRunner

    try:
        return EnsembleRunner(folder, format=fmt, precision=precision, threads=threads)
    except ImportError as exc:
        raise ModelError(
            f"{folder}: cannot load the ensemble: {exc}; install the runtimes with "
            'pip install "edgekd[runtime]"'
        ) from exc
    except Exception as exc:  # noqa: BLE001 - as load_model
        raise ModelError(f"{folder}: cannot load the ensemble: {reason(exc)}") from None


def predict_files(
    model_or_export: str | Path,
    images: Sequence[str | Path],
    *,
    top_k: int = 5,
    threads: int | None = None,
    ensemble: bool = False,
    ensemble_format: str = "tflite",
    ensemble_precision: str = "float32",
) -> tuple[Path, str, list[Prediction]]:
    """Top-k predictions for each image file; returns (model file or members folder,
    runtime, predictions).

    The gated ensemble answers when `ensemble` is set (from the export folder's `members/`)
    or when `model_or_export` is itself a members folder. Every image is checked before the
    model loads, so a typo in the last path fails fast instead of after a slow load.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if not images:
        raise DataError("no image files given")
    members = members_folder(model_or_export) if Path(model_or_export).is_dir() else None
    if ensemble and members is None:
        raise ModelError(
            f"{model_or_export}: no ensemble.json here or in its members/ folder; export the "
            "ensemble with `edgekd export RUN --members`"
        )
    use_ensemble = ensemble or (Path(model_or_export) / ENSEMBLE_FILE).is_file()
    model = members if use_ensemble else resolve_model(model_or_export)
    for p in images:  # name a missing file before loading anything
        if not Path(p).is_file():
            raise DataError(f"{p}: no such image file")
    if use_ensemble:
        return model, *_predict_ensemble(
            model, images, top_k, threads, ensemble_format, ensemble_precision
        )
    runner = load_model(model, threads)
    shape = runner.input.shape
    size = None
    if len(shape) == 4 and shape[1] is not None and shape[2] is not None:
        size = (int(shape[1]), int(shape[2]))
    k_out = runner.output.shape[-1] if runner.output.shape else None
    names = read_labels(model, k_out)
    to_probs = (lambda z: z) if outputs_probabilities(_card(model)) else softmax  # export.output
    out: list[Prediction] = []
    for p in images:
        pixels = read_image(p, size)
        probs = finite_probs(to_probs(runner.predict(pixels[None]))[0], model, p)
        order = np.argsort(-probs, kind="stable")[: min(top_k, len(probs))]
        out.append(Prediction(Path(p), [names[i] for i in order], [float(probs[i]) for i in order]))
    return model, str(getattr(runner, "runtime", "")), out


def _predict_ensemble(
    folder: Path,
    images: Sequence[str | Path],
    top_k: int,
    threads: int | None,
    fmt: str,
    precision: str,
) -> tuple[str, list[Prediction]]:
    """(runtime, predictions) of the exported gated ensemble, one image at a time."""
    runner = load_ensemble(folder, fmt, precision, threads)
    shape = runner.generalist.input.shape
    size = (int(shape[1]), int(shape[2])) if len(shape) == 4 and None not in shape[1:3] else None
    out: list[Prediction] = []
    for p in images:
        result = runner.predict_one(read_image(p, size))
        probs = finite_probs(result.probs[0], folder, p)
        order = np.argsort(-probs, kind="stable")[: min(top_k, len(probs))]
        woke = [
            [runner.classes[c] for c in runner.groups[s]]
            for s in np.flatnonzero(result.active[0] > 0)
        ]
        out.append(
            Prediction(
                Path(p), [runner.classes[i] for i in order], [float(probs[i]) for i in order], woke
            )
        )
    return f"gated ensemble, {fmt} {precision}, {runner.runtime}", out


def finite_probs(probs: np.ndarray, model: Path, image: str | Path) -> np.ndarray:
    """`probs`, or a ModelError when the model answered NaN or inf: never printed as a score."""
    if not np.all(np.isfinite(probs)):
        raise ModelError(
            f"{model}: its output for {image} is not a number (NaN or inf); the model is "
            "broken (e.g. trained to a NaN loss). Re-export it from a healthy run"
        )
    return probs


def format_predictions(predictions: Sequence[Prediction]) -> str:
    """One block per image: its path, then rank, label and score per line; for the
    ensemble, also the specialists the image woke."""
    lines: list[str] = []
    for pred in predictions:
        width = max(len(label) for label in pred.labels)
        lines.append(f"{pred.image}")
        for rank, (label, score) in enumerate(zip(pred.labels, pred.scores, strict=True), 1):
            lines.append(f"  {rank}. {label:<{width}}  {score:.4f}")
        if pred.woke is not None:
            woke = "; ".join(", ".join(group) for group in pred.woke)
            lines.append(f"  woke: {woke or 'no specialist (the generalist alone)'}")
    return "\n".join(lines)
