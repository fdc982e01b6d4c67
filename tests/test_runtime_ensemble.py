"""The TF-free gated ensemble: the numpy fusion and gating agree with the Keras ones, and
`EnsembleRunner` on exported .tflite members reproduces `GatedEnsemble.predict`, also in a
process where TensorFlow and Keras cannot be imported."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from edgekd.device.runtime.ensemble import EnsembleResult, EnsembleRunner
from edgekd.maths import fusion as nfusion
from edgekd.training.ensemble import fusion as kfusion
from edgekd.training.ensemble import gating as kgating
from edgekd.training.ensemble.gated import GatedEnsemble
from tests.conftest import run_python_json

SHAPE = (16, 16, 3)
CLASSES = ["c0", "c1", "c2", "c3", "c4"]
GROUPS = [[0, 1], [2, 3, 4]]


def np_(x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x))


# ---------------------------------------------------------------------------------------
# Fusion and gating: numpy port against keras.ops, case by case.


def random_case(rng: np.random.Generator, dustbin: bool, rows: int = 6):
    """Random groups (overlapping), Dirichlet outputs with some near-one and exact zeros,
    random activity with some rows that wake nobody. float32, as the ensemble feeds it."""
    k = int(rng.integers(3, 11))
    m = int(rng.integers(1, 5))
    groups = [sorted(rng.choice(k, int(rng.integers(1, k)), replace=False)) for _ in range(m)]
    alpha = float(rng.choice([0.1, 0.3, 1.0, 3.0]))
    if rng.random() < 0.3:  # a peaky, softmax-like generalist
        g = keras.ops.convert_to_numpy(keras.ops.softmax(rng.normal(0, 8, (rows, k))))
    else:
        g = rng.dirichlet(np.full(k, alpha), size=rows)
    pin = np.zeros((rows, m, k))
    d = np.zeros((rows, m))
    for j, group in enumerate(groups):
        p = rng.dirichlet(np.full(len(group) + int(dustbin), alpha), size=rows)
        pin[:, j, group] = p[:, : len(group)]
        if dustbin:
            d[:, j] = p[:, -1]
    # Extremes: a near-one generalist row, an exactly zero class, a sure specialist.
    g[0] = np.full(k, 1e-7 / (k - 1))
    g[0, rng.integers(k)] = 1.0 - 1e-7
    g[1, rng.integers(k)] = 0.0
    g[1] /= g[1].sum()
    pin[2, 0] = 0.0
    pin[2, 0, groups[0][0]] = 1.0
    d[2, 0] = 0.0
    a = (rng.random((rows, m)) < 0.7).astype(np.float64)
    a[:3, 0] = 1.0
    a[-1] = 0.0  # a row that wakes nobody
    mem = kfusion.membership_matrix(groups, k)
    return [np.asarray(x, np.float32) for x in (g, pin, d, a, mem)]


@pytest.mark.parametrize("dustbin", [True, False], ids=["dustbin", "no-dustbin"])
def test_fuse_matches_keras(dustbin: bool) -> None:
    rng = np.random.default_rng(2024 + dustbin)
    worst = 0.0
    for _ in range(30):
        g, pin, d, a, mem = random_case(rng, dustbin)
        q_keras = np_(kfusion.fuse(g, pin, d, a, mem, dustbin=dustbin))
        q_numpy = nfusion.fuse(g, pin, d, a, mem, dustbin=dustbin)
        assert q_numpy.dtype == np.float32 and q_numpy.shape == q_keras.shape
        np.testing.assert_allclose(q_numpy, q_keras, atol=1e-5)
        np.testing.assert_array_equal(q_numpy[-1], g[-1])  # nobody woke: p_g itself
        # Same float32 operations in the same order, but rounding (BLAS sums, exp/log) can
        # tip a Newton-or-EM choice on extreme rows: the trajectories then part, and each
        # ends within float32 reach (a few 1e-6) of the optimum.
        worst = max(worst, float(np.abs(q_numpy - q_keras).max()))
    print(f"max |q_numpy - q_keras| = {worst:.2e}")


@pytest.mark.parametrize("iterations", [0, 1, 3])
def test_fuse_matches_keras_after_few_iterations(iterations: int) -> None:
    rng = np.random.default_rng(iterations)
    for dustbin in (True, False):
        for _ in range(4):
            g, pin, d, a, mem = random_case(rng, dustbin)
            kwargs = {"dustbin": dustbin, "iterations": iterations}
            q_numpy = nfusion.fuse(g, pin, d, a, mem, **kwargs)
            q_keras = np_(kfusion.fuse(g, pin, d, a, mem, **kwargs))
            # Rows agree to float32 reach, except where the objective is flat around the
            # iterate (the near-one generalist row): there one rounding moves q along the
            # flat direction (seen: 9e-5 on one host) and the objective must still agree.
            parted = np.abs(q_numpy - q_keras).max(axis=-1) > 1e-5
            np.testing.assert_allclose(q_numpy[~parted], q_keras[~parted], atol=1e-5)
            objective = [
                nfusion.fusion_objective(q, g, pin, d, a, mem, dustbin=dustbin)[parted]
                for q in (q_numpy, q_keras)
            ]
            np.testing.assert_allclose(*objective, rtol=1e-6)
            assert parted.sum() <= 1, f"{parted.sum()} rows parted"


@pytest.mark.parametrize("dustbin", [True, False], ids=["dustbin", "no-dustbin"])
def test_fuse_extreme_inputs_match_keras(dustbin: bool) -> None:
    """One-hot and near-one rows, as in tests/test_fusion.py."""
    k = 4
    mem = kfusion.membership_matrix([[0, 1], [1, 2], [3]], k)
    rows = []
    for g in (*np.eye(k)[[0, 3]], np.array([1 - 3e-8, 1e-8, 1e-8, 1e-8]), np.full(k, 0.25)):
        for in0, in1, dust in ((1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (0.5, 0.5, 0.0)):
            pin = np.zeros((3, k))
            pin[0, [0, 1]] = [in0, in1]
            pin[1, [1, 2]] = [in1, in0]
            pin[2, 3] = 1.0 - dust if dustbin else 1.0
            d = np.full(3, dust) if dustbin else np.zeros(3)
            if not dustbin:
                total = pin[:2].sum(-1, keepdims=True)
                pin[:2] = np.where(total > 0, pin[:2] / np.maximum(total, 1e-30), 0.5 * mem[:2])
            rows.append((g, pin, d))
    g, pin, d = (np.stack([r[i] for r in rows]).astype(np.float32) for i in range(3))
    a = np.ones((len(rows), 3), np.float32)
    q_numpy = nfusion.fuse(g, pin, d, a, mem, dustbin=dustbin)
    np.testing.assert_allclose(q_numpy, np_(kfusion.fuse(g, pin, d, a, mem, dustbin=dustbin)),
                               atol=1e-5)  # fmt: skip
    assert np.all(np.isfinite(q_numpy))
    np.testing.assert_allclose(q_numpy.sum(-1), 1.0, atol=1e-6)
    f_numpy = nfusion.fusion_objective(q_numpy, g, pin, d, a, mem, dustbin=dustbin)
    f_keras = np_(kfusion.fusion_objective(q_numpy, g, pin, d, a, mem, dustbin=dustbin))
    np.testing.assert_allclose(f_numpy, f_keras, rtol=1e-5, atol=1e-5)  # float32 cancellation


def test_membership_scatter_and_errors_match_keras() -> None:
    groups = [[0, 2], [2, 3]]
    np.testing.assert_array_equal(
        nfusion.membership_matrix(groups, 4), kfusion.membership_matrix(groups, 4)
    )
    probs = np.array([[0.6, 0.3, 0.1], [0.0, 0.0, 1.0]], np.float32)
    for group, dustbin in (([3, 1], True), ([0, 1, 2], False)):
        for got, want in zip(
            nfusion.scatter_specialist(probs, group, 4, dustbin=dustbin),
            kfusion.scatter_specialist(probs, group, 4, dustbin=dustbin),
            strict=True,
        ):
            np.testing.assert_array_equal(got, np_(want))
    for bad, match in (([[0, 4]], "outside"), ([[]], "non-empty"), ([[1, 1]], "repeats")):
        for module in (kfusion, nfusion):
            with pytest.raises(ValueError, match=match):
                module.membership_matrix(bad, 4)
    mem = nfusion.membership_matrix([[0, 1]], 3)
    g = np.full((2, 3), 1 / 3, np.float32)
    ones = np.ones((2, 1), np.float32)
    with pytest.raises(ValueError, match="p_in"):
        nfusion.fuse(g, np.zeros((2, 2, 3), np.float32), ones * 0, ones, mem)
    with pytest.raises(ValueError, match="iterations"):
        nfusion.fuse(g, np.zeros((2, 1, 3), np.float32), ones * 0, ones, mem, iterations=-1)
    with pytest.raises(ValueError, match="expected"):
        nfusion.scatter_specialist(np.ones((2, 3), np.float32), [0, 1, 2], 4)


def test_gate_and_top_n_match_keras() -> None:
    rng = np.random.default_rng(5)
    for _ in range(20):
        k = int(rng.integers(2, 9))
        # Few distinct values: many ties, which go to the lower class index.
        p = rng.integers(0, 4, (16, k)).astype(np.float32) / 4.0
        p[0] = 0.25  # an all-tied row
        p[1, 0] = 0.5  # exactly at a confidence threshold below
        groups = [sorted(rng.choice(k, int(rng.integers(1, k + 1)), replace=False))
                  for _ in range(int(rng.integers(1, 4)))]  # fmt: skip
        mem = kfusion.membership_matrix(groups, k)
        for n in range(1, k + 2):
            mask = nfusion.top_n_candidates(p, n)
            assert mask.dtype == np.float32
            np.testing.assert_array_equal(mask, np_(kgating.top_n_candidates(p, n)))
            for confidence in (None, 0.5, 0.75, 1.0):
                want = np_(kgating.gate(p, mem, top_n=n, confidence=confidence))
                got = nfusion.gate(p, mem, top_n=n, confidence=confidence)
                assert got.dtype == np.float32
                np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="top_n"):
        nfusion.top_n_candidates(p, 0)
    with pytest.raises(ValueError, match="membership"):
        nfusion.gate(p, kfusion.membership_matrix([[0]], k + 1))


# ---------------------------------------------------------------------------------------
# EnsembleRunner on a tiny exported ensemble.


def _write_members(ens: GatedEnsemble, out: Path, files: dict[str, str]) -> None:
    """ensemble.json as `edgekd.export.exporter._export_members` writes it."""
    config = ens.config(CLASSES)
    config["members"] = {
        "generalist": {"files": {"tflite/float32": files["generalist"]}, "outputs": CLASSES},
        "specialists": [
            {
                "files": {"tflite/float32": files[f"specialist_{m}"]},
                "classes": [CLASSES[c] for c in group],
                "outputs": [CLASSES[c] for c in group] + (["<dustbin>"] if ens.dustbin else []),
            }
            for m, group in enumerate(ens.groups)
        ],
    }
    config["dustbin_layout"] = "each specialist's last output is the dustbin"
    config["fusion"].update({"tol": 1e-6, "eps": 1e-12, "start": "em step from observed weights"})
    config["input"] = {"layout": "NHWC", "pixels": "RGB 0..255", "shape": list(SHAPE)}
    (out / "ensemble.json").write_text(json.dumps(config, indent=2))


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Images of varied colour and brightness, so that the gate wakes both specialists."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (48, 1, 1, 3))
    noise = rng.normal(0, 60, (48, *SHAPE))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[GatedEnsemble, Path]:
    """A generalist and two dustbin specialists (random ResNet-10s), exported to float32
    .tflite with an ensemble.json next to them."""
    from edgekd.converters.tflite import export_tflite
    from edgekd.training.models import build_model

    keras.utils.set_random_seed(3)
    gen = build_model("resnet10", num_classes=5, width=4, input_shape=SHAPE, name="gen")
    specs = [
        build_model("resnet10", num_classes=len(g) + 1, width=4, input_shape=SHAPE, name=f"s{m}")
        for m, g in enumerate(GROUPS)
    ]
    ens = GatedEnsemble(gen, specs, GROUPS, 5, top_n=1, batch_size=16, dustbin=True, flip=False)
    out = tmp_path_factory.mktemp("members")
    files = {"generalist": "generalist.tflite"}
    files.update({f"specialist_{m}": f"specialist_{m}.tflite" for m in range(len(GROUPS))})
    for name, model in zip(files.values(), [gen, *specs], strict=True):
        export_tflite(model, out / name, precision="float32")
    _write_members(ens, out, files)
    return ens, out


def test_runner_matches_gated_ensemble(exported, images) -> None:
    ens, members = exported
    runner = EnsembleRunner(members, batch_size=8)
    assert runner.classes == CLASSES
    assert runner.runtime == "litert"
    assert set(runner.files) == {"generalist", "specialist_0", "specialist_1"}
    assert runner.files["specialist_1"] == members / "specialist_1.tflite"
    got = runner.predict(images)
    want = ens.predict(images)
    assert isinstance(got, EnsembleResult)
    np.testing.assert_array_equal(got.active, want.active)
    assert np.all(got.active.sum(0) > 0), "the gate should wake every specialist somewhere"
    assert np.any(got.active.sum(0) < len(images)), "and skip some on some images"
    np.testing.assert_allclose(got.general, want.general, atol=1e-5)
    np.testing.assert_allclose(got.probs, want.probs, atol=1e-4)
    assert got.probs.dtype == np.float32
    np.testing.assert_allclose(got.activation_rate, want.activation_rate)
    assert got.members_per_image == pytest.approx(1.0 + want.active.sum(1).mean())
    np.testing.assert_allclose(runner(images[:5]), got.probs[:5], atol=1e-6)


def test_runner_reads_gating_from_json(exported, images, tmp_path) -> None:
    """top_n and confidence come from ensemble.json, as GatedEnsemble applies them."""
    ens, members = exported
    other = GatedEnsemble(
        ens.generalist,
        ens.specialists,
        GROUPS,
        5,
        top_n=2,
        confidence=0.3,
        dustbin=True,
        batch_size=256,
        flip=False,
    )
    for f in members.glob("*.tflite"):
        shutil.copy(f, tmp_path / f.name)
    names = {f.stem: f.name for f in members.glob("*.tflite")}
    _write_members(other, tmp_path, names)
    runner = EnsembleRunner(tmp_path)
    assert (runner.top_n, runner.confidence) == (2, 0.3)
    got, want = runner.predict(images), other.predict(images)
    np.testing.assert_array_equal(got.active, want.active)
    np.testing.assert_allclose(got.probs, want.probs, atol=1e-4)


def test_predict_one_equals_predict(exported, images) -> None:
    runner = EnsembleRunner(exported[1], batch_size=16)
    batch = runner.predict(images[:6])
    for i in range(6):
        one = runner.predict_one(images[i])
        assert one.probs.shape == (1, 5) and one.active.shape == (1, 2)
        np.testing.assert_array_equal(one.active[0], batch.active[i])
        np.testing.assert_allclose(one.probs[0], batch.probs[i], atol=1e-6)
    np.testing.assert_allclose(runner.predict_one(images[:1]).probs, batch.probs[:1], atol=1e-6)
    with pytest.raises(ValueError, match="one image"):
        runner.predict_one(images[:2])
    empty = runner.predict(images[:0])
    assert empty.probs.shape == (0, 5) and empty.members_per_image == 1.0


def test_runner_errors_name_the_problem(exported, tmp_path) -> None:
    members = exported[1]
    with pytest.raises(ValueError, match=r"ensemble\.json.*'tflite/int8'.*tflite/float32"):
        EnsembleRunner(members, precision="int8")
    with pytest.raises(ValueError, match="format"):
        EnsembleRunner(members, format="tensorrt")
    with pytest.raises(FileNotFoundError, match=r"ensemble\.json"):
        EnsembleRunner(tmp_path)
    shutil.copy(members / "ensemble.json", tmp_path / "ensemble.json")
    shutil.copy(members / "generalist.tflite", tmp_path / "generalist.tflite")
    with pytest.raises(FileNotFoundError, match=r"specialist_0\.tflite"):
        EnsembleRunner(tmp_path)


def test_runner_needs_no_tensorflow_or_keras(exported, images, tmp_path) -> None:
    """With `import tensorflow` and `import keras` blocked, the ensemble still runs."""
    np.save(tmp_path / "images.npy", images[:12])
    script = textwrap.dedent(
        """
        import json, sys
        sys.modules["tensorflow"] = None  # any import of TensorFlow now raises ImportError
        sys.modules["keras"] = None
        import numpy as np
        from edgekd.device.runtime.ensemble import EnsembleRunner
        runner = EnsembleRunner(sys.argv[1], batch_size=4)
        out = runner.predict(np.load(sys.argv[2]))
        loaded = [m for m in sys.modules if m.startswith(("tensorflow", "keras"))
                  and sys.modules[m] is not None]
        print(json.dumps({"runtime": runner.runtime, "probs": out.probs.tolist(),
                          "active": out.active.tolist(), "loaded": loaded}))
        """
    )
    result = run_python_json(script, str(exported[1]), str(tmp_path / "images.npy"))
    assert result["runtime"] == "litert"
    assert result["loaded"] == []
    expected = EnsembleRunner(exported[1]).predict(images[:12])
    np.testing.assert_array_equal(np.asarray(result["active"]), expected.active)
    np.testing.assert_allclose(np.asarray(result["probs"]), expected.probs, atol=1e-6)


def test_runner_applies_flip_averaging_from_json(exported, images, tmp_path) -> None:
    """`tta.flip` in ensemble.json: the runner averages every member over the mirror image,
    as GatedEnsemble(flip=True) does, and counts both views' model runs."""
    ens, members = exported
    flipped = GatedEnsemble(
        ens.generalist, ens.specialists, GROUPS, 5, top_n=1, flip=True, dustbin=True, batch_size=256
    )
    for f in members.glob("*.tflite"):
        shutil.copy(f, tmp_path / f.name)
    _write_members(flipped, tmp_path, {f.stem: f.name for f in members.glob("*.tflite")})
    runner = EnsembleRunner(tmp_path, batch_size=8)
    assert runner.flip
    got, want = runner.predict(images), flipped.predict(images)
    np.testing.assert_array_equal(got.active, want.active)
    np.testing.assert_allclose(got.probs, want.probs, atol=1e-4)
    assert got.members_per_image == pytest.approx(2 * (1.0 + want.active.sum(1).mean()))
    one = runner.predict_one(images[3])
    np.testing.assert_allclose(one.probs[0], got.probs[3], atol=1e-5)


