"""`edgekd export`: every file run by its runtime and compared with Keras; cards; the gate;
members and an `ensemble.json` that reproduces the gated ensemble."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from edgekd.device.runtime import load_runner
from edgekd.export.exporter import export_model, parity, representative_images
from edgekd.recipe import ExportConfig
from edgekd.training.ensemble.fusion import fuse, scatter_specialist
from edgekd.training.ensemble.gating import gate
from edgekd.training.models import build_model
from tests.conftest import run_cli, smoke_copy


def _toy(seed: int = 0, n: int = 240):
    """Images whose class is which colour channel is brightest: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n).astype(np.int32)
    images = rng.integers(0, 120, (n, 16, 16, 3))
    images[np.arange(n), :, :, labels] += 120
    return images.astype(np.uint8), labels


@pytest.fixture(scope="module")
def toy_model():
    keras.utils.set_random_seed(0)
    model = build_model("resnet10", num_classes=3, width=4, input_shape=(16, 16, 3))
    model.compile(
        keras.optimizers.SGD(0.05, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    x, y = _toy()
    model.fit(x.astype("float32"), y, batch_size=16, epochs=4, verbose=0)
    return model


def test_representative_images_are_class_balanced_and_seeded():
    labels = np.repeat(np.arange(4), [50, 10, 30, 20])
    images = np.arange(len(labels))
    a = representative_images(images, labels, 40, seed=3)
    assert len(a) == 40 and np.array_equal(a, representative_images(images, labels, 40, seed=3))
    assert np.bincount(labels[a], minlength=4).tolist() == [10, 10, 10, 10]


def test_parity_detects_a_broken_int8_file(toy_model, tmp_path):
    """Calibrating int8 on black images breaks the activation ranges: the gate must say so."""
    x, y = _toy(1, 120)
    cfg = ExportConfig(formats=("tflite",), precisions=("float32", "int8"), tolerance_pp=1.0)
    good = export_model(toy_model, "good", tmp_path, cfg, x[:64], x, y, {"run": "t"}, log=print)
    assert all(v.passed for v in good), [v.card["parity"] for v in good]
    f32 = good[0].card["parity"]
    assert f32["top1_agreement"] == 1.0 and f32["max_logit_error"] < 1e-3
    assert f32["keras_accuracy"] > 0.9  # the toy task is learnt: drops are meaningful
    black = np.zeros_like(x[:64])
    cfg8 = cfg.model_copy(update={"precisions": ("int8",)})
    bad = export_model(toy_model, "bad", tmp_path, cfg8, black, x, y, {"run": "t"}, log=print)
    card = json.loads((tmp_path / "bad-int8.tflite.json").read_text())
    assert not bad[0].passed and not card["parity"]["passed"]
    assert card["parity"]["drop_pp"] > 1.0


def test_card_states_the_contract(toy_model, tmp_path):
    x, y = _toy(2, 60)
    cfg = ExportConfig(formats=("tflite",), precisions=("int8",), int8_io="uint8")
    (v,) = export_model(toy_model, "m", tmp_path, cfg, x, x, y, {"classes": ["r", "g", "b"]})
    card = v.card
    assert card["input"]["dtype"] == "uint8" and card["input"]["layout"] == "NHWC"
    assert card["input"]["pixels"] == "RGB 0..255"
    assert card["size_bytes"] == (tmp_path / "m-int8.tflite").stat().st_size
    assert card["params"] > 0 and card["macs"] > 0 and card["runtime"]
    # The uint8 input's own quantisation maps pixels 0..255 into the tensor and back to
    # within one step (its scale comes from the calibration images' range).
    from edgekd.device.runtime.base import TensorSpec, quantize_input

    spec = TensorSpec(**{k: card["input"][k] for k in ("name", "dtype", "scale", "zero_point")},
                      shape=tuple(card["input"]["shape"]))  # fmt: skip
    q = quantize_input(x, spec).astype(np.float32)
    back = spec.scale * (q - spec.zero_point)
    assert np.abs(back - x.clip(0, 255 * spec.scale)).max() <= spec.scale


def test_parity_function_on_hand_values():
    class Fixed:
        def predict(self, images):
            return np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.5]], np.float32)

    ref = np.array([[2.0, 1.1], [1.0, 0.0], [1.0, 0.0]], np.float32)
    p = parity(Fixed(), np.zeros((3, 1)), np.array([0, 0, 0]), ref, tolerance_pp=10.0)
    assert p["keras_accuracy"] == 1.0 and p["accuracy"] == pytest.approx(2 / 3)
    assert p["top1_agreement"] == pytest.approx(2 / 3)
    assert p["max_logit_error"] == pytest.approx(3.0)
    assert p["drop_pp"] == pytest.approx(100 / 3) and not p["passed"]


@pytest.mark.e2e
def test_export_cli_writes_files_cards_and_table(smoke_exported, smoke_exported_stdout):
    """The session's export (float and int8, .tflite and .onnx, with --members)."""
    out = smoke_exported / "export"
    labels = (out / "labels.txt").read_text().split()
    assert labels[0] == "airplane" and len(labels) == 10
    for name in ("student.tflite", "student.onnx"):
        card = json.loads((out / f"{name}.json").read_text())
        assert card["parity"]["top1_agreement"] > 0.99, card["parity"]
        assert card["model"] == "student" and card["stage"] == "student"
    summary = json.loads((out / "export.json").read_text())
    assert {(r["model"], r["format"]) for r in summary["variants"]} >= {
        ("student", "tflite"), ("student", "onnx"), ("generalist", "tflite"),
        ("specialist_0", "tflite"), ("specialist_1", "onnx"),
    }  # fmt: skip
    assert "agreement %" in smoke_exported_stdout and "student.tflite" in smoke_exported_stdout


