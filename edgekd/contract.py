"""The exported-model contract: file names, model cards and `ensemble.json`, in one place.

`edgekd export` writes these files and the device side (`edgekd.device.runtime`, `edgekd bench`,
`edgekd predict`) reads them; both go through this module, so neither decodes the other's
files by rules of its own. Standard library only (no TensorFlow, Keras or numpy): it loads
where only the runtime wheels are.

- Formats x precisions: which precisions each format holds, and the file name of each
  (model, format, precision), e.g. `student-int8.tflite`, `student.onnx`, `student-fp16.engine`,
  `student_saved_model`; `parse_file_name` reads one back. Two int8 files carry a flavour
  tag: `student-int8-qat.tflite` (quantisation-aware training) and `student-int8-cpu.onnx`
  (quantised for ONNX Runtime's CPU kernels; `student-int8.onnx` is the TensorRT Q/DQ one).
- Model cards (`<file>.json` beside each exported file): `ModelCard`, `write_card`, `read_card`.
- The gated ensemble's `members/ensemble.json`: `EnsembleSpec`, `write_ensemble_spec`,
  `read_ensemble_spec`. The reader requires every field the writer writes, bar `tta` (older
  exports lack it; `FLIP_DEFAULT` stands in) and the descriptive text (solver, layouts), and
  names the file and key of anything missing, mistyped or inconsistent.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekd import atomic
from edgekd.errors import EdgekdError

__all__ = [
    "CPU_TAG",
    "DUSTBIN_OUTPUT",
    "ENSEMBLE_FILE",
    "FLIP_DEFAULT",
    "FORMATS",
    "IO_DTYPES",
    "FUSION_EPS",
    "FUSION_ITERATIONS",
    "FUSION_TOL",
    "GATING_RULE",
    "GENERALIST",
    "LABELS_FILE",
    "OUTPUTS",
    "PRECISIONS",
    "QAT_TAG",
    "TRTEXEC_SUFFIX",
    "ArtifactName",
    "ContractError",
    "EnsembleSpec",
    "Format",
    "ModelCard",
    "card_of",
    "card_path",
    "check_variant",
    "file_name",
    "format_of",
    "member_names",
    "output_meaning",
    "outputs_probabilities",
    "parse_file_name",
    "read_card",
    "read_ensemble_spec",
    "sibling_file",
    "specialist_name",
    "supports",
    "variant_key",
    "write_card",
    "write_ensemble_spec",
]


class ContractError(EdgekdError, ValueError):
    """An exported file (model card, ensemble.json) is unreadable or not what export writes."""


# --------------------------------------------------------------------------------------------
# Formats x precisions, and file names


@dataclass(frozen=True)
class Format:
    """One export format: the precisions it holds and how its files end."""

    precisions: tuple[str, ...]
    suffixes: tuple[str, ...]  # the first is what export writes; all are read
    integer_io: tuple[str, ...] = ()  # precisions whose input/output tensors may be integer


PRECISIONS: tuple[str, ...] = ("float32", "float16", "dynamic", "int8")
"""float32; float16 weights; dynamic: int8 weights, float activations; int8: full integer."""

IO_DTYPES: tuple[str, ...] = ("uint8", "int8", "float32")
"""What an integer model's input and output tensors may be: uint8 takes the pixels as they are."""

FORMATS: dict[str, Format] = {
    "tflite": Format(PRECISIONS, (".tflite",), integer_io=("int8",)),
    # float16: float16 weights, float32 input and output; int8: explicit Q/DQ nodes
    "onnx": Format(("float32", "float16", "int8"), (".onnx",)),
    "tensorrt": Format(("float32", "float16", "int8"), (".engine", ".plan")),
    "saved_model": Format(("float32",), ("_saved_model",)),  # a folder
}

