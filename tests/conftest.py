"""Shared fixtures: where the real CIFAR-10 sample lives, a private decode cache, helpers
to run the `edgekd` command or a script in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

# pytest-xdist workers share the cores: TensorFlow's intra-op pool per worker is sized to its
# share (it reads this before its first op), instead of each worker spinning a pool as big as
# the machine. Measured here: 10% less wall time for the same tests on two workers.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

REPO = Path(__file__).resolve().parents[1]
CIFAR_JPEG = Path(
    os.environ.get("EDGEKD_CIFAR_JPEG", REPO.parent / "shared" / "data" / "cifar10-jpeg" / "train")
)


def _shared_root(tmp_path_factory) -> Path:
    """A folder every pytest-xdist worker of this session sees (the workers' common parent);
    without xdist, the session's own temporary folder."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _once(root: Path, name: str, make) -> dict[str, Any]:
    """Build `name` once per session, however many processes ask (xdist workers, the
    background builder): the first holds a file lock while `make(folder)` runs and records
    its JSON result; the rest read it."""
    record = root / f"{name}.json"
    with FileLock(str(record) + ".lock"):
        if record.is_file():
            return json.loads(record.read_text())
        folder = root / name
        if folder.exists():  # a process that failed to build it left this behind
            shutil.rmtree(folder)
        result = make(folder)
        record.write_text(json.dumps(result))
        return result


def build_smoke_trained(root: Path, cifar: Path) -> dict[str, Any]:
    """The smoke recipe on real CIFAR-10 JPEGs in `root/smoke-trained`, once per session."""

    def make(run_dir: Path) -> dict[str, Any]:
        t0 = time.perf_counter()
        proc = run_cli(
            "train", "smoke", "--set", f"data.path={cifar}", "--run-dir", str(run_dir),
            "--quiet", env={"EDGEKD_CACHE": str(root / "edgekd-cache")},
        )  # fmt: skip
        wall = time.perf_counter() - t0
        assert proc.returncode == 0, proc.stderr[-3000:]
        return {"run_dir": str(run_dir), "args": proc.args, "stdout": proc.stdout,
                "stderr": proc.stderr, "wall": wall}  # fmt: skip

    return _once(root, "smoke-trained", make)


def build_smoke_exported(root: Path, cifar: Path) -> dict[str, Any]:
    """A copy of the smoke run exported once, as a user runs it: the student and every
    member as float32 and int8 .tflite and .onnx, in RUN/export/ and RUN/export/members/."""
    trained = Path(build_smoke_trained(root, cifar)["run_dir"])

    def make(run_dir: Path) -> dict[str, Any]:
        shutil.copytree(trained, run_dir)
        # --force: the smoke models are near chance (15% on 60 images), so whether their
        # int8 files pass the 1-point gate is a coin toss of the host's float rounding.
        proc = run_cli(
            "export", str(run_dir), "--float", "--int8", "--format", "tflite,onnx", "--members",
            "--force",
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return {"run_dir": str(run_dir), "stdout": proc.stdout}

    return _once(root, "smoke-exported", make)


_BUILDER_KEY = pytest.StashKey[subprocess.Popen]()
_BUILDER = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from tests.conftest import build_smoke_exported, build_smoke_trained
root, cifar = Path(sys.argv[2]), Path(sys.argv[3])
(root / "builder.started").touch()
build_smoke_exported(root, cifar) if sys.argv[4] == "1" else build_smoke_trained(root, cifar)
"""


def pytest_collection_finish(session: pytest.Session) -> None:
    """When the selected tests use the smoke run, start building it (and its export) in a
    background process right away, so that it overlaps the tests that do not need it instead
    of a worker waiting for another to build it. Workers then wait on the same file lock,
    and build it themselves if the builder failed."""
    if os.environ.get("PYTEST_XDIST_WORKER", "gw0") != "gw0" or not CIFAR_JPEG.is_dir():
        return
    needs = [set(getattr(item, "fixturenames", ())) for item in session.items]
    if not any("smoke_trained" in n for n in needs):
        return
    export = any("smoke_exported" in n for n in needs)
    root = _shared_root(session.config._tmp_path_factory)
    (root / "edgekd-cache").mkdir(exist_ok=True)
    builder = subprocess.Popen(
        [sys.executable, "-c", _BUILDER, str(REPO), str(root), str(CIFAR_JPEG), str(int(export))],
        cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    session.config.stash[_BUILDER_KEY] = builder
    deadline = time.monotonic() + 30
    while not (root / "builder.started").exists() and builder.poll() is None:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)


def pytest_sessionfinish(session: pytest.Session) -> None:
    builder = session.config.stash.get(_BUILDER_KEY, None)
    if builder is not None and builder.poll() is None:
        builder.terminate()


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Keep tests' decoded-image caches out of the user's ~/.cache, shared within a session
    (and between its xdist workers: cache entries are written atomically)."""
    cache = _shared_root(tmp_path_factory) / "edgekd-cache"
    cache.mkdir(exist_ok=True)
    old = os.environ.get("EDGEKD_CACHE")
    os.environ["EDGEKD_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("EDGEKD_CACHE", None)
    else:
        os.environ["EDGEKD_CACHE"] = old


@pytest.fixture(scope="session")
def cifar_jpeg() -> Path:
    if not CIFAR_JPEG.is_dir():
        pytest.skip(f"real CIFAR-10 JPEGs not found at {CIFAR_JPEG} (set EDGEKD_CIFAR_JPEG)")
    return CIFAR_JPEG


@pytest.fixture(scope="session")
def smoke_trained(tmp_path_factory, cifar_jpeg) -> tuple[Path, subprocess.CompletedProcess, float]:
    """The smoke recipe on real CIFAR-10 JPEGs, trained once per session (shared by the xdist
    workers); modules that change a run take a copy (`smoke_copy`), so each starts from the
    same pristine run."""
    r = build_smoke_trained(_shared_root(tmp_path_factory), cifar_jpeg)
    proc = subprocess.CompletedProcess(r["args"], 0, r["stdout"], r["stderr"])
    return Path(r["run_dir"]), proc, r["wall"]


@pytest.fixture(scope="session")
def smoke_exported(smoke_trained, tmp_path_factory, cifar_jpeg) -> Path:
    """A copy of the session's smoke run exported once (`build_smoke_exported`). Tests read
    it; none may change it."""
    return Path(build_smoke_exported(_shared_root(tmp_path_factory), cifar_jpeg)["run_dir"])


@pytest.fixture(scope="session")
def smoke_exported_stdout(smoke_exported, tmp_path_factory, cifar_jpeg) -> str:
    """What `edgekd export` printed when it made `smoke_exported`."""
    return build_smoke_exported(_shared_root(tmp_path_factory), cifar_jpeg)["stdout"]


def smoke_copy(smoke_trained, destination: Path) -> Path:
    """A private copy of the session's smoke run at `destination`."""
    shutil.copytree(smoke_trained[0], destination)
    return destination


@pytest.fixture(scope="module")
def smoke_run(smoke_trained, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, float]:
    """The requesting module's own copy of the session's smoke run (its tests may change it),
    with the training command's output and wall time."""
    _, proc, wall = smoke_trained
    return smoke_copy(smoke_trained, tmp_path_factory.mktemp("runs") / "smoke"), proc, wall


def read_manifest(run_dir: Path) -> dict:
    """A run directory's manifest.json."""
    return json.loads((run_dir / "manifest.json").read_text())


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run `python -m edgekd ARGS` and capture its output."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "edgekd", *args],
        cwd=cwd or REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_python_json(script: str, *args: str, timeout: float = 120) -> Any:
    """Run `python -c SCRIPT ARGS` from the repository and return the JSON its last line
    prints; fails the test with the script's stderr when it exits non-zero."""
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
