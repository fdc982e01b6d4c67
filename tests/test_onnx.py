"""ONNX export, float16 and int8 Q/DQ against Keras, the ONNX Runtime runner, the TensorRT
converter and `edgekd export` writing float16 ONNX files and the scripts that build engines
from them, and a run without TensorFlow. TensorRT's command lines and API calls per version
are pinned in test_tensorrt_build.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekd.contract import read_card
from edgekd.converters import tensorrt as trt_conv
from edgekd.converters.onnx import (
    _check_free_inputs,
    convert,
    convert_onnx_float16,
    describe_ort_cpu_graph,
    describe_qdq,
    export_onnx,
    onnx_precision,
    quantize_onnx_int8,
    quantize_onnx_int8_cpu,
)
from edgekd.device.runtime import load_runner
from edgekd.device.runtime.onnx import OnnxRunner
from edgekd.export.exporter import export_model
from edgekd.recipe import ExportConfig
from edgekd.training.models import build_model

REPO = Path(__file__).resolve().parents[1]


def _toy(seed: int = 0, n: int = 240) -> tuple[np.ndarray, np.ndarray]:
    """Images whose class is the brightest colour channel: learnt in a few epochs."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n).astype(np.int32)
    images = rng.integers(0, 120, (n, 16, 16, 3))
    images[np.arange(n), :, :, labels] += 120
    return images.astype(np.uint8), labels


