"""`edgekd bench` and `edgekd predict` on a device without TensorFlow or Keras.

The commands run in a subprocess where importing tensorflow or keras fails (both set to
None in sys.modules before the CLI loads; bench's per-model child processes inherit the
block). The export folder is tiny and built here: a 16x16 ResNet-10 trained for a few steps
on the synthetic colours, as float32 and int8 .tflite, a hand-made .onnx that reads the
colour of the synthetic images, and a members/ folder whose generalist and specialist reuse
the student files.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekd.device import bench
from edgekd.device.bench import (
    BenchError,
    device_profiles,
    find_targets,
    load_profile,
    select_formats,
)
from edgekd.errors import DataError
from tests.conftest import REPO
from tests.synthetic import COLOURS, make_folder

SHAPE = (16, 16, 3)
CLASSES = ["class_0", "class_1", "class_2"]
NO_TF = (
    "import sys; sys.modules['tensorflow'] = None; sys.modules['keras'] = None; "
    "from edgekd.cli import main; main()"
)


def run_no_tf(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`edgekd ARGS` in a fresh interpreter in which tensorflow and keras cannot be imported."""
    return subprocess.run(
        [sys.executable, "-c", NO_TF, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _colour_onnx(path: Path) -> None:
    """A float32 ONNX classifier without TensorFlow: logits = mean RGB / 50 (class k is the
    k-th colour of tests.synthetic, red/green/blue-dominated, so it is always right)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.eye(3, dtype=np.float32) / 50, name="w")
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["pixels"], ["mean"], axes=[1, 2], keepdims=0),
            helper.make_node("MatMul", ["mean", "w"], ["logits"]),
        ],
        "colour",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [None, *SHAPE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 3])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _card(path: Path, precision: str, **extra) -> None:
    card = {"format": path.suffix[1:], "precision": precision, "classes": CLASSES,
            "params": 1000, "input": {"shape": [None, *SHAPE]}, **extra}  # fmt: skip
    path.with_name(path.name + ".json").write_text(json.dumps(card))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """3 classes x 8 synthetic 20x20 images (bench and predict resize them to 16x16)."""
    return make_folder(tmp_path_factory.mktemp("images"), classes=3, per_class=8, size=20)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, images) -> Path:
    """student.tflite, student-int8.tflite, student.onnx, labels.txt, cards, members/."""
    import keras

    from edgekd.converters.tflite import export_tflite
    from edgekd.training.models import build_model

    out = tmp_path_factory.mktemp("export")
    keras.utils.set_random_seed(0)
    model = build_model("resnet10", num_classes=3, width=4, input_shape=SHAPE)
    # A few steps on the synthetic colours, so that its answers differ by image and class
    # and the accuracy bench reports has something to get wrong.
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 32)
    x = np.clip(np.array(COLOURS[:3])[y][:, None, None] + rng.normal(0, 40, (96, *SHAPE)), 0, 255)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # fmt: skip
    model.fit(x.astype(np.float32), y, batch_size=16, epochs=2, verbose=0)
    calibration = np.random.default_rng(0).integers(0, 256, (16, *SHAPE), dtype=np.uint8)
    export_tflite(model, out / "student.tflite")
    export_tflite(
        model, out / "student-int8.tflite", precision="int8", representative=calibration,
        io_dtype="uint8",
    )  # fmt: skip
    _card(out / "student.tflite", "float32")
    _card(out / "student-int8.tflite", "int8")
    if importlib.util.find_spec("onnx") is not None:  # optional: the export extra
        _colour_onnx(out / "student.onnx")
        _card(out / "student.onnx", "float32")
    (out / "labels.txt").write_text("\n".join(CLASSES) + "\n")

    # members/: a generalist (3 classes) and one specialist for {0, 1} plus its dustbin,
    # 3 outputs as well, so the student files stand in for both.
    members = out / "members"
    members.mkdir()
    files = {}
    for member in ("generalist", "specialist_0"):
        files[member] = {}
        for key, src in (
            ("tflite/float32", "student.tflite"),
            ("tflite/int8", "student-int8.tflite"),
        ):
            name = f"{member}{'-int8' if key.endswith('int8') else ''}.tflite"
            shutil.copy(out / src, members / name)
            files[member][key] = name
    config = {
        "classes": CLASSES,
        "groups": [CLASSES[:2]],
        "group_indices": [[0, 1]],
        "dustbin": True,
        "gating": {"rule": "top_n_intersects_group", "top_n": 1, "confidence": None},
        "fusion": {"solver": "em", "iterations": 50, "tol": 1e-6, "eps": 1e-12},
        "members": {
            "generalist": {"files": files["generalist"], "outputs": CLASSES},
            "specialists": [
                {
                    "files": files["specialist_0"],
                    "classes": CLASSES[:2],
                    "outputs": [*CLASSES[:2], "<dustbin>"],
                }
            ],
        },  # fmt: skip
        "input": {"layout": "NHWC", "pixels": "RGB 0..255", "shape": list(SHAPE)},
    }
    (members / "ensemble.json").write_text(json.dumps(config))
    return out


def _answers(export_dir: Path, images: Path, per_class: int) -> dict[tuple, dict]:
    """Each model's top-1 on the images bench documents it takes without a run (the first
    `per_class` files of each class folder, by name), computed here through the runtimes
    directly: {(model, precision, format): {"pred", "labels", "active"}}."""
    from edgekd.device.predict import read_image
    from edgekd.device.runtime import load_runner
    from edgekd.device.runtime.ensemble import EnsembleRunner

    files = [(f, c) for c, name in enumerate(CLASSES)
             for f in sorted((images / name).iterdir())[:per_class]]  # fmt: skip
    x = np.stack([read_image(f, SHAPE[:2]) for f, _ in files])
    labels = np.array([c for _, c in files])
    out = {}
    for name, precision in (("student.tflite", "float32"), ("student-int8.tflite", "int8"),
                            ("student.onnx", "float32")):  # fmt: skip
        if (export_dir / name).exists():
            pred = load_runner(export_dir / name).predict(x).argmax(1)
            out["student", precision, name.rsplit(".", 1)[1]] = {"pred": pred, "labels": labels}
    for precision in ("float32", "int8"):
        result = EnsembleRunner(export_dir / "members", precision=precision).predict(x)
        out["ensemble", precision, "tflite"] = {
            "pred": result.probs.argmax(1),
            "labels": labels,
            "active": result.active,
        }
    return out


def test_bench_without_tensorflow(export_dir, images, tmp_path):
    report_path = tmp_path / "bench.json"
    proc = run_no_tf(
        "bench", str(export_dir), "--data", f"folder:{images}", "--limit", "12", "--runs", "6",
        "--warmup", "2", "--batch", "4", "--json", str(report_path),
        "--plot", str(tmp_path / "bench.png"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    report = json.loads(report_path.read_text())
    rows = {(r["model"], r["precision"], r["format"]): r for r in report["rows"]}
    expected = {
        ("student", "float32", "tflite"),
        ("student", "int8", "tflite"),
        ("ensemble", "float32", "tflite"),
        ("ensemble", "int8", "tflite"),
    }
    if (export_dir / "student.onnx").exists():
        expected.add(("student", "float32", "onnx"))
    assert set(rows) == expected
    assert report["data"]["images"] == 12  # 12 // 3 classes = 4 per class
    for key, row in rows.items():
        assert "error" not in row, (key, row.get("error"))
        lat = row["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
        assert row["size_bytes"] > 0 and row["throughput_ips"] > 0
        assert row["rss_mb"]["peak"] > 0
        assert row["tensorflow_imported"] is False
    table = [line for line in out.splitlines() if line.startswith(("| student", "| ensemble"))]
    assert len(table) == len(rows)  # one table line per row
    if ("student", "float32", "onnx") in rows:
        assert rows["student", "float32", "onnx"]["accuracy"] == 1.0  # reads the colour
    ens = rows["ensemble", "float32", "tflite"]
    assert ens["size_bytes"] == 2 * rows["student", "float32", "tflite"]["size_bytes"]
    assert len(ens["activation_rate"]) == 1
    # Accuracy, activation and agreement as the same files give them here on the same images.
    want = _answers(export_dir, images, per_class=4)
    assert len(set(want["student", "float32", "tflite"]["pred"])) > 1  # not one answer for all
    for key, row in rows.items():
        w = want[key]
        assert row["accuracy"] == pytest.approx(float((w["pred"] == w["labels"]).mean())), key
        if key[0] == "ensemble":
            assert row["activation_rate"] == pytest.approx(w["active"].mean(0).tolist()), key
            members = 1.0 + float(w["active"].sum(1).mean())
            assert row["members_per_image"] == pytest.approx(members), key
        else:
            for precision, agreement in row.get("agreement_with", {}).items():
                other = want["ensemble", precision, key[2]]["pred"]
                assert agreement == pytest.approx(float((w["pred"] == other).mean())), key
    assert set(rows["student", "int8", "tflite"]["agreement_with"]) == {"float32", "int8"}
    assert any(c["student"] == "int8 tflite" for c in report["comparisons"])
    assert "student int8 tflite vs gated ensemble float32 tflite" in out
    assert "faster at p50" in out and "pp" in out
    assert "| model" in out and "p99 ms" in out and "peak RSS MB" in out
    plot_line = out.strip().splitlines()[-1]
    try:
        import matplotlib  # noqa: F401

        assert (tmp_path / "bench.png").is_file()
    except ImportError:
        assert plot_line == "plot skipped: matplotlib not installed (pip install matplotlib)"


def test_bench_export_without_members_and_device_profile(export_dir, images, tmp_path):
    bare = tmp_path / "export"
    shutil.copytree(export_dir, bare, ignore=shutil.ignore_patterns("members"))
    profile = tmp_path / "tiny-device.yaml"
    profile.write_text("runtime: litert\nthreads: 1\nprecisions: [int8]\nbatch: 4\n")
    proc = run_no_tf(
        "bench", str(bare), "--device", str(profile), "--data", f"folder:{images}",
        "--limit", "6", "--runs", "3", "--warmup", "1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads((bare / "bench.json").read_text())
    assert [(r["model"], r["precision"], r["format"]) for r in report["rows"]] == [
        ("student", "int8", "tflite")
    ]
    assert report["settings"]["threads"] == 1 and report["settings"]["batch"] == 4
    assert report["device"]["name"] == "tiny-device"
    assert "no gated ensemble rows" in proc.stdout


def test_device_profiles_load():
    names = device_profiles()
    assert {"jetson-orin-nano", "jetson-nano", "raspberry-pi-5", "raspberry-pi-4",
            "x86-cpu"} <= set(names)  # fmt: skip
    for name in names:
        profile = load_profile(name)
        assert profile.runtime in ("litert", "onnxruntime", "all")
        assert profile.install and profile.notes, name
    pi = load_profile("raspberry-pi-5")
    assert (pi.runtime, pi.threads, pi.xnnpack) == ("litert", 4, True)
    nano = load_profile(REPO / "devices" / "jetson-nano.yaml")
    assert nano.precisions == ["float32"] and nano.fp16
    assert "support window" in nano.install


def test_bad_profile_names_file_and_key(tmp_path, export_dir):
    bad = tmp_path / "typo.yaml"
    bad.write_text("runtime: litert\nthread: 4\n")
    with pytest.raises(BenchError, match=r"typo\.yaml: key 'thread': unknown key"):
        load_profile(bad)
    nested = tmp_path / "nested.yaml"
    nested.write_text("delegate:\n  xnnpak: true\n")
    with pytest.raises(BenchError, match=r"nested\.yaml: key 'delegate\.xnnpak'"):
        load_profile(nested)
    with pytest.raises(BenchError, match="built-in: .*raspberry-pi-5"):
        load_profile("no-such-device")
    proc = run_no_tf("bench", str(export_dir), "--device", str(bad))
    assert proc.returncode == 2
    assert "typo.yaml" in proc.stderr and "'thread'" in proc.stderr


def test_default_images_are_the_runs_validation_split(tmp_path):
    """Without --data, bench reads the run's recipe and picks from its validation split."""
    from edgekd.data.folder import scan_folder
    from edgekd.data.split import stratified_split
    from edgekd.device.bench import load_eval_images

    root = make_folder(tmp_path / "images", classes=3, per_class=12, size=16)
    run = tmp_path / "run"
    (run / "export").mkdir(parents=True)
    # A path relative to where training ran (here: the run's parent folder).
    (run / "recipe.yaml").write_text(
        "seed: 3\ndata:\n  path: folder:images\n  val_fraction: 0.25\n"
    )
    got = load_eval_images(run / "export", None, 6, (16, 16), CLASSES)
    assert "validation split" in got.selection and len(got.images) == 6
    index = scan_folder(root)
    _, val = stratified_split(index.labels, 0.25, seed=3)
    decoded = np.stack([np.asarray(Image.open(root / index.files[i])) for i in val])
    for image, label in zip(got.images, got.labels, strict=True):
        match = np.flatnonzero((decoded == image).all(axis=(1, 2, 3)))
        assert match.size == 1 and index.labels[val[match[0]]] == label
    (run / "recipe.yaml").write_text("data:\n  path: folder:nowhere\n")
    with pytest.raises(DataError, match="recipe.yaml data.path"):
        load_eval_images(run / "export", None, 6, (16, 16), CLASSES)


def test_find_targets_filters(export_dir):
    int8 = find_targets(export_dir, ["tflite"], ["int8"])
    assert [(t.model, t.precision) for t in int8] == [("student", "int8"), ("ensemble", "int8")]
    assert int8[1].size_bytes == sum(f.stat().st_size for f in int8[1].files)


def test_find_targets_tensorrt_engines(tmp_path):
    """Engines as the device's trtexec scripts write them: student rows, precision by name."""
    for name in ("student.engine", "student-fp16.engine", "student-int8.plan",
                 "student-int8.trtexec.sh", "student-int8.onnx", "teacher.engine"):  # fmt: skip
        (tmp_path / name).write_bytes(b"x" * 8)
    engines = find_targets(tmp_path, ["tensorrt"])
    assert [(t.model, t.format, t.precision, t.path.name) for t in engines] == [
        ("student", "tensorrt", "float32", "student.engine"),
        ("student", "tensorrt", "float16", "student-fp16.engine"),
        ("student", "tensorrt", "int8", "student-int8.plan"),
    ]
    assert [t.path.name for t in find_targets(tmp_path, ["tensorrt"], ["int8"])] == [
        "student-int8.plan"
    ]
    assert [t.path.name for t in find_targets(tmp_path, ["onnx"])] == ["student-int8.onnx"]


@pytest.fixture(scope="module")
def onnx_int8_dir(tmp_path_factory) -> Path:
    """student.onnx, the TensorRT Q/DQ student-int8.onnx and student-int8-cpu.onnx, carded
    as `edgekd export --onnx-int8 tensorrt,cpu` cards them."""
    pytest.importorskip("onnxruntime.quantization")
    from edgekd.converters.onnx import quantize_onnx_int8, quantize_onnx_int8_cpu

    out = tmp_path_factory.mktemp("onnx-int8")
    _colour_onnx(out / "student.onnx")
    calib = np.random.default_rng(0).integers(0, 256, (16, *SHAPE), dtype=np.uint8)
    quantize_onnx_int8(out / "student.onnx", out / "student-int8.onnx", calib)
    quantize_onnx_int8_cpu(out / "student.onnx", out / "student-int8-cpu.onnx", calib)
    _card(out / "student.onnx", "float32")
    _card(out / "student-int8.onnx", "int8")
    _card(out / "student-int8-cpu.onnx", "int8", flavour="cpu")
    (out / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    return out


def test_find_targets_tells_the_int8_onnx_flavours_apart(onnx_int8_dir, tmp_path):
    rows = find_targets(onnx_int8_dir, ["onnx"])
    assert [(t.precision, t.path.name) for t in rows] == [
        ("float32", "student.onnx"),
        ("int8", "student-int8.onnx"),
        ("int8-cpu", "student-int8-cpu.onnx"),
    ]
    assert [t.precision for t in find_targets(onnx_int8_dir, ["onnx"], ["int8"])] == [
        "int8", "int8-cpu"
    ]  # fmt: skip
    # Without cards the file name says it.
    for name in ("student-int8.onnx", "student-int8-cpu.onnx"):
        shutil.copy(onnx_int8_dir / name, tmp_path / name)
    assert [t.precision for t in find_targets(tmp_path, ["onnx"])] == ["int8", "int8-cpu"]


def test_bench_and_predict_take_the_cpu_int8_onnx_file(onnx_int8_dir, images, tmp_path):
    """One bench table holds float32, the TensorRT Q/DQ int8 and the CPU int8 file."""
    bare = tmp_path / "export"
    shutil.copytree(onnx_int8_dir, bare)
    proc = run_no_tf(
        "bench", str(bare), "--runtime", "onnxruntime", "--data", f"folder:{images}",
        "--limit", "6", "--runs", "3", "--warmup", "1", "--rounds", "1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads((bare / "bench.json").read_text())
    rows = [(r["model"], r["precision"], r["format"]) for r in report["rows"]]
    assert rows == [("student", p, "onnx") for p in ("float32", "int8", "int8-cpu")]
    assert all("error" not in r for r in report["rows"]), report["rows"]
    assert "int8-cpu" in proc.stdout
    assert any("student-int8.onnx is the TensorRT Q/DQ file" in n for n in report["notes"])
    cpu = report["host"]["cpu"]  # this host's /proc/cpuinfo, read back in the host line
    assert set(cpu) == {"model", "int8_dot", "flags_read"}
    if cpu["flags_read"]:
        assert f"int8 dot product: {cpu['int8_dot'] or 'none'}" in proc.stdout
        no_dot = "no int8 dot-product instruction" in proc.stdout
        assert no_dot == (cpu["int8_dot"] is None)
    from edgekd.device.predict import resolve_model

    (bare / "student-int8.onnx").unlink()
    assert resolve_model(bare) == bare / "student-int8-cpu.onnx"
    photo = str(images / "class_2" / "0001.png")
    proc = run_no_tf("predict", str(bare), photo, "--top-k", "1")
    assert proc.returncode == 0, proc.stderr
    assert "student-int8-cpu.onnx" in proc.stdout.splitlines()[0]


def test_select_formats_skips_missing_tensorrt(tmp_path, monkeypatch):
    assert bench.runner._runtime_available("tensorrt") is False  # no tensorrt / cuda-python here
    monkeypatch.setattr(bench.runner, "_runtime_available", lambda r: r != "tensorrt")
    assert select_formats(tmp_path, "all") == (["tflite", "onnx"], [])  # no engines: no note
    (tmp_path / "student-int8.engine").write_bytes(b"x")
    formats, notes = select_formats(tmp_path, "all")
    assert formats == ["tflite", "onnx"]
    assert notes and notes[0].startswith("tensorrt not installed: student-int8.engine skipped")
    with pytest.raises(BenchError, match=r"--runtime tensorrt: not installed .*cuda-python"):
        select_formats(tmp_path, "tensorrt")
    monkeypatch.setattr(bench.runner, "_runtime_available", lambda r: True)
    assert select_formats(tmp_path, "tensorrt") == (["tensorrt"], [])
    assert select_formats(tmp_path, "all")[0] == ["tflite", "onnx", "tensorrt"]


def test_profile_gpu_delegate_reaches_tflite_rows(export_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    good = tmp_path / "gpu.yaml"
    good.write_text("delegate:\n  gpu_library: ~/lib/libtensorflowlite_gpu_delegate.so\n")
    library = tmp_path / "lib" / "libtensorflowlite_gpu_delegate.so"
    assert load_profile(good).gpu_library == str(library)
    assert load_profile("raspberry-pi-5").gpu_library is None
    bad = tmp_path / "bad.yaml"
    bad.write_text("delegate:\n  gpu_library: true\n")
    with pytest.raises(BenchError, match=r"bad\.yaml: key 'delegate\.gpu_library': expected"):
        load_profile(bad)
    # The child side hands the library to the TFLite runner, which names it when it is absent.
    np.save(tmp_path / "images.npy", np.zeros((2, *SHAPE), np.uint8))
    np.save(tmp_path / "labels.npy", np.zeros(2, np.int32))
    spec = {"images": str(tmp_path / "images.npy"), "labels": str(tmp_path / "labels.npy"),
            "format": "tflite", "model": "student", "path": str(export_dir / "student.tflite"),
            "precision": "float32", "batch": 2, "threads": None, "warmup": 0, "runs": 1,
            "delegates": [str(library)]}  # fmt: skip
    with pytest.raises(RuntimeError, match="libtensorflowlite_gpu_delegate.so: no such file"):
        bench.measure_here(spec)


def test_predict_prints_top_k(export_dir, images):
    files = [str(images / "class_0" / "0000.png"), str(images / "class_2" / "0001.png")]
    proc = run_no_tf("predict", str(export_dir), *files, "--top-k", "2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("model: ") and "student-int8.tflite" in lines[0]
    for f in files:
        block = lines[lines.index(f) + 1 : lines.index(f) + 3]
        assert [line.split()[0] for line in block] == ["1.", "2."]
        assert all(line.split()[1] in CLASSES for line in block)
        scores = [float(line.split()[2]) for line in block]
        assert 0 <= scores[1] <= scores[0] <= 1

    onnx_file = export_dir / "student.onnx"
    if onnx_file.exists():
        proc = run_no_tf("predict", str(onnx_file), files[1], "--top-k", "1")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip().splitlines()[-1].split()[1] == "class_2"


def test_predict_runs_the_gated_ensemble(export_dir, images, tmp_path):
    files = [str(images / f"class_{c}" / "0002.png") for c in range(3)]
    proc = run_no_tf("predict", str(export_dir), *files, "--ensemble", "--top-k", "3")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == f"model: {export_dir / 'members'} (gated ensemble, tflite float32, litert)"
    from edgekd.device.predict import read_image
    from edgekd.device.runtime.ensemble import EnsembleRunner

    runner = EnsembleRunner(export_dir / "members")
    for f in files:
        block = lines[lines.index(f) + 1 : lines.index(f) + 5]
        result = runner.predict_one(read_image(f, (16, 16)))
        best = int(result.probs[0].argmax())
        assert block[0].split()[1] == CLASSES[best]
        assert float(block[0].split()[2]) == pytest.approx(result.probs[0, best], abs=1e-4)
        woke = "class_0, class_1" if result.active[0, 0] else "no specialist (the generalist alone)"
        assert block[3] == f"  woke: {woke}"

    # The members folder itself needs no flag; an export without one is named.
    proc = run_no_tf("predict", str(export_dir / "members"), files[0], "--precision", "int8")
    assert proc.returncode == 0, proc.stderr
    assert "(gated ensemble, tflite int8, litert)" in proc.stdout.splitlines()[0]
    bare = tmp_path / "bare"
    shutil.copytree(export_dir, bare, ignore=shutil.ignore_patterns("members"))
    proc = run_no_tf("predict", str(bare), files[0], "--ensemble")
    assert proc.returncode == 2 and "no ensemble.json" in proc.stderr and str(bare) in proc.stderr
    proc = run_no_tf("predict", str(export_dir), files[0], "--ensemble", "--precision", "fp8")
    assert proc.returncode == 2 and "has no 'tflite/fp8' file" in proc.stderr


def test_predict_errors_exit_2(export_dir, tmp_path):
    missing = tmp_path / "nope.jpg"
    proc = run_no_tf("predict", str(export_dir), str(missing))
    assert proc.returncode == 2
    assert str(missing) in proc.stderr and "no such image file" in proc.stderr

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    proc = run_no_tf("predict", str(export_dir / "student.tflite"), str(broken))
    assert proc.returncode == 2 and "broken.jpg: cannot read image" in proc.stderr

    proc = run_no_tf("predict", str(tmp_path / "missing.tflite"), str(broken))
    assert proc.returncode == 2 and "missing.tflite: no such model file" in proc.stderr


def test_plot_labels_of_close_points_do_not_overlap():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [
        {"precision": p, "latency_ms": {"p50": 0.20 + 0.002 * i}, "accuracy": 0.834 + 0.0002 * i}
        for i, p in enumerate(["int8", "int8-qat", "dynamic", "float16"])
    ]
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.scatter([r["latency_ms"]["p50"] for r in rows], [100 * r["accuracy"] for r in rows])
    bench.report._place_labels(fig, ax, rows)
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert sorted(t.get_text() for t in ax.texts) == sorted(r["precision"] for r in rows)
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    plt.close(fig)


@pytest.mark.parametrize(
    "target, damage",
    [
        ("student.tflite", "truncated"),
        ("student.tflite", "garbled"),
        ("student.onnx", "truncated"),
        ("student.onnx", "empty"),
        ("labels.txt", "binary"),
        ("members/ensemble.json", "truncated"),
    ],
)
def test_predict_on_corrupt_files_exit_2(export_dir, images, tmp_path, target, damage):
    folder = tmp_path / "export"
    shutil.copytree(export_dir, folder)
    path = folder / target
    if not path.exists():
        pytest.skip(f"{target} not exported here (optional extra)")
    data = path.read_bytes()
    path.write_bytes({
        "truncated": data[: len(data) // 2], "empty": b"",
        "garbled": data[:8] + bytes(b ^ 0x3C for b in data[8:4000]) + data[4000:],
        "binary": b"\xff\xfe\x00\x81" * 8,
    }[damage])  # fmt: skip
    model = folder / ("members" if target.startswith("members") else "student.tflite")
    if target == "student.onnx":
        model = path
    proc = run_no_tf("predict", str(model), str(images / "class_0" / "0000.png"))
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    assert path.name in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def nan_export(tmp_path_factory) -> Path:
    """A float32 .tflite whose every output is NaN (a model trained to a NaN loss)."""
    from edgekd.converters.tflite import export_tflite
    from edgekd.training.models import build_model

    out = tmp_path_factory.mktemp("broken-export")
    model = build_model("resnet10", num_classes=3, width=4, input_shape=SHAPE)
    w = model.trainable_weights[0]
    w.assign(np.full(w.shape, np.nan, np.float32))
    export_tflite(model, out / "student.tflite")
    _card(out / "student.tflite", "float32")
    (out / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    return out


def test_predict_and_bench_never_print_nan(nan_export, images):
    proc = run_no_tf("predict", str(nan_export), str(images / "class_0" / "0000.png"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "not a number" in proc.stderr and not re.search(r"\bnan\b", proc.stdout, re.I)
    proc = run_no_tf(
        "bench", str(nan_export), "--data", f"folder:{images}", "--limit", "6", "--runs", "2",
        "--warmup", "1",
    )  # fmt: skip
    assert "Traceback" not in proc.stderr
    assert not re.search(r"\bnan\b", proc.stdout.replace("NaN or inf", ""), re.I), proc.stdout
    report = json.loads((nan_export / "bench.json").read_text())
    assert all("not finite" in row["error"] for row in report["rows"]), report["rows"]


def test_parity_fails_a_file_with_non_finite_outputs():
    from edgekd.export.exporter import parity

    class NaNRunner:
        def predict(self, images):
            out = np.zeros((len(images), 3), np.float32)
            out[:, 0] = np.nan  # argmax says class 0, which would score 'perfectly' below
            return out

    labels = np.zeros(10, np.int64)
    reference = np.eye(3, dtype=np.float32)[labels]
    p = parity(NaNRunner(), np.zeros((10, 4, 4, 3)), labels, reference, tolerance_pp=1.0)
    assert p["finite"] is False and p["passed"] is False and p["max_logit_error"] is None
    assert p["drop_pp"] == 0.0  # the argmax alone would have passed it


@pytest.mark.parametrize("hostile", ["../student.tflite", "/etc/hostname", {"x": 1}, "garbage"])
def test_bench_does_not_follow_member_paths_out(export_dir, images, tmp_path, hostile):
    folder = tmp_path / "export"
    shutil.copytree(export_dir, folder)
    path = folder / "members" / "ensemble.json"
    if hostile == "garbage":
        path.write_bytes(b"\xff\x00{")
    else:
        config = json.loads(path.read_text())
        config["members"]["generalist"]["files"]["tflite/float32"] = hostile
        path.write_text(json.dumps(config))
    proc = run_no_tf(
        "bench", str(folder), "--data", f"folder:{images}", "--limit", "3", "--runs", "2",
        "--warmup", "1", "--rounds", "1", "--runtime", "litert",
    )  # fmt: skip
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    report = json.loads((folder / "bench.json").read_text())
    ensemble = {r["precision"] for r in report["rows"] if r["model"] == "ensemble"}
    assert ensemble == (set() if hostile == "garbage" else {"int8"}), report["rows"]
