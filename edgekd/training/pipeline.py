"""`edgekd train` as a Python API: run the recipe's stages in order inside one run directory.

Finished stages whose inputs are unchanged are skipped; an interrupted stage resumes from
its last checkpoint; a stage whose inputs changed (hashes chain downstream) starts afresh.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from edgekd import __version__
from edgekd.data.dataset import PreparedData, prepare_data
from edgekd.recipe import Recipe
from edgekd.training.run import RunDir, check_run_path, file_digest, mirror_run, now
from edgekd.training.stages import STAGES, StageContext

if TYPE_CHECKING:
    from edgekd.training.accelerator import Accelerator
    from edgekd.training.cluster import Cluster


def default_run_dir(recipe: Recipe) -> Path:
    return Path("runs") / recipe.name


def train(
    recipe: Recipe,
    run_dir: str | Path | None = None,
    *,
    verbose: str | int = "auto",
    log: Callable[[str], None] = print,
    cluster: Cluster | None = None,
) -> RunDir:
    """Run every stage the recipe asks for; returns the run directory.

    `cluster`: this process's place among the workers of a `train.distribution:
    multi_worker` run (every worker calls `train` with the same recipe).
    """
    # Everything that can fail on bad input happens before the first write.
    run_path = Path(run_dir) if run_dir is not None else default_run_dir(recipe)
    multi = _check_cluster(recipe, cluster)
    chief = cluster is None or cluster.chief
    if chief:
        check_run_path(run_path)
    if multi:
        from edgekd.training import cluster as workers

        assert cluster is not None
        workers.connect(cluster)
        workers.barrier("joining", f"{__version__} {recipe.digest(*_SECTIONS)}")
        from edgekd.training.supervisor import report_joined

        report_joined()
        log(f"edgekd: joined the cluster as {cluster.describe()}")
        if not chief:  # the chief prepares the data first: a shared cache is then built once
            workers.barrier("data prepared by the chief")
    data = prepare_data(recipe, progress=True)
    if multi:
        if chief:
            workers.barrier("data prepared by the chief")
        workers.barrier("data", data.fingerprint)
        _check_split(recipe, workers.replicas_per_worker() * cluster.size)
    hashes: dict[str, str] = {}
    for stage in STAGES:
        hashes[stage.name] = stage.input_hash(recipe, data.fingerprint, hashes)
    mirror = None if chief else mirror_path(run_path, cluster.index)
    try:
        if mirror is not None:  # a copy of the run as the chief found it
            workers.barrier("the chief's pre-flight checks")
            mirror_run(run_path, mirror)
        run = RunDir(mirror if mirror is not None else run_path)
        wanted = set(recipe.train.stages)
        for stage in STAGES:
            if stage.name not in wanted:
                continue
            stage.check(recipe, data)
            for upstream in stage.needs(recipe):
                rec = run.stage(upstream)
                if upstream not in wanted and not (
                    rec.status == "done" and rec.hash == hashes[upstream]
                ):
                    raise recipe.error(
                        "train.stages",
                        f"stage {stage.name!r} needs {upstream!r}, which is neither listed nor "
                        f"finished with this recipe in {run_path}; add it to train.stages",
                    )
        if multi and chief:
            workers.barrier("the chief's pre-flight checks")
        from edgekd.training import accelerator

        accel = accelerator.resolve(
            recipe.train.precision, recipe.train.jit_compile, recipe.train.distribution
        )
        sync = _StageSync(run_path, mirror) if multi else None
        with run.lock():
            _train_stages(recipe, run, data, hashes, wanted, accel, verbose, log, sync)
    finally:
        if mirror is not None:
            shutil.rmtree(mirror, ignore_errors=True)
    return RunDir(run_path) if mirror is not None else run


def mirror_path(run_path: Path, index: int) -> Path:
    """Where worker `index` mirrors the chief's run: a local temporary folder named for the
    run, so a killed worker's mirror is reused by its restart rather than left behind."""
    key = hashlib.sha256(str(run_path.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"edgekd-worker{index}-{key}"


# The sections every worker must agree on before training (the stages check the rest).
_SECTIONS = ("data", "generalist", "groups", "specialists", "ensemble", "student", "budget")


def _check_cluster(recipe: Recipe, cluster: Cluster | None) -> bool:
    """Whether this is a multi_worker run; recipe errors where flags and recipe disagree."""
    if recipe.train.distribution == "multi_worker":
        if cluster is None:
            raise recipe.error(
                "train.distribution",
                "multi_worker needs the workers: --workers host:port,... --worker-index I "
                "(the same list on every worker), or TF_CONFIG",
            )
        return True
    if cluster is not None and cluster.size > 1:
        raise recipe.error(
            "train.distribution",
            f"{cluster.size} workers are given (--workers or TF_CONFIG), but the distribution is "
            f"{recipe.train.distribution!r}; set train.distribution: multi_worker",
        )
    return False


def _check_split(recipe: Recipe, replicas: int) -> None:
    """Every training batch must split evenly over all the cluster's devices."""
    for section in ("generalist", "specialists", "student", "budget"):
        cfg = getattr(recipe, section, None)
        batch = getattr(cfg, "batch_size", None)
        if batch is not None and batch % replicas:
            raise recipe.error(
                f"{section}.batch_size",
                f"{batch} does not split over the cluster's {replicas} devices; the batch size is "
                f"the global one, so make it a multiple of {replicas}",
            )


class _StageSync:
    """Keeps the workers of a multi_worker run in step, stage by stage: all wait for the
    chief to finish the previous stage, the others refresh their mirror of its run, and all
    start the stage together (and agree on its inputs)."""

    def __init__(self, chief_path: Path, mirror: Path | None) -> None:
        self.chief_path, self.mirror = chief_path, mirror

    def before(self, run: RunDir, stage: str, stage_hash: str) -> None:
        from edgekd.training import cluster as workers

        workers.barrier(f"stage {stage}: the chief finished the stages before it", stage_hash)
        if self.mirror is not None:
            mirror_run(self.chief_path, self.mirror)
            run.manifest = RunDir(self.mirror).manifest
        workers.barrier(f"stage {stage}: the mirrors are refreshed")

    def end(self) -> None:
        from edgekd.training import cluster as workers

        workers.barrier("the end of training")

    @property
    def chief(self) -> bool:
        return self.mirror is None


def _train_stages(
    recipe: Recipe,
    run: RunDir,
    data: PreparedData,
    hashes: dict[str, str],
    wanted: set[str],
    accel: Accelerator,
    verbose: str | int,
    log: Callable[[str], None],
    sync: _StageSync | None = None,
) -> None:
    log(
        f"edgekd: run {run.path} | data {data.source} ({len(data.train)} train / "
        f"{len(data.val)} val, {len(data.class_names)} classes, {_pipeline_text(data)}) | "
        f"{accel.describe()}"
    )
    if sync is None or sync.chief:
        run.begin(recipe.to_dict(), recipe.source, data.summary())
    ctx = StageContext(recipe=recipe, data=data, accel=accel, run=run, verbose=verbose, log=log)

    for stage in STAGES:
        stage_hash = hashes[stage.name]
        if stage.name not in wanted:
            continue
        if sync is not None:
            sync.before(run, stage.name, stage_hash)
            if not sync.chief and not stage.trains:
                log(f"[{stage.name}] left to the chief (nothing to train)")
                continue
        rec = run.stage(stage.name)
        damaged = run.intact(stage.name) if rec.status == "done" else None
        current = rec.status == "done" and rec.hash == stage_hash and damaged is None
        if current and not stage.extends(recipe, rec.metrics):
            log(f"[{stage.name}] up to date, skipped (delete {run.stage_dir(stage.name)} to redo)")
            continue
        if current:
            log(f"[{stage.name}] the recipe asks for more than was run: adding it")
            rec.status = "running"
            run.set_stage(stage.name, rec)
        elif rec.status == "running" and rec.hash == stage_hash:
            log(f"[{stage.name}] resuming")
        else:
            if rec.status == "done" and rec.hash == stage_hash:
                log(f"[{stage.name}] {damaged}: starting afresh")
            elif rec.status != "pending":
                log(f"[{stage.name}] inputs changed since the last run: starting afresh")
            rec, moved = run.reset_stage(stage.name, stage_hash)
            if moved is not None:
                log(f"[{stage.name}] the earlier results were moved to {moved}")
            log(f"[{stage.name}] starting")
        t0 = time.perf_counter()
        try:
            outcome = stage.run(ctx)
        finally:
            rec.wall_s = round((rec.wall_s or 0.0) + time.perf_counter() - t0, 1)
            run.set_stage(stage.name, rec)
        rec.status, rec.finished = "done", now()
        rec.metrics, rec.artifacts = outcome.metrics, outcome.artifacts
        rec.files = {k: file_digest(run.path / rel) for k, rel in outcome.artifacts.items()}
        run.set_stage(stage.name, rec)
        headline = _headline(outcome.metrics)
        log(f"[{stage.name}] done in {rec.wall_s:.0f} s" + (f": {headline}" if headline else ""))
    if sync is not None:
        sync.end()


def _headline(metrics: dict) -> str:
    parts = []
    if "val_accuracy" in metrics:
        parts.append(f"val accuracy {100 * metrics['val_accuracy']:.2f}%")
    if metrics.get("images_per_s"):
        parts.append(f"{metrics['images_per_s']:.0f} img/s")
    return ", ".join(parts)


def _pipeline_text(data: PreparedData) -> str:
    """How batches reach the model: from memory, or streamed from the on-disk store."""
    if data.pipeline == "stream":
        return f"streamed from {data.train.images.path.parent}"
    return "in memory"
