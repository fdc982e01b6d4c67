"""Keeps one worker of a multi_worker run going while others are lost and come back.

TensorFlow cannot rebuild a MultiWorkerMirroredStrategy in a process whose peer died: the
process must start again. So `edgekd train` on a multi_worker recipe runs the training in a
child process and supervises it, the pattern of Keras' `BackupAndRestore`:

- a child that lost a peer exits with `PEER_LOST`, and is started again with the same
  command: it waits for every worker to join, and all resume from the chief's last
  checkpoint (nothing finished is redone);
- a child that has not joined its cluster within `timeout_s` (a worker was never started,
  or was lost and not restarted) is stopped, and the command fails saying so;
- any other exit ends the command with the child's status.

No TensorFlow is imported here: the supervisor outlives the children's runtimes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from edgekd.errors import EdgekdError

PEER_LOST = 75  # EX_TEMPFAIL: a peer was lost; start again and rejoin
ENV_CHILD = "EDGEKD_SUPERVISED"  # set in the child: train, do not supervise
ENV_JOINED = "EDGEKD_JOINED_FILE"  # the child touches this file once its cluster is complete
RESTART_PAUSE_S = 2.0
MAX_RESTARTS = 100


class WorkerTimeout(EdgekdError):
    """Not every worker joined in time."""

    exit_code = 3


def supervised() -> bool:
    """Whether this process is the training child of a supervisor."""
    return os.environ.get(ENV_CHILD) == "1"


def report_joined() -> None:
    """Tell the supervising `edgekd train`, if any, that this worker joined its cluster."""
    path = os.environ.get(ENV_JOINED)
    if path:
        Path(path).touch()


def _die_with_parent() -> None:
    """Linux: the child gets SIGKILL when the supervisor dies, killed or not."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def supervise(
    command: Sequence[str],
    timeout_s: float,
    describe: str,
    log: Callable[[str], None] = print,
) -> int:
    """Run `command` (`edgekd train ...` again) as the training child until it ends for good;
    its exit status. `describe` names this worker in the timeout message."""
    with tempfile.TemporaryDirectory(prefix="edgekd-supervisor-") as tmp:
        joined = Path(tmp) / "joined"
        env = {**os.environ, ENV_CHILD: "1", ENV_JOINED: str(joined)}
        restarts = 0
        while True:
            joined.unlink(missing_ok=True)
            child = subprocess.Popen(list(command), env=env, preexec_fn=_die_with_parent)
            code = _wait(child, joined, timeout_s, describe)
            if code != PEER_LOST:
                return code
            restarts += 1
            if restarts > MAX_RESTARTS:
                raise WorkerTimeout(f"{describe}: lost a worker {restarts} times; giving up")
            log(
                f"edgekd: a worker was lost; starting this one again to rejoin the others "
                f"(restart {restarts}; waiting up to {timeout_s:.0f} s for every worker)"
            )
            time.sleep(RESTART_PAUSE_S)


def _wait(child: subprocess.Popen, joined: Path, timeout_s: float, describe: str) -> int:
    """The child's exit status; stops it when it has not joined within `timeout_s`."""
    start = time.monotonic()
    previous = signal.getsignal(signal.SIGTERM)

    def stop(signum: int, _frame: object) -> None:
        # TensorFlow's preemption notifier swallows SIGTERM: the child is killed outright.
        child.kill()
        child.wait()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            try:
                return child.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
            except KeyboardInterrupt:
                child.kill()
                child.wait()
                raise
            if not joined.exists() and time.monotonic() - start > timeout_s:
                child.kill()
                child.wait()
                raise WorkerTimeout(
                    f"{describe}: not every worker joined within {timeout_s:.0f} s "
                    "(train.worker_timeout_s). Start each worker with the same command (a lost "
                    "one too); the run resumes from its last checkpoint"
                )
    finally:
        signal.signal(signal.SIGTERM, previous)
