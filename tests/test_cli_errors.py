"""Bad recipes and bad data: exit code 2, one message naming the culprit, nothing written."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.synthetic import make_folder


def recipe(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent(body).lstrip())
    return path


def assert_user_error(proc, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    err = proc.stderr.strip()
    assert err.count("error: ") == 1, err  # one message (progress lines may precede it)
    err = err[err.index("error: ") :]
    for needle in needles:
        assert needle in err, err


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return tmp_path / "run"


def train(tmp_path, run_dir, body: str, *extra: str):
    return run_cli("train", str(recipe(tmp_path, body)), "--run-dir", str(run_dir), *extra)


def test_unknown_key_with_did_you_mean(tmp_path, run_dir):
    proc = train(
        tmp_path,
        run_dir,
        """
        data:
          path: folder:/nowhere
        generalist:
          epoch: 3
    """,
    )
    assert_user_error(proc, "bad.yaml:4: generalist.epoch", "did you mean 'epochs'")
    assert not run_dir.exists()


def test_wrong_type(tmp_path, run_dir):
    proc = train(
        tmp_path,
        run_dir,
        """
        data:
          path: folder:/nowhere
          val_fraction: lots
    """,
    )
    assert_user_error(proc, "bad.yaml:3: data.val_fraction", "'lots'")
    assert not run_dir.exists()


def test_out_of_range_from_set(tmp_path, run_dir):
    proc = train(
        tmp_path, run_dir, "data: {path: folder:/nowhere}\n", "--set", "data.val_fraction=1.5"
    )
    assert_user_error(proc, "--set data.val_fraction=1.5: data.val_fraction", "less than 1")
    assert not run_dir.exists()


def test_missing_data_folder(tmp_path, run_dir):
    proc = train(
        tmp_path,
        run_dir,
        """
        seed: 1
        data:
          path: folder:/no/such/folder
    """,
    )
    assert_user_error(proc, "bad.yaml:3: data.path", "/no/such/folder", "does not exist")
    assert not run_dir.exists()


def test_unknown_class_name(tmp_path, run_dir):
    data = make_folder(tmp_path / "data", classes=3, per_class=4)
    proc = train(
        tmp_path,
        run_dir,
        f"""
        data:
          path: folder:{data}
          classes:
            - class_0
            - clas_1
    """,
    )
    assert_user_error(
        proc, "bad.yaml:5: data.classes[1]", "unknown class 'clas_1'", "did you mean 'class_1'"
    )
    assert not run_dir.exists()


def test_corrupt_image_named_by_path(tmp_path, run_dir):
    data = make_folder(tmp_path / "data", classes=2, per_class=4)
    bad = data / "class_1" / "0002.png"
    bad.write_bytes(b"this is not a png")
    proc = train(tmp_path, run_dir, f"data: {{path: folder:{data}}}\n")
    assert_user_error(proc, str(bad))
    assert not run_dir.exists()


def test_missing_recipe_file(tmp_path, run_dir):
    proc = run_cli("train", str(tmp_path / "nope.yaml"), "--run-dir", str(run_dir))
    assert_user_error(proc, "nope.yaml", "no such file")


def test_eval_on_non_run(tmp_path):
    proc = run_cli("eval", str(tmp_path))
    assert_user_error(proc, "not a run directory")


def test_batch_larger_than_training_set(tmp_path, run_dir):
    data = make_folder(tmp_path / "data", classes=2, per_class=5)
    proc = train(
        tmp_path, run_dir, f"data: {{path: folder:{data}}}\ngeneralist: {{batch_size: 64}}\n"
    )
    assert_user_error(proc, "bad.yaml:2: generalist.batch_size", "larger than the 8 training")
    assert not run_dir.exists()


def test_more_groups_than_classes_allow(tmp_path, run_dir):
    data = make_folder(tmp_path / "data", classes=3, per_class=50)
    proc = train(tmp_path, run_dir, f"data: {{path: folder:{data}}}\ngroups: {{n_groups: 2}}\n")
    assert_user_error(proc, "bad.yaml:2: groups.n_groups", "need 4 classes; the data has 3")
    assert not run_dir.exists()


def test_explicit_group_with_unknown_class(tmp_path, run_dir):
    data = make_folder(tmp_path / "data", classes=3, per_class=50)
    proc = train(tmp_path, run_dir, f"""
        data: {{path: folder:{data}}}
        groups:
          method: explicit
          explicit:
            - [class_0, class_1]
            - [class_1, clas_2]
    """)  # fmt: skip
    assert_user_error(proc, "bad.yaml:6: groups.explicit[1][1]", "did you mean 'class_2'")
    assert not run_dir.exists()


def test_top_n_above_class_count(tmp_path, run_dir, cifar_jpeg):
    proc = run_cli(
        "train", "smoke", "--set", f"data.path={cifar_jpeg}", "--set", "ensemble.top_n=11",
        "--run-dir", str(run_dir),
    )  # fmt: skip
    assert_user_error(proc, "ensemble.top_n", "more than the 10 classes")
    assert not run_dir.exists()


PREFLIGHT = """
import json, runpy, sys
sys.argv = ["edgekd", "train", *sys.argv[1:]]
try:
    runpy.run_module("edgekd", run_name="__main__")
except SystemExit as exc:
    code = exc.code
loaded = sorted({m.split(".")[0] for m in sys.modules} & {"tensorflow", "keras", "jax"})
print(json.dumps({"code": code, "loaded": loaded}))
"""


def test_preflight_errors_come_before_tensorflow(tmp_path, run_dir):
    """A recipe that its data refutes (a batch larger than the training set, an unknown
    class) fails in the pre-flight, which imports no TensorFlow, Keras or JAX: about a
    second, not the framework's import."""
    from tests.conftest import run_python_json

    data = make_folder(tmp_path / "data", classes=3, per_class=4)
    for body in (
        f"data: {{path: folder:{data}}}\ngeneralist: {{batch_size: 64}}\n",
        f"data: {{path: folder:{data}, classes: [class_0, clas_1]}}\n",
    ):
        bad = recipe(tmp_path, body)
        got = run_python_json(PREFLIGHT, str(bad), "--run-dir", str(run_dir))
        assert got == {"code": 2, "loaded": []}, body
    assert not run_dir.exists()


def test_images_smaller_than_the_architecture_takes(tmp_path, run_dir):
    """32-px images and an ImageNet-stem student: the pre-flight names the key and the fix."""
    data = make_folder(tmp_path / "data", classes=3, per_class=4)
    proc = train(
        tmp_path,
        run_dir,
        f"""
        data:
          path: folder:{data}
        student:
          arch: resnet18_imagenet
          batch_size: 4
        generalist:
          batch_size: 4
        """,
    )
    assert_user_error(
        proc, "bad.yaml:4: student.arch", "resnet18_imagenet needs images of at least 96x96 px",
        "the data's are 32x32", "data.image_size",
    )  # fmt: skip
    assert not run_dir.exists()
