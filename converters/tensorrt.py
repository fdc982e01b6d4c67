"""ONNX -> TensorRT engine, with the TensorRT Python API or as a `trtexec` command line.

An engine is specific to the GPU and TensorRT version that build it, so the usual place to
build it is the device itself. Where the `tensorrt` package is missing (this machine, most
training hosts) `build_engine` raises with the equivalent `trtexec` commands, and
`write_trtexec_script` leaves a script beside the ONNX file that builds it on the device.

How an engine of a precision is built depends on the TensorRT version (`build_plan`):

- TensorRT 11 builds every network strongly typed: the precision-enabling builder flags
  (`BuilderFlag.FP16`, `INT8`, `BF16`, ...) and trtexec's `--fp16`, `--int8`, `--bf16`,
  `--best` are gone, `NetworkDefinitionCreationFlag.STRONGLY_TYPED` is deprecated and
  ignored, and trtexec's `--stronglyTyped` is a no-op. Precision comes from the ONNX file:
  fp32 from `<model>.onnx`, fp16 from the float16 `<model>-fp16.onnx`, int8 from the Q/DQ
  nodes of `<model>-int8.onnx`. No flag is passed.
- TensorRT 10.12 and later 10.x build the same files strongly typed by default, with
  `--stronglyTyped` / `1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)`: the engine
  computes in the types of the file that export's parity gate ran, NVIDIA asks for strong
  typing with explicit (Q/DQ) quantisation, and 10.12 deprecates weak typing.
- TensorRT 10.0-10.11 (JetPack 6 ships 10.3) build weakly typed by default, as edgekd did
  before: fp16 from the float32 file with `--fp16` / `BuilderFlag.FP16`, int8 with `--int8
  --fp16` / `INT8`, `FP16` (float16 kernels for the layers outside Q/DQ pairs). NVIDIA's
  strong-typing migration notes call strong typing complete only from 10.12 and advise
  against migrating on older 10.x; `strongly_typed=True` (the scripts: `TRT_TYPING=strong`)
  still asks for it there.
- TensorRT 9 and older: refused (implicit batch, other trtexec options).

`build_engine` reads the version from `tensorrt.__version__` ("10.3.0.30"). A script reads
it from the banner `trtexec --help` prints first (`&&&& RUNNING TensorRT.trtexec
[TensorRT v100300] # ...`: major * 10000 + minor * 100 + patch from 10 on, major * 1000 + ...
before), since it is that trtexec that builds, and picks the command for it;
`TRT_VERSION=10.3` skips the probe.

Verified against NVIDIA's sources (its repository up to tag v11.1, and its docs):
- trtexec option parsing, `samples/common/sampleOptions.cpp` and `samples/trtexec/trtexec.cpp`
  at tags v10.3.0, v11.0, v11.1 of https://github.com/NVIDIA/TensorRT (10.3 parses
  `--fp16`, `--int8`, `--stronglyTyped`; 11.x has no `--fp16`/`--int8`/`--best` and fails on
  an unknown option; `--stronglyTyped` is "[Deprecated] ... a no-op"); the version banner in
  `samples/common/logging.h` (`defineTest`), `NV_TENSORRT_VERSION` in `NvInferRuntimeBase.h`
  (v8.6.1, v9.3.0: `major * 1000 + minor * 100 + patch`; v10.0.0 on: `major * 10000 + ...`).
- `NetworkDefinitionCreationFlag` in `include/NvInfer.h`: `kSTRONGLY_TYPED = 1` on 10.3
  (after `kEXPLICIT_BATCH = 0`), `= 0` and deprecated on 11.1; hence `1 << int(...)` from the
  enum, never a constant. Python `BuilderFlag` (`python/src/infer/pyCore.cpp`): FP16, BF16,
  INT8 on 10.3, none of them on 11.1.
- https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-reference.html
  (removed BuilderFlag.FP16/INT8/BF16/...), .../tensorrt-10x-to-11x-trtexec.html (removed
  --fp16, --int8, --bf16, --fp8, --int4, --best; --stronglyTyped no longer needed),
  https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/quantized-types-explicit-quantization.html
  ("Use explicit quantization with Strong Typing"),
  https://docs.nvidia.com/deeplearning/tensorrt/latest/getting-started/release-notes-10/10.12.0.html
  (weak typing APIs deprecated), and the `trt-strong-typing-migration` skill in NVIDIA's
  repository (`.agents/skills/`: strong typing "fully available from 10.12").
- The 8.x -> 10.x trtexec migration guide: `--workspace` became
  `--memPoolSize=workspace:<size>`, explicit batch is the default; `--skipInference` builds
  without benchmarking.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgekd.atomic import atomic_path, write_bytes
from edgekd.contract import (
    FORMATS,
    TRTEXEC_SUFFIX,
    check_variant,
    parse_file_name,
    sibling_file,
    variant_key,
)
from edgekd.converters import onnx as onnx_converter

if TYPE_CHECKING:
    import keras
    import numpy as np

# TensorRT's own names (trtexec flags) for the contract's TensorRT precisions.
TRT_PRECISION = {
    p: {"float32": "fp32", "float16": "fp16"}.get(p, p) for p in FORMATS["tensorrt"].precisions
}
PRECISIONS = tuple(TRT_PRECISION.values())
# The contract precision of the ONNX file a strongly typed build of each precision reads.
ONNX_PRECISION = {trt: contract for contract, trt in TRT_PRECISION.items()}
OLDEST = (10, 0)
"""The oldest TensorRT these builds are written for."""
STRONG_DEFAULT = (10, 12)
"""From here on strong typing is the default (complete, and weak typing deprecated)."""
STRONG_ONLY = (11, 0)
"""From here on every network is strongly typed."""
DEFAULT_INPUT = "pixels"
DEFAULT_SHAPE = (1, 32, 32, 3)

# Weakly typed TensorRT 10: the float32 file and the builder flags that enable the precision
# (int8 adds fp16 so that the layers outside Q/DQ pairs may run in half precision).
_WEAK_FLAGS = {"fp32": (), "fp16": ("FP16",), "int8": ("INT8", "FP16")}


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown TensorRT precision {precision!r}; expected one of {PRECISIONS}")


def parse_version(version: str | Sequence[int]) -> tuple[int, int]:
    """(major, minor) of a TensorRT version: "10.3.0.30" (`tensorrt.__version__`), "11",
    (10, 3)."""
    if isinstance(version, str):
        match = re.match(r"\s*(\d+)(?:\.(\d+))?", version)
        if match is None:
            raise ValueError(f"not a TensorRT version: {version!r} (expected e.g. '10.3.0')")
        return int(match[1]), int(match[2] or 0)
    parts = tuple(int(v) for v in version)
    if not parts:
        raise ValueError("not a TensorRT version: an empty sequence")
    return parts[0], parts[1] if len(parts) > 1 else 0


def installed_version() -> tuple[int, int] | None:
    """The importable `tensorrt` package's (major, minor), or None without one.

    Raises:
        RuntimeError: `tensorrt` imports but has no readable `__version__`.
    """
    try:
        import tensorrt as trt
    except ImportError:
        return None
    return _version_of(trt)


def _version_of(trt: object) -> tuple[int, int]:
    """(major, minor) from a `tensorrt` module's `__version__`; RuntimeError without one."""
    version = getattr(trt, "__version__", None)
    try:
        return parse_version(version)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise RuntimeError(f"cannot tell this TensorRT's version: __version__={version!r}") from exc


