"""What to bench in an export folder: each student file by format and precision, and the
gated ensemble."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgekd.contract import (
    CPU_TAG,
    ENSEMBLE_FILE,
    FORMATS,
    PRECISIONS,
    QAT_TAG,
    ContractError,
    EnsembleSpec,
    ModelCard,
    card_of,
    parse_file_name,
    read_card,
    read_ensemble_spec,
    variant_key,
)
from edgekd.device.bench.options import _PRECISION_ORDER, ENSEMBLE_PRECISIONS, base_precision


@dataclass
class Target:
    """One row to measure: a student file, or the ensemble at one format and precision."""

    model: str  # "student" | "ensemble"
    format: str  # "tflite" | "onnx" | "tensorrt" (an engine: student rows only)
    precision: str  # float32, float16, dynamic, int8, int8-qat, int8-cpu
    path: Path  # the model file, or the members/ folder
    files: list[Path]
    size_bytes: int
    card: ModelCard | None = None  # a student file's, when it has one
    params: int | None = None  # the ensemble's: all members (MACs per image depend on the gate)

    @property
    def counts(self) -> dict[str, int]:
        """Parameters and MACs as far as they are known, for the report's row."""
        params = self.params if self.card is None else self.card.params
        macs = None if self.card is None else self.card.macs
        return {k: v for k, v in (("params", params), ("macs", macs)) if v is not None}

    @property
    def label(self) -> str:
        return f"{self.model} {self.precision} {self.format}"


def _student_precision(path: Path, card: ModelCard | None) -> str | None:
    """float32 / float16 / dynamic / int8 / int8-qat / int8-cpu, from the card or else the
    file name; None for a file whose name is not an exported one and that has no card."""
    name = parse_file_name(path.name)
    if card is None:
        return None if name is None else name.label
    if card.precision != "int8":
        return card.precision
    if card.qat is not None or (name is not None and name.qat):
        return f"int8{QAT_TAG}"
    if card.flavour == "cpu" or (name is not None and name.cpu):
        return f"int8{CPU_TAG}"
    return card.precision


def student_cards(export_dir: Path) -> list[ModelCard]:
    """The cards of the export's student files (`student*.<suffix>.json`), by name."""
    paths = sorted(export_dir.glob("student*.json"))
    return [read_card(p) for p in paths if parse_file_name(p.name.removesuffix(".json"))]


def ensemble_spec(export_dir: Path) -> EnsembleSpec | None:
    """The export's `members/ensemble.json`, or None without one.

    Raises:
        ContractError: it is unreadable or not what `edgekd export --members` writes.
    """
    path = export_dir / "members" / ENSEMBLE_FILE
    return read_ensemble_spec(path) if path.is_file() else None


def readable_spec(export_dir: Path) -> EnsembleSpec | None:
    """`ensemble_spec`, with a malformed file counting as none (bench still runs the
    student; `run_bench` says why the ensemble has no rows)."""
    try:
        return ensemble_spec(export_dir)
    except ContractError:
        return None


def find_targets(
    export_dir: Path,
    formats: Sequence[str],
    precisions: Sequence[str] | None = None,
) -> list[Target]:
    """The student files and ensemble configurations of `export_dir` in `formats`.

    `precisions` filters the student files (int8 includes int8-qat and int8-cpu); the
    ensemble runs at
    those of float32 and int8 it names (else at all it names). None: every student file, the
    ensemble at float32 and int8. An export without members/ gives student rows only.
    """
    targets: list[Target] = []
    for fmt in formats:
        found = []
        suffixes = FORMATS[fmt].suffixes
        paths = [p for suffix in suffixes for p in export_dir.glob(f"student*{suffix}")]
        for path in sorted(paths):
            card = card_of(path)
            precision = _student_precision(path, card)
            if precision is None or (
                precisions is not None and base_precision(precision) not in precisions
            ):
                continue
            size = path.stat().st_size
            found.append(Target("student", fmt, precision, path, [path], size, card))
        targets += sorted(found, key=lambda t: (_PRECISION_ORDER[t.precision], t.path.name))
    members = export_dir / "members"
    spec = readable_spec(export_dir)
    if spec is not None and spec.members is not None:
        from edgekd.device.runtime.ensemble import member_path

        # The gated ensemble runs on one runtime: LiteRT where it is benched, else ONNX.
        fmt = "tflite" if "tflite" in formats else "onnx" if "onnx" in formats else None
        # float32 (the reference teacher) and int8, or what a profile asks for.
        wanted = [p for p in ENSEMBLE_PRECISIONS if p in (precisions or ENSEMBLE_PRECISIONS)]
        wanted = wanted or list(precisions or ())
        for precision in (p for p in PRECISIONS if p in wanted and fmt):
            key = variant_key(fmt, precision)
            try:  # confined to members/, as the runner will insist
                files = [
                    member_path(members, available.get(key), members / ENSEMBLE_FILE, name)
                    for name, available in spec.members.items()
                ]
            except (ValueError, OSError):
                continue  # a member file missing, or outside members/: no row for it
            size = sum(f.stat().st_size for f in files)
            params = [getattr(card_of(f), "params", None) for f in files]
            total = sum(params) if all(n is not None for n in params) else None
            targets.append(Target("ensemble", fmt, precision, members, files, size, params=total))
    return targets
