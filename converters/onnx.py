"""Keras model -> float ONNX; float ONNX -> float16 ONNX, -> int8 Q/DQ ONNX for TensorRT, and
-> int8 ONNX for ONNX Runtime's CPU provider.

The exported file keeps the model's contract: NHWC float32 RGB pixels 0..255 in (input
"pixels", dynamic batch), logits out (output "logits"). Normalisation is a layer inside the
model, so it is part of the graph; tf2onnx transposes to NCHW internally after it.

Export first tries Keras 3's own `model.export(format="onnx")` (tf2onnx on the TensorFlow
backend). That path hands tf2onnx the traced function unfrozen, and constants captured by the
graph (the `Normalization` layer's mean and variance are eager tensors, not variables) come out
as extra graph *inputs* nobody feeds. The result is therefore checked, and if it has more than
one free input the model is exported again by freezing the concrete function ourselves
(`convert_variables_to_constants_v2`, which folds every capture) and converting that GraphDef
with `tf2onnx.convert.from_graph_def`. The exporter used is recorded in the file's metadata
(`edgekd.exporter`).

Float16 converts the float32 file with onnxconverter-common's `convert_float_to_float16`
(`keep_io_types=True`): weights and activations become float16, and Cast nodes keep the
input float32 pixels and the logits float32, so the file takes what the float32 one takes.
It is the file a strongly typed TensorRT network (every network on TensorRT 11) builds an
fp16 engine from: precision comes from the tensors' types, not from a builder flag.

Int8 uses ONNX Runtime's static quantiser in QDQ format, in the form TensorRT's explicit
quantisation takes: symmetric int8 activations and weights (every zero point 0), per-channel
weights, biases left in float (no int32 bias DequantizeLinear), one Q/DQ pair per consumer.
On ONNX Runtime's CPU provider that file is slower than float32: symmetric int8 activations
stop ORT from folding a ReLU into the quantised Conv, so 9 of a ResNet's 16 Convs run in float
between Q/DQ pairs. The CPU flavour (`<model>-int8-cpu.onnx`, `quantize_onnx_int8_cpu`) is
quantised the way ORT's CPU kernels want it: asymmetric uint8 activations, symmetric int8
per-channel weights, int32 biases; every Conv becomes a QLinearConv with its ReLU folded in.
`convert` writes it when the file name carries the contract's CPU tag.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekd.atomic import atomic_path
from edgekd.contract import check_variant, parse_file_name, sibling_file, variant_key

if TYPE_CHECKING:
    import keras
    import onnx

log = logging.getLogger(__name__)

INPUT_NAME = "pixels"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


# --------------------------------------------------------------------------- entry point


def convert(
    model: keras.Model,
    path: str | Path,
    *,
    precision: str,
    calibration: np.ndarray | None = None,
    io_dtype: str = "float32",
    reuse: Mapping[str, Path] | None = None,
) -> Path:
    """The export back-end's entry point (the signature every converter shares): `model` as
    a float32 ONNX file at `path`, a float16 one, or an int8 Q/DQ one calibrated on
    `calibration`; an int8 `path` named with the CPU tag (`student-int8-cpu.onnx`) gets the
    ONNX Runtime CPU flavour (`quantize_onnx_int8_cpu`), any other int8 name the TensorRT one.

    float16 and int8 convert the model's float32 ONNX file: `reuse["onnx/float32"]` when
    this export already wrote it, else one written now beside `path` (`<model>.onnx`). ONNX
    files take and give float32 tensors, so `io_dtype` must be float32.
    """
    path = Path(path)
    check_variant("onnx", precision)
    if io_dtype != "float32":
        raise ValueError(f"ONNX files have float32 input and output, not {io_dtype!r}")
    if precision == "float32":
        return export_onnx(model, path)
    if precision == "int8" and calibration is None:
        raise ValueError("precision 'int8' needs calibration images (N, H, W, 3)")
    float_path = (reuse or {}).get(variant_key("onnx", "float32"))
    if float_path is None:
        float_path = export_onnx(model, sibling_file(path, "onnx", "float32"))
    if precision == "float16":
        return convert_onnx_float16(float_path, path)
    parsed = parse_file_name(path.name)
    if parsed is not None and parsed.cpu:
        return quantize_onnx_int8_cpu(float_path, path, calibration)
    return quantize_onnx_int8(float_path, path, calibration)


# --------------------------------------------------------------------------- float export


def export_onnx(model: keras.Model, path: str | Path, *, opset: int = 17) -> Path:
    """Write `model` as a float ONNX file at `path` (atomically) and return the path.

    Args:
        model: a single-input, single-output Keras model taking float32 pixels (N, H, W, C).
        path: destination, normally ending in `.onnx`.
        opset: ONNX opset of the default domain.

    Raises:
        ValueError: the model does not have exactly one input and one output.
        RuntimeError: neither exporter produced a usable graph (the message has both errors).
    """
    import onnx

    path = Path(path)
    input_shape = _model_input_shape(model)
    errors: list[str] = []
    with atomic_path(path) as tmp:
        proto: onnx.ModelProto | None = None
        exporter = ""
        for exporter, export in (("keras", _export_keras), ("tf2onnx", _export_frozen)):
            try:
                with _quiet():
                    proto = export(model, input_shape, opset, tmp)
                _check_free_inputs(proto)
                break
            except Exception as exc:  # any failure: try the next exporter
                errors.append(f"{exporter}: {type(exc).__name__}: {exc}")
                log.info("ONNX export via %s not usable: %s", exporter, exc)
                proto = None
        if proto is None:
            raise RuntimeError("ONNX export failed:\n  " + "\n  ".join(errors))
        _finalize(proto, exporter=exporter, opset=opset)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
    return path


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence tf2onnx's INFO chatter, TF's v1-API deprecation notices, Keras' numpy patch."""
    loggers = [logging.getLogger(n) for n in ("tf2onnx", "tensorflow")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _model_input_shape(model: keras.Model) -> tuple[int | None, ...]:
    """The model's single input shape with a free batch dimension."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(
            f"ONNX export needs one input and one output; {model.name} has "
            f"{len(model.inputs)} and {len(model.outputs)}"
        )
    shape = tuple(model.inputs[0].shape)
    return (None, *shape[1:])


def _export_keras(
    model: keras.Model, input_shape: tuple[int | None, ...], opset: int, tmp: Path
) -> onnx.ModelProto:
    """Keras 3's own exporter (ExportArchive + tf2onnx.from_function on TensorFlow)."""
    import keras
    import onnx

    signature = [keras.InputSpec(shape=input_shape, dtype="float32", name=INPUT_NAME)]
    model.export(
        str(tmp), format="onnx", input_signature=signature, opset_version=opset, verbose=False
    )
    return onnx.load(str(tmp))


def _export_frozen(
    model: keras.Model, input_shape: tuple[int | None, ...], opset: int, tmp: Path
) -> onnx.ModelProto:
    """Freeze `model(x, training=False)` to a GraphDef, then tf2onnx on the GraphDef."""
    import tensorflow as tf
    import tf2onnx
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    signature = [tf.TensorSpec(input_shape, tf.float32, name=INPUT_NAME)]
    fn = tf.function(lambda x: model(x, training=False), input_signature=signature)
    frozen = convert_variables_to_constants_v2(
        fn.get_concrete_function(), lower_control_flow=False, aggressive_inlining=True
    )
    inputs = [t.name for t in frozen.inputs if t.dtype != tf.resource]
    outputs = [t.name for t in frozen.outputs]
    proto, _ = tf2onnx.convert.from_graph_def(
        frozen.graph.as_graph_def(), input_names=inputs, output_names=outputs, opset=opset
    )
    return proto


def _check_free_inputs(proto: onnx.ModelProto) -> None:
    """One graph input that is not an initializer, one output: else the export is broken."""
    inits = {i.name for i in proto.graph.initializer}
    free = [i.name for i in proto.graph.input if i.name not in inits]
    if len(free) != 1 or len(proto.graph.output) != 1:
        raise ValueError(
            f"graph has free inputs {free} and {len(proto.graph.output)} outputs; expected one "
            "each (captured constants left as inputs?)"
        )


def _finalize(proto: onnx.ModelProto, *, exporter: str, opset: int) -> None:
    """Name the input "pixels" and output "logits", the batch dim "batch"; add metadata."""
    graph = proto.graph
    inits = {i.name for i in graph.initializer}
    (inp,) = [i for i in graph.input if i.name not in inits]
    _rename_tensor(graph, inp.name, INPUT_NAME)
    _rename_tensor(graph, graph.output[0].name, OUTPUT_NAME)
    for value in (inp, graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = BATCH_DIM
    meta = {
        "edgekd.exporter": exporter,
        "edgekd.input": "NHWC float32 RGB pixels 0..255",
        "edgekd.output": "float32 logits (N, classes)",
        "edgekd.opset": str(opset),
    }
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in meta.items():
        prop = existing.get(key) or proto.metadata_props.add()
        prop.key, prop.value = key, value


def _rename_tensor(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename tensor `old` everywhere in `graph`, unless `new` is already taken."""
    if old == new:
        return
    taken = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    taken |= {i.name for i in graph.initializer}
    if new in taken:
        log.warning("cannot rename ONNX tensor %r to %r: name in use", old, new)
        return
    for node in graph.node:
        node.input[:] = [new if x == old else x for x in node.input]
        node.output[:] = [new if x == old else x for x in node.output]
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.name == old:
            value.name = new


# --------------------------------------------------------------------------- float16

FLOAT16_MAX = 65504.0
"""The largest finite float16: weights beyond it saturate (onnxconverter-common's default
clip is 1e4, which would cut pixel-scale constants such as a variance of 1e4 or more)."""


def convert_onnx_float16(float_path: str | Path, path: str | Path) -> Path:
    """Write a float16 copy of the float32 ONNX file `float_path` at `path` and return it.

    Initializers and activations become float16; the graph input and output keep their
    types (Cast nodes inside the graph), so the copy takes NHWC float32 pixels 0..255 and
    gives float32 logits like the original. Ops onnxconverter-common keeps in float32
    (its block list) stay float32 between Casts.

    Raises:
        ImportError: onnxconverter-common is not installed (the message says what to install).
        ValueError: `float_path` holds no float32 weights (already float16, or Q/DQ int8).
    """
    import onnx

    try:
        from onnxconverter_common import float16
    except ImportError as exc:
        raise ImportError(
            "float16 ONNX export needs onnxconverter-common: pip install onnxconverter-common "
            "(or edgekd[export])"
        ) from exc

    float_path, path = Path(float_path), Path(path)
    found = onnx_precision(float_path)
    if found != "float32":
        raise ValueError(f"{float_path}: expected a float32 ONNX file to convert, found {found}")
    model = onnx.load(str(float_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converted = float16.convert_float_to_float16(
            model, keep_io_types=True, max_finite_val=FLOAT16_MAX
        )
    # Weights under 1e-7 in magnitude become +-1e-7 (harmless, and warned about per tensor);
    # only saturation at float16's largest value changes what the model computes.
    saturated = [str(w.message) for w in caught if str(w.message).endswith(f"{FLOAT16_MAX}")]
    if saturated:
        log.warning("%s: weights beyond float16's range saturate: %s", path, "; ".join(saturated))
    meta = {p.key: p for p in converted.metadata_props}
    prop = meta.get("edgekd.weights") or converted.metadata_props.add()
    prop.key, prop.value = "edgekd.weights", "float16 (float32 input and output)"
    onnx.checker.check_model(converted)
    with atomic_path(path) as tmp:
        onnx.save(converted, str(tmp))
    return path


def onnx_precision(path: str | Path) -> str:
    """The contract precision an ONNX file's contents say: "int8" with Q/DQ nodes,
    "float16" with float16 weights, else "float32" (what TensorRT's strong typing reads)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node):
        return "int8"
    weights = [i.data_type for i in graph.initializer]
    weights += [
        a.t.data_type
        for n in graph.node
        if n.op_type == "Constant"
        for a in n.attribute
        if a.name == "value"
    ]
    return "float16" if onnx.TensorProto.FLOAT16 in weights else "float32"


# --------------------------------------------------------------------------- int8 Q/DQ


class _PixelReader:
    """Calibration batches for ONNX Runtime: uint8 images fed as float32 pixels."""

    def __init__(self, images: np.ndarray, input_name: str, batch_size: int) -> None:
        self.images = images
        self.input_name = input_name
        self.batch_size = batch_size
        self._it = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self.images), self.batch_size):
            chunk = self.images[start : start + self.batch_size]
            yield {self.input_name: np.ascontiguousarray(chunk, dtype=np.float32)}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._batches()


def quantize_onnx_int8(
    float_path: str | Path,
    path: str | Path,
    calibration: np.ndarray,
    *,
    per_channel: bool = True,
    method: str = "minmax",
    batch_size: int = 16,
    percentile: float = 99.999,
) -> Path:
    """Write an int8 Q/DQ copy of the float ONNX file `float_path` at `path` and return it.

    Activations are calibrated on `calibration` (uint8 or float pixels (N, H, W, 3), fed as
    float32 in batches of `batch_size`). The model's input stays float32 pixels: the first
    QuantizeLinear is inside the graph.

    Args:
        float_path: a float model from `export_onnx`.
        path: destination (written atomically).
        calibration: representative images, ideally class-balanced, a few hundred.
        per_channel: per-output-channel weight scales (TensorRT's recommendation).
        method: activation range calibration, one of `CALIBRATION_METHODS`.
        batch_size: images per calibration run.
        percentile: the percentile kept when `method="percentile"`.

    Raises:
        ValueError: empty or wrongly shaped calibration images, an unknown method.
    """
    from onnxruntime.quantization import QuantFormat, QuantType

    float_path, path = Path(float_path), Path(path)
    images = _check_calibration(calibration, method, batch_size)

    extra_options: dict[str, Any] = {
        "ActivationSymmetric": True,  # zero point 0 for activations (TensorRT needs it)
        "WeightSymmetric": True,
        "QuantizeBias": False,  # biases stay float: no int32 DequantizeLinear
        "DedicatedQDQPair": True,  # TensorRT cannot share one Q/DQ pair between consumers
    }
    return _quantize_static(
        float_path, path, images, method=method, batch_size=batch_size, percentile=percentile,
        quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8, per_channel=per_channel,
        extra_options=extra_options,
    )  # fmt: skip


def _quantize_static(
    float_path: Path, path: Path, images: np.ndarray, *, method: str, batch_size: int,
    percentile: float, quant_format: Any, activation_type: Any, per_channel: bool,
    extra_options: dict[str, Any], reduce_range: bool = False,
) -> Path:  # fmt: skip
    """onnxruntime's `quantize_static` on the pre-processed float file, written atomically:
    the step both int8 flavours share; they differ in format, activations and options."""
    from onnxruntime.quantization import QuantType, quantize_static

    if method == "percentile":
        extra_options = {**extra_options, "CalibPercentile": float(percentile)}
    with tempfile.TemporaryDirectory(prefix="edgekd-quant-") as work:
        source = _pre_process(float_path, Path(work) / "pre.onnx")
        reader = _PixelReader(images, _input_name(source), batch_size)
        with atomic_path(path) as tmp:
            quantize_static(
                str(source),
                str(tmp),
                reader,
                quant_format=quant_format,
                activation_type=activation_type,
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
                reduce_range=reduce_range,
                calibrate_method=_calibration_method(method),
                extra_options=extra_options,
            )
    return path


CPU_QUANT_FORMATS = ("qoperator", "qdq")


def quantize_onnx_int8_cpu(
    float_path: str | Path,
    path: str | Path,
    calibration: np.ndarray,
    *,
    quant_format: str = "qdq",
    method: str = "minmax",
    batch_size: int = 16,
    percentile: float = 99.999,
) -> Path:
    """Write the ONNX Runtime CPU flavour of int8 (`<model>-int8-cpu.onnx`) and return it.

    Where `quantize_onnx_int8` writes what TensorRT takes (symmetric int8 activations, every
    zero point 0), this file is what ONNX Runtime's CPU kernels are fast on: asymmetric uint8
    activations (a calibrated zero point per tensor, so a ReLU's output uses all 256 levels and
    the ReLU folds into the quantised Conv), symmetric int8 per-channel weights, int32 biases.
    `quant_format` "qdq" (the default, ONNX Runtime's recommended format, which other
    execution providers read too) writes QuantizeLinear/DequantizeLinear pairs that ORT
    turns into QLinearConv / QLinearAdd / ... when it loads the file; "qoperator" writes
    those nodes directly. On the ResNet students both optimise to the same graph (all 16
    Convs QLinearConv, no ReLU left) and run at the same speed on x86; the TensorRT file
    keeps 9 of 16 Convs in float with 13 standalone ReLUs (benchmarks/onnx_int8_cpu.py).

    Weights use 7 bits (onnxruntime's `reduce_range`, within [-64, 63]). On x86 CPUs without
    VNNI (AVX2, AVX-512F), ORT's uint8 x int8 kernels add pairs of products in int16, which
    saturates when both are large (255 x 127 x 2 > 32767): the full-range file then differs
    from its own Q/DQ arithmetic by up to a logit or more and lost 4 points on a width-8
    student. 7-bit weights cannot saturate there; per channel, they cost no measurable
    accuracy (benchmarks/onnx_int8_saturation.py).

    Args: as `quantize_onnx_int8`, plus `quant_format`, one of `CPU_QUANT_FORMATS`.

    Raises:
        ValueError: empty or wrongly shaped calibration images, an unknown method or format.
    """
    from onnxruntime.quantization import QuantFormat, QuantType

    float_path, path = Path(float_path), Path(path)
    formats = {"qoperator": QuantFormat.QOperator, "qdq": QuantFormat.QDQ}
    if quant_format not in formats:
        raise ValueError(f"unknown quant_format {quant_format!r}; expected {CPU_QUANT_FORMATS}")
    images = _check_calibration(calibration, method, batch_size)
    _quantize_static(
        float_path, path, images, method=method, batch_size=batch_size, percentile=percentile,
        quant_format=formats[quant_format], activation_type=QuantType.QUInt8, per_channel=True,
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        reduce_range=True,
    )  # fmt: skip
    return path


def _check_calibration(calibration: np.ndarray, method: str, batch_size: int) -> np.ndarray:
    """The calibration images as an array, after checking them and the method."""
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; expected {CALIBRATION_METHODS}")
    images = np.asarray(calibration)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"calibration images must be (N, H, W, C) with N > 0, got {images.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return images


def _calibration_method(name: str) -> Any:
    """onnxruntime's CalibrationMethod for one of `CALIBRATION_METHODS`."""
    from onnxruntime.quantization import CalibrationMethod

    return {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[name]


def _input_name(path: Path) -> str:
    """The single free input of an ONNX file."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    names = [i.name for i in graph.input if i.name not in inits]
    if len(names) != 1:
        raise ValueError(f"{path}: expected one input, found {names}")
    return names[0]


def _pre_process(float_path: Path, out: Path) -> Path:
    """ONNX Runtime's documented pre-step (shape inference + graph optimisation).

    Symbolic shape inference needs sympy; without it that stage is skipped. If the whole
    step fails the float model is quantised as it is (the quantiser runs its own shape
    inference), which costs nothing in correctness.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(
            str(float_path),
            str(out),
            skip_symbolic_shape=importlib.util.find_spec("sympy") is None,
        )
    except Exception as exc:  # optional step
        log.warning("quant_pre_process failed (%r); quantising the raw model", exc)
        return float_path
    return out if out.is_file() else float_path


# --------------------------------------------------------------------------- inspection


def describe_qdq(path: str | Path) -> dict[str, Any]:
    """What the Q/DQ nodes of an ONNX file look like: the facts TensorRT cares about.

    Returns a JSON-ready dict:
        quantize_linear, dequantize_linear: node counts.
        zero_points: sorted distinct zero-point values over all Q/DQ nodes.
        zero_point_dtypes: sorted distinct dtypes of those zero points ("int8", ...);
            a node without a zero point counts as "uint8" (the ONNX default).
        quantized_dtypes: sorted dtypes of the integer constants fed to DequantizeLinear.
        int32_bias_dq: whether any DequantizeLinear reads int32 (a quantised bias).
        weight_dq: DequantizeLinear nodes reading a constant (weights, quantised constants).
        per_channel_weight_dq: those with a 1-D scale longer than 1: per-channel weights.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(attr.t)
    elem_type = {i.name: i.data_type for i in graph.initializer}
    for value in (*graph.input, *graph.value_info):
        elem_type.setdefault(value.name, value.type.tensor_type.elem_type)

    def dtype_of(name: str) -> str:
        if name in consts:
            return consts[name].dtype.name
        code = elem_type.get(name, 0)
        return onnx.helper.tensor_dtype_to_np_dtype(code).name if code else "unknown"

    n_q = n_dq = weight_dq = per_channel = 0
    int32_bias = False
    zero_points: set[int] = set()
    zp_dtypes: set[str] = set()
    quantized_dtypes: set[str] = set()
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if node.op_type == "QuantizeLinear":
            n_q += 1
        else:
            n_dq += 1
        zp_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if zp_name is None:
            zp_dtypes.add("uint8")
            zero_points.add(0)
        else:
            zp_dtypes.add(dtype_of(zp_name))
            if zp_name in consts:
                zero_points.update(int(v) for v in np.ravel(consts[zp_name]))
        if node.op_type == "DequantizeLinear":
            x = node.input[0]
            x_dtype = dtype_of(x)
            int32_bias |= x_dtype == "int32"
            if x in consts:
                weight_dq += 1
                quantized_dtypes.add(x_dtype)
                scale = consts.get(node.input[1])
                if scale is not None and scale.ndim == 1 and scale.size > 1:
                    per_channel += 1
    return {
        "quantize_linear": n_q,
        "dequantize_linear": n_dq,
        "zero_points": sorted(zero_points),
        "zero_point_dtypes": sorted(zp_dtypes),
        "quantized_dtypes": sorted(quantized_dtypes),
        "int32_bias_dq": int32_bias,
        "weight_dq": weight_dq,
        "per_channel_weight_dq": per_channel,
    }


def describe_ort_cpu_graph(path: str | Path) -> dict[str, int]:
    """What ONNX Runtime's CPU provider makes of an ONNX file once it has optimised it.

    Returns a JSON-ready dict:
        convs: Conv nodes (any domain: ONNX, NCHWc, QLinearConv).
        int8_convs: those that run as QLinearConv (int8 kernels).
        relu_fused: float Convs with a ReLU folded in (the `activation` attribute).
        relu_left: ReLU nodes still standalone. In an int8 file a ReLU can fold only into a
            QLinearConv whose uint8 output range starts at 0 (asymmetric activations).
    """
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="edgekd-ortopt-") as work:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(Path(work) / "optimized.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
    convs = [n for n in graph.node if n.op_type in ("Conv", "FusedConv", "QLinearConv")]
    fused = [
        n
        for n in convs
        if any(a.name == "activation" and a.s.lower() == b"relu" for a in n.attribute)
    ]
    return {
        "convs": len(convs),
        "int8_convs": sum(n.op_type == "QLinearConv" for n in convs),
        "relu_fused": len(fused),
        "relu_left": sum(n.op_type == "Relu" for n in graph.node),
    }


INT8_FLAVOURS: dict[str, dict[str, str]] = {
    "tensorrt": {
        "target": "TensorRT (explicit quantisation)",
        "quantizer": "onnxruntime.quantization.quantize_static, QDQ",
        "activations": "int8 symmetric (zero point 0)",
        "weights": "int8 symmetric, per channel",
        "bias": "float",
        "calibration": "minmax",
    },
    "cpu": {
        "target": "ONNX Runtime CPU execution provider",
        "quantizer": "onnxruntime.quantization.quantize_static, QDQ",
        "activations": "uint8 asymmetric (calibrated zero points)",
        "weights": "int8 symmetric, per channel, 7-bit range [-64, 63] (no u8s8 saturation on x86)",
        "bias": "int32",
        "calibration": "minmax",
    },
}
"""What the card of each int8 ONNX flavour says about how it was quantised."""


def describe_int8(path: str | Path, *, flavour: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Q/DQ facts, quantisation facts) for an int8 ONNX file's card: `describe_qdq`, and
    `INT8_FLAVOURS[flavour]` with what ORT's CPU provider makes of the file
    (`describe_ort_cpu_graph`, under "ort_cpu_graph")."""
    if flavour not in INT8_FLAVOURS:
        raise ValueError(f"unknown int8 ONNX flavour {flavour!r}; expected {tuple(INT8_FLAVOURS)}")
    info: dict[str, Any] = {"flavour": flavour, **INT8_FLAVOURS[flavour]}
    try:
        info["ort_cpu_graph"] = describe_ort_cpu_graph(path)
    except Exception as exc:  # descriptive only: a file ORT cannot optimise still gets a card
        log.warning("%s: could not inspect ONNX Runtime's optimised graph: %r", path, exc)
    return describe_qdq(path), info
