"""The parts of multi_worker training that need no second process: who the workers are, the
recipe keys, each worker's share of a batch, the run mirror, and the supervisor."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgekd.data.batches import Augment, EnrichedBatches, ImageBatches
from edgekd.errors import RecipeError
from edgekd.recipe import load_recipe
from edgekd.training.cluster import Cluster, ClusterError, digest
from edgekd.training.pipeline import _check_cluster, mirror_path
from edgekd.training.run import mirror_run
from edgekd.training.supervisor import ENV_JOINED, PEER_LOST, WorkerTimeout, supervise
from tests.conftest import run_cli

# --- the cluster -------------------------------------------------------------------------


def test_flags_name_the_workers_chief_first():
    c = Cluster.from_flags("hostA:2222, hostB:2222", 1)
    assert c.workers == ("hostA:2222", "hostB:2222") and c.size == 2 and not c.chief
    assert c.describe() == "worker 1 of 2 (hostB:2222)"
    assert Cluster.from_flags("hostA:2222,hostB:2222", 0).chief


def test_tf_config_with_a_chief_puts_it_first(monkeypatch):
    config = {
        "cluster": {"chief": ["c:1"], "worker": ["w0:1", "w1:1"]},
        "task": {"type": "worker", "index": 1},
    }
    monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    c = Cluster.from_environment(None, None)
    assert c.workers == ("c:1", "w0:1", "w1:1") and c.index == 2 and c.tf_config
    config["task"] = {"type": "chief", "index": 0}
    assert Cluster.from_tf_config(json.dumps(config)).chief


def test_no_flags_and_no_tf_config_is_no_cluster(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert Cluster.from_environment(None, None) is None


@pytest.mark.parametrize(
    ("workers", "index", "message"),
    [
        ("hostA:2222,hostB", 0, "'hostB' is not host:port"),
        ("hostA:2222,hostA:2222", 0, "repeat"),
        ("hostA:2222,hostB:2222", 2, "worker index 2 is not in 0..1"),
        ("hostA:99999", 0, "is not host:port"),
    ],
)
def test_bad_worker_lists_are_named(workers, index, message):
    with pytest.raises(ClusterError, match=message):
        Cluster.from_flags(workers, index)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "TF_CONFIG is not a cluster spec"),
        ('{"cluster": {"worker": ["a:1"]}}', "TF_CONFIG is not a cluster spec"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}', "'ps'"),
    ],
)
def test_bad_tf_config_is_named(text, message):
    with pytest.raises(ClusterError, match=message):
        Cluster.from_tf_config(text)


def test_workers_and_index_come_together():
    with pytest.raises(ClusterError, match="together"):
        Cluster.from_environment("a:1,b:1", None)


def test_digest_tells_values_apart():
    assert digest("abc") == digest("abc") != digest("abd")
    assert 0 <= digest("x") < 2**31


# --- the recipe ----------------------------------------------------------------------------


def test_legacy_strategy_key_is_read():
    assert load_recipe("smoke", ["train.strategy=mirrored"]).train.distribution == "mirrored"
    assert load_recipe("smoke", ["train.strategy=default"]).train.distribution == "none"
    with pytest.raises(RecipeError, match="strategy"):
        load_recipe("smoke", ["train.strategy=mirrored", "train.distribution=none"])


def test_the_distribution_reruns_nothing():
    """The same global batch gives the same update: stage hashes ignore the distribution."""
    one = load_recipe("smoke", [])
    two = load_recipe("smoke", ["train.distribution=multi_worker", "train.worker_timeout_s=5"])
    assert one.digest("train", "generalist") == two.digest("train", "generalist")


def test_multi_worker_needs_workers_and_workers_need_multi_worker():
    recipe = load_recipe("smoke", ["train.distribution=multi_worker"])
    with pytest.raises(RecipeError, match="train.distribution: multi_worker needs the workers"):
        _check_cluster(recipe, None)
    assert _check_cluster(recipe, Cluster.from_flags("a:1,b:1", 0))
    with pytest.raises(RecipeError, match="set train.distribution: multi_worker"):
        _check_cluster(load_recipe("smoke", []), Cluster.from_flags("a:1,b:1", 0))
    assert not _check_cluster(load_recipe("smoke", []), None)


def test_cli_multi_worker_without_workers_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    proc = run_cli(
        "train", "smoke", "--run-dir", str(tmp_path / "run"),
        "--set", "train.distribution=multi_worker",
    )  # fmt: skip
    assert proc.returncode == 2
    assert "train.distribution: multi_worker needs the workers" in proc.stderr
    assert not (tmp_path / "run").exists()
    proc = run_cli("train", "smoke", "--workers", "a:1,b", "--worker-index", "0")
    assert proc.returncode == 2 and "'b' is not host:port" in proc.stderr


# --- each worker's share -------------------------------------------------------------------

AUGMENTS = [
    None,
    Augment(),
    Augment(cutout=4),
    Augment(crop="resized", crop_padding=0),
]


@pytest.mark.parametrize("augment", AUGMENTS)
@pytest.mark.parametrize(("workers", "streamed"), [(2, False), (4, False), (2, True)])
def test_shares_of_a_batch_make_the_whole_batch(tmp_path, augment, workers, streamed):
    """Rows, labels and augmentation of the workers' shares are those of the whole batch,
    from memory or streamed from the on-disk store."""
    from edgekd.data.store import DiskImages, write_store

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 16, 16, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, 64)
    kw = dict(batch_size=16, shuffle=True, augment=augment, seed=3, drop_remainder=True)
    whole = ImageBatches(images, labels, **kw)
    source: np.ndarray | DiskImages = images
    if streamed:
        write_store(tmp_path / "train.npy", images.shape, [images])
        source = DiskImages(tmp_path / "train.npy")
    shares = [ImageBatches(source, labels, **kw) for _ in range(workers)]
    for i, share in enumerate(shares):
        share.shard(i, workers)
    for epoch in (0, 2):
        for index in range(len(whole)):
            x, y = whole.make_batch(epoch, index)
            parts = [s.make_batch(epoch, index) for s in shares]
            assert all(len(p[1]) == 16 // workers for p in parts)
            np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), x)
            np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), y)


def test_enriched_batches_shard_too():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, 40)
    kw = dict(in_group=labels == 0, share=0.5, batch_size=8, seed=0, drop_remainder=True)
    whole = EnrichedBatches(images, labels, **kw)
    halves = [EnrichedBatches(images, labels, **kw) for _ in range(2)]
    for i, h in enumerate(halves):
        h.shard(i, 2)
    x, y = whole.make_batch(1, 2)
    np.testing.assert_array_equal(np.concatenate([h.make_batch(1, 2)[1] for h in halves]), y)
    np.testing.assert_array_equal(np.concatenate([h.make_batch(1, 2)[0] for h in halves]), x)


def test_stored_targets_follow_the_share():
    from edgekd.training.teacher_targets import TargetBatches

    images = np.zeros((32, 4, 4, 3), np.uint8)
    labels = np.arange(32) % 4
    q = np.random.default_rng(0).random((32, 4)).astype(np.float32)
    kw = dict(batch_size=8, shuffle=True, seed=0, drop_remainder=True, targets=lambda _e: q)
    whole = TargetBatches(images, labels, **kw)
    second = TargetBatches(images, labels, **kw)
    second.shard(1, 2)
    _, (y, qs) = whole.batch_of(0, 1)
    _, (y2, qs2) = second.batch_of(0, 1)
    np.testing.assert_array_equal(y2, y[4:])
    np.testing.assert_array_equal(qs2, qs[4:])


def test_a_share_needs_equal_parts():
    images = np.zeros((30, 4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="divisible by 4"):
        ImageBatches(images, np.zeros(30), batch_size=10, drop_remainder=True).shard(0, 4)
    with pytest.raises(ValueError, match="drop_remainder"):
        ImageBatches(images, np.zeros(30), batch_size=10).shard(0, 2)


# --- the mirror ----------------------------------------------------------------------------


def test_the_mirror_copies_the_run_without_hidden_files_or_logs(tmp_path):
    chief = tmp_path / "chief"
    (chief / "generalist" / "checkpoint").mkdir(parents=True)
    (chief / "manifest.json").write_text("{}")
    (chief / "generalist" / "checkpoint" / "state.json").write_text("{}")
    (chief / "generalist" / "tensorboard").mkdir()
    (chief / ".previous" / "x").mkdir(parents=True)
    (chief / ".lock").write_text("")
    (chief / "generalist" / ".model-abc.keras").write_text("half written")
    mirror = mirror_path(chief, 1)
    assert mirror.name.startswith("edgekd-worker1-") and mirror == mirror_path(chief, 1)
    mirror = tmp_path / "mirror"
    (mirror / "stale").mkdir(parents=True)
    mirror_run(chief, mirror)
    found = sorted(str(p.relative_to(mirror)) for p in mirror.rglob("*"))
    assert found == [
        "generalist", "generalist/checkpoint", "generalist/checkpoint/state.json", "manifest.json",
    ]  # fmt: skip
    # A refresh copies only what changed, and drops what the chief no longer has.
    state = mirror / "generalist" / "checkpoint" / "state.json"
    inode = state.stat().st_ino
    (mirror / "generalist" / "worker-only.json").write_text("{}")
    (chief / "manifest.json").write_text('{"changed": true}')
    mirror_run(chief, mirror)
    assert state.stat().st_ino == inode
    assert (mirror / "manifest.json").read_text() == '{"changed": true}'
    assert not (mirror / "generalist" / "worker-only.json").exists()
    mirror_run(tmp_path / "no run yet", mirror)
    assert not list(mirror.iterdir())


# --- the supervisor ------------------------------------------------------------------------


def _child(tmp_path: Path, body: str) -> list[str]:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(body))
    return [sys.executable, str(script)]


def test_a_child_that_lost_a_peer_is_started_again(tmp_path):
    """Exit PEER_LOST twice, then succeed: three starts, status 0."""
    count = tmp_path / "starts"
    command = _child(
        tmp_path,
        f"""
        import os, pathlib, sys
        from pathlib import Path
        Path(os.environ["{ENV_JOINED}"]).touch()
        n = pathlib.Path({str(count)!r})
        starts = int(n.read_text()) + 1 if n.exists() else 1
        n.write_text(str(starts))
        sys.exit({PEER_LOST} if starts < 3 else 0)
        """,
    )
    lines: list[str] = []
    import edgekd.training.supervisor as sup

    sup.RESTART_PAUSE_S, pause = 0.0, sup.RESTART_PAUSE_S
    try:
        assert supervise(command, 30, "worker 0", log=lines.append) == 0
    finally:
        sup.RESTART_PAUSE_S = pause
    assert count.read_text() == "3" and len(lines) == 2 and "restart 2" in lines[1]


def test_other_exits_pass_through(tmp_path):
    assert supervise(_child(tmp_path, "import sys; sys.exit(2)"), 30, "worker 0") == 2


def test_a_child_that_never_joins_is_stopped_after_the_timeout(tmp_path):
    command = _child(tmp_path, "import time; time.sleep(60)")
    with pytest.raises(WorkerTimeout, match=r"chief 0 of 2 .*: not every worker joined within 1 s"):
        supervise(command, 1, "chief 0 of 2 (a:1)")


def test_peer_loss_is_told_from_other_errors():
    from edgekd.cli import _peer_lost

    fake = type("UnavailableError", (Exception,), {"__module__": "tensorflow.python.errors"})
    assert _peer_lost(fake("peer down"))
    try:
        try:
            raise fake("down")
        except Exception as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert _peer_lost(outer)
    assert not _peer_lost(ValueError("bad"))


# --- the launch guide ----------------------------------------------------------------------


def test_the_launch_guides_templates_parse_and_use_real_flags():
    import re

    import yaml

    from edgekd.cli import main

    guide = (Path(__file__).resolve().parents[1] / "docs" / "distributed.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", guide, re.S)
    docs = [d for block in blocks for d in yaml.safe_load_all(block)]
    job = next(d for d in docs if d["kind"] == "Job")
    assert job["spec"]["completionMode"] == "Indexed"
    assert "--worker-index" in " ".join(job["spec"]["template"]["spec"]["containers"][0]["args"])
    train = next(c for c in main.commands["train"].params if c.name == "workers")
    assert "--workers" in train.opts
    code = "\n".join(re.findall(r"```(?:bash|yaml)\n(.*?)```", guide, re.S))
    for flag in set(re.findall(r"(?<![-\w])(--[a-z][a-z-]*)", code)) - {"--set", "--requeue"}:
        if flag.startswith(("--nodes", "--ntasks", "--gpus", "--time", "--job")):
            continue  # Slurm's own
        assert any(flag in p.opts for p in main.commands["train"].params), flag