# What a precision adds to a file name: student.tflite, student-fp16.tflite, ...
_PRECISION_TAGS = {"float32": "", "float16": "-fp16", "dynamic": "-dynamic", "int8": "-int8"}
QAT_TAG = "-qat"
"""After the int8 tag of a file from quantisation-aware training: `student-int8-qat.tflite`."""
_QAT_VARIANTS = (("tflite", "int8"),)
CPU_TAG = "-cpu"
"""After the int8 tag of the ONNX file quantised for ONNX Runtime's CPU kernels (asymmetric
uint8 activations): `student-int8-cpu.onnx`, beside the TensorRT Q/DQ `student-int8.onnx`."""
_CPU_VARIANTS = (("onnx", "int8"),)

TRTEXEC_SUFFIX = ".trtexec.sh"
"""The script that builds `<stem>.engine` on the device where TensorRT was missing at export."""
LABELS_FILE = "labels.txt"
"""Class names, one per line, in output order, beside the exported files."""
OUTPUTS: tuple[str, ...] = ("logits", "probabilities")
"""What an exported model outputs (recipe `export.output`): logits, or their softmax."""


def output_meaning(output: str) -> str:
    """A model card's `output.meaning`: "logits, labels.txt order" or "probabilities (softmax),
    labels.txt order"."""
    if output not in OUTPUTS:
        raise ValueError(f"unknown output {output!r}; expected one of {OUTPUTS}")
    what = "probabilities (softmax)" if output == "probabilities" else "logits"
    return f"{what}, {LABELS_FILE} order"


def outputs_probabilities(card: ModelCard | None) -> bool:
    """Whether the file a card describes outputs probabilities (no softmax needed)."""
    meaning = (card.output or {}).get("meaning", "") if card is not None else ""
    return str(meaning).startswith("probabilities")



def supports(fmt: str, precision: str) -> bool:
    """Whether `fmt` holds `precision` (unknown formats hold nothing)."""
    return fmt in FORMATS and precision in FORMATS[fmt].precisions


def check_variant(fmt: str, precision: str) -> None:
    """Raise ValueError unless `fmt` is a known format that holds `precision`."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if precision not in FORMATS[fmt].precisions:
        raise ValueError(
            f"format {fmt!r} holds no precision {precision!r}; it holds "
            f"{', '.join(FORMATS[fmt].precisions)}"
        )


def variant_key(fmt: str, precision: str) -> str:
    """'tflite/int8': how ensemble.json keys a member's file of one format and precision."""
    return f"{fmt}/{precision}"


def file_name(model: str, fmt: str, precision: str, *, qat: bool = False, cpu: bool = False) -> str:
    """The name export gives `model` in `fmt` at `precision`, e.g. 'student-int8.tflite'
    ('student-int8-qat.tflite' with `qat`, 'student-int8-cpu.onnx' with `cpu`).

    Raises:
        ValueError: an unsupported format/precision (or QAT outside int8 TFLite, the CPU
            flavour outside int8 ONNX, both at once), or a model name that would not parse
            back (empty, a path, ending in a precision or flavour tag).
    """
    check_variant(fmt, precision)
    if qat and (fmt, precision) not in _QAT_VARIANTS:
        raise ValueError(f"quantisation-aware files are int8 TFLite only, not {fmt} {precision}")
    if cpu and (fmt, precision) not in _CPU_VARIANTS:
        raise ValueError(f"the CPU int8 flavour is int8 ONNX only, not {fmt} {precision}")
    tags = (*(t for t in _PRECISION_TAGS.values() if t), QAT_TAG, CPU_TAG)
    if not model or "/" in model or "\\" in model or model.endswith(tags):
        raise ValueError(f"{model!r} is not a model name export can use in a file name")
    flavour = QAT_TAG if qat else CPU_TAG if cpu else ""
    return f"{model}{_PRECISION_TAGS[precision]}{flavour}{FORMATS[fmt].suffixes[0]}"


def sibling_file(path: str | Path, fmt: str, precision: str) -> Path:
    """The file beside `path` of the same model in `fmt` at `precision`
    (`student-int8.engine` -> `student-int8.onnx`)."""
    path = Path(path)
    parsed = parse_file_name(path.name)
    if parsed is None:
        raise ValueError(f"{path}: not an exported file name (e.g. student-int8.onnx)")
    return path.with_name(file_name(parsed.model, fmt, precision))


