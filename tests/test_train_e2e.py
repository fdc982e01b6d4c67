"""`edgekd train` and `edgekd eval` end to end, in subprocesses, as a user runs them.

Real Keras training on real CIFAR-10 JPEGs (a seeded sample) and on tiny synthetic folders;
kill -9 in the middle of an epoch, then the same command resumes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, read_manifest, run_cli
from tests.synthetic import make_folder


@pytest.mark.e2e
def test_smoke_trains_on_real_images(smoke_run):
    run_dir, proc, wall = smoke_run
    print(f"smoke recipe: {wall:.1f} s")  # a figure, not a test: see benchmarks/ for speed
    m = read_manifest(run_dir)
    stage = m["stages"]["generalist"]
    assert stage["status"] == "done"
    assert m["data"]["num_train"] + m["data"]["num_val"] == 300
    assert len(m["data"]["classes"]) == 10 and m["data"]["classes"][0] == "airplane"
    assert len(m["data"]["fingerprint"]) == 16
    assert {"keras", "python", "edgekd"} <= set(m["versions"])
    assert m["recipe"]["generalist"]["epochs"] == 2
    for rel in stage["artifacts"].values():
        assert (run_dir / rel).is_file(), rel
    assert not (run_dir / "generalist" / "checkpoint").exists()
    history = json.loads((run_dir / "generalist" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "images_per_s"} <= set(history[0])
    metrics = json.loads((run_dir / "generalist" / "metrics.json").read_text())
    cm = metrics["evaluation"]["confusion"]
    assert len(cm) == 10 and sum(map(sum, cm)) == m["data"]["num_val"]
    assert 0.0 <= metrics["val_accuracy"] <= 1.0 and metrics["params"] > 0 and metrics["macs"] > 0
    assert (run_dir / "recipe.yaml").is_file()

    # groups -> specialists -> ensemble, on the same run.
    stages = m["stages"]
    assert [stages[s]["status"] for s in ("groups", "specialists", "ensemble")] == ["done"] * 3
    groups = json.loads((run_dir / "groups" / "groups.json").read_text())
    assert len(groups["groups"]) == 2 and all(len(g) >= 2 for g in groups["groups"])
    assert 0.0 <= groups["captured_confusion"] <= 1.0
    specs = stages["specialists"]["metrics"]["specialists"]
    assert [s["classes"] for s in specs] == groups["groups"]
    assert all(s["initialised_from"] == "generalist" for s in specs)
    assert all(s["dustbin_logit_correction"] != 0.0 for s in specs)
    ens = stages["ensemble"]["metrics"]
    assert len(ens["activation_rate"]) == 2 and ens["top_n"] == 2
    assert ens["generalist_val_accuracy"] == pytest.approx(metrics["val_accuracy"])
    gen_macs = stages["generalist"]["metrics"]["macs"]
    assert gen_macs <= ens["macs_per_image"] <= ens["macs_all_specialists"]
    config = json.loads((run_dir / "ensemble" / "ensemble.json").read_text())
    assert config["classes"] == m["data"]["classes"] and config["gating"]["top_n"] == 2

    # student: the distilled student and its hard-label control, both saved alone.
    student = stages["student"]
    assert student["status"] == "done"
    assert set(student["artifacts"]) == {"model", "control_model", "metrics"}
    for rel in student["artifacts"].values():
        assert (run_dir / rel).is_file(), rel
    sm = student["metrics"]
    assert sm["teacher"] == "ensemble" and sm["temperature"] == 4.0
    assert sm["teacher_val_accuracy"] == pytest.approx(ens["val_accuracy"])
    assert 0.0 <= sm["val_accuracy"] <= 1.0 and 0.0 <= sm["control_val_accuracy"] <= 1.0
    assert sm["params"] > 0 and sm["initialised_from"] == "generalist"  # same arch and width
    history = json.loads((run_dir / "student" / "history.json").read_text())
    assert {"soft_loss", "hard_loss", "loss", "val_accuracy"} <= set(history[0])
    control = json.loads((run_dir / "student" / "control" / "history.json").read_text())
    assert "soft_loss" not in control[0] and "hard_loss" in control[0]
    assert not list(run_dir.glob("student/**/checkpoint"))


@pytest.mark.e2e
def test_eval_prints_per_class_table_and_json(smoke_run):
    run_dir, _, _ = smoke_run
    proc = run_cli("eval", str(run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("airplane", "automobile", "cat", "truck", "generalist (%)", "ensemble (%)",
                 "Δ ensemble (%)", "accuracy (%)", "specialist 0", "dustbin (%)",
                 "distilled (%)", "hard-label (%)", "Δ distilled (%)",
                 "95% bootstrap interval", "McNemar p", "ensemble vs generalist",
                 "distilled vs hard-label"):  # fmt: skip
        assert name in proc.stdout
    proc = run_cli("eval", str(run_dir), "--json")
    payload = json.loads(proc.stdout)
    ev = payload["models"]["generalist"]
    metrics = json.loads((run_dir / "generalist" / "metrics.json").read_text())
    # eval reproduces the validation split and the model: same accuracy as training recorded.
    assert ev["accuracy"] == pytest.approx(metrics["val_accuracy"], abs=1e-9)
    assert ev["count"] == read_manifest(run_dir)["data"]["num_val"]
    ens = payload["models"]["ensemble"]
    recorded = read_manifest(run_dir)["stages"]["ensemble"]["metrics"]["val_accuracy"]
    assert ens["accuracy"] == pytest.approx(recorded, abs=1e-9)
    student = read_manifest(run_dir)["stages"]["student"]["metrics"]
    assert payload["models"]["distilled"]["accuracy"] == pytest.approx(student["val_accuracy"])
    control = payload["models"]["hard-label"]["accuracy"]
    assert control == pytest.approx(student["control_val_accuracy"])
    pairs = {(c["a"], c["b"]): c for c in payload["comparisons"]}
    assert set(pairs) == {("generalist", "ensemble"), ("hard-label", "distilled")}
    c = pairs[("hard-label", "distilled")]
    assert c["accuracy_b"] == pytest.approx(payload["models"]["distilled"]["accuracy"])
    assert c["difference"] == pytest.approx(c["accuracy_b"] - c["accuracy_a"])
    assert c["ci_low"] <= c["difference"] <= c["ci_high"] and 0.0 <= c["p_value"] <= 1.0
    assert c["images"] == ev["count"]
    assert payload["student_seeds"] is None


@pytest.mark.e2e
@pytest.mark.slow
def test_student_seeds_and_budget_matched_control(smoke_run, tmp_path, cifar_jpeg):
    """More seeds extend a finished student stage; the budget stage trains the student's
    architecture from scratch for the method's budget; eval pairs them all."""
    run_dir = tmp_path / "smoke"
    shutil.copytree(smoke_run[0], run_dir)
    before = read_manifest(run_dir)["stages"]["student"]
    stages = "[generalist,groups,specialists,ensemble,student,budget]"
    args = ("train", "smoke", "--set", f"data.path={cifar_jpeg}", "--run-dir", str(run_dir), "-q",
            "--set", "student.seeds=2", "--set", f"train.stages={stages}")  # fmt: skip
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[student] the recipe asks for more than was run: adding it" in proc.stdout
    assert "distilled (seed 0) already trained" in proc.stdout  # seed 0 is not redone
    assert "control (seed 0) already trained" in proc.stdout
    m = read_manifest(run_dir)
    student = m["stages"]["student"]
    assert student["hash"] == before["hash"]
    assert {"seed1_model", "seed1_control_model"} <= set(student["artifacts"])
    assert [s["seed"] for s in student["metrics"]["seeds"]] == [0, 1]
    budget = m["stages"]["budget"]["metrics"]
    assert set(budget["variants"]) == {"counted", "amortised"}
    counted, amortised = budget["variants"]["counted"], budget["variants"]["amortised"]
    assert counted["match"] == "wall_time" and counted["budget"] > amortised["budget"] > 0
    assert counted["epochs"] >= amortised["epochs"] >= 1
    gen = m["stages"]["generalist"]["wall_s"]
    assert counted["budget"] > gen + amortised["budget"] - 1e-6

    proc = run_cli("eval", str(run_dir), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads(proc.stdout)
    assert {"budget-matched", "budget-matched (amortised)"} <= set(payload["models"])
    pairs = {(c["a"], c["b"]) for c in payload["comparisons"]}
    assert {("budget-matched", "distilled"), ("budget-matched (amortised)", "distilled")} <= pairs
    seeds = payload["student_seeds"]
    assert seeds["seeds"] == [0, 1] and len(seeds["comparisons"]) == 2
    assert seeds["distilled"][0] == pytest.approx(payload["models"]["distilled"]["accuracy"])
    mean = (seeds["distilled"][0] + seeds["distilled"][1]) / 2
    assert seeds["distilled_mean"] == pytest.approx(mean)
    # (The tables' text and `budget.match: images` are checked in tests/test_budget.py.)


@pytest.mark.e2e
@pytest.mark.slow
def test_eval_on_other_data_with_data_option(smoke_run, tmp_path, cifar_jpeg):
    run_dir, _, _ = smoke_run
    # A held-out style folder: a few real images of two classes, copied.
    for cls in ("cat", "ship"):
        (tmp_path / cls).mkdir()
        for f in sorted((cifar_jpeg / cls).iterdir())[-5:]:
            (tmp_path / cls / f.name).write_bytes(f.read_bytes())
    proc = run_cli("eval", str(run_dir), "--data", f"folder:{tmp_path}", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    ev = json.loads(proc.stdout)["models"]["generalist"]
    assert ev["count"] == 10
    assert math.isnan(ev["per_class"]["airplane"])  # no airplanes in this folder
    assert not math.isnan(ev["per_class"]["cat"])


def _train_cmd(data: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "edgekd",
        "train",
        "smoke",
        "--run-dir",
        str(run_dir),
        "--quiet",
        "--set",
        f"data.path=folder:{data}",
        "--set",
        "data.limit_per_class=null",
        "--set",
        "data.val_fraction=0.1",
        "--set",
        "generalist.epochs=4",
        "--set",
        "generalist.batch_size=8",
        "--set",
        "generalist.schedule.warmup_epochs=0",
        "--set",
        "train.tensorboard=false",
        "--set",
        "train.stages=[generalist]",
        *extra,
    ]


def _interrupt_after_first_epoch(data: Path, run_dir: Path, sig: int) -> subprocess.Popen:
    """Start training, wait until epoch 1 is checkpointed, then send `sig` mid-epoch 2."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(
        _train_cmd(data, run_dir),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    state_file = run_dir / "generalist" / "checkpoint" / "state.json"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if state_file.is_file() and json.loads(state_file.read_text())["epoch"] >= 1:
            break
        time.sleep(0.05)
    time.sleep(0.3)  # into the next epoch
    assert proc.poll() is None, "training ended before the signal:\n" + proc.stdout.read()
    os.kill(proc.pid, sig)
    proc.wait(timeout=60)
    return proc


@pytest.mark.e2e
@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_resumes(tmp_path):
    data = make_folder(tmp_path / "data", classes=3, per_class=200)
    run_dir = tmp_path / "run"
    proc = _interrupt_after_first_epoch(data, run_dir, signal.SIGINT)
    out = proc.stdout.read()
    assert proc.returncode == 130, out[-2000:]
    assert "interrupted: run the same command again to resume" in out
    assert "Traceback" not in out
    again = run_cli(*_train_cmd(data, run_dir)[3:])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from epoch" in again.stdout


@pytest.mark.e2e
@pytest.mark.slow
def test_kill_9_mid_epoch_resumes(tmp_path):
    data = make_folder(tmp_path / "data", classes=3, per_class=200)
    run_dir = tmp_path / "run"
    _interrupt_after_first_epoch(data, run_dir, signal.SIGKILL)
    state_file = run_dir / "generalist" / "checkpoint" / "state.json"
    killed_state = json.loads(state_file.read_text())
    assert 1 <= killed_state["epoch"] < 4
    assert read_manifest(run_dir)["stages"]["generalist"]["status"] == "running"

    again = run_cli(*_train_cmd(data, run_dir)[3:])
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from epoch {killed_state['epoch']}/4" in again.stdout
    history = json.loads((run_dir / "generalist" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[: killed_state["epoch"]] == killed_state["history"]
    m = read_manifest(run_dir)["stages"]["generalist"]
    assert m["status"] == "done" and m["metrics"]["val_accuracy"] > 0.9  # colours are easy


@pytest.mark.e2e
@pytest.mark.slow
def test_jax_backend_trains_without_tensorflow(tmp_path):
    pytest.importorskip("jax")
    data = make_folder(tmp_path / "data", classes=3, per_class=20)
    # A meta-path hook makes `import tensorflow` fail, as on a machine without it.
    blocker = tmp_path / "block_tf"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NoTF:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'tensorflow' or name.startswith('tensorflow.'):\n"
        "            raise ImportError('tensorflow is blocked in this test')\n"
        "sys.meta_path.insert(0, _NoTF())\n"
    )
    run_dir = tmp_path / "run"
    proc = run_cli(
        "train",
        "smoke",
        "--run-dir",
        str(run_dir),
        "--quiet",
        "--set",
        f"data.path=folder:{data}",
        "--set",
        "groups.n_groups=1",
        env={"KERAS_BACKEND": "jax", "PYTHONPATH": f"{blocker}:{REPO}"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "backend jax" in proc.stdout
    m = read_manifest(run_dir)
    # The whole pipeline, fusion included, ran on JAX.
    assert all(r["status"] == "done" for r in m["stages"].values()) and len(m["stages"]) == 5
    assert m["stages"]["generalist"]["status"] == "done"
    proc = run_cli(
        "eval",
        str(run_dir),
        "--json",
        env={"KERAS_BACKEND": "jax", "PYTHONPATH": f"{blocker}:{REPO}"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.e2e
@pytest.mark.slow
def test_mirrored_strategy_trains_and_saves(tmp_path):
    """`train.distribution: mirrored` builds, fits and saves under tf.distribute (one CPU here)."""
    data = make_folder(tmp_path / "data", classes=3, per_class=20)
    run_dir = tmp_path / "run"
    proc = run_cli(
        "train", "smoke", "--run-dir", str(run_dir), "-q",
        "--set", f"data.path=folder:{data}", "--set", "train.distribution=mirrored",
        "--set", "train.stages=[generalist]",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_manifest(run_dir)["stages"]["generalist"]["status"] == "done"
    assert run_cli("eval", str(run_dir), "--json").returncode == 0