@dataclass(frozen=True)
class BuildPlan:
    """How one precision is built on one TensorRT: which ONNX file, which flags."""

    precision: str  # fp32, fp16, int8
    version: tuple[int, int]  # the TensorRT (major, minor) it is for
    strongly_typed: bool
    onnx_precision: str  # the contract precision of the ONNX file it reads
    trtexec_flags: tuple[str, ...]  # e.g. ("--stronglyTyped",), ("--int8", "--fp16"), ()
    network_flags: tuple[str, ...]  # NetworkDefinitionCreationFlag members to set
    builder_flags: tuple[str, ...]  # BuilderFlag members to set

    @property
    def typing(self) -> str:
        """The typing as messages say it: "strongly typed" or "weakly typed"."""
        return "strongly typed" if self.strongly_typed else "weakly typed"


def build_plan(
    precision: str, version: str | Sequence[int], *, strongly_typed: bool | None = None
) -> BuildPlan:
    """The ONNX file and trtexec / Python API flags that build `precision` on `version`.

    Args:
        precision: one of `PRECISIONS`.
        version: the TensorRT version, as `parse_version` reads it.
        strongly_typed: None for the version's default (weakly typed before 10.12,
            strongly typed from it); False builds weakly typed, which only TensorRT 10 has.

    Raises:
        ValueError: an unknown precision, a TensorRT older than 10, or weak typing on 11+.
    """
    _check_precision(precision)
    major_minor = parse_version(version)
    shown = ".".join(map(str, major_minor))
    if major_minor < OLDEST:
        raise ValueError(
            f"TensorRT {shown}: edgekd builds engines with TensorRT 10 or newer (explicit "
            "batch, --memPoolSize); upgrade TensorRT, or adapt the trtexec command by hand"
        )
    if major_minor >= STRONG_ONLY:
        if strongly_typed is False:
            raise ValueError(
                f"TensorRT {shown} builds strongly typed networks only: there is no weakly "
                f"typed {precision} build (its precision comes from the ONNX file)"
            )
        return BuildPlan(precision, major_minor, True, ONNX_PRECISION[precision], (), (), ())
    if strongly_typed is None:
        strongly_typed = major_minor >= STRONG_DEFAULT
    if strongly_typed is False:
        onnx_precision = "int8" if precision == "int8" else "float32"
        flags = _WEAK_FLAGS[precision]
        trtexec = tuple(f"--{f.lower()}" for f in flags)
        return BuildPlan(precision, major_minor, False, onnx_precision, trtexec, (), flags)
    return BuildPlan(
        precision, major_minor, True, ONNX_PRECISION[precision],
        ("--stronglyTyped",), ("STRONGLY_TYPED",), (),
    )  # fmt: skip