@pytest.fixture(scope="module")
def toy_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = build_model("resnet10", num_classes=3, width=4, input_shape=(16, 16, 3))
    model.compile(
        keras.optimizers.SGD(0.05, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = _toy()
    model.fit(x.astype("float32"), y, batch_size=16, epochs=4, verbose=0)
    return model


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return _toy(1, 96)[0]


@pytest.fixture(scope="module")
def exported(toy_model, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(float32 file, int8 Q/DQ file calibrated on images other than the test ones,
    float16 file)."""
    out = tmp_path_factory.mktemp("onnx")
    float_path = export_onnx(toy_model, out / "m.onnx")
    calib = _toy(2, 64)[0]
    int8_path = quantize_onnx_int8(float_path, out / "m-int8.onnx", calib)
    return float_path, int8_path, convert_onnx_float16(float_path, out / "m-fp16.onnx")


# ------------------------------------------------------------------------------ float


def test_float_onnx_matches_keras(toy_model, exported, images):
    float_path = exported[0]
    reference = toy_model.predict(images.astype("float32"), verbose=0)
    one = OnnxRunner(float_path, threads=1, providers=["CPUExecutionProvider"])
    four = OnnxRunner(float_path, threads=1, batch_size=4)
    np.testing.assert_allclose(one.predict(images), reference, atol=1e-4)
    np.testing.assert_allclose(four.predict(images), reference, atol=1e-4)
    np.testing.assert_array_equal(four.predict(images.astype("float32")), four.predict(images))
    assert one.predict(images).dtype == np.float32 and one.predict(images).shape == (96, 3)
    assert one.predict(images[:0]).shape == (0, 3)
    assert one.runtime == "onnxruntime" and one.providers == ["CPUExecutionProvider"]
    # The contract: NHWC float32 pixels with a dynamic batch in, logits out.
    assert one.input.name == "pixels" and one.input.shape == (None, 16, 16, 3)
    assert one.input.dtype == "float32" and one.input.scale is None
    assert one.output.name == "logits" and one.output.shape == (None, 3)


def test_float_file_declares_its_contract(exported):
    model = onnx.load(str(exported[0]))
    (inp,) = model.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [16, 16, 3]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["edgekd.exporter"] in ("keras", "tf2onnx")
    assert "NHWC" in meta["edgekd.input"]
    assert not [n for n in model.graph.node if n.op_type.startswith(("Quantize", "Dequantize"))]


def test_load_runner_dispatches_and_checks(exported, images):
    runner = load_runner(exported[0], threads=1, batch_size=8)
    assert isinstance(runner, OnnxRunner) and runner.batch_size == 8
    with pytest.raises(ValueError, match="the model takes"):
        runner.predict(images[:, :8])
    with pytest.raises(ValueError, match="batch_size"):
        OnnxRunner(exported[0], batch_size=0)


def test_an_export_with_unfed_inputs_is_refused():
    """What Keras' own exporter produces when constants are captured: caught, not shipped."""
    x = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [None, 3])
    mean = helper.make_tensor_value_info("mean", TensorProto.FLOAT, [3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])
    graph = helper.make_graph(
        [helper.make_node("Sub", ["pixels", "mean"], ["y"])], "g", [x, mean], [y]
    )
    with pytest.raises(ValueError, match="free inputs"):
        _check_free_inputs(helper.make_model(graph))


# ------------------------------------------------------------------------------ float16


def test_float16_file_runs_close_to_the_float32_one(toy_model, exported, images):
    """Float16 weights and activations, the float32 file's contract at the edges."""
    float_path, _, half_path = exported
    reference = OnnxRunner(float_path, threads=1, batch_size=32).predict(images)
    runner = OnnxRunner(half_path, threads=1, batch_size=32)
    scores = runner.predict(images)
    assert runner.input.name == "pixels" and runner.input.shape == (None, 16, 16, 3)
    assert runner.input.dtype == "float32" and runner.output.dtype == "float32"
    assert scores.dtype == np.float32 and scores.shape == (96, 3)
    # float16 keeps ~3 significant digits: logits of size ~1 agree to a few 1e-3.
    spread = float(np.abs(reference).max())
    np.testing.assert_allclose(scores, reference, atol=1e-2 * max(spread, 1.0))
    assert (scores.argmax(1) == reference.argmax(1)).mean() >= 0.98
    assert not np.array_equal(scores, reference)  # really rounded


def test_float16_file_holds_float16_weights_and_keeps_its_io(exported):
    model = onnx.load(str(exported[2]))
    graph = model.graph
    weights = {i.data_type for i in graph.initializer}
    assert TensorProto.FLOAT16 in weights and TensorProto.FLOAT not in weights
    convs = [i for i in graph.initializer if len(i.dims) == 4]  # the conv kernels
    assert convs and all(i.data_type == TensorProto.FLOAT16 for i in convs)
    (inp,), (out,) = graph.input, graph.output
    assert (inp.name, out.name) == ("pixels", "logits")
    assert inp.type.tensor_type.elem_type == out.type.tensor_type.elem_type == TensorProto.FLOAT
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [16, 16, 3]
    casts = [n for n in graph.node if n.op_type == "Cast"]
    assert {n.input[0] for n in casts} >= {"pixels"} and "logits" in {n.output[0] for n in casts}
    meta = {p.key: p.value for p in model.metadata_props}
    assert "NHWC" in meta["edgekd.input"] and meta["edgekd.weights"].startswith("float16")
    assert onnx_precision(exported[2]) == "float16"
    assert [onnx_precision(p) for p in exported[:2]] == ["float32", "int8"]


def test_float16_conversion_refuses_a_file_that_is_not_float32(exported, tmp_path):
    for source, found in ((exported[2], "float16"), (exported[1], "int8")):
        with pytest.raises(ValueError, match=rf"{source.name}: expected a float32 .* {found}"):
            convert_onnx_float16(source, tmp_path / "again-fp16.onnx")
    assert not (tmp_path / "again-fp16.onnx").exists()


def test_float16_conversion_keeps_large_constants(tmp_path, caplog):
    """onnxconverter-common clips weights at 1e4 by default; a pixel-scale constant (a
    variance of 255**2 / 4 = 16256) must survive, up to float16's own largest value."""
    big = numpy_helper.from_array(np.array([16256.0, 70000.0], np.float32), "c")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["pixels", "c"], ["logits"])], "g",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        [big],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "c.onnx"))
    with caplog.at_level("WARNING", logger="edgekd.converters.onnx"):
        half = convert_onnx_float16(tmp_path / "c.onnx", tmp_path / "c-fp16.onnx")
    out = OnnxRunner(half).predict(np.ones((1, 2), np.float32))
    assert out.tolist() == [[16256.0, float(np.finfo(np.float16).max)]]
    assert "c-fp16.onnx: weights beyond float16's range saturate" in caplog.text
    assert "70000.0" in caplog.text


