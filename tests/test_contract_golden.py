"""The exported-model contract, read as someone without edgekd reads it.

DESIGN.md: everything `edgekd export` writes can be used without edgekd. `student.tflite`
(and `student-int8.tflite`) take NHWC RGB pixels 0..255, as float32 or as uint8/int8 with the
input tensor's own quantisation parameters, and output scores over the classes of
`labels.txt`, in that order; ONNX files likewise; every file has a JSON card with the
accuracy measured on the exported file.

Here a bare `ai_edge_litert` Interpreter and a bare `onnxruntime.InferenceSession` (no edgekd
runner, no edgekd pre- or post-processing) run the files of a real exported smoke run on the
run's validation images, fed exactly as the contract says. Their top-1 answers are held to
the Keras student's on the same images, and their accuracy to what each card claims.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.e2e

# file -> (format, precision), the names DESIGN.md and edgekd.export.exporter give them.
STUDENT_FILES = {
    "student.tflite": ("tflite", "float32"),
    "student-int8.tflite": ("tflite", "int8"),
    "student.onnx": ("onnx", "float32"),
    "student-int8.onnx": ("onnx", "int8"),
}


def _quantise(pixels: np.ndarray, dtype: np.dtype, scale: float, zero_point: int) -> np.ndarray:
    """Pixels 0..255 into an integer input tensor by its own (scale, zero point)."""
    info = np.iinfo(dtype)
    q = np.round(pixels.astype(np.float64) / scale + zero_point)
    return np.clip(q, info.min, info.max).astype(dtype)


def bare_tflite(path: Path, pixels: np.ndarray) -> tuple[np.ndarray, dict]:
    """Float scores of a .tflite file on uint8 RGB pixels, with nothing but LiteRT."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    dtype = np.dtype(inp["dtype"])
    if dtype.kind == "f":
        x = pixels.astype(dtype)
    else:
        scale, zero_point = inp["quantization"]
        x = _quantise(pixels, dtype, scale, zero_point)
    interpreter.resize_tensor_input(inp["index"], list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    y = interpreter.get_tensor(out["index"])
    if np.dtype(out["dtype"]).kind != "f":
        scale, zero_point = out["quantization"]
        y = scale * (y.astype(np.float32) - zero_point)
    seen = {"dtype": dtype.name, "shape": [int(s) for s in inp["shape_signature"]],
            "quantization": inp["quantization"]}  # fmt: skip
    return np.asarray(y, np.float32), seen


def bare_onnx(path: Path, pixels: np.ndarray, reference: bool = False) -> tuple[np.ndarray, dict]:
    """Float scores of an .onnx file on uint8 RGB pixels, with nothing but ONNX Runtime;
    `reference`: graph optimisations off, the graph as its operators define it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if reference:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.type == "tensor(float)", inp.type  # ONNX inputs carry no quantisation
    (y,) = session.run([out.name], {inp.name: pixels.astype(np.float32)})
    return np.asarray(y, np.float32), {"dtype": "float32", "shape": list(inp.shape)}


@pytest.fixture(scope="module")
def golden(smoke_exported):
    """The export folder, the run's validation split and the Keras student's logits on it."""
    import keras

    from edgekd.data.dataset import prepare_data
    from edgekd.recipe import build_recipe
    from edgekd.training.run import RunDir

    run = RunDir.open_existing(smoke_exported)
    val = prepare_data(build_recipe(run.manifest["recipe"]), progress=False).val
    model = run.load_model("student", "model")
    logits = keras.ops.convert_to_numpy(model(val.images.astype(np.float32), training=False))
    return smoke_exported / "export", val, np.asarray(logits, np.float32), run.manifest


def test_labels_and_cards_describe_the_files(golden):
    export, val, _, manifest = golden
    labels = (export / "labels.txt").read_text(encoding="utf-8").splitlines()
    assert labels == manifest["data"]["classes"]  # one class a line, in output order
    h, w = val.images.shape[1:3]
    for name, (fmt, precision) in STUDENT_FILES.items():
        path = export / name
        card = json.loads((export / f"{name}.json").read_text())
        assert (card["file"], card["format"], card["precision"]) == (name, fmt, precision)
        assert card["classes"] == labels and card["labels"] == "labels.txt"
        assert card["run"] == str(export.parent) and card["model"] == "student"
        assert card["size_bytes"] == path.stat().st_size
        assert card["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert card["params"] > 0 and card["macs"] > 0
        i, o = card["input"], card["output"]
        assert (i["layout"], i["pixels"]) == ("NHWC", "RGB 0..255")
        assert i["shape"] == [None, h, w, 3] and o["shape"] == [None, len(labels)]
        assert o["meaning"] == "logits, labels.txt order"
        assert card["parity"]["images"] == len(val.images)


@pytest.mark.parametrize("name", list(STUDENT_FILES))
def test_raw_pixels_in_the_contracts_way_give_the_keras_answer(golden, name):
    export, val, keras_logits, _ = golden
    fmt, precision = STUDENT_FILES[name]
    card = json.loads((export / f"{name}.json").read_text())
    if fmt == "tflite":
        scores, seen = bare_tflite(export / name, val.images)
    else:  # the TensorRT Q/DQ file's card says it was checked as defined, not as ORT fuses it
        scores, seen = bare_onnx(export / name, val.images, "reference" in card["runtime"])

    # The input tensor is what the card says: its dtype, NHWC with a free batch dimension,
    # and for an integer tensor the card's scale and zero point are the tensor's own.
    assert seen["dtype"] == card["input"]["dtype"]
    batch = seen["shape"][0]  # -1 (LiteRT) or a symbolic name (ONNX): any batch size
    assert seen["shape"][1:] == card["input"]["shape"][1:]
    assert batch == -1 or isinstance(batch, str)
    if seen["dtype"] in ("uint8", "int8"):
        assert seen["quantization"] == pytest.approx(
            (card["input"]["scale"], card["input"]["zero_point"])
        )
    assert scores.shape == keras_logits.shape and np.isfinite(scores).all()

    top1, keras_top1 = scores.argmax(1), keras_logits.argmax(1)
    if precision == "float32":
        # The same logits as Keras on the same raw pixels (the scaling is inside the file),
        # hence the same top-1 wherever Keras's own top two are not a tie.
        np.testing.assert_allclose(scores, keras_logits, atol=1e-4)
        ordered = np.sort(keras_logits, axis=1)
        margin = ordered[:, -1] - ordered[:, -2]
        assert np.all(margin[top1 != keras_top1] < 1e-4)
    else:
        # int8 rounds. The smoke student is near chance (its logits span about 0.7), so
        # many of its answers are near-ties that rounding may flip: the file's logits must
        # follow Keras's (row-centred correlation: 0.84-0.96 on two hosts' smoke students, a
        # permuted output about 0.4, unrelated logits 0), and every top-1 it changes must be
        # a Keras near-tie within the card's logit error.
        def centred(a: np.ndarray) -> np.ndarray:
            return (a - a.mean(axis=1, keepdims=True)).ravel()

        assert np.corrcoef(centred(scores), centred(keras_logits))[0, 1] >= 0.7
        ordered = np.sort(keras_logits, axis=1)
        margin = ordered[:, -1] - ordered[:, -2]
        error = card["parity"]["max_logit_error"]
        assert error == pytest.approx(np.abs(scores - keras_logits).max(), rel=1e-5)
        assert np.all(margin[top1 != keras_top1] <= 2 * error + 1e-6)
    parity = card["parity"]
    assert (top1 == keras_top1).mean() == pytest.approx(parity["top1_agreement"], abs=1e-9)
    # The card's accuracy is the file's own on these images, labels in labels.txt order.
    assert (top1 == val.labels).mean() == pytest.approx(parity["accuracy"], abs=1e-9)
    assert (keras_top1 == val.labels).mean() == pytest.approx(parity["keras_accuracy"], abs=1e-9)


def test_members_folder_names_its_files_and_input(golden):
    """ensemble.json is enough to find every member file and to feed it."""
    export, val, _, manifest = golden
    members = export / "members"
    config = json.loads((members / "ensemble.json").read_text())
    assert config["classes"] == manifest["data"]["classes"]
    assert config["input"] == {"layout": "NHWC", "pixels": "RGB 0..255",
                               "shape": list(val.images.shape[1:])}  # fmt: skip
    entries = [config["members"]["generalist"], *config["members"]["specialists"]]
    assert len(entries) == 1 + len(config["group_indices"])
    for entry in entries:
        assert set(entry["files"]) == {"tflite/float32", "tflite/int8", "onnx/float32",
                                       "onnx/int8"}  # fmt: skip
        for rel in entry["files"].values():
            assert (members / rel).is_file() and "/" not in rel
    for entry, group in zip(config["members"]["specialists"], config["group_indices"],
                            strict=True):  # fmt: skip
        assert entry["classes"] == [config["classes"][c] for c in group]
        assert entry["outputs"] == [*entry["classes"], "<dustbin>"]
        # The file's output width is what `outputs` says.
        scores, _ = bare_tflite(members / entry["files"]["tflite/float32"], val.images[:2])
        assert scores.shape == (2, len(entry["outputs"]))