def convert(
    model: keras.Model,
    path: str | Path,
    *,
    precision: str,
    calibration: np.ndarray | None = None,
    io_dtype: str = "float32",
    reuse: Mapping[str, Path] | None = None,
) -> Path:
    """The export back-end's entry point (the signature every converter shares): a TensorRT
    engine at `path` from the model's ONNX file of the precision (float32, float16, int8).

    The ONNX file is `reuse`'s when this export wrote it, else the one beside `path` (an
    earlier export's), else written there now (float16 and int8 from the float32 file; int8
    calibrated on `calibration`). With the `tensorrt` package the engine is built here, as
    `build_plan` says for its version; without it the `trtexec` script that builds it on the
    device is written, and its path returned instead.
    """
    check_variant("tensorrt", precision)
    if io_dtype != "float32":
        raise ValueError(f"TensorRT engines here have float32 input and output, not {io_dtype!r}")
    trt_precision = TRT_PRECISION[precision]
    version = installed_version()
    onnx_precision = (
        ONNX_PRECISION[trt_precision]
        if version is None
        else build_plan(trt_precision, version).onnx_precision
    )
    onnx_path = (reuse or {}).get(variant_key("onnx", onnx_precision))
    if onnx_path is None:
        onnx_path = sibling_file(path, "onnx", onnx_precision)
        if not onnx_path.is_file():
            onnx_converter.convert(
                model, onnx_path, precision=onnx_precision, calibration=calibration, reuse=reuse
            )
    if version is not None:
        return build_engine(onnx_path, path, trt_precision)
    return write_trtexec_script(onnx_path, path, trt_precision)


def _dims(shape: Sequence[int | None], batch: int) -> str:
    """The shape as "BxHxWxC" with the batch dimension replaced by `batch`."""
    rest = [int(d) if d is not None else -1 for d in shape[1:]]
    if any(d < 1 for d in rest):
        raise ValueError(f"only the batch dimension may be dynamic, got shape {tuple(shape)}")
    return "x".join(str(d) for d in (batch, *rest))


