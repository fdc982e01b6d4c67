"""ONNX -> TensorRT engine, with the TensorRT 10 Python API or as a `trtexec` command line.

An engine is specific to the GPU and TensorRT version that build it, so the usual place to
build it is the device itself. Where the `tensorrt` package is missing (this machine, most
training hosts) `build_engine` raises with the equivalent `trtexec` command, and
`write_trtexec_script` leaves that command in a script beside the ONNX file.

Precisions: "fp32" (no flag), "fp16" (`--fp16` / `BuilderFlag.FP16`), "int8" for the Q/DQ
file from `edgekd.converters.onnx.quantize_onnx_int8`: explicit quantisation, so the scales
come from the Q/DQ nodes and no calibration cache is needed; `--int8` plus `--fp16` lets the
layers outside Q/DQ pairs run in half precision rather than float32.

Written against TensorRT 10 (NVIDIA's Python API docs and the 8.x -> 10.x trtexec migration
guide: `--workspace` became `--memPoolSize=workspace:<size>`, explicit batch is the default,
`--skipInference` builds without benchmarking). TensorRT 11 removes the FP16/INT8 builder
flags (strongly typed networks only); `build_engine` then relies on the Q/DQ nodes for int8
and refuses fp16, which would need a float16 ONNX file.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from edgekd.atomic import atomic_path, write_bytes
from edgekd.contract import FORMATS, TRTEXEC_SUFFIX, check_variant, sibling_file, variant_key
from edgekd.converters import onnx as onnx_converter

if TYPE_CHECKING:
    import keras
    import numpy as np

# TensorRT's own names (trtexec flags) for the contract's TensorRT precisions.
TRT_PRECISION = {
    p: {"float32": "fp32", "float16": "fp16"}.get(p, p) for p in FORMATS["tensorrt"].precisions
}
PRECISIONS = tuple(TRT_PRECISION.values())
DEFAULT_INPUT = "pixels"
DEFAULT_SHAPE = (1, 32, 32, 3)


def tensorrt_available() -> bool:
    """Whether the `tensorrt` Python package can be imported here."""
    try:
        return importlib.util.find_spec("tensorrt") is not None
    except (ImportError, ValueError):  # a stub in sys.modules without a spec
        return False


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown TensorRT precision {precision!r}; expected one of {PRECISIONS}")


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
    engine at `path` from the model's ONNX file, float (float32, float16) or int8 Q/DQ.

    The ONNX file is `reuse`'s when this export wrote it, else the one beside `path` (an
    earlier export's), else written there now (int8 calibrated on `calibration`). With the
    `tensorrt` package the engine is built here; without it the `trtexec` script that
    builds it on the device is written, and its path returned instead.
    """
    check_variant("tensorrt", precision)
    if io_dtype != "float32":
        raise ValueError(f"TensorRT engines here have float32 input and output, not {io_dtype!r}")
    onnx_precision = "int8" if precision == "int8" else "float32"
    onnx_path = (reuse or {}).get(variant_key("onnx", onnx_precision))
    if onnx_path is None:
        onnx_path = sibling_file(path, "onnx", onnx_precision)
        if not onnx_path.is_file():
            onnx_converter.convert(
                model, onnx_path, precision=onnx_precision, calibration=calibration, reuse=reuse
            )
    if tensorrt_available():
        return build_engine(onnx_path, path, TRT_PRECISION[precision])
    return write_trtexec_script(onnx_path, path, TRT_PRECISION[precision])


def _dims(shape: Sequence[int | None], batch: int) -> str:
    """The shape as "BxHxWxC" with the batch dimension replaced by `batch`."""
    rest = [int(d) if d is not None else -1 for d in shape[1:]]
    if any(d < 1 for d in rest):
        raise ValueError(f"only the batch dimension may be dynamic, got shape {tuple(shape)}")
    return "x".join(str(d) for d in (batch, *rest))


