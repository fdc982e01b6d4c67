"""`train.distribution: multi_worker` with two real worker processes on localhost.

TensorFlow's MultiWorkerMirroredStrategy over gRPC, CPU only: every stage in step, the
update of one process on the same global batch, a worker killed and restarted, and a
worker that never comes. Each test is bounded by its subprocess timeouts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, read_manifest, run_cli
from tests.synthetic import make_folder

pytestmark = pytest.mark.e2e

WEIGHT_TOLERANCE = 1e-4  # largest |w_2 workers - w_1 process| after one epoch (float32 sums)


def free_ports(n: int) -> list[int]:
    """`n` ports nothing listens on now (bound to port 0, then released)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def start_worker(
    index: int, ports: list[int], run_dir: Path, log: Path, *overrides: str, backend: str = ""
) -> subprocess.Popen:
    """`edgekd train smoke ... --workers ... --worker-index index`, in its own session."""
    workers = ",".join(f"localhost:{p}" for p in ports)
    sets = [a for o in ("train.distribution=multi_worker", *overrides) for a in ("--set", o)]
    cmd = [
        sys.executable, "-m", "edgekd", "train", "smoke", "--run-dir", str(run_dir), "-q",
        "--workers", workers, "--worker-index", str(index), *sets,
    ]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TMPDIR": str(run_dir.parent)}
    if backend:
        env["KERAS_BACKEND"] = backend
    with open(log, "a") as out:
        return subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def finish(procs: list[subprocess.Popen], logs: list[Path], timeout: float) -> None:
    """Wait for every worker; on a timeout kill them all. Each must exit 0."""
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, f"{log.name} exited {p.returncode}:\n{log.read_text()[-4000:]}"


def weights(run_dir: Path) -> list[np.ndarray]:
    import keras

    import edgekd.training.models.layers  # noqa: F401

    path = run_dir / "generalist" / "model.keras"
    return keras.models.load_model(path, compile=False).get_weights()


@pytest.mark.slow
def test_smoke_recipe_runs_every_stage_under_multi_worker(tmp_path, cifar_jpeg):
    """Two workers run generalist, groups, specialists, ensemble and student (distilled and
    control); only the chief writes the run."""
    ports, run_dir = free_ports(2), tmp_path / "run"
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    data = f"data.path=folder:{cifar_jpeg}"
    procs = [start_worker(i, ports, run_dir, logs[i], data) for i in range(2)]
    finish(procs, logs, timeout=420)
    stages = read_manifest(run_dir)["stages"]
    assert set(stages) == {"generalist", "groups", "specialists", "ensemble", "student"}
    assert all(rec["status"] == "done" for rec in stages.values())
    chief, worker = (log.read_text() for log in logs)
    assert "joined the cluster as chief 0 of 2" in chief
    assert "joined the cluster as worker 1 of 2" in worker
    # The worker trained alongside (same fits, same figures) and left the rest to the chief.
    assert "[groups] left to the chief" in worker and "[ensemble] left to the chief" in worker
    for line in ("[student] distilled:", "[student] control:"):
        assert [x for x in chief.splitlines() if line in x] == [
            x for x in worker.splitlines() if line in x
        ]
    history = json.loads((run_dir / "generalist" / "history.json").read_text())
    assert {"val_accuracy", "val_loss"} <= set(history[-1])
    # Nothing of the worker's is left: its mirror lived in a temporary folder and is gone.
    assert not list(tmp_path.glob("edgekd-worker1-*"))