@dataclass(frozen=True)
class ArtifactName:
    """What a file name says: which model, in which format and precision."""

    model: str
    format: str
    precision: str
    qat: bool = False
    cpu: bool = False  # int8 ONNX quantised for ONNX Runtime's CPU kernels

    @property
    def label(self) -> str:
        """The precision as reports show it: 'int8-qat' for a QAT file, 'int8-cpu' for the
        CPU-flavoured int8 ONNX file, else the precision."""
        tag = QAT_TAG if self.qat else CPU_TAG if self.cpu else ""
        return f"{self.precision}{tag}"


def format_of(path: str | Path) -> str | None:
    """The format a file name's ending says (case-insensitive), or None."""
    name = Path(path).name.lower()
    for fmt, spec in FORMATS.items():
        if name.endswith(spec.suffixes) and len(name) > min(len(s) for s in spec.suffixes):
            return fmt
    return None


def parse_file_name(name: str | Path) -> ArtifactName | None:
    """(model, format, precision, qat, cpu) of an exported file name; None if it is not one."""
    name = Path(name).name
    fmt = format_of(name)
    if fmt is None:
        return None
    suffix = next(s for s in FORMATS[fmt].suffixes if name.lower().endswith(s))
    stem = name[: -len(suffix)]
    qat = stem.endswith(QAT_TAG)
    stem = stem.removesuffix(QAT_TAG)
    cpu = not qat and stem.endswith(CPU_TAG)
    stem = stem.removesuffix(CPU_TAG) if cpu else stem
    precision = next(
        (p for p, tag in _PRECISION_TAGS.items() if tag and stem.endswith(tag)), "float32"
    )
    model = stem.removesuffix(_PRECISION_TAGS[precision])
    if not model or not supports(fmt, precision) or (qat and (fmt, precision) not in _QAT_VARIANTS):
        return None
    if cpu and (fmt, precision) not in _CPU_VARIANTS:
        return None
    return ArtifactName(model, fmt, precision, qat, cpu)


# --------------------------------------------------------------------------------------------
# Checking JSON values (shared by the card and ensemble.json readers)


