"""The exported-model contract (`edgekd.contract`): file names, model cards, ensemble.json.

No model is built or converted here: the contract is plain data, so these run in a second.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgekd import contract
from edgekd.contract import (
    FLIP_DEFAULT,
    FORMATS,
    FUSION_ITERATIONS,
    ContractError,
    EnsembleSpec,
    ModelCard,
    card_of,
    card_path,
    file_name,
    parse_file_name,
    read_card,
    read_ensemble_spec,
    write_card,
    write_ensemble_spec,
)
from tests.conftest import REPO

MODELS = ("student", "control", "generalist", "specialist_0", "specialist_12")


# ---------------------------------------------------------------------------- file names


@pytest.mark.parametrize("model", MODELS)
def test_every_file_name_parses_back(model):
    names = set()
    for fmt, spec in FORMATS.items():
        for precision in spec.precisions:
            name = file_name(model, fmt, precision)
            got = parse_file_name(name)
            assert got == contract.ArtifactName(model, fmt, precision), name
            assert got.label == precision and contract.format_of(name) == fmt
            names.add(name)
    assert len(names) == sum(len(s.precisions) for s in FORMATS.values())  # all distinct
    qat = file_name(model, "tflite", "int8", qat=True)
    assert qat == f"{model}-int8-qat.tflite"
    assert parse_file_name(qat) == contract.ArtifactName(model, "tflite", "int8", qat=True)
    assert parse_file_name(qat).label == "int8-qat"


def test_the_names_export_has_always_written():
    assert file_name("student", "tflite", "int8") == "student-int8.tflite"
    assert file_name("student", "tflite", "float16") == "student-fp16.tflite"
    assert file_name("student", "tflite", "dynamic") == "student-dynamic.tflite"
    assert file_name("student", "onnx", "float32") == "student.onnx"
    assert file_name("student", "onnx", "int8") == "student-int8.onnx"
    assert file_name("student", "onnx", "float16") == "student-fp16.onnx"  # strongly typed fp16
    assert file_name("student", "tensorrt", "float16") == "student-fp16.engine"
    assert file_name("student", "saved_model", "float32") == "student_saved_model"
    assert card_path(Path("x") / "student-int8.tflite") == Path("x") / "student-int8.tflite.json"
    # Engines built on the device may carry the other usual suffix.
    assert parse_file_name("student-int8.plan") == contract.ArtifactName(
        "student", "tensorrt", "int8"
    )


@pytest.mark.parametrize(
    "fmt, precision",
    [("onnx", "dynamic"), ("tensorrt", "dynamic"), ("saved_model", "int8"),
     ("coreml", "float32"), ("tflite", "int4")],
)  # fmt: skip
def test_unsupported_pairs_are_refused(fmt, precision):
    assert not contract.supports(fmt, precision)
    with pytest.raises(ValueError, match=fmt if fmt == "coreml" else precision):
        file_name("student", fmt, precision)
    with pytest.raises(ValueError):
        contract.check_variant(fmt, precision)


def test_qat_and_model_names_that_would_not_parse_back_are_refused():
    for fmt, precision in (("onnx", "int8"), ("tflite", "float32")):
        with pytest.raises(ValueError, match="int8 TFLite"):
            file_name("student", fmt, precision, qat=True)
    for bad in ("", "a/b", "student-int8", "student-qat", "model-fp16"):
        with pytest.raises(ValueError, match="model name"):
            file_name(bad, "tflite", "float32")


def test_the_cpu_int8_onnx_file_name_parses_back():
    """The int8 ONNX file for ONNX Runtime's CPU provider sits beside the TensorRT one."""
    for model in MODELS:
        name = file_name(model, "onnx", "int8", cpu=True)
        assert name == f"{model}-int8-cpu.onnx"
        got = parse_file_name(name)
        assert got == contract.ArtifactName(model, "onnx", "int8", cpu=True)
        assert got.label == "int8-cpu" and not got.qat
        assert parse_file_name(f"{model}-int8.onnx").cpu is False  # the TensorRT one
        assert contract.sibling_file(name, "onnx", "float32") == Path(f"{model}.onnx")
    for fmt, precision in (("tflite", "int8"), ("onnx", "float32"), ("tensorrt", "int8")):
        with pytest.raises(ValueError, match="int8 ONNX only"):
            file_name("student", fmt, precision, cpu=True)
    with pytest.raises(ValueError, match="model name"):
        file_name("student-cpu", "onnx", "int8")