@pytest.mark.parametrize(
    "backend",
    # JAX across processes: the same check once more, on the other engine (-m exhaustive).
    [
        pytest.param("tensorflow", marks=pytest.mark.slow),
        pytest.param("jax", marks=pytest.mark.exhaustive),
    ],
)
def test_one_epoch_on_two_workers_equals_one_process(tmp_path, backend):
    """Same global batch, same data, same augmentation: two workers each taking half of every
    batch leave the weights one process leaves. TensorFlow: MultiWorkerMirroredStrategy over
    gRPC with synchronized batch norm; JAX: DataParallel over both processes' devices after
    jax.distributed.initialize (CPU collectives over gloo)."""
    data = make_folder(tmp_path / "data", classes=3, per_class=24)
    common = [
        f"data.path=folder:{data}", "train.stages=[generalist]", "generalist.epochs=1",
        "generalist.schedule.warmup_epochs=0.2", "generalist.optimizer.lr=0.02",
    ]  # fmt: skip
    single = tmp_path / "single"
    args = [a for o in common for a in ("--set", o)]
    proc = run_cli(
        "train", "smoke", "--run-dir", str(single), "-q", *args, env={"KERAS_BACKEND": backend}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ports, multi = free_ports(2), tmp_path / "multi"
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    procs = [start_worker(i, ports, multi, logs[i], *common, backend=backend) for i in range(2)]
    finish(procs, logs, 300)
    assert f"backend {backend}" in logs[0].read_text()
    one, two = weights(single), weights(multi)
    assert len(one) == len(two)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(one, two, strict=True))
    moved = max(float(np.max(np.abs(a))) for a in one)
    print(f"max |difference| {diff:.3g} (weights up to {moved:.3g})")
    assert diff <= WEIGHT_TOLERANCE, f"max |difference| {diff:.3g} (weights up to {moved:.3g})"


@pytest.mark.slow
def test_a_killed_worker_restarted_with_the_same_command_resumes(tmp_path):
    """Kill worker 1 (its whole process group) mid-training; the chief's child notices, starts
    again and waits; worker 1 is started again with the same command; both resume from the
    last checkpoint and finish every epoch exactly once."""
    data = make_folder(tmp_path / "data", classes=3, per_class=60)
    common = [
        f"data.path=folder:{data}", "train.stages=[generalist]", "generalist.epochs=4",
        "train.worker_timeout_s=240",
    ]  # fmt: skip
    ports, run_dir = free_ports(2), tmp_path / "run"
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    chief = start_worker(0, ports, run_dir, logs[0], *common)
    worker = start_worker(1, ports, run_dir, logs[1], *common)
    state = run_dir / "generalist" / "checkpoint" / "state.json"
    deadline = time.monotonic() + 240
    while not (state.is_file() and json.loads(state.read_text())["epoch"] >= 1):
        assert time.monotonic() < deadline, logs[0].read_text()[-3000:]
        assert chief.poll() is None, logs[0].read_text()[-3000:]
        time.sleep(0.2)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    while "a worker was lost" not in logs[0].read_text():
        assert time.monotonic() < deadline, logs[0].read_text()[-3000:]
        time.sleep(0.2)
    worker = start_worker(1, ports, run_dir, logs[1], *common)
    finish([chief, worker], logs, timeout=300)
    text = logs[0].read_text()
    assert "lost contact with another worker" in text
    assert "resuming from epoch" in text
    history = json.loads((run_dir / "generalist" / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    assert read_manifest(run_dir)["stages"]["generalist"]["status"] == "done"


@pytest.mark.slow
def test_a_worker_that_never_joins_fails_the_job_after_the_timeout(tmp_path):
    """Only the chief is started: it fails with the timeout's message and exit code 3, and
    nothing is trained or recorded."""
    data = make_folder(tmp_path / "data", classes=3, per_class=10)
    ports, run_dir = free_ports(2), tmp_path / "run"
    log = tmp_path / "chief.log"
    chief = start_worker(
        0, ports, run_dir, log, f"data.path=folder:{data}", "train.worker_timeout_s=8"
    )
    try:
        code = chief.wait(timeout=120)
    finally:
        if chief.poll() is None:
            os.killpg(chief.pid, signal.SIGKILL)
    text = log.read_text()
    assert code == 3, text[-3000:]
    assert "not every worker joined within 8 s (train.worker_timeout_s)" in text
    assert not (run_dir / "manifest.json").exists()