def _trtexec_args(
    onnx_path: str | Path,
    engine_path: str | Path,
    plan: BuildPlan,
    *,
    workspace_mib: int,
    batch: int,
    input_name: str,
    shape: Sequence[int | None],
) -> list[str]:
    """trtexec's arguments (without the program name), one list item per argument."""
    if batch < 1 or workspace_mib < 1:
        raise ValueError(f"batch and workspace_mib must be positive, got {batch}, {workspace_mib}")
    return [
        f"--onnx={onnx_path}",
        f"--saveEngine={engine_path}",
        *plan.trtexec_flags,
        f"--memPoolSize=workspace:{workspace_mib}M",
        f"--minShapes={input_name}:{_dims(shape, 1)}",
        f"--optShapes={input_name}:{_dims(shape, batch)}",
        f"--maxShapes={input_name}:{_dims(shape, batch)}",
        "--skipInference",
    ]


def trtexec_command(
    onnx_path: str | Path,
    engine_path: str | Path,
    precision: str,
    *,
    version: str | Sequence[int],
    strongly_typed: bool | None = None,
    workspace_mib: int = 1024,
    batch: int = 1,
    input_name: str = DEFAULT_INPUT,
    shape: Sequence[int | None] = DEFAULT_SHAPE,
) -> str:
    """The trtexec command line that builds the engine `build_engine` would on `version`.

    Args:
        onnx_path, engine_path: the ONNX file read and the engine written; the ONNX file must
            be the one `build_plan(...).onnx_precision` names.
        precision: one of `PRECISIONS`.
        version: the TensorRT version the command is for ("10.3", "11.1", (10, 3)).
        strongly_typed: as `build_plan` takes it.
        workspace_mib: builder workspace memory pool, MiB.
        batch: largest (and optimal) batch of the dynamic-batch profile; the smallest is 1.
        input_name: the ONNX input ("pixels" for files from `export_onnx`).
        shape: the input shape; its first (batch) entry is ignored.
    """
    plan = build_plan(precision, version, strongly_typed=strongly_typed)
    args = _trtexec_args(
        onnx_path, engine_path, plan, workspace_mib=workspace_mib, batch=batch,
        input_name=input_name, shape=shape,
    )  # fmt: skip
    return shlex.join(["trtexec", *args])


