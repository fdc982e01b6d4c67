"""`edgekd train` as a Python API: run the recipe's stages in order inside one run directory.

Finished stages whose inputs are unchanged are skipped; an interrupted stage resumes from
its last checkpoint; a stage whose inputs changed (hashes chain downstream) starts afresh.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from edgekd.data.dataset import PreparedData, prepare_data
from edgekd.recipe import Recipe
from edgekd.training.run import RunDir, check_run_path, file_digest, now
from edgekd.training.stages import STAGES, StageContext

if TYPE_CHECKING:
    from edgekd.training.accelerator import Accelerator


def default_run_dir(recipe: Recipe) -> Path:
    return Path("runs") / recipe.name


def train(
    recipe: Recipe,
    run_dir: str | Path | None = None,
    *,
    verbose: str | int = "auto",
    log: Callable[[str], None] = print,
) -> RunDir:
    """Run every stage the recipe asks for; returns the run directory."""
    # Everything that can fail on bad input happens before the first write.
    run_path = Path(run_dir) if run_dir is not None else default_run_dir(recipe)
    check_run_path(run_path)
    data = prepare_data(recipe, progress=True)
    hashes: dict[str, str] = {}
    for stage in STAGES:
        hashes[stage.name] = stage.input_hash(recipe, data.fingerprint, hashes)
    run = RunDir(run_path)
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
                    f"finished with this recipe in {run.path}; add it to train.stages",
                )
    from edgekd.training import accelerator

    accel = accelerator.resolve(recipe.train.precision, recipe.train.jit_compile)
    with run.lock():
        _train_stages(recipe, run, data, hashes, wanted, accel, verbose, log)
    return run


def _train_stages(
    recipe: Recipe,
    run: RunDir,
    data: PreparedData,
    hashes: dict[str, str],
    wanted: set[str],
    accel: Accelerator,
    verbose: str | int,
    log: Callable[[str], None],
) -> None:
    log(
        f"edgekd: run {run.path} | data {data.source} ({len(data.train)} train / "
        f"{len(data.val)} val, {len(data.class_names)} classes, {_pipeline_text(data)}) | "
        f"{accel.describe()}"
    )
    run.begin(recipe.to_dict(), recipe.source, data.summary())
    ctx = StageContext(recipe=recipe, data=data, accel=accel, run=run, verbose=verbose, log=log)

    for stage in STAGES:
        stage_hash = hashes[stage.name]
        if stage.name not in wanted:
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
