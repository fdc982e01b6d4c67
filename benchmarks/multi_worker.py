"""One process against K `multi_worker` processes on this host: time per step and the weights.

    python benchmarks/multi_worker.py [--workers 2] [--epochs 3] [--backend tensorflow|jax]
        [--data ../shared/data/cifar10-jpeg/train] [--set KEY=VALUE ...]

Runs the smoke recipe's generalist (`train.stages=[generalist]`) once in one process and
once as `--workers` processes on localhost (`train.distribution: multi_worker`, the same
global batch), then prints one table: the median seconds per training step over the epochs
after the first (the first traces and compiles), images/s, and the largest difference
between the two runs' final weights.

On one CPU host the workers share its cores and talk over loopback gRPC (TensorFlow) or
gloo (JAX), so this measures what the collectives cost, not the speed-up of a GPU cluster,
where each worker has devices of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _train(run_dir: Path, sets: list[str], env: dict[str, str], workers: int) -> None:
    base = [sys.executable, "-m", "edgekd", "train", "smoke", "--run-dir", str(run_dir), "-q"]
    base += [a for s in sets for a in ("--set", s)]
    if workers == 1:
        subprocess.run(base, cwd=REPO, env=env, check=True, capture_output=True)
        return
    addresses = ",".join(f"localhost:{p}" for p in _free_ports(workers))
    procs = [
        subprocess.Popen(
            [*base, "--set", "train.distribution=multi_worker", "--workers", addresses,
             "--worker-index", str(i)],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for i in range(workers)
    ]
    for i, p in enumerate(procs):
        _, err = p.communicate(timeout=1800)
        if p.returncode:
            raise SystemExit(f"worker {i} exited {p.returncode}:\n{err[-3000:]}")


def _row(name: str, run_dir: Path, batch: int) -> tuple[list[str], list]:
    history = json.loads((run_dir / "generalist" / "history.json").read_text())
    later = history[1:] or history
    step = statistics.median(batch / e["images_per_s"] for e in later)  # epoch time / steps
    import keras

    import edgekd.training.models.layers  # noqa: F401

    model = keras.models.load_model(run_dir / "generalist" / "model.keras", compile=False)
    return [name, f"{1000 * step:.0f}", f"{batch / step:.0f}"], model.get_weights()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--backend", choices=("tensorflow", "jax"), default="tensorflow")
    parser.add_argument("--data", default=str(REPO.parent / "shared/data/cifar10-jpeg/train"))
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    sets = [
        f"data.path=folder:{args.data}", "train.stages=[generalist]",
        f"generalist.epochs={args.epochs}", *args.sets,
    ]  # fmt: skip
    env = {**os.environ, "KERAS_BACKEND": args.backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    from edgekd.recipe import load_recipe

    batch = load_recipe("smoke", sets).generalist.batch_size
    with tempfile.TemporaryDirectory(prefix="edgekd-mw-bench-") as tmp:
        env["TMPDIR"] = tmp
        rows, weights = [], []
        for workers in (1, args.workers):
            run_dir = Path(tmp) / f"run-{workers}"
            _train(run_dir, sets, env, workers)
            name = "1 process" if workers == 1 else f"{workers} workers (multi_worker)"
            row, w = _row(name, run_dir, batch)
            rows.append(row)
            weights.append(w)
    import numpy as np

    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(*weights, strict=True))
    print(f"smoke generalist, {args.backend}, global batch {batch}, {args.epochs} epochs "
          "(median over epochs 2..; the first traces)")  # fmt: skip
    print(f"{'run':<28} {'ms/step':>8} {'img/s':>7}")
    for name, ms, ips in rows:
        print(f"{name:<28} {ms:>8} {ips:>7}")
    print(f"largest |weight difference| after {args.epochs} epochs: {diff:.3g}")


if __name__ == "__main__":
    main()