def _onnx_input(onnx_path: Path) -> tuple[str, tuple[int | None, ...]]:
    """Name and shape of the ONNX file's single free input (symbolic dims as None)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ValueError(f"{onnx_path}: expected one input, found {[i.name for i in inputs]}")
    dims = inputs[0].type.tensor_type.shape.dim
    shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    return inputs[0].name, shape


def _check_onnx_file(onnx_path: Path, plan: BuildPlan) -> None:
    """ValueError unless the ONNX file holds what `plan` builds from (a strongly typed fp16
    build of a float32 file would silently give a float32 engine)."""
    found = onnx_converter.onnx_precision(onnx_path)
    if found == plan.onnx_precision:
        return
    hint = {
        "float16": "the float16 file from `edgekd export --format onnx --fp16` (or "
        "edgekd.converters.onnx.convert_onnx_float16)",
        "int8": "the Q/DQ file from `edgekd export --format onnx --int8`",
        "float32": "the float32 file from `edgekd export --format onnx --float`",
    }[plan.onnx_precision]
    raise ValueError(
        f"{onnx_path}: holds a {found} model, but a {plan.typing} {plan.precision} engine on "
        f"TensorRT {plan.version[0]}.{plan.version[1]} is built from a {plan.onnx_precision} "
        f"ONNX file: {hint}"
    )


def _script_lines(args: Sequence[str], indent: str) -> list[str]:
    """`set -- ARGS` over several lines, each argument quoted for sh."""
    return [f"{indent}set -- \\", *(f"{indent}    {shlex.quote(a)} \\" for a in args[:-1]),
            f"{indent}    {shlex.quote(args[-1])}"]  # fmt: skip


def write_trtexec_script(
    onnx_path: str | Path,
    engine_path: str | Path,
    precision: str,
    *,
    float_onnx: str | Path | None = None,
    workspace_mib: int = 1024,
    max_batch: int = 1,
) -> Path:
    """Write `<engine stem>.trtexec.sh` beside the ONNX file and return its path.

    The script builds the engine on the device with the command for the TensorRT there:
    it reads the version from `trtexec --help` (or `TRT_VERSION`), then runs `build_plan`'s
    command for 11+, or for 10 the version's default typing (`TRT_TYPING=strong` or `weak`
    chooses; fp16 falls back to strong where no float32 file is known). It changes
    to its own folder, so with the ONNX files and engine in that folder they can be copied
    anywhere together. `TRTEXEC=/path` overrides the program (JetPack puts it in
    /usr/src/tensorrt/bin).

    Args:
        onnx_path: the file of the precision (`student-fp16.onnx` for fp16), what the
            strongly typed builds read.
        engine_path: the engine the script writes.
        precision: one of `PRECISIONS`.
        float_onnx: the float32 file the weakly typed fp16 build reads; default the float32
            file beside `onnx_path` (`student.onnx`). Without one, `TRT_TYPING=weak` fails.
        workspace_mib, max_batch: as `trtexec_command` takes them (`max_batch` is `batch`).

    Raises:
        ValueError: an unknown precision, or an ONNX file not of that precision.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    _check_precision(precision)
    name, shape = _onnx_input(onnx_path)
    here = onnx_path.parent.resolve()

    def rel(path: Path) -> str:
        return path.name if path.parent.resolve() == here else str(path.resolve())

    strong = build_plan(precision, OLDEST, strongly_typed=True)
    _check_onnx_file(onnx_path, strong)
    weak = build_plan(precision, OLDEST, strongly_typed=False)
    weak_onnx: Path | None = onnx_path
    if precision == "fp16":
        if float_onnx is None and parse_file_name(onnx_path.name):
            float_onnx = sibling_file(onnx_path, "onnx", "float32")
        weak_onnx = Path(float_onnx) if float_onnx and Path(float_onnx).is_file() else None
        if weak_onnx is not None:
            _check_onnx_file(weak_onnx, weak)

    def args(plan: BuildPlan, source: Path) -> list[str]:
        return _trtexec_args(
            rel(source), rel(engine_path), plan, workspace_mib=workspace_mib, batch=max_batch,
            input_name=name, shape=shape,
        )  # fmt: skip

    newest = args(build_plan(precision, STRONG_ONLY), onnx_path)
    strong_10 = args(strong, onnx_path)
    if weak_onnx is not None:
        weak_10 = _script_lines(args(weak, weak_onnx), "    ")
        weak_note = f"{rel(weak_onnx)} with {' '.join(weak.trtexec_flags) or 'no flag'}"
    else:
        weak_10 = ['    echo "$0: no float32 ONNX file known for the weakly typed build" >&2',
                   "    exit 2"]  # fmt: skip
        weak_note = "needs the float32 ONNX file, not known here, so strongly typed"
    # Before 10.12 the weakly typed build is the default, where it has its file.
    default_10 = "weak" if weak_onnx is not None else "strong"
    note = {
        "fp32": "float32",
        "fp16": f"float16, from the float16 tensors of {onnx_path.name}",
        "int8": f"int8 from the Q/DQ nodes of {onnx_path.name} (explicit quantisation: no "
        "calibration cache)",
    }[precision]
    version_of = r"s/.*\[TensorRT v\([0-9][0-9]*\)\].*/\1/p"
    script = onnx_path.with_name(engine_path.stem + TRTEXEC_SUFFIX)
    text = "\n".join(
        [
            "#!/bin/sh",
            f"# Build the TensorRT engine {engine_path.name} on the target device (engines are",
            "# tied to the GPU and TensorRT version that build them).",
            f"# Precision: {note}.",
            f"# Input {name}: NHWC float32 RGB pixels 0..255.",
            "#",
            "# The command depends on the TensorRT version trtexec reports (the banner of",
            "# `trtexec --help`, [TensorRT vMMmmpp]; TRT_VERSION=10.3 skips the probe):",
            "#   TensorRT 11+         strongly typed, the only kind: no precision flags",
            "#   TensorRT 10.12-10.x  strongly typed with --stronglyTyped",
            f"#   TensorRT 10.0-10.11  weakly typed: {weak_note}",
            "# TRT_TYPING=strong or weak overrides the 10.x default.",
            "# TRTEXEC=/path overrides the program (JetPack puts it in /usr/src/tensorrt/bin).",
            "set -eu",
            'cd "$(dirname "$0")"',
            'trtexec="${TRTEXEC:-trtexec}"',
            'version="${TRT_VERSION:-}"',
            'if [ -z "$version" ]; then',
            f'    v="$("$trtexec" --help 2>/dev/null | sed -n \'{version_of}\' | head -n 1)"',
            '    if [ -n "$v" ] && [ "$v" -ge 100000 ]; then  # 10+: major * 10000 + minor * 100',
            '        version="$((v / 10000)).$((v / 100 % 100)).$((v % 100))"',
            '    elif [ -n "$v" ]; then  # 9 and older: major * 1000 + minor * 100 + patch',
            '        version="$((v / 1000)).$((v / 100 % 10)).$((v % 100))"',
            "    fi",
            "fi",
            'major="${version%%.*}"',
            'case "$version" in',
            '    *.*) minor="${version#*.}"; minor="${minor%%.*}" ;;',
            "    *) minor=0 ;;",
            "esac",
            'case "$major" in',
            "    '' | *[!0-9]*)",
            '        echo "$0: cannot tell the TensorRT version: \\`$trtexec --help\\` printed no'
            ' [TensorRT vNNNNNN] banner (set TRTEXEC=/path/to/trtexec, or TRT_VERSION=10.3)"'
            " >&2",
            "        exit 2 ;;",
            "esac",
            'typing="${TRT_TYPING:-}"',
            'case "$typing" in',
            "    '' | strong | weak) ;;",
            "    *) echo \"$0: TRT_TYPING is strong or weak, not '$typing'\" >&2; exit 2 ;;",
            "esac",
            'case "$minor" in',
            "    '' | *[!0-9]*) minor=0 ;;",
            "esac",
            'if [ -z "$typing" ]; then',
            '    if [ "$major" -ge 11 ] || { [ "$major" -eq 10 ] && [ "$minor" -ge 12 ]; }; then',
            "        typing=strong",
            "    else",
            f"        typing={default_10}",
            "    fi",
            "fi",
            'if [ "$major" -lt 10 ]; then',
            '    echo "$0: TensorRT $version: these files need TensorRT 10 or newer" >&2',
            "    exit 2",
            'elif [ "$major" -ge 11 ]; then',
            '    if [ "$typing" = weak ]; then',
            '        echo "$0: TensorRT $version builds strongly typed networks only; unset'
            ' TRT_TYPING" >&2',
            "        exit 2",
            "    fi",
            *_script_lines(newest, "    "),
            'elif [ "$typing" = weak ]; then',
            *weak_10,
            "else",
            *_script_lines(strong_10, "    "),
            "fi",
            'echo "$0: TensorRT $version, $typing typing: $trtexec $*" >&2',
            'exec "$trtexec" "$@"',
            "",
        ]
    )
    with atomic_path(script) as tmp:
        tmp.write_text(text, encoding="utf-8")
    os.chmod(script, script.stat().st_mode | 0o111)
    return script


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    precision: str,
    *,
    strongly_typed: bool | None = None,
    workspace_mib: int = 1024,
    max_batch: int = 1,
) -> Path:
    """Build a serialized TensorRT engine from an ONNX file with the Python API; return its path.

    The network and builder flags are `build_plan`'s for this TensorRT (`tensorrt.__version__`):
    strongly typed from 10.12, from the ONNX file of the precision (`student-fp16.onnx` for
    fp16); weakly typed before it, with the precision's builder flags (fp16 from the float32
    file). `strongly_typed` overrides the default on TensorRT 10. One optimisation profile
    covers batches 1..`max_batch` (optimal `max_batch`) for a dynamic batch dimension. The
    engine is written atomically.

    Raises:
        ValueError: an unknown precision, a TensorRT this cannot build with (older than 10,
            or weak typing on 11+), or an ONNX file not of the precision the build reads
            (checked where the `onnx` package is installed).
        RuntimeError: `tensorrt` is not importable (the message has the trtexec commands to
            run on the device instead), the ONNX parser rejected the file (with its errors),
            or the build failed.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    _check_precision(precision)
    if max_batch < 1 or workspace_mib < 1:
        raise ValueError(f"max_batch, workspace_mib must be positive: {max_batch}, {workspace_mib}")
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise RuntimeError(_missing_tensorrt(onnx_path, engine_path, precision, workspace_mib,
                                             max_batch, strongly_typed)) from exc  # fmt: skip
    plan = build_plan(precision, _version_of(trt), strongly_typed=strongly_typed)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path}: no such ONNX file")
    if importlib.util.find_spec("onnx") is not None:  # a device may have TensorRT alone
        _check_onnx_file(onnx_path, plan)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network_flags = 0  # explicit batch is the only mode from TensorRT 10 on
    for flag in plan.network_flags:  # STRONGLY_TYPED is 1 on TensorRT 10 and 0 on 11
        network_flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, flag))
    network = builder.create_network(network_flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(
            f"TensorRT's ONNX parser rejected {onnx_path}:\n  " + "\n  ".join(errors or ["?"])
        )

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    for flag in plan.builder_flags:
        member = getattr(trt.BuilderFlag, flag, None)
        if member is None:
            raise RuntimeError(
                f"TensorRT {trt.__version__} has no BuilderFlag.{flag}, which a {plan.typing} "
                f"{precision} build needs; build it strongly typed (strongly_typed=None)"
            )
        config.set_flag(member)

    profile = builder.create_optimization_profile()
    dynamic = False
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(int(d) for d in tensor.shape)
        if any(d < 0 for d in shape[1:]):
            raise RuntimeError(f"input {tensor.name!r} {shape}: only the batch may be dynamic")
        if shape and shape[0] < 0:
            dynamic = True
            rest = shape[1:]
            profile.set_shape(tensor.name, (1, *rest), (max_batch, *rest), (max_batch, *rest))
    if dynamic:
        config.add_optimization_profile(profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(
            f"TensorRT {trt.__version__} failed to build a {plan.typing} {precision} engine "
            f"from {onnx_path} (its log above says why)"
        )
    write_bytes(engine_path, bytes(serialized))
    return engine_path


def _missing_tensorrt(
    onnx_path: Path,
    engine_path: Path,
    precision: str,
    workspace_mib: int,
    max_batch: int,
    strongly_typed: bool | None,
) -> str:
    """What `build_engine` says without `tensorrt`: the trtexec commands for 10 and 11."""
    try:
        name, shape = _onnx_input(onnx_path)
    except Exception:  # the commands are still useful with the defaults
        name, shape = DEFAULT_INPUT, DEFAULT_SHAPE
    lines = []
    # The file given is the one a strongly typed build reads, so the TensorRT 10 line is
    # 10.12's (strongly typed unless asked otherwise; 10.3 accepts the same command).
    for label, version in (("TensorRT 10", STRONG_DEFAULT), ("TensorRT 11+", STRONG_ONLY)):
        if strongly_typed is False and version >= STRONG_ONLY:
            continue
        cmd = trtexec_command(
            onnx_path, engine_path, precision, version=version, strongly_typed=strongly_typed,
            workspace_mib=workspace_mib, batch=max_batch, input_name=name, shape=shape,
        )  # fmt: skip
        lines.append(f"{label}:\n  {cmd}")
    return (
        "TensorRT's Python package (tensorrt) is not installed here. Build the engine on the "
        "device with trtexec instead:\n" + "\n".join(lines)
    )


def _parser_error(error: object) -> str:
    """One ONNX parser error as text: code, description and node where TensorRT gives them."""
    try:
        desc = error.desc()  # type: ignore[attr-defined]
        code = error.code()  # type: ignore[attr-defined]
        node = error.node()  # type: ignore[attr-defined]
    except AttributeError:
        return str(error)
    return f"{code}: {desc} (node {node})"
