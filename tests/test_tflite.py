"""LiteRT export and runtime: each precision against Keras, the runner's options, no TensorFlow.

One tiny ResNet-10 (16x16 inputs, width 4) is trained for a few steps on a toy task whose
class is the image's dominant colour, so its logits have clear margins and int8 top-1 agreement
with Keras measures quantisation, not ties between near-equal random logits.
"""

from __future__ import annotations

import ctypes.util
import re
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from edgekd.converters.tflite import PRECISIONS, export_tflite
from edgekd.device.runtime import load_runner
from edgekd.device.runtime.base import dequantize_output, quantize_input
from edgekd.device.runtime.tflite import TFLiteRunner
from edgekd.training.models import build_model
from tests.conftest import run_python_json

SHAPE = (16, 16, 3)
CLASSES = 3
COLOURS = np.array([(220, 40, 40), (40, 200, 40), (40, 60, 220)], np.float32)


def toy_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` uint8 images (class colour + noise, a few saturated pixels) and their labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    noise = rng.normal(0.0, 45.0, (n, *SHAPE))
    images = np.clip(COLOURS[labels][:, None, None, :] + noise, 0, 255)
    images[:, 0, 0, :] = 0.0  # pixel extremes in every image: calibration sees 0..255
    images[:, 0, 1, :] = 255.0
    return images.astype(np.uint8), labels


@pytest.fixture(scope="module")
def model() -> keras.Model:
    keras.utils.set_random_seed(7)
    m = build_model("resnet10", num_classes=CLASSES, width=4, input_shape=SHAPE, name="tiny")
    x, y = toy_images(320, seed=1)
    m.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    m.fit(x.astype(np.float32), y, batch_size=16, epochs=1, verbose=0)  # 20 steps
    return m


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return toy_images(40, seed=2)[0]


@pytest.fixture(scope="module")
def keras_logits(model: keras.Model, images: np.ndarray) -> np.ndarray:
    return model.predict(images.astype(np.float32), verbose=0)


@pytest.fixture(scope="module")
def exported(model: keras.Model, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One file per precision (int8 with float, uint8 and int8 I/O), converted once."""
    out = tmp_path_factory.mktemp("tflite")
    calibration = toy_images(32, seed=3)[0]
    files = {p: export_tflite(model, out / f"{p}.tflite", precision=p) for p in PRECISIONS[:3]}
    for io in ("float32", "uint8", "int8"):
        files[f"int8-{io}"] = export_tflite(
            model,
            out / f"int8-{io}.tflite",
            precision="int8",
            representative=calibration,
            io_dtype=io,
        )
    return files


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1)))


def test_float32_matches_keras(exported, images, keras_logits):
    runner = load_runner(exported["float32"])
    assert isinstance(runner, TFLiteRunner)
    assert runner.runtime == "litert"
    assert runner.input.dtype == "float32" and runner.input.scale is None
    assert runner.input.shape == (None, *SHAPE)
    assert runner.output.shape == (None, CLASSES)
    scores = runner.predict(images)
    assert scores.dtype == np.float32 and scores.shape == (len(images), CLASSES)
    np.testing.assert_allclose(scores, keras_logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("precision", ["float16", "dynamic"])
def test_reduced_precision_close_to_keras(exported, images, keras_logits, precision):
    runner = TFLiteRunner(exported[precision])
    assert runner.input.dtype == "float32" and runner.output.dtype == "float32"
    scores = runner.predict(images)
    spread = float(np.ptp(keras_logits))
    assert np.max(np.abs(scores - keras_logits)) < 0.05 * spread + 0.01
    assert top1_agreement(scores, keras_logits) >= 0.95


def test_files_shrink_with_precision(exported):
    size = {k: v.stat().st_size for k, v in exported.items()}
    assert size["float16"] < size["float32"]
    assert size["dynamic"] < size["float16"]
    assert size["int8-uint8"] < size["float16"]


def test_int8_uint8_io_is_pixels(exported, images, keras_logits):
    runner = TFLiteRunner(exported["int8-uint8"])
    spec = runner.input
    assert spec.dtype == "uint8" and runner.output.dtype == "uint8"
    assert spec.scale is not None and spec.zero_point is not None
    # The contract: quantised pixels dequantise back to the pixels within one step.
    q = quantize_input(images, spec)
    back = spec.scale * (q.astype(np.float32) - spec.zero_point)
    assert np.max(np.abs(back - images.astype(np.float32))) <= spec.scale / 2 + 1e-4
    # Calibration saw 0..255, so the uint8 input is literally the pixels.
    assert spec.scale == pytest.approx(1.0, abs=1e-6) and spec.zero_point == 0
    np.testing.assert_array_equal(q, images)
    scores = runner.predict(images)
    assert scores.dtype == np.float32 and scores.shape == (len(images), CLASSES)
    assert top1_agreement(scores, keras_logits) >= 0.8


@pytest.mark.parametrize("io", ["int8", "float32"])
def test_int8_other_io(exported, images, keras_logits, io):
    runner = TFLiteRunner(exported[f"int8-{io}"])
    assert runner.input.dtype == io and runner.output.dtype == io
    if io == "int8":
        assert runner.input.scale == pytest.approx(1.0, abs=1e-6)
        assert runner.input.zero_point == -128
        # Full-integer graph: no float tensor anywhere (builtin int8 kernels only).
        dtypes = {np.dtype(d["dtype"]).name for d in runner._interpreter.get_tensor_details()}
        assert dtypes <= {"int8", "int32"}, dtypes
    scores = runner.predict(images)
    assert scores.dtype == np.float32
    assert top1_agreement(scores, keras_logits) >= 0.8


def test_int8_variants_agree(exported, images):
    """uint8, int8 and float I/O wrap the same integer graph: same classes."""
    scores = {io: TFLiteRunner(exported[f"int8-{io}"]).predict(images) for io in ("uint8", "int8")}
    assert top1_agreement(scores["uint8"], scores["int8"]) >= 0.95


def test_bad_combinations_raise(model, tmp_path):
    target = tmp_path / "m.tflite"
    with pytest.raises(ValueError, match="representative"):
        export_tflite(model, target, precision="int8")
    with pytest.raises(ValueError, match="needs precision 'int8'"):
        export_tflite(model, target, precision="dynamic", io_dtype="uint8")
    with pytest.raises(ValueError, match="unknown precision"):
        export_tflite(model, target, precision="int4")
    with pytest.raises(ValueError, match="unknown io_dtype"):
        calibration = np.zeros((1, *SHAPE), np.uint8)
        export_tflite(model, target, precision="int8", representative=calibration, io_dtype="i16")
    with pytest.raises(ValueError, match="shape"):
        export_tflite(model, target, precision="int8", representative=np.zeros((2, 8, 8, 3)))
    with pytest.raises(ValueError, match=r"\.tflite"):
        export_tflite(model, tmp_path / "m.bin")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # no temp files left behind


def test_export_replaces_atomically(model, exported, tmp_path):
    target = tmp_path / "m.tflite"
    target.write_bytes(b"old")
    assert export_tflite(model, target) == target
    assert target.read_bytes() == exported["float32"].read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite"]


@pytest.mark.parametrize("name", ["float32", "int8-uint8"])
def test_runner_options_same_results(exported, images, name):
    ten = images[:10]
    reference = TFLiteRunner(exported[name], batch_size=1).predict(ten)
    batched = TFLiteRunner(exported[name], batch_size=4)  # chunks of 4, 4, 2
    np.testing.assert_allclose(batched.predict(ten), reference, atol=1e-5)
    np.testing.assert_allclose(batched.predict(ten[:3]), reference[:3], atol=1e-5)
    one_thread = TFLiteRunner(exported[name], threads=1, batch_size=4)
    np.testing.assert_allclose(one_thread.predict(ten), reference, atol=1e-5)
    plain = TFLiteRunner(exported[name], xnnpack=False, batch_size=3)
    atol = 1e-4 if name == "float32" else 1.01 * (plain.output.scale or 0)
    np.testing.assert_allclose(plain.predict(ten), reference, atol=atol)
    assert TFLiteRunner(exported[name]).predict(ten[:0]).shape == (0, CLASSES)


def test_runner_rejects_bad_input(exported, images):
    runner = TFLiteRunner(exported["float32"])
    with pytest.raises(ValueError, match="shape"):
        runner.predict(images[:, :8])
    with pytest.raises(ValueError, match="batch_size"):
        TFLiteRunner(exported["float32"], batch_size=0)
    with pytest.raises(FileNotFoundError):
        TFLiteRunner(exported["float32"].with_name("missing.tflite"))


def test_delegates_are_loaded_and_handed_to_the_interpreter(exported, images, monkeypatch):
    """Each library goes through the runtime's load_delegate, the results into
    experimental_delegates (a recording stand-in: no GPU delegate can load here)."""
    import edgekd.device.runtime.tflite as tflite_runtime

    reference = TFLiteRunner(exported["float32"]).predict(images[:5])
    real = tflite_runtime._load_interpreter_module()
    seen: dict[str, list] = {"loaded": []}

    def load_delegate(library):
        seen["loaded"].append(library)
        return f"delegate:{library}"

    def interpreter(**kwargs):
        seen["handed"] = kwargs.pop("experimental_delegates")
        return real.interpreter(**kwargs)

    fake = real._replace(interpreter=interpreter, load_delegate=load_delegate)
    monkeypatch.setattr(tflite_runtime, "_load_interpreter_module", lambda: fake)
    runner = TFLiteRunner(exported["float32"], delegates=["libgpu_delegate.so"], batch_size=4)
    assert seen == {"loaded": ["libgpu_delegate.so"], "handed": ["delegate:libgpu_delegate.so"]}
    assert runner.delegates == ("libgpu_delegate.so",) and "libgpu_delegate.so" in repr(runner)
    np.testing.assert_allclose(runner.predict(images[:5]), reference, atol=1e-5)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_delegate_that_cannot_load_is_named(exported, tmp_path):
    missing = tmp_path / "gpu" / "libtensorflowlite_gpu_delegate.so"
    with pytest.raises(RuntimeError, match=rf"TFLite delegate {re.escape(str(missing))}: no such"):
        TFLiteRunner(exported["float32"], delegates=[missing])
    not_elf = tmp_path / "libnot_a_library.so"
    not_elf.write_bytes(b"not a shared library")
    with pytest.raises(RuntimeError, match=rf"{re.escape(str(not_elf))}: cannot load it"):
        TFLiteRunner(exported["float32"], delegates=str(not_elf))
    libm = ctypes.util.find_library("m")  # a real library, but not a TFLite delegate
    if libm:
        with pytest.raises(RuntimeError, match=rf"TFLite delegate {re.escape(libm)}: cannot"):
            TFLiteRunner(exported["float32"], delegates=[libm])


def test_dequantize_output_matches_spec(exported, images):
    runner = TFLiteRunner(exported["int8-uint8"])
    runner.predict(images[:1])
    raw = runner._interpreter.get_tensor(runner._output_index)
    assert raw.dtype == np.uint8
    np.testing.assert_allclose(
        dequantize_output(raw, runner.output),
        runner.output.scale * (raw.astype(np.float32) - runner.output.zero_point),
    )


def test_runtime_needs_no_tensorflow(exported, images, tmp_path):
    """With `import tensorflow` blocked, the runner still loads and predicts."""
    np.save(tmp_path / "images.npy", images[:10])
    script = textwrap.dedent(
        """
        import json, sys
        sys.modules["tensorflow"] = None  # any import of TensorFlow now raises ImportError
        import numpy as np
        from edgekd.device.runtime.tflite import TFLiteRunner
        images = np.load(sys.argv[1])
        out = {}
        for path in sys.argv[2:]:
            runner = TFLiteRunner(path, batch_size=4)
            out[path] = {"runtime": runner.runtime, "scores": runner.predict(images).tolist()}
        assert sys.modules["tensorflow"] is None
        assert not any(m.startswith(("tensorflow.", "keras")) for m in sys.modules)
        print(json.dumps(out))
        """
    )
    paths = [str(exported["float32"]), str(exported["int8-uint8"])]
    result = run_python_json(script, str(tmp_path / "images.npy"), *paths)
    for path in paths:
        assert result[path]["runtime"] == "litert"
        expected = TFLiteRunner(path).predict(images[:10])
        np.testing.assert_allclose(np.array(result[path]["scores"]), expected, atol=1e-5)


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
def test_tensorflow_fallback(exported, images, monkeypatch):
    """Without LiteRT or tflite_runtime, tensorflow.lite (already loaded here) is the runtime."""
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    runner = TFLiteRunner(exported["float32"], xnnpack=False, batch_size=4)
    assert runner.runtime == "tensorflow"
    monkeypatch.undo()
    reference = TFLiteRunner(exported["float32"]).predict(images[:6])
    np.testing.assert_allclose(runner.predict(images[:6]), reference, atol=1e-4)