# ------------------------------------------------------------------------------ int8


def test_int8_is_tensorrt_explicit_quantization(exported):
    qdq = describe_qdq(exported[1])
    assert qdq["quantize_linear"] > 0 and qdq["dequantize_linear"] > 0
    assert qdq["zero_points"] == [0]  # symmetric everywhere
    assert qdq["zero_point_dtypes"] == ["int8"] and qdq["quantized_dtypes"] == ["int8"]
    assert qdq["int32_bias_dq"] is False  # biases stay float
    assert qdq["per_channel_weight_dq"] >= 12  # every conv of resnet10 (11) and the head
    json.dumps(qdq)  # goes into the model card as is
    graph = onnx.load(str(exported[1])).graph
    floats = {i.name for i in graph.initializer if i.data_type == TensorProto.FLOAT}
    biased = [n for n in graph.node if n.op_type == "Conv" and len(n.input) > 2]
    assert biased and all(n.input[2] in floats for n in biased)  # float biases, no bias DQ


def test_int8_runs_and_agrees_with_keras(toy_model, exported, images):
    reference = toy_model.predict(images.astype("float32"), verbose=0)
    labels = _toy(1, 96)[1]
    assert (reference.argmax(1) == labels).mean() > 0.9  # learnt: agreement means something
    runner = OnnxRunner(exported[1], threads=1, batch_size=32)
    scores = runner.predict(images)
    assert scores.dtype == np.float32 and scores.shape == (96, 3)
    assert runner.input.dtype == "float32" and runner.input.shape == (None, 16, 16, 3)
    assert (scores.argmax(1) == reference.argmax(1)).mean() >= 0.9
    assert not np.allclose(scores, reference, atol=1e-6)  # really quantised


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_other_calibration_methods(exported, tmp_path, method):
    calib = _toy(3, 16)[0]
    path = quantize_onnx_int8(exported[0], tmp_path / f"{method}.onnx", calib, method=method)
    assert describe_qdq(path)["zero_points"] == [0]
    assert OnnxRunner(path).predict(calib[:2]).shape == (2, 3)


def test_quantize_rejects_bad_arguments(exported, tmp_path):
    calib = _toy(3, 8)[0]
    with pytest.raises(ValueError, match="calibration method"):
        quantize_onnx_int8(exported[0], tmp_path / "q.onnx", calib, method="mse")
    with pytest.raises(ValueError, match="N > 0"):
        quantize_onnx_int8(exported[0], tmp_path / "q.onnx", calib[:0])
    assert not (tmp_path / "q.onnx").exists()


# ------------------------------------------------------------------------------ int8 for ORT CPU


@pytest.fixture(scope="module")
def cpu_int8(exported, tmp_path_factory) -> Path:
    """The ONNX Runtime CPU flavour of the toy model, on the same calibration images."""
    out = tmp_path_factory.mktemp("onnx-cpu")
    return quantize_onnx_int8_cpu(exported[0], out / "m-int8-cpu.onnx", _toy(2, 64)[0])