def _trtexec_args(
    onnx_path: str | Path,
    engine_path: str | Path,
    precision: str,
    *,
    workspace_mib: int,
    batch: int,
    input_name: str,
    shape: Sequence[int | None],
) -> list[str]:
    """trtexec's arguments (without the program name), one list item per argument."""
    _check_precision(precision)
    if batch < 1 or workspace_mib < 1:
        raise ValueError(f"batch and workspace_mib must be positive, got {batch}, {workspace_mib}")
    args = [f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    if precision == "fp16":
        args.append("--fp16")
    elif precision == "int8":
        args += ["--int8", "--fp16"]  # Q/DQ scales; fp16 for what Q/DQ leaves in float
    args.append(f"--memPoolSize=workspace:{workspace_mib}M")
    args += [
        f"--minShapes={input_name}:{_dims(shape, 1)}",
        f"--optShapes={input_name}:{_dims(shape, batch)}",
        f"--maxShapes={input_name}:{_dims(shape, batch)}",
        "--skipInference",
    ]
    return args


def trtexec_command(
    onnx_path: str | Path,
    engine_path: str | Path,
    precision: str,
    *,
    workspace_mib: int = 1024,
    batch: int = 1,
    input_name: str = DEFAULT_INPUT,
    shape: Sequence[int | None] = DEFAULT_SHAPE,
) -> str:
    """The trtexec (TensorRT 10) command line that builds the engine `build_engine` would.

    Args:
        onnx_path, engine_path: the ONNX file read and the engine written.
        precision: one of `PRECISIONS`.
        workspace_mib: builder workspace memory pool, MiB.
        batch: largest (and optimal) batch of the dynamic-batch profile; the smallest is 1.
        input_name: the ONNX input ("pixels" for files from `export_onnx`).
        shape: the input shape; its first (batch) entry is ignored.
    """
    args = _trtexec_args(
        onnx_path, engine_path, precision, workspace_mib=workspace_mib, batch=batch,
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


def write_trtexec_script(
    onnx_path: str | Path,
    engine_path: str | Path,
    precision: str,
    *,
    workspace_mib: int = 1024,
    max_batch: int = 1,
) -> Path:
    """Write `<engine stem>.trtexec.sh` beside the ONNX file and return its path.

    The script builds the engine on the device: it changes to its own folder, so with the
    ONNX file and engine in that folder the pair can be copied anywhere. `TRTEXEC=/path`
    overrides the program (JetPack puts it in /usr/src/tensorrt/bin).
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    _check_precision(precision)
    name, shape = _onnx_input(onnx_path)
    here = onnx_path.parent.resolve()
    onnx_arg = onnx_path.name
    engine_arg = (
        engine_path.name if engine_path.parent.resolve() == here else str(engine_path.resolve())
    )
    args = _trtexec_args(
        onnx_arg, engine_arg, precision, workspace_mib=workspace_mib, batch=max_batch,
        input_name=name, shape=shape,
    )  # fmt: skip
    note = {
        "fp32": "float32",
        "fp16": "float16",
        "int8": "int8 from the file's Q/DQ nodes (explicit quantisation: no calibration cache)",
    }[precision]
    script = onnx_path.with_name(engine_path.stem + TRTEXEC_SUFFIX)
    text = "\n".join(
        [
            "#!/bin/sh",
            f"# Build the TensorRT engine {engine_path.name} from {onnx_path.name} on the target",
            "# device (TensorRT 10 trtexec; engines are tied to the GPU and TensorRT version).",
            f"# Precision: {note}. Input {name}: NHWC float32 RGB pixels 0..255.",
            "set -eu",
            'cd "$(dirname "$0")"',
            '"${TRTEXEC:-trtexec}" \\',
            *(f"    {shlex.quote(a)} \\" for a in args[:-1]),
            f"    {shlex.quote(args[-1])}",
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
    workspace_mib: int = 1024,
    max_batch: int = 1,
) -> Path:
    """Build a serialized TensorRT engine from an ONNX file with the Python API; return its path.

    One optimisation profile covers batches 1..`max_batch` (optimal `max_batch`) for a
    dynamic batch dimension. The engine is written atomically.

    Raises:
        ValueError: an unknown precision.
        RuntimeError: `tensorrt` is not importable (the message has the trtexec command to
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
        try:
            name, shape = _onnx_input(onnx_path)
        except Exception:  # the command is still useful with the defaults
            name, shape = DEFAULT_INPUT, DEFAULT_SHAPE
        cmd = trtexec_command(
            onnx_path, engine_path, precision, workspace_mib=workspace_mib, batch=max_batch,
            input_name=name, shape=shape,
        )  # fmt: skip
        raise RuntimeError(
            "TensorRT's Python package (tensorrt) is not installed here. Build the engine on "
            f"the device with trtexec instead:\n  {cmd}"
        ) from exc
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path}: no such ONNX file")

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(
            f"TensorRT's ONNX parser rejected {onnx_path}:\n  " + "\n  ".join(errors or ["?"])
        )

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    for flag in {"fp32": (), "fp16": ("FP16",), "int8": ("INT8", "FP16")}[precision]:
        member = getattr(trt.BuilderFlag, flag, None)
        if member is not None:
            config.set_flag(member)
        elif flag == "FP16" and precision == "fp16":  # TensorRT 11: strongly typed only
            raise RuntimeError(
                "this TensorRT has no FP16 builder flag (strongly typed networks only); "
                "convert the ONNX file to float16 and build it as fp32"
            )

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
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} ({precision})")
    write_bytes(engine_path, bytes(serialized))
    return engine_path


def _parser_error(error: object) -> str:
    """One ONNX parser error as text: code, description and node where TensorRT gives them."""
    try:
        desc = error.desc()  # type: ignore[attr-defined]
        code = error.code()  # type: ignore[attr-defined]
        node = error.node()  # type: ignore[attr-defined]
    except AttributeError:
        return str(error)
    return f"{code}: {desc} (node {node})"