class _Check:
    """Typed look-ups in a parsed JSON file; a failure names the file and the dotted key."""

    def __init__(self, source: str | Path, what: str) -> None:
        self.source, self.what = str(source), what

    def fail(self, key: str, why: str) -> ContractError:
        return ContractError(f"{self.source}: {self.what}: key {key!r}: {why}")

    def get(self, obj: Mapping[str, Any], key: str, where: str = "") -> Any:
        """obj[key], or an error naming `where.key` as missing."""
        path = f"{where}.{key}" if where else key
        if key not in obj:
            raise self.fail(path, "missing")
        return obj[key]

    def mapping(self, value: Any, key: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(key, f"expected a mapping, got {value!r}")
        return value

    def text(self, value: Any, key: str) -> str:
        if not isinstance(value, str):
            raise self.fail(key, f"expected text, got {value!r}")
        return value

    def names(self, value: Any, key: str) -> tuple[str, ...]:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, f"expected a list of names, got {value!r}")
        return tuple(value)

    def integer(self, value: Any, key: str, low: int | None = None) -> int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        if not ok or (low is not None and value < low):
            bound = "" if low is None else f" >= {low}"
            raise self.fail(key, f"expected an integer{bound}, got {value!r}")
        return int(value)

    def number(self, value: Any, key: str) -> float:
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or value != value:
            raise self.fail(key, f"expected a number, got {value!r}")
        return float(value)

    def flag(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {value!r}")
        return value


def _load_json(path: Path, what: str) -> Any:
    """The parsed JSON of `path`; a ContractError naming it when it cannot be read."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ContractError(f"{path}: {what} unreadable ({type(exc).__name__}: {exc})") from None


# --------------------------------------------------------------------------------------------
# Model cards


def card_path(model_file: str | Path) -> Path:
    """The card of an exported file: `student-int8.tflite` -> `student-int8.tflite.json`."""
    model_file = Path(model_file)
    return model_file.with_name(model_file.name + ".json")


# Card keys and their kinds, in the order the writer puts them in the file.
_CARD_KEYS: dict[str, str] = {
    "run": "text",  # the run directory the model came from
    "recipe": "text",
    "classes": "names",
    "stage": "text",
    "artifact": "text",
    "model": "text",  # student, control, generalist, specialist_0, ...
    "params": "integer",
    "macs": "integer",
    "convert_s": "number",
    "qat": "mapping",  # quantisation-aware fine-tuning: epochs, history, tensors
    "format": "text",
    "precision": "text",
    "file": "text",
    "created": "text",
    "labels": "text",
    "edgekd": "text",
    "size_bytes": "integer",
    "sha256": "text",
    "runtime": "text",
    "input": "mapping",  # TensorSpec fields plus layout and pixels
    "output": "mapping",
    "parity": "mapping",  # accuracy of the file and of Keras on the same images
    "qdq": "mapping",  # ONNX int8: what the Q/DQ nodes are
    "flavour": "text",  # "cpu": int8 ONNX for ONNX Runtime's CPU kernels (CPU_TAG)
    "quantization": "mapping",  # how an int8 ONNX file was quantised, and for which runtime
}


@dataclass(kw_only=True)
class ModelCard:
    """The JSON card beside an exported file: where it came from and what was measured.

    `format` and `precision` are always there; the rest depends on the format (a TensorRT
    engine has no parity run) and on what the exporter was told. Keys this version does not
    know are kept in `extra` and written back unchanged.
    """

    format: str
    precision: str
    run: str | None = None
    recipe: str | None = None
    classes: tuple[str, ...] | None = None
    stage: str | None = None
    artifact: str | None = None
    model: str | None = None
    params: int | None = None
    macs: int | None = None
    convert_s: float | None = None
    qat: Mapping[str, Any] | None = None
    file: str | None = None
    created: str | None = None
    labels: str | None = None
    edgekd: str | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    runtime: str | None = None
    input: Mapping[str, Any] | None = None
    output: Mapping[str, Any] | None = None
    parity: Mapping[str, Any] | None = None
    qdq: Mapping[str, Any] | None = None
    flavour: str | None = None
    quantization: Mapping[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int | None, ...] | None:
        """The input tensor's shape (N, H, W, C) as the card states it, or None."""
        shape = (self.input or {}).get("shape")
        return None if shape is None else tuple(shape)

    def to_json(self) -> dict[str, Any]:
        """The card as JSON types, keys in the writer's order; unset keys are left out."""
        out: dict[str, Any] = {}
        for key in _CARD_KEYS:
            value = getattr(self, key)
            if value is not None:
                out[key] = list(value) if key == "classes" else value
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, data: Any, source: str | Path) -> ModelCard:
        """A card from parsed JSON; ContractError naming `source` and the key if malformed."""
        check = _Check(source, "model card")
        if not isinstance(data, Mapping):
            raise ContractError(f"{source}: model card: expected a JSON object, got {data!r}")
        values: dict[str, Any] = {}
        for key, kind in _CARD_KEYS.items():
            if data.get(key) is not None:
                values[key] = getattr(check, kind)(data[key], key)
        for key in ("format", "precision"):
            values[key] = check.text(check.get(data, key), key)
        if values["format"] not in FORMATS:
            raise check.fail("format", f"unknown format {values['format']!r}")
        if not supports(values["format"], values["precision"]):
            raise check.fail(
                "precision", f"{values['precision']!r} is not a precision of {values['format']}"
            )
        flavour = values.get("flavour")
        if flavour is not None and (
            flavour != CPU_TAG[1:] or (values["format"], values["precision"]) not in _CPU_VARIANTS
        ):
            raise check.fail("flavour", f"{flavour!r}: the only flavour is 'cpu', of int8 ONNX")
        shape = (values.get("input") or {}).get("shape")
        if shape is not None:
            if not isinstance(shape, list | tuple):
                raise check.fail("input.shape", f"expected a list of sizes, got {shape!r}")
            for size in shape:
                if size is not None:  # a dynamic dimension (the batch)
                    check.integer(size, "input.shape", 0)
        extra = {k: v for k, v in data.items() if k not in _CARD_KEYS}
        return cls(**values, extra=extra)


