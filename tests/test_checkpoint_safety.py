"""The resumable trainer against damaged checkpoints, hand-edited state and diverging loss."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edgekd import atomic
from edgekd.errors import TrainingError
from edgekd.training import accelerator
from edgekd.training.trainer import load_state, train_classifier
from tests.test_training_parts import _build, _cfg, _StopAfter, _tiny_data

KW = dict(seed=3, augment=None, tensorboard=False, verbose=0)


def _train(path, epochs=3, stop=None, cfg=None, log=None):
    accel = accelerator.resolve("float32", False)
    lines = [] if log is None else log
    result = train_classifier(
        _build, cfg or _cfg(epochs), _tiny_data(), None, path, accel=accel, **KW,
        callbacks=[_StopAfter(stop)] if stop else [], log=lines.append,
    )  # fmt: skip
    return result, lines


def _weights(model):
    return [np.asarray(w) for w in model.weights]


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A 3-epoch run stopped after epoch 2, copied per test; and the uninterrupted run."""
    root = tmp_path_factory.mktemp("ckpt")
    straight, _ = _train(root / "straight")
    _train(root / "stopped", stop=2)
    return root / "stopped", _weights(straight.model)


@pytest.fixture
def run(stopped, tmp_path):
    shutil.copytree(stopped[0], tmp_path / "run")
    return tmp_path / "run"


def test_state_records_size_sha_and_previous(run):
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["epoch"] == 2 and len(state["sha256"]) == 64 and state["size"] > 0
    assert state["previous"]["epoch"] == 1
    kept = sorted(p.name for p in (run / "checkpoint").glob("epoch-*.keras"))
    assert kept == ["epoch-0001.keras", "epoch-0002.keras"]


@pytest.mark.parametrize("damage", ["truncate", "garble", "empty", "delete"])
def test_damaged_last_checkpoint_falls_back_to_previous(stopped, run, damage):
    last = run / "checkpoint" / "epoch-0002.keras"
    data = last.read_bytes()
    if damage == "truncate":
        last.write_bytes(data[: len(data) // 2])
    elif damage == "garble":
        last.write_bytes(data[:100] + bytes(b ^ 0x5A for b in data[100:300]) + data[300:])
    elif damage == "empty":
        last.write_bytes(b"")
    else:
        last.unlink()
    if damage in ("empty", "delete"):  # the same check as truncate and garble: no training
        lines: list[str] = []
        assert load_state(run / "checkpoint", 3, lines.append)["epoch"] == 1, lines
        return
    resumed, log = _train(run)
    assert resumed.resumed_from == 1, log
    assert any("last checkpoint unusable" in line for line in log), log
    assert any("falling back to the checkpoint of epoch 1" in line for line in log), log
    assert len(resumed.history) == 3
    for a, b in zip(stopped[1], _weights(resumed.model), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_both_checkpoints_damaged_restarts_and_says_so(run):
    for p in (run / "checkpoint").glob("epoch-*.keras"):
        p.write_bytes(b"PK\x03\x04 not really")
    resumed, log = _train(run)
    assert resumed.resumed_from == 0 and len(resumed.history) == 3
    assert any("no intact checkpoint; starting this stage afresh" in line for line in log), log


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda s: {**s, "epoch": 99}, "epoch 99 is not in 1..3"),
        (lambda s: {**s, "epoch": "2"}, "is not in 1..3"),
        (lambda s: {**s, "checkpoint": "../../etc/passwd"}, "does not match epoch 2"),
        (lambda s: {**s, "history": s["history"][:1]}, "history does not have 2 epochs"),
        (lambda s: {**s, "sha256": "0" * 64}, "sha256 differs"),
    ],
)
def test_hand_edited_state_is_not_trusted(run, edit, needle):
    path = run / "checkpoint" / "state.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    lines: list[str] = []
    state = load_state(run / "checkpoint", 3, lines.append)
    assert state is not None and state["epoch"] == 1, lines
    assert any(needle in line for line in lines), lines


@pytest.mark.parametrize("content", [b"", b"{not json", b"\xff\xfe", b"[1, 2]", b"null"])
def test_unreadable_state_restarts(run, content):
    (run / "checkpoint" / "state.json").write_bytes(content)
    lines: list[str] = []
    assert load_state(run / "checkpoint", 3, lines.append) is None
    assert any("afresh" in line for line in lines), lines


def test_unreadable_state_retrains_every_epoch(run):
    (run / "checkpoint" / "state.json").write_bytes(b"{trunc")
    resumed, log = _train(run)
    assert resumed.resumed_from == 0 and len(resumed.history) == 3, log


def test_stale_temp_files_are_removed_and_others_kept(tmp_path):
    ckpt = tmp_path / "checkpoint"
    ckpt.mkdir()
    stale = [ckpt / ".epoch-0002-k3j4h5g6.keras", ckpt / ".state-abcdefgh.json"]
    mine = [ckpt / ".notes", ckpt / "notes.txt", ckpt / ".hidden-file"]
    for p in stale + mine:
        p.write_text("x")
    assert sorted(atomic.remove_stale(ckpt)) == sorted(stale)
    assert all(p.exists() for p in mine)


def _poisoned():
    model = _build()
    w = model.trainable_weights[0]
    w.assign(np.full(w.shape, np.nan, np.float32))
    return model


def test_nan_loss_fails_the_stage_and_keeps_no_checkpoint(tmp_path):
    accel = accelerator.resolve("float32", False)
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 1, step 1"):
        train_classifier(_poisoned, _cfg(2), _tiny_data(), None, tmp_path, accel=accel, **KW)
    assert not (tmp_path / "checkpoint" / "state.json").exists()
    assert not list((tmp_path / "checkpoint").glob("*.keras"))