@pytest.mark.parametrize(
    "name",
    ["student-int8.trtexec.sh", "student.tflite.json", "labels.txt", ".tflite", "-int8.onnx",
     "student-dynamic.onnx", "student-int8-qat.onnx", "student-fp16_saved_model",
     "student-int8-cpu.tflite", "student-cpu.onnx", "student-fp16-cpu.onnx",
     "student-int8-cpu.engine", "-int8-cpu.onnx"],
)  # fmt: skip
def test_names_that_are_not_exported_files(name):
    assert parse_file_name(name) is None


def test_sibling_file():
    engine = Path("out") / "specialist_1-int8.engine"
    assert contract.sibling_file(engine, "onnx", "int8") == Path("out") / "specialist_1-int8.onnx"
    with pytest.raises(ValueError, match="not an exported file name"):
        contract.sibling_file("notes.txt", "onnx", "float32")


def test_every_format_has_a_converter_with_the_common_signature():
    """export's table covers the contract's formats, and every back-end's `convert` takes
    (model, path, *, precision, calibration, io_dtype, reuse) (read from the source: the
    modules themselves need TensorFlow)."""
    from edgekd.export.exporter import CONVERTERS

    assert set(CONVERTERS) == set(FORMATS)
    for fmt, module in CONVERTERS.items():
        source = REPO / "converters" / f"{module.rsplit('.', 1)[1]}.py"
        tree = ast.parse(source.read_text())
        (fn,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "convert"]
        assert [a.arg for a in fn.args.args] == ["model", "path"], fmt
        assert [a.arg for a in fn.args.kwonlyargs] == [
            "precision", "calibration", "io_dtype", "reuse"
        ], fmt  # fmt: skip


# ---------------------------------------------------------------------------- model cards


def _card(**extra) -> ModelCard:
    return ModelCard(
        format="tflite", precision="int8", run="runs/x", classes=("cat", "dog"), model="student",
        params=1234, macs=5678, file="student-int8.tflite", input={"shape": [None, 32, 32, 3]},
        parity={"accuracy": 0.9, "passed": True}, **extra,
    )  # fmt: skip


def test_card_round_trip(tmp_path):
    model = tmp_path / "student-int8.tflite"
    card = _card(extra={"future_key": [1, 2]})
    assert write_card(model, card) == tmp_path / "student-int8.tflite.json"
    back = read_card(card_path(model))
    assert back == card and card_of(model) == card
    assert back.input_shape == (None, 32, 32, 3)
    data = json.loads(card_path(model).read_text())
    assert list(data)[:3] == ["run", "classes", "model"]  # the writer's order; unset left out
    assert "qdq" not in data and data["future_key"] == [1, 2]
    assert card_of(tmp_path / "student.onnx") is None  # no card: none, not an error


def test_cpu_int8_card_round_trip(tmp_path):
    model = tmp_path / "student-int8-cpu.onnx"
    card = ModelCard(
        format="onnx", precision="int8", file=model.name, flavour="cpu",
        quantization={"flavour": "cpu", "activations": "uint8 asymmetric"},
    )  # fmt: skip
    write_card(model, card)
    assert read_card(card_path(model)) == card
    data = json.loads(card_path(model).read_text())
    assert data["flavour"] == "cpu" and data["quantization"]["flavour"] == "cpu"
    for bad in ({"flavour": 3}, {"flavour": "gpu"}, {"precision": "float32"}):
        with pytest.raises(ContractError, match="flavour"):
            ModelCard.from_json({**data, **bad}, "x.json")