def write_card(model_file: str | Path, card: ModelCard) -> Path:
    """Write `card` beside `model_file` (atomically) and return the card's path."""
    path = card_path(model_file)
    data = card.to_json()
    ModelCard.from_json(data, path)  # what is written must read back
    atomic.write_json(path, data)
    return path


def read_card(path: str | Path) -> ModelCard:
    """The card at `path` (a `<file>.json`); ContractError naming it when it is malformed."""
    path = Path(path)
    return ModelCard.from_json(_load_json(path, "model card"), path)


def card_of(model_file: str | Path) -> ModelCard | None:
    """The card of an exported file, or None when it has none (e.g. an engine built later)."""
    path = card_path(model_file)
    return read_card(path) if path.is_file() else None


# --------------------------------------------------------------------------------------------
# The gated ensemble: ensemble.json

ENSEMBLE_FILE = "ensemble.json"
GENERALIST = "generalist"
DUSTBIN_OUTPUT = "<dustbin>"
GATING_RULE = "top_n_intersects_group"

FUSION_ITERATIONS = 50
"""Most fusion iterations: the recipe's `ensemble.fusion_iterations` default, and the
default of the fusion functions' `iterations`."""
FUSION_TOL = 1e-6
"""A row of the fusion stops once no entry of q moves by this much."""
FUSION_EPS = 1e-12
"""Floor inside the fusion's logarithms and denominators."""
FLIP_DEFAULT = False
"""Flip averaging of an ensemble.json without `tta` (exports made before the option)."""

# Descriptions written for people and for runtimes in other languages; not read back.
_FUSION_OBJECTIVE = "KL(p_g,q) + sum_m KL(p_m, A_m q)"
_FUSION_SOLVER = "em+newton"
_FUSION_START = "em step from observed weights"
_TTA_RULE = (
    "each member's softmax averaged over the image and its mirror (width axis) before gating "
    "and fusion"
)
_DUSTBIN_LAYOUT = (
    "each specialist's last output is the dustbin (every class outside its group); its prior "
    "correction is already inside the exported logits"
)
_NO_DUSTBIN_LAYOUT = "no dustbin: specialists output their own classes only"
_INPUT = {"layout": "NHWC", "pixels": "RGB 0..255"}


def specialist_name(m: int) -> str:
    """The member name (and file name stem) of specialist m: 'specialist_0', ..."""
    return f"specialist_{m}"


def member_names(specialists: int) -> list[str]:
    """'generalist', then 'specialist_0' ... in group order."""
    return [GENERALIST, *(specialist_name(m) for m in range(specialists))]