def test_cpu_int8_has_asymmetric_uint8_activations_and_int8_weights(cpu_int8):
    qdq = describe_qdq(cpu_int8)
    assert qdq["quantize_linear"] > 0 and qdq["dequantize_linear"] > 0  # QDQ format
    assert "uint8" in qdq["zero_point_dtypes"]  # activations
    assert any(z != 0 for z in qdq["zero_points"])  # asymmetric: calibrated zero points
    assert "int8" in qdq["quantized_dtypes"]  # weights
    assert qdq["per_channel_weight_dq"] >= 12
    graph = onnx.load(str(cpu_int8)).graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    weights = [n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"]
    weight_zps = [
        consts[n.input[2]] for n in graph.node
        if n.op_type == "DequantizeLinear" and consts.get(n.input[0]) is not None
        and consts[n.input[0]].dtype == np.int8
    ]  # fmt: skip
    assert weights and weight_zps and all((z == 0).all() for z in weight_zps)  # symmetric
    activation_zps = [
        consts[n.input[2]] for n in graph.node
        if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in consts
    ]  # fmt: skip
    assert activation_zps and all(z.dtype == np.uint8 for z in activation_zps)


def test_cpu_int8_folds_every_relu_where_the_tensorrt_file_cannot(exported, cpu_int8):
    """The issue's diagnosis, as ORT's CPU provider optimises the files: the symmetric file
    keeps ReLUs standalone and Convs in float; the CPU one runs every Conv as QLinearConv."""
    cpu = describe_ort_cpu_graph(cpu_int8)
    assert cpu["convs"] >= 11 and cpu["int8_convs"] == cpu["convs"]
    assert cpu["relu_left"] == 0
    trt = describe_ort_cpu_graph(exported[1])
    assert trt["relu_left"] > 0 and trt["int8_convs"] < trt["convs"]
    assert describe_ort_cpu_graph(exported[0])["int8_convs"] == 0


def test_cpu_int8_runs_and_agrees_with_the_float_file(toy_model, exported, cpu_int8, images):
    labels = _toy(1, 96)[1]
    reference = OnnxRunner(exported[0], threads=1, batch_size=32).predict(images)
    assert (reference.argmax(1) == labels).mean() > 0.9  # learnt: agreement means something
    runner = load_runner(cpu_int8, threads=1, batch_size=32)
    scores = runner.predict(images)
    assert runner.runtime == "onnxruntime" and runner.input.dtype == "float32"
    assert scores.dtype == np.float32 and scores.shape == (96, 3)
    assert (scores.argmax(1) == reference.argmax(1)).mean() >= 0.9
    assert not np.allclose(scores, reference, atol=1e-6)  # really quantised
    assert onnx_precision(cpu_int8) == "int8"


def test_cpu_int8_weights_are_7_bit_so_x86_kernels_compute_the_graph(cpu_int8, images):
    """u8s8 kernels on x86 without VNNI add pairs of products in int16: 7-bit weights keep
    every pair below 32768, so ORT's fused kernels equal the Q/DQ graph run as defined."""
    graph = onnx.load(str(cpu_int8)).graph
    weights = [numpy_helper.to_array(i) for i in graph.initializer
               if numpy_helper.to_array(i).dtype == np.int8 and numpy_helper.to_array(i).ndim == 4]
    assert weights and max(int(np.abs(w).max()) for w in weights) <= 64
    fused = OnnxRunner(cpu_int8, threads=1, batch_size=32).predict(images)
    defined = OnnxRunner(cpu_int8, threads=1, batch_size=32, reference=True).predict(images)
    assert np.abs(fused - defined).max() < 0.05 * max(1.0, float(np.abs(defined).max()))


def test_reference_runner_runs_the_unoptimised_graph(exported, images):
    """`reference=True` turns ORT's graph optimisations off: the TensorRT Q/DQ file keeps
    its float Convs between DequantizeLinear and QuantizeLinear, and still classifies."""
    runner = OnnxRunner(exported[1], threads=1, batch_size=32, reference=True)
    assert runner.reference and runner.runtime == "onnxruntime"
    scores = runner.predict(images)
    floats = OnnxRunner(exported[0], threads=1, batch_size=32).predict(images)
    assert (scores.argmax(1) == floats.argmax(1)).mean() >= 0.9
    assert not np.allclose(scores, floats, atol=1e-6)  # really quantised


def test_cpu_int8_qoperator_format_and_bad_arguments(exported, tmp_path):
    calib = _toy(3, 16)[0]
    path = quantize_onnx_int8_cpu(
        exported[0], tmp_path / "q-int8-cpu.onnx", calib, quant_format="qoperator"
    )
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "QLinearConv" in ops and "Conv" not in ops
    assert OnnxRunner(path).predict(calib[:2]).shape == (2, 3)
    with pytest.raises(ValueError, match="quant_format"):
        quantize_onnx_int8_cpu(exported[0], tmp_path / "x.onnx", calib, quant_format="qint")
    with pytest.raises(ValueError, match="calibration method"):
        quantize_onnx_int8_cpu(exported[0], tmp_path / "x.onnx", calib, method="mse")
    assert not (tmp_path / "x.onnx").exists()


def test_convert_picks_the_flavour_by_file_name(toy_model, exported, tmp_path):
    calib = _toy(3, 16)[0]
    reuse = {"onnx/float32": exported[0]}
    cpu = convert(toy_model, tmp_path / "student-int8-cpu.onnx", precision="int8",
                  calibration=calib, reuse=reuse)  # fmt: skip
    trt = convert(toy_model, tmp_path / "student-int8.onnx", precision="int8",
                  calibration=calib, reuse=reuse)  # fmt: skip
    assert "uint8" in describe_qdq(cpu)["zero_point_dtypes"]
    assert describe_qdq(trt)["zero_points"] == [0]


def test_export_writes_both_int8_onnx_flavours_with_cards(toy_model, tmp_path):
    """`export.onnx_int8: [tensorrt, cpu]`: both files, each checked against Keras and carded;
    the TensorRT build still takes the TensorRT Q/DQ file."""
    x, y = _toy(4, 60)
    cfg = ExportConfig(formats=("onnx",), precisions=("int8",), onnx_int8=("tensorrt", "cpu"))
    trt_v, cpu_v = export_model(toy_model, "student", tmp_path, cfg, x, x, y, {"run": "t"})
    assert trt_v.path == tmp_path / "student-int8.onnx" and trt_v.flavour == ""
    assert cpu_v.path == tmp_path / "student-int8-cpu.onnx" and cpu_v.flavour == "cpu"
    assert cpu_v.passed and "ORT CPU" in cpu_v.note
    card = read_card(tmp_path / "student-int8-cpu.onnx.json")
    assert (card.format, card.precision, card.flavour) == ("onnx", "int8", "cpu")
    assert card.quantization["flavour"] == "cpu"
    assert card.quantization["activations"].startswith("uint8 asymmetric")
    assert card.quantization["ort_cpu_graph"]["relu_left"] == 0
    assert "uint8" in card.qdq["zero_point_dtypes"]
    assert card.parity["top1_agreement"] >= 0.9 and card.runtime == "onnxruntime"
    trt_card = read_card(tmp_path / "student-int8.onnx.json")
    assert trt_card.flavour is None and trt_card.quantization["flavour"] == "tensorrt"
    # checked as TensorRT computes it, not through ORT's x86 int8 kernels
    assert trt_card.runtime.startswith("onnxruntime (reference")
    assert trt_card.qdq["zero_points"] == [0]
    only_cpu = ExportConfig(formats=("onnx",), precisions=("int8",), onnx_int8=("cpu",))
    (v,) = export_model(toy_model, "student", tmp_path / "c", only_cpu, x, x, y, {"run": "t"})
    assert v.path.name == "student-int8-cpu.onnx"
    assert not (tmp_path / "c" / "student-int8.onnx").exists()


def test_onnx_int8_option_is_checked():
    assert ExportConfig().onnx_int8 == ("tensorrt",)
    for bad in ((), ("cpu", "cpu"), ("gpu",)):
        with pytest.raises(ValueError):
            ExportConfig(onnx_int8=bad)


def test_describe_qdq_reports_what_tensorrt_would_reject(tmp_path):
    """An asymmetric uint8 activation and an int32 bias DQ: both must show."""
    inits = [
        numpy_helper.from_array(np.array(0.1, np.float32), "s"),
        numpy_helper.from_array(np.array(128, np.uint8), "zp_u8"),
        numpy_helper.from_array(np.array([5, -3], np.int32), "bias_q"),
        numpy_helper.from_array(np.array([0.01, 0.02], np.float32), "bias_s"),
        numpy_helper.from_array(np.array([0, 0], np.int32), "bias_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp_u8"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "zp_u8"], ["xd"]),
        helper.make_node("DequantizeLinear", ["bias_q", "bias_s", "bias_zp"], ["b"], axis=0),
        helper.make_node("Add", ["xd", "b"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        inits,
    )  # fmt: skip
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    qdq = describe_qdq(path)
    assert qdq["int32_bias_dq"] is True
    assert qdq["zero_points"] == [0, 128]
    assert qdq["zero_point_dtypes"] == ["int32", "uint8"]
    assert qdq["quantize_linear"] == 1 and qdq["dequantize_linear"] == 2
    assert qdq["per_channel_weight_dq"] == 1  # the 2-element bias scale


# ------------------------------------------------------------------------------ TensorRT


def test_tensorrt_converter_writes_the_float16_file_and_its_script(toy_model, tmp_path):
    """Without TensorRT, an fp16 engine becomes student-fp16.onnx (from student.onnx) and a
    script whose TensorRT 11 and strongly typed 10 commands read it."""
    engine = tmp_path / "student-fp16.engine"
    script = trt_conv.convert(toy_model, engine, precision="float16")
    assert script == tmp_path / "student-fp16.trtexec.sh" and not engine.exists()
    assert onnx_precision(tmp_path / "student-fp16.onnx") == "float16"
    assert onnx_precision(tmp_path / "student.onnx") == "float32"
    text = script.read_text()
    assert text.count("--onnx=student-fp16.onnx") == 2 and text.count("--onnx=student.onnx") == 1
    assert "--stronglyTyped" in text and "--int8" not in text
    with pytest.raises(ValueError, match="float32 input and output"):
        trt_conv.convert(toy_model, engine, precision="float16", io_dtype="uint8")


def test_export_writes_float16_onnx_with_its_card_and_fp16_script(toy_model, tmp_path):
    """`edgekd export --format onnx,tensorrt --fp16`: the float16 file is checked like any
    other (ONNX Runtime against Keras), and the engine script builds from that file."""
    x, y = _toy(4, 60)
    cfg = ExportConfig(formats=("onnx", "tensorrt"), precisions=("float16",))
    onnx_v, trt_v = export_model(toy_model, "student", tmp_path, cfg, x, x, y, {"run": "t"})
    assert (onnx_v.format, onnx_v.precision) == ("onnx", "float16") and onnx_v.passed
    assert onnx_v.path == tmp_path / "student-fp16.onnx" and onnx_v.note == "float32 I/O"
    card = read_card(tmp_path / "student-fp16.onnx.json")
    assert (card.format, card.precision, card.runtime) == ("onnx", "float16", "onnxruntime")
    assert card.input["dtype"] == "float32" and card.parity["top1_agreement"] >= 0.95
    assert trt_v.path == tmp_path / "student-fp16.trtexec.sh"
    assert "--onnx=student-fp16.onnx" in trt_v.path.read_text()
    assert load_runner(onnx_v.path).predict(x[:2]).shape == (2, 3)


# ------------------------------------------------------------------------------ no TensorFlow

_NO_TF = """
import json, sys
sys.modules["tensorflow"] = None  # any import of TensorFlow now fails
sys.modules["keras"] = None
import numpy as np
from edgekd.device.runtime import load_runner
x = np.load(sys.argv[1])
out = {}
for path in sys.argv[2:]:
    runner = load_runner(path, threads=1, batch_size=4)
    out[path] = {"runtime": runner.runtime, "scores": runner.predict(x).tolist()}
out["tf_loaded"] = any(m.startswith("tensorflow") for m, v in sys.modules.items() if v)
print(json.dumps(out))
"""


def test_runtime_needs_no_tensorflow(exported, images, tmp_path):
    np.save(tmp_path / "x.npy", images[:8])
    paths = [str(p) for p in exported]
    proc = subprocess.run(
        [sys.executable, "-c", _NO_TF, str(tmp_path / "x.npy"), *paths],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["tf_loaded"] is False
    for path in paths:
        assert out[path]["runtime"] == "onnxruntime"
        expected = OnnxRunner(path, batch_size=4).predict(images[:8])
        np.testing.assert_allclose(np.array(out[path]["scores"]), expected, atol=1e-5)