@pytest.mark.e2e
def test_ensemble_json_reproduces_the_gated_ensemble(smoke_exported, cifar_jpeg):
    """From ensemble.json and the member .tflite files alone, the fused answers come back."""
    from edgekd.training.ensemble.gated import load_gated_ensemble

    run_dir = smoke_exported
    members = run_dir / "export" / "members"
    cfg = json.loads((members / "ensemble.json").read_text())
    k = len(cfg["classes"])
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (24, 32, 32, 3)).astype(np.uint8)

    def run_member(entry):
        return load_runner(members / entry["files"]["tflite/float32"]).predict(images)

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    general = softmax(run_member(cfg["members"]["generalist"]))
    groups = cfg["group_indices"]
    membership = np.zeros((len(groups), k), np.float32)
    for m, g in enumerate(groups):
        membership[m, g] = 1
    active = np.asarray(gate(general, membership, top_n=cfg["gating"]["top_n"],
                             confidence=cfg["gating"]["confidence"]))  # fmt: skip
    ins, dusts = [], []
    for entry, group in zip(cfg["members"]["specialists"], groups, strict=True):
        p_in, dust = scatter_specialist(softmax(run_member(entry)), group, k, cfg["dustbin"])
        ins.append(np.asarray(p_in))
        dusts.append(np.asarray(dust))
    fused = fuse(
        general, np.stack(ins, 1), np.stack(dusts, 1), active, membership,
        dustbin=cfg["dustbin"], iterations=cfg["fusion"]["iterations"],
    )  # fmt: skip
    fused = np.asarray(fused)
    want = load_gated_ensemble(run_dir).predict(images).probs
    np.testing.assert_allclose(fused, want, atol=1e-4)


def test_export_errors_name_the_culprit(tmp_path):
    proc = run_cli("export", str(tmp_path))
    assert proc.returncode == 2 and "not a run directory" in proc.stderr
    proc = run_cli("export", str(tmp_path), "--format", "tflite,coreml")
    assert proc.returncode == 2 and "coreml" in proc.stderr and "--format" in proc.stderr


def test_export_onnx_int8_flag_maps_onto_the_recipe(monkeypatch, tmp_path):
    """`--onnx-int8 tensorrt,cpu` becomes `export.onnx_int8=[tensorrt, cpu]`, which the
    schema reads back; an unknown flavour is refused before anything is loaded."""
    from click.testing import CliRunner

    from edgekd import cli
    from edgekd.export import exporter
    from edgekd.recipe.loading import parse_override

    seen = {}
    monkeypatch.setattr(exporter, "export_run", lambda run, **kw: seen.update(kw))
    result = CliRunner().invoke(
        cli.main, ["export", str(tmp_path), "--int8", "--onnx-int8", "tensorrt, cpu"]
    )
    assert result.exit_code == 0, result.output
    (override,) = [o for o in seen["overrides"] if o.startswith("export.onnx_int8=")]
    key, value = parse_override(override)
    assert ExportConfig.model_validate({"onnx_int8": value}).onnx_int8 == ("tensorrt", "cpu")
    proc = run_cli("export", str(tmp_path), "--onnx-int8", "cpu,gpu")
    assert proc.returncode == 2 and "gpu" in proc.stderr and "--onnx-int8" in proc.stderr


@pytest.mark.e2e
def test_export_set_override_is_validated(smoke_exported):
    proc = run_cli("export", str(smoke_exported), "--set", "export.tolerance_pp=-1")
    assert proc.returncode == 2 and "export.tolerance_pp" in proc.stderr


@pytest.mark.e2e
@pytest.mark.slow
def test_eval_pairs_the_int8_file_with_its_float_model(smoke_trained, tmp_path):
    """`edgekd eval` runs the exported int8 .tflite through LiteRT on the same images and
    reports int8 vs float as a paired difference."""
    run_dir = smoke_copy(smoke_trained, tmp_path / "smoke")
    proc = run_cli("export", str(run_dir), "--int8", "--format", "tflite", "--force")
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = json.loads((run_dir / "export" / "student-int8.tflite.json").read_text())
    proc = run_cli("eval", str(run_dir), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads(proc.stdout)
    pairs = {(c["a"], c["b"]): c for c in payload["comparisons"]}
    c = pairs[("distilled", "distilled int8")]
    assert c["accuracy_a"] == pytest.approx(payload["models"]["distilled"]["accuracy"])
    # the same images as the export's parity run (the whole validation split): same accuracy
    assert c["accuracy_b"] == pytest.approx(card["parity"]["accuracy"])
    assert c["only_a"] + c["only_b"] <= c["images"]


def test_saved_model_is_a_folder_that_serves_the_keras_logits(toy_model, tmp_path):
    """The SavedModel back-end writes a folder atomically, replaces an earlier one, and the
    folder loaded by bare TensorFlow gives Keras' logits on raw pixels."""
    import tensorflow as tf

    from edgekd.converters.saved_model import convert

    x, _ = _toy(seed=1, n=8)
    path = tmp_path / "student_saved_model"
    assert convert(toy_model, path, precision="float32") == path
    first = sorted(p.name for p in path.iterdir())
    convert(toy_model, path, precision="float32")  # again: replaces, leaves no temp folders
    assert sorted(p.name for p in path.iterdir()) == first
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    loaded = tf.saved_model.load(str(path))  # kept: its variables die with it
    served = loaded.serve(tf.constant(x, tf.float32)).numpy()
    np.testing.assert_allclose(served, toy_model.predict(x.astype("float32"), verbose=0),
                               atol=1e-4)  # fmt: skip
    with pytest.raises(ValueError, match="saved_model"):
        convert(toy_model, tmp_path / "x_saved_model", precision="int8")