def _members_copy(members: Path, dest: Path) -> dict:
    dest.mkdir(parents=True, exist_ok=True)
    for f in members.iterdir():
        shutil.copy(f, dest / f.name)
    return json.loads((dest / "ensemble.json").read_text())


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "symlink_out", "not_a_string"])
def test_member_paths_are_confined_to_the_members_folder(exported, tmp_path, kind) -> None:
    """A hostile ensemble.json cannot make the runner load a model from elsewhere."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(exported[1] / "generalist.tflite", outside / "evil.tflite")
    folder = tmp_path / "members"
    config = _members_copy(exported[1], folder)
    files = config["members"]["generalist"]["files"]
    if kind == "absolute":
        files["tflite/float32"] = str(outside / "evil.tflite")
    elif kind == "dotdot":
        files["tflite/float32"] = "../elsewhere/evil.tflite"
    elif kind == "symlink_out":
        (folder / "link.tflite").symlink_to(outside / "evil.tflite")
        files["tflite/float32"] = "link.tflite"
    else:
        files["tflite/float32"] = {"path": "generalist.tflite"}
    (folder / "ensemble.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="generalist") as info:
        EnsembleRunner(folder)
    assert "outside" in str(info.value) or "not a file name" in str(info.value)


def test_symlink_inside_the_folder_is_fine(exported, tmp_path) -> None:
    folder = tmp_path / "members"
    config = _members_copy(exported[1], folder)
    (folder / "sub").mkdir()
    (folder / "sub" / "g.tflite").symlink_to(folder / "generalist.tflite")
    config["members"]["generalist"]["files"]["tflite/float32"] = "sub/g.tflite"
    (folder / "ensemble.json").write_text(json.dumps(config))
    assert EnsembleRunner(folder).files["generalist"] == folder / "sub" / "g.tflite"


@pytest.mark.parametrize(
    "damage, needle",
    [
        (lambda t: t[: len(t) // 2], "unreadable"),
        (lambda t: b"\xff\xfe garbage", "unreadable"),
        (lambda t: "", "unreadable"),
        (lambda t: "[1, 2, 3]", "not what `edgekd export --members` writes"),
        (lambda t: json.dumps({**json.loads(t), "classes": None}), "not what"),
        (lambda t: json.dumps({**json.loads(t), "group_indices": [["x"]]}), "ensemble.json"),
    ],
)
def test_malformed_ensemble_json_is_a_value_error(exported, tmp_path, damage, needle) -> None:
    folder = tmp_path / "members"
    _members_copy(exported[1], folder)
    text = (folder / "ensemble.json").read_text()
    out = damage(text)
    path = folder / "ensemble.json"
    path.write_bytes(out if isinstance(out, bytes) else out.encode())
    with pytest.raises(ValueError, match=needle) as info:
        EnsembleRunner(folder)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------------------------------
# A real run, exported by `edgekd export --members`: the runner reads that folder as written.


@pytest.fixture(scope="module")
def real_export(smoke_exported):
    """The exported members/ of the session's smoke run, the run's validation split and the
    Keras gated ensemble's answer on it."""
    from edgekd.data.dataset import prepare_data
    from edgekd.recipe import build_recipe
    from edgekd.training.ensemble.gated import load_gated_ensemble
    from edgekd.training.run import RunDir

    run = RunDir.open_existing(smoke_exported)
    val = prepare_data(build_recipe(run.manifest["recipe"]), progress=False).val
    want = load_gated_ensemble(smoke_exported).predict(val.images)
    return smoke_exported / "export" / "members", val, want, run.manifest


