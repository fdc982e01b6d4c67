"""ONNX export and int8 Q/DQ against Keras, the ONNX Runtime runner, TensorRT commands and
engine building (against a stand-in `tensorrt` module), and a run without TensorFlow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import keras
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekd.converters import tensorrt as trt_conv
from edgekd.converters.onnx import (
    _check_free_inputs,
    describe_qdq,
    export_onnx,
    quantize_onnx_int8,
)
from edgekd.device.runtime import load_runner
from edgekd.device.runtime.onnx import OnnxRunner
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
def exported(toy_model, tmp_path_factory) -> tuple[Path, Path]:
    """(float file, int8 Q/DQ file), calibrated on images other than the test ones."""
    out = tmp_path_factory.mktemp("onnx")
    float_path = export_onnx(toy_model, out / "m.onnx")
    calib = _toy(2, 64)[0]
    int8_path = quantize_onnx_int8(float_path, out / "m-int8.onnx", calib)
    return float_path, int8_path


# ------------------------------------------------------------------------------ float


def test_float_onnx_matches_keras(toy_model, exported, images):
    float_path, _ = exported
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


def test_trtexec_command_flags():
    def cmd(precision: str) -> list[str]:
        return trt_conv.trtexec_command(
            "m.onnx", "m.engine", precision, workspace_mib=512, batch=8, shape=(1, 16, 16, 3)
        ).split()

    fp32, fp16, int8 = cmd("fp32"), cmd("fp16"), cmd("int8")
    for c in (fp32, fp16, int8):
        assert c[0] == "trtexec"
        assert "--onnx=m.onnx" in c and "--saveEngine=m.engine" in c
        assert "--memPoolSize=workspace:512M" in c
        assert not [a for a in c if a.startswith(("--workspace", "--explicitBatch", "--calib"))]
        assert "--minShapes=pixels:1x16x16x3" in c
        assert "--optShapes=pixels:8x16x16x3" in c and "--maxShapes=pixels:8x16x16x3" in c
    assert "--fp16" not in fp32 and "--int8" not in fp32
    assert "--fp16" in fp16 and "--int8" not in fp16
    assert "--int8" in int8 and "--fp16" in int8
    with pytest.raises(ValueError, match="precision"):
        trt_conv.trtexec_command("m.onnx", "m.engine", "int4")
    quoted = trt_conv.trtexec_command("my dir/m.onnx", "e.engine", "fp32")
    assert "'--onnx=my dir/m.onnx'" in quoted


def test_build_engine_without_tensorrt_names_trtexec(exported, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    assert trt_conv.tensorrt_available() is False
    engine = tmp_path / "m-int8.engine"
    with pytest.raises(RuntimeError, match="trtexec") as info:
        trt_conv.build_engine(exported[1], engine, "int8", max_batch=4)
    message = str(info.value)
    assert "--int8" in message and "--minShapes=pixels:1x16x16x3" in message
    assert "--maxShapes=pixels:4x16x16x3" in message
    assert not engine.exists()


def test_write_trtexec_script(exported, tmp_path):
    float_path = exported[0]
    script = trt_conv.write_trtexec_script(
        float_path, float_path.with_name("m-fp16.engine"), "fp16"
    )
    assert script == float_path.with_name("m-fp16.trtexec.sh")
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert text.startswith("#!/bin/sh\n") and "--fp16" in text and "--onnx=m.onnx" in text
    # Run it with `echo` standing in for trtexec: it runs from its folder, arguments intact.
    proc = subprocess.run(
        ["sh", str(script)], env={**os.environ, "TRTEXEC": "echo"},
        cwd=tmp_path, capture_output=True, text=True, check=True,
    )  # fmt: skip
    args = proc.stdout.split()
    assert args[:3] == ["--onnx=m.onnx", "--saveEngine=m-fp16.engine", "--fp16"]
    assert "--optShapes=pixels:1x16x16x3" in args and args[-1] == "--skipInference"


def _fake_tensorrt(calls: dict, *, parse_ok: bool = True, flags: tuple = ("FP16", "INT8")):
    """Just enough of TensorRT 10's Python API to record what `build_engine` asks of it."""

    class Logger:
        WARNING = "warning"

        def __init__(self, severity):
            calls["log_level"] = severity

    class Tensor:
        name, shape = "pixels", (-1, 16, 16, 3)

    class Network:
        num_inputs = 1

        def get_input(self, i):
            return Tensor()

    class ParserError:
        def code(self):
            return "UNSUPPORTED_NODE"

        def desc(self):
            return "no importer for op Foo"

        def node(self):
            return 7

    class OnnxParser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            calls["parsed"] = path
            return parse_ok

        def get_error(self, i):
            return ParserError()

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            calls["profile"] = (name, lo, opt, hi)

    class Config:
        def set_memory_pool_limit(self, pool, size):
            calls["pool"] = (pool, size)

        def set_flag(self, flag):
            calls.setdefault("flags", []).append(flag)

        def add_optimization_profile(self, profile):
            calls["profiles"] = calls.get("profiles", 0) + 1

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls["network_flags"] = flags
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"serialized-engine"

    return types.SimpleNamespace(
        Logger=Logger,
        Builder=Builder,
        OnnxParser=OnnxParser,
        BuilderFlag=types.SimpleNamespace(**{f: f for f in flags}),
        MemoryPoolType=types.SimpleNamespace(WORKSPACE="workspace"),
    )


@pytest.mark.parametrize(
    ("precision", "flags"), [("fp32", []), ("fp16", ["FP16"]), ("int8", ["INT8", "FP16"])]
)
def test_build_engine_drives_the_tensorrt_api(exported, tmp_path, monkeypatch, precision, flags):
    calls: dict = {}
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(calls))
    engine = tmp_path / f"m-{precision}.engine"
    out = trt_conv.build_engine(exported[1], engine, precision, workspace_mib=256, max_batch=8)
    assert out == engine and engine.read_bytes() == b"serialized-engine"
    assert calls["network_flags"] == 0 and calls["parsed"] == str(exported[1])
    assert calls["pool"] == ("workspace", 256 << 20)
    assert calls.get("flags", []) == flags
    assert calls["profile"] == ("pixels", (1, 16, 16, 3), (8, 16, 16, 3), (8, 16, 16, 3))
    assert calls["profiles"] == 1


def test_build_engine_reports_parser_errors(exported, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt({}, parse_ok=False))
    with pytest.raises(RuntimeError, match="no importer for op Foo") as info:
        trt_conv.build_engine(exported[0], tmp_path / "m.engine", "fp32")
    assert "UNSUPPORTED_NODE" in str(info.value) and "node 7" in str(info.value)
    assert not (tmp_path / "m.engine").exists()


def test_build_engine_on_a_tensorrt_without_precision_flags(exported, tmp_path, monkeypatch):
    """TensorRT 11 drops FP16/INT8 builder flags: int8 relies on Q/DQ, fp16 is refused."""
    calls: dict = {}
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(calls, flags=()))
    trt_conv.build_engine(exported[1], tmp_path / "q.engine", "int8")
    assert calls.get("flags", []) == []
    with pytest.raises(RuntimeError, match="FP16"):
        trt_conv.build_engine(exported[0], tmp_path / "h.engine", "fp16")


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
