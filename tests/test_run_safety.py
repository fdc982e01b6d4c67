"""The run directory never loses what a user made: refused folders, one writer at a time,
replaced results moved aside, and damaged artifacts named instead of tracebacks."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest

from edgekd.errors import RunDirError
from edgekd.training.run import LOCK, MANIFEST, RunDir
from tests.conftest import REPO, run_cli, smoke_copy
from tests.test_cli_errors import assert_user_error

SMOKE = str(REPO / "recipes" / "smoke.yaml")


def _train(run_dir, cifar_jpeg, *extra, timeout=600, quiet=True):
    return run_cli(
        "train", SMOKE, "--set", f"data.path={cifar_jpeg}", "--run-dir", str(run_dir),
        *(["-q"] if quiet else []), *extra, timeout=timeout,
    )  # fmt: skip


def test_non_empty_folder_that_is_not_a_run_is_refused(tmp_path, cifar_jpeg):
    user = tmp_path / "mine"
    (user / "generalist").mkdir(parents=True)
    (user / "generalist" / "thesis.tex").write_text("years of work")
    proc = _train(user, cifar_jpeg)
    assert_user_error(proc, str(user), "not an edgekd run", "generalist")
    assert (user / "generalist" / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in user.iterdir()) == ["generalist"]


@pytest.mark.parametrize("where", ["is", "below"])
def test_run_dir_that_is_or_is_below_a_file(tmp_path, cifar_jpeg, where):
    f = tmp_path / "file.txt"
    f.write_text("keep me")
    proc = _train(f if where == "is" else f / "run", cifar_jpeg)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert str(f) in proc.stderr and "is a file" in proc.stderr, proc.stderr
    assert f.read_text() == "keep me"


def test_empty_run_dir_flag(tmp_path):
    proc = run_cli("train", SMOKE, "--run-dir", "", cwd=tmp_path)
    assert_user_error(proc, "--run-dir is empty")
    assert not (tmp_path / "runs").exists()


def test_second_writer_is_refused_with_the_holders_pid(smoke_trained, tmp_path, cifar_jpeg):
    run_dir = smoke_copy(smoke_trained, tmp_path / "run")
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    with RunDir(run_dir).lock("pytest holding the lock"):
        for proc in (
            _train(run_dir, cifar_jpeg, "--set", "student.soft_weight=0.5"),
            run_cli("export", str(run_dir), "--format", "tflite", "--float"),
        ):
            assert_user_error(proc, "in use by PID", str(os.getpid()), "pytest holding the lock")
    after = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    assert {p: t for p, t in after.items() if p.name not in (LOCK, ".lock-owner.json")} == {
        p: t for p, t in before.items() if p.name not in (LOCK, ".lock-owner.json")
    }


def test_lock_of_a_killed_process_does_not_block(tmp_path):
    """flock dies with its holder: kill -9 the holder and the next writer gets in."""
    script = textwrap.dedent(f"""
        import sys, time
        from edgekd.training.run import RunDir
        with RunDir({str(tmp_path / "run")!r}).lock("holder"):
            print("locked", flush=True)
            time.sleep(600)
    """)
    holder = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match=f"PID {holder.pid}"), RunDir(tmp_path / "run").lock():
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / "run" / LOCK).exists()  # left behind, and harmless
    with RunDir(tmp_path / "run").lock("next"):
        assert json.loads((tmp_path / "run" / ".lock-owner.json").read_text())["command"] == "next"


@pytest.mark.slow
def test_truncated_artifact_is_not_skipped(smoke_trained, tmp_path, cifar_jpeg):
    run = smoke_copy(smoke_trained, tmp_path / "run")
    model = run / "student" / "model.keras"
    model.write_bytes(model.read_bytes()[:1000])
    proc = _train(run, cifar_jpeg, quiet=False)  # stdout is a pipe: one line per epoch anyway
    assert proc.returncode == 0, proc.stderr[-3000:]
    epochs = [line for line in proc.stdout.splitlines() if re.match(r"^\d+/\d+ - ", line)]
    assert len(epochs) == 2, proc.stdout  # the distilled student's epoch and its control's
    assert "\u2501" not in proc.stdout and "\r" not in proc.stdout  # no progress bar
    assert "[student] student/model.keras is 1,000 bytes" in proc.stdout, proc.stdout
    assert "[ensemble] up to date" in proc.stdout
    assert model.stat().st_size > 1000
    manifest = json.loads((run / MANIFEST).read_text())
    assert manifest["stages"]["student"]["files"]["model"]["size"] == model.stat().st_size


def test_stale_temp_files_are_cleaned_under_the_lock(smoke_trained, tmp_path):
    run = smoke_copy(smoke_trained, tmp_path / "run")
    (run / "export" / "members").mkdir(parents=True)
    stale = [
        run / ".manifest-k3j4h5g6.json", run / "student" / ".model-abcdefgh.keras",
        run / "export" / ".student.tflite-abcd1234.json",
        run / "export" / "members" / ".ensemble-zzzz9999.json",
    ]  # fmt: skip
    for p in stale:
        p.write_text("half")
    (run / ".my-config").write_text("mine")
    with RunDir(run).lock():
        pass
    assert not any(p.exists() for p in stale)
    assert (run / ".my-config").read_text() == "mine"


def _damage(path, how):
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbled":
        path.write_bytes(bytes(b ^ 0xA5 for b in data[:4096]) + data[4096:])
    else:
        path.write_bytes(b"")


ARTIFACTS = ["generalist/model.keras", "groups/groups.json", "manifest.json", "state.json"]


@pytest.fixture(scope="module")
def damaged_runs(smoke_trained, tmp_path_factory):
    """One copy of the smoke run per (artifact, damage)."""
    root = tmp_path_factory.mktemp("damaged")
    out = {}
    for rel in ARTIFACTS:
        for how in ("truncated", "garbled", "empty"):
            run = smoke_copy(smoke_trained, root / f"{rel.replace('/', '_')}-{how}")
            target = run / rel if rel != "state.json" else run / "manifest.json"
            if rel == "state.json":  # a manifest whose stage records are not records
                data = json.loads(target.read_text())
                data["stages"]["generalist"] = {"status": "done", "oops": 1}
                target.write_text(json.dumps(data))
            else:
                _damage(target, how)
            out[rel, how] = run
    return out


@pytest.mark.parametrize("how", ["truncated", "garbled", "empty"])
@pytest.mark.parametrize("rel", ARTIFACTS)
def test_corrupt_artifact_matrix_eval(damaged_runs, rel, how):
    """Evaluating a damaged run: a RunDirError naming the damaged file, nothing else. In
    process (the CLI's mapping of that error to exit 2 is checked once, below)."""
    from edgekd.training.evaluate import evaluate_run

    run = damaged_runs[rel, how]
    with pytest.raises(RunDirError) as info:
        evaluate_run(str(run))
    assert ("manifest.json" if rel == "state.json" else rel.split("/")[-1]) in str(info.value)


def test_corrupt_artifact_eval_cli(damaged_runs):
    proc = run_cli("eval", str(damaged_runs["generalist/model.keras", "garbled"]), timeout=300)
    assert_user_error(proc, "model.keras")


@pytest.mark.parametrize("rel", ["generalist/model.keras", "manifest.json"])
def test_corrupt_artifact_export(damaged_runs, rel):
    run = damaged_runs[rel, "truncated"]
    proc = run_cli(
        "export", str(run), "--format", "tflite", "--float", "--set", "export.model=generalist",
        timeout=300,
    )  # fmt: skip
    assert_user_error(proc, rel.split("/")[-1])
    assert not (run / "export").exists() or not list((run / "export").glob("*.tflite"))


def test_damaged_manifest_blocks_train_without_touching_anything(damaged_runs, cifar_jpeg):
    run = damaged_runs["manifest.json", "garbled"]
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    proc = _train(run, cifar_jpeg)
    assert_user_error(proc, "manifest.json", "unreadable manifest")
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


def test_keras_safe_mode_refusal_is_a_clear_error(smoke_trained, tmp_path):
    """A model.keras with a Lambda layer (arbitrary code) is refused by Keras' safe mode;
    edgekd says so in one line, exit 2, even when the manifest's checksum matches."""
    import keras

    from edgekd.training.run import file_digest

    run = smoke_copy(smoke_trained, tmp_path / "run")
    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x[:, 0, 0, :] * 2.0)(inputs))
    path = run / "generalist" / "model.keras"
    model.save(path)
    manifest = json.loads((run / MANIFEST).read_text())
    manifest["stages"]["generalist"]["files"]["model"] = file_digest(path)
    (run / MANIFEST).write_text(json.dumps(manifest))
    proc = run_cli("eval", str(run), timeout=300)
    assert_user_error(proc, "model.keras", "not a Keras model edgekd can load")
    assert "safe_mode" in proc.stderr or "Lambda" in proc.stderr, proc.stderr