@pytest.mark.e2e
@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_runner_on_an_exported_run_matches_the_keras_ensemble(real_export, fmt) -> None:
    members, val, want, manifest = real_export
    runner = EnsembleRunner(members, format=fmt, batch_size=16)
    groups = json.loads((members.parent.parent / "groups" / "groups.json").read_text())
    assert runner.classes == manifest["data"]["classes"]
    assert runner.groups == groups["indices"] and runner.top_n == 2
    got = runner.predict(val.images)
    np.testing.assert_allclose(got.general, want.general, atol=1e-5)
    np.testing.assert_array_equal(got.active, want.active)
    np.testing.assert_allclose(got.probs, want.probs, atol=1e-4)
    np.testing.assert_allclose(got.probs.sum(1), 1.0, atol=1e-5)
    assert 0 < got.active.mean() < 1, "the gate should wake some specialists, not all"
    # Top-1 as Keras has it, wherever Keras's own top two are not a tie.
    ordered = np.sort(want.probs, axis=1)
    differs = got.probs.argmax(1) != want.probs.argmax(1)
    assert np.all((ordered[:, -1] - ordered[:, -2])[differs] < 1e-4)
    # And what training recorded for the ensemble on this split comes back from the files.
    recorded = manifest["stages"]["ensemble"]["metrics"]
    assert (got.probs.argmax(1) == val.labels).mean() == pytest.approx(recorded["val_accuracy"])
    np.testing.assert_allclose(got.activation_rate, recorded["activation_rate"], atol=1e-6)