@dataclass(frozen=True)
class EnsembleSpec:
    """What a runtime needs besides the model files to reproduce the gated ensemble.

    The generalist's top-`top_n` classes (none above generalist confidence `confidence`)
    wake every specialist whose group they intersect; the softmaxed outputs are fused by
    the KL solver with `iterations`, `tol` and `eps`; with `flip` every member's softmax is
    first averaged over the image and its mirror. `members` and `input_shape` are the
    exported files and the images they take; the run's own copy (stage `ensemble`) has none.
    """

    classes: tuple[str, ...]
    groups: tuple[tuple[int, ...], ...]  # class indices each specialist covers
    dustbin: bool
    top_n: int
    confidence: float | None
    flip: bool
    iterations: int
    tol: float
    eps: float
    # member name (see member_names) -> variant_key(format, precision) -> file name inside
    # the members folder. File names are checked when one is used (runtime.ensemble's
    # member_path), so one bad entry does not hide a member's other files.
    members: Mapping[str, Mapping[str, Any]] | None = None
    input_shape: tuple[int, int, int] | None = None  # (H, W, C)

    def outputs(self, member: str) -> list[str]:
        """What each output of `member` means: class names, then the dustbin if any."""
        m = member_names(len(self.groups)).index(member) - 1  # -1: the generalist
        if m < 0:
            return list(self.classes)
        group = [self.classes[c] for c in self.groups[m]]
        return group + ([DUSTBIN_OUTPUT] if self.dustbin else [])

    def to_json(self) -> dict[str, Any]:
        """The JSON layout of ensemble.json (members and input only when set)."""
        names = list(self.classes)
        out: dict[str, Any] = {
            "classes": names,
            "groups": [[names[c] for c in g] for g in self.groups],
            "group_indices": [list(g) for g in self.groups],
            "dustbin": self.dustbin,
            "gating": {"rule": GATING_RULE, "top_n": self.top_n, "confidence": self.confidence},
            "fusion": {"objective": _FUSION_OBJECTIVE, "solver": _FUSION_SOLVER,
                       "iterations": self.iterations, "tol": self.tol, "eps": self.eps,
                       "start": _FUSION_START},
            "tta": {"flip": self.flip, "rule": _TTA_RULE},
        }  # fmt: skip
        if self.members is not None:
            specialists = member_names(len(self.groups))[1:]
            out["members"] = {
                GENERALIST: {
                    "files": dict(self.members[GENERALIST]),
                    "outputs": self.outputs(GENERALIST),
                },
                "specialists": [
                    {
                        "files": dict(self.members[name]),
                        "classes": [names[c] for c in group],
                        "outputs": self.outputs(name),
                    }
                    for name, group in zip(specialists, self.groups, strict=True)
                ],
            }
        out["dustbin_layout"] = _DUSTBIN_LAYOUT if self.dustbin else _NO_DUSTBIN_LAYOUT
        if self.input_shape is not None:
            out["input"] = {**_INPUT, "shape": list(self.input_shape)}
        return out

    @classmethod
    def from_json(cls, data: Any, source: str | Path) -> EnsembleSpec:
        """The exported ensemble (members and input required) from parsed JSON.

        Raises:
            ContractError: a key missing or of the wrong kind (the file and key are named),
                or keys that disagree (names of groups, member outputs, counts).
        """
        check = _Check(source, "not what `edgekd export --members` writes")
        if not isinstance(data, Mapping):
            raise ContractError(
                f"{source}: not what `edgekd export --members` writes (a JSON object), got "
                f"{type(data).__name__}"
            )
        classes = check.names(check.get(data, "classes"), "classes")
        if not classes or len(set(classes)) != len(classes):
            raise check.fail("classes", f"expected distinct class names, got {list(classes)!r}")
        raw_groups = check.get(data, "group_indices")
        if not isinstance(raw_groups, list):
            raise check.fail("group_indices", f"expected a list of lists, got {raw_groups!r}")
        groups = tuple(_group(check, g, m, len(classes)) for m, g in enumerate(raw_groups))
        names = check.get(data, "groups")
        if names != [[classes[c] for c in g] for g in groups]:
            raise check.fail("groups", f"{names!r} are not the classes of group_indices")
        dustbin = check.flag(check.get(data, "dustbin"), "dustbin")

        gating = check.mapping(check.get(data, "gating"), "gating")
        rule = check.text(check.get(gating, "rule", "gating"), "gating.rule")
        if rule != GATING_RULE:
            raise check.fail("gating.rule", f"unknown rule {rule!r} (known: {GATING_RULE})")
        top_n = check.integer(check.get(gating, "top_n", "gating"), "gating.top_n", 1)
        confidence = check.get(gating, "confidence", "gating")
        if confidence is not None:
            confidence = check.number(confidence, "gating.confidence")

        fusion = check.mapping(check.get(data, "fusion"), "fusion")
        iterations = check.integer(
            check.get(fusion, "iterations", "fusion"), "fusion.iterations", 0
        )
        tol = check.number(check.get(fusion, "tol", "fusion"), "fusion.tol")
        eps = check.number(check.get(fusion, "eps", "fusion"), "fusion.eps")

        flip = FLIP_DEFAULT
        if "tta" in data:
            tta = check.mapping(data["tta"], "tta")
            flip = check.flag(check.get(tta, "flip", "tta"), "tta.flip")

        spec = cls(classes, groups, dustbin, top_n, confidence, flip, iterations, tol, eps)
        members = _members(check, check.mapping(check.get(data, "members"), "members"), spec)
        raw_input = check.mapping(check.get(data, "input"), "input")
        shape = check.get(raw_input, "shape", "input")
        if not isinstance(shape, list) or len(shape) != 3:
            raise check.fail("input.shape", f"expected [height, width, channels], got {shape!r}")
        h, w, c = (check.integer(d, "input.shape", 1) for d in shape)
        return dataclasses.replace(spec, members=members, input_shape=(h, w, c))


