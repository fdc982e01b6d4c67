"""A second `edgekd train` skips what is up to date and reruns exactly what its changes
reach, moving earlier results aside, never deleting them. In its own module so that pytest-xdist
runs it beside the other end-to-end tests."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import read_manifest, run_cli, smoke_copy


def _reran(before: dict, after: dict) -> bool:
    """Whether a stage's manifest record says it ran again: started after its previous run
    finished (the runs are seconds apart), done, and its artifacts recorded anew."""
    return (
        after["status"] == "done"
        and after["started"] > before["finished"]
        and after["finished"] >= after["started"]
        and set(after["files"]) == set(after["artifacts"]) == set(before["artifacts"])
    )


def _rewritten(before: dict, after: dict, keys=None) -> bool:
    """Whether the artifacts `keys` (default all) have new content: new recorded sha256."""
    keys = before["files"] if keys is None else keys
    return all(after["files"][k]["sha256"] != before["files"][k]["sha256"] for k in keys)


def _artifact_digests(run_dir: Path, record: dict) -> dict[str, str]:
    """sha256 of each artifact file of a stage as it is on disk now."""
    return {
        k: hashlib.sha256((run_dir / rel).read_bytes()).hexdigest()
        for k, rel in record["artifacts"].items()
    }


@pytest.mark.e2e
def test_rerun_skips_and_changed_recipe_reruns(smoke_run, cifar_jpeg):
    run_dir, _, _ = smoke_run
    args = ("train", "smoke", "--set", f"data.path={cifar_jpeg}", "--run-dir", str(run_dir), "-q")
    before = read_manifest(run_dir)["stages"]
    proc = run_cli(*args)
    assert proc.returncode == 0 and "up to date, skipped" in proc.stdout
    assert read_manifest(run_dir)["stages"] == before  # nothing ran, nothing was rewritten
    assert "inputs changed" not in proc.stdout and "starting" not in proc.stdout

    # A change to the ensemble section reruns the ensemble and the student it teaches (its
    # hash chains from the ensemble's); generalist, groups and specialists stay as they were.
    # The ensemble's earlier folder, with a file the user put there, is moved to .previous/.
    upstream = ("generalist", "groups", "specialists")
    on_disk = {s: _artifact_digests(run_dir, before[s]) for s in upstream}
    (run_dir / "ensemble" / "my-notes.txt").write_text("mine")
    old_metrics = (run_dir / "ensemble" / "metrics.json").read_bytes()
    proc = run_cli(*args, "--set", "ensemble.top_n=1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    after = read_manifest(run_dir)["stages"]
    for stage in upstream:
        assert f"[{stage}] up to date, skipped" in proc.stdout
        assert f"[{stage}] starting" not in proc.stdout
        assert after[stage] == before[stage], stage  # same hash, times, metrics, digests
        assert _artifact_digests(run_dir, after[stage]) == on_disk[stage], stage
    for stage in ("ensemble", "student"):
        assert f"[{stage}] inputs changed since the last run: starting afresh" in proc.stdout
        assert f"[{stage}] done in" in proc.stdout
        assert after[stage]["hash"] != before[stage]["hash"], stage
        assert _reran(before[stage], after[stage]), (stage, before[stage], after[stage])
        assert _rewritten(before[stage], after[stage]), stage
        assert _artifact_digests(run_dir, after[stage]) == {
            k: f["sha256"] for k, f in after[stage]["files"].items()
        }, stage  # the new records describe the files now on disk
    assert after["ensemble"]["metrics"]["top_n"] == 1
    # The rerun student was taught by the new ensemble, not the old one.
    teacher = after["student"]["metrics"]["teacher_val_accuracy"]
    assert teacher == pytest.approx(after["ensemble"]["metrics"]["val_accuracy"])
    (moved,) = (run_dir / ".previous").glob("ensemble-*")
    assert f"[ensemble] the earlier results were moved to {moved}" in proc.stdout
    assert (moved / "my-notes.txt").read_text() == "mine"
    assert (moved / "metrics.json").read_bytes() == old_metrics

    # Deleting a stage's folder, as the skip message suggests, redoes that stage alone.
    shutil.rmtree(run_dir / "groups")
    proc = run_cli(*args, "--set", "ensemble.top_n=1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "groups/groups.json is missing: starting afresh" in proc.stdout
    assert (run_dir / "groups" / "groups.json").is_file()
    for stage in ("generalist", "specialists", "ensemble", "student"):
        assert f"[{stage}] up to date, skipped" in proc.stdout, stage


@pytest.mark.e2e
@pytest.mark.slow
def test_generalist_change_reruns_everything(smoke_trained, tmp_path, cifar_jpeg):
    """A change at the top of the chain retrains every stage below it, and a deleted model
    folder is retrained."""
    run_dir = smoke_copy(smoke_trained, tmp_path / "smoke")
    args = ("train", "smoke", "--set", f"data.path={cifar_jpeg}", "--run-dir", str(run_dir), "-q")
    # A change to the generalist reruns it and everything downstream.
    stale = read_manifest(run_dir)["stages"]
    proc = run_cli(*args, "--set", "generalist.epochs=1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    fresh = read_manifest(run_dir)["stages"]
    assert set(fresh) == set(stale)
    for stage in stale:
        assert f"[{stage}] inputs changed since the last run: starting afresh" in proc.stdout
        assert fresh[stage]["hash"] != stale[stage]["hash"], stage
        assert _reran(stale[stage], fresh[stage]), (stage, stale[stage], fresh[stage])
        models = [k for k in stale[stage]["artifacts"] if "model" in k]
        assert _rewritten(stale[stage], fresh[stage], models), stage  # retrained models
    assert fresh["generalist"]["metrics"]["epochs"] == 1
    assert len(json.loads((run_dir / "generalist" / "history.json").read_text())) == 1

    # Deleting a stage's folder, as the skip message suggests, redoes it.
    shutil.rmtree(run_dir / "generalist")
    proc = run_cli(*args, "--set", "generalist.epochs=1")
    assert proc.returncode == 0
    assert "generalist/model.keras is missing: starting afresh" in proc.stdout
    assert (run_dir / "generalist" / "model.keras").is_file()