@pytest.mark.parametrize(
    "change, key",
    [
        (lambda d: d.pop("precision"), "precision"),
        (lambda d: d.pop("format"), "format"),
        (lambda d: d.update(params="many"), "params"),
        (lambda d: d.update(params=True), "params"),
        (lambda d: d.update(classes="cat"), "classes"),
        (lambda d: d.update(parity=[1]), "parity"),
        (lambda d: d.update(precision="dynamic", format="onnx"), "precision"),
        (lambda d: d.update(format="coreml"), "format"),
        (lambda d: d.update(input={"shape": [1, "x", 3]}), "input.shape"),
    ],
)
def test_malformed_card_names_file_and_key(tmp_path, change, key):
    path = tmp_path / "student-int8.tflite.json"
    data = _card().to_json()
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ContractError, match=f"key '{key}'") as info:
        read_card(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", ""])
def test_unreadable_card_names_file(tmp_path, text):
    path = tmp_path / "student.tflite.json"
    path.write_text(text)
    with pytest.raises(ContractError, match="model card") as info:
        read_card(path)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------------------- ensemble.json

CLASSES = ["cat", "dog", "car", "truck"]


def _spec(**changes) -> EnsembleSpec:
    members = {
        "generalist": {"tflite/float32": "generalist.tflite", "onnx/int8": "generalist-int8.onnx"},
        "specialist_0": {"tflite/float32": "specialist_0.tflite"},
        "specialist_1": {"tflite/float32": "specialist_1.tflite"},
    }
    fields = dict(
        classes=tuple(CLASSES), groups=((0, 1), (2, 3)), dustbin=True, top_n=2,
        confidence=0.8, flip=True, iterations=7, tol=1e-5, eps=1e-9, members=members,
        input_shape=(32, 32, 3),
    )  # fmt: skip
    return EnsembleSpec(**{**fields, **changes})


def test_ensemble_spec_round_trip_and_layout(tmp_path):
    path = tmp_path / "ensemble.json"
    spec = _spec()
    write_ensemble_spec(path, spec)
    assert read_ensemble_spec(path) == spec
    data = json.loads(path.read_text())
    assert list(data) == ["classes", "groups", "group_indices", "dustbin", "gating", "fusion",
                          "tta", "members", "dustbin_layout", "input"]  # fmt: skip
    assert data["groups"] == [["cat", "dog"], ["car", "truck"]]
    assert data["gating"] == {"rule": "top_n_intersects_group", "top_n": 2, "confidence": 0.8}
    assert {k: data["fusion"][k] for k in ("iterations", "tol", "eps")} == {
        "iterations": 7, "tol": 1e-5, "eps": 1e-9
    }  # fmt: skip
    assert data["tta"]["flip"] is True
    assert data["members"]["specialists"][1] == {
        "files": {"tflite/float32": "specialist_1.tflite"},
        "classes": ["car", "truck"],
        "outputs": ["car", "truck", "<dustbin>"],
    }
    assert data["input"] == {"layout": "NHWC", "pixels": "RGB 0..255", "shape": [32, 32, 3]}
    no_dustbin = _spec(dustbin=False, confidence=None, flip=False)
    write_ensemble_spec(path, no_dustbin)
    assert read_ensemble_spec(path) == no_dustbin


def test_run_copy_has_no_members_and_cannot_be_written_as_an_export(tmp_path):
    run_copy = _spec(members=None, input_shape=None)
    assert "members" not in run_copy.to_json() and "input" not in run_copy.to_json()
    with pytest.raises(ValueError, match="members"):
        write_ensemble_spec(tmp_path / "ensemble.json", run_copy)


def test_older_exports_still_load(tmp_path):
    """What exports wrote before `tta` existed (and hand-made files without the descriptive
    text): the flip default is the contract's one constant."""
    data = _spec().to_json()
    del data["tta"], data["dustbin_layout"]
    for key in ("objective", "solver", "start"):
        del data["fusion"][key]
    path = tmp_path / "ensemble.json"
    path.write_text(json.dumps(data))
    spec = read_ensemble_spec(path)
    assert spec.flip is FLIP_DEFAULT and spec.iterations == 7


def _drop(*keys):
    def change(d):
        node = d
        for k in keys[:-1]:
            node = node[k]
        del node[keys[-1]]

    return change


def _set(value, *keys):
    def change(d):
        node = d
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value

    return change


@pytest.mark.parametrize(
    "change, key",
    [
        (_drop("classes"), "classes"),
        (_set(None, "classes"), "classes"),
        (_drop("group_indices"), "group_indices"),
        (_set([[0, 9]], "group_indices"), "group_indices[0]"),
        (_set([["x"]], "group_indices"), "group_indices[0]"),
        (_set([["dog", "cat"], ["car", "truck"]], "groups"), "groups"),
        (_set("yes", "dustbin"), "dustbin"),
        (_set("top_3", "gating", "rule"), "gating.rule"),
        (_drop("gating", "top_n"), "gating.top_n"),
        (_set(0, "gating", "top_n"), "gating.top_n"),
        (_drop("gating", "confidence"), "gating.confidence"),
        (_drop("fusion", "iterations"), "fusion.iterations"),
        (_set("50", "fusion", "iterations"), "fusion.iterations"),
        (_drop("fusion", "tol"), "fusion.tol"),
        (_drop("fusion", "eps"), "fusion.eps"),
        (_set(1, "tta", "flip"), "tta.flip"),
        (_drop("members"), "members"),
        (_set([], "members", "specialists"), "members.specialists"),
        (_drop("members", "generalist", "files"), "members.generalist.files"),
        (_set({"tflite/fp8": "g.tflite"}, "members", "generalist", "files"),
         "members.generalist.files"),
        (_set(["cat"], "members", "specialists", 0, "outputs"), "members.specialists[0].outputs"),
        (_set(["dog"], "members", "specialists", 1, "classes"), "members.specialists[1].classes"),
        (_drop("input"), "input"),
        (_set([32, 32], "input", "shape"), "input.shape"),
    ],
)  # fmt: skip
def test_missing_or_mistyped_key_names_file_and_key(tmp_path, change, key):
    data = _spec().to_json()
    change(data)
    path = tmp_path / "members" / "ensemble.json"
    path.parent.mkdir()
    path.write_text(json.dumps(data))
    with pytest.raises(ContractError, match=re.escape(f"key '{key}'")):
        read_ensemble_spec(path)
    with pytest.raises(ValueError) as info:  # ContractError is a ValueError for the runtime
        read_ensemble_spec(path)
    assert str(path) in str(info.value) and "not what `edgekd export --members`" in str(info.value)


@pytest.mark.parametrize("text", ["{", "", "\ufffd"])
def test_unreadable_ensemble_json(tmp_path, text):
    path = tmp_path / "ensemble.json"
    path.write_text(text)
    with pytest.raises(ContractError, match="unreadable") as info:
        read_ensemble_spec(path)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------------------- one source


def test_fusion_iterations_have_one_source():
    from edgekd.maths import fusion
    from edgekd.recipe import EnsembleConfig

    assert EnsembleConfig().fusion_iterations == FUSION_ITERATIONS
    assert fusion.fuse.__kwdefaults__["iterations"] == FUSION_ITERATIONS


def test_contract_imports_no_tensorflow_or_keras():
    code = (
        "import sys, json; import edgekd.contract; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'tf_keras', 'jax', 'onnx', 'onnxruntime'))))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