def _group(check: _Check, group: Any, m: int, num_classes: int) -> tuple[int, ...]:
    """Group m of `group_indices`: distinct class indices below `num_classes`."""
    key = f"group_indices[{m}]"
    if not isinstance(group, list) or not group:
        raise check.fail(key, f"expected a non-empty list of class indices, got {group!r}")
    out = tuple(check.integer(c, key, 0) for c in group)
    if max(out) >= num_classes or len(set(out)) != len(out):
        raise check.fail(key, f"expected distinct indices below {num_classes}, got {group!r}")
    return out


def _members(
    check: _Check, members: Mapping[str, Any], spec: EnsembleSpec
) -> dict[str, Mapping[str, Any]]:
    """`members` of ensemble.json as member name -> files, checked against `spec`."""
    specialists = check.get(members, "specialists", "members")
    if not isinstance(specialists, list) or len(specialists) != len(spec.groups):
        count = len(specialists) if isinstance(specialists, list) else repr(specialists)
        raise check.fail(
            "members.specialists", f"{count} specialists for {len(spec.groups)} groups"
        )
    entries = [check.get(members, GENERALIST, "members"), *specialists]
    keys = [
        f"members.{GENERALIST}",
        *(f"members.specialists[{m}]" for m in range(len(specialists))),
    ]
    out: dict[str, Mapping[str, Any]] = {}
    for m, (name, entry, key) in enumerate(
        zip(member_names(len(spec.groups)), entries, keys, strict=True), start=-1
    ):
        entry = check.mapping(entry, key)
        files = check.mapping(check.get(entry, "files", key), f"{key}.files")
        for variant in files:
            fmt, _, precision = str(variant).partition("/")
            if not supports(fmt, precision):
                raise check.fail(f"{key}.files", f"{variant!r} is not a format/precision")
        if check.get(entry, "outputs", key) != spec.outputs(name):
            raise check.fail(f"{key}.outputs", f"expected {spec.outputs(name)!r}")
        if m >= 0:  # a specialist: its classes are its group's
            group = [spec.classes[c] for c in spec.groups[m]]
            if check.get(entry, "classes", key) != group:
                raise check.fail(f"{key}.classes", f"expected {group!r} (its group)")
        out[name] = dict(files)
    return out


def write_ensemble_spec(path: str | Path, spec: EnsembleSpec) -> Path:
    """Write the exported ensemble's `ensemble.json` (atomically); every field, always."""
    if spec.members is None or spec.input_shape is None:
        raise ValueError("an exported ensemble.json needs the members' files and input shape")
    path = Path(path)
    data = spec.to_json()
    EnsembleSpec.from_json(data, path)  # what is written must read back
    atomic.write_json(path, data)
    return path


def read_ensemble_spec(path: str | Path) -> EnsembleSpec:
    """The exported ensemble described by `path` (a members/ensemble.json).

    Raises:
        ContractError: the file is unreadable, or a key is missing or malformed (the file
            and the key are named).
    """
    path = Path(path)
    return EnsembleSpec.from_json(_load_json(path, ENSEMBLE_FILE), path)
