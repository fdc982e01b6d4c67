"""Stage 6 (opt-in): the budget-matched control, the comparison a user would make first.

"Why not skip the ensemble and train the student's architecture from scratch, on hard
labels, for as long as the whole method took?" This stage trains exactly that, once with the
teacher's cost counted (the budget is the teacher's training and the distilled student's)
and once with it amortised (the budget is the distilled student's own training: a user who
distils several students from one ensemble pays for the teacher once).

The budget is measured, not configured: wall time is the recorded seconds of the upstream
stages the student's teacher is made of (all four for an ensemble teacher, the generalist
alone for `student.teacher: generalist`; their evaluation included, which favours the
control) plus the distilled student's epochs at its median images/s (and, counted, the
labelling of stored teacher targets), converted to epochs at the hard-label control's median
images/s;
`match: images` counts the training images every model of the method saw instead.

Reads: the manifest's stage records of generalist … student. Writes `budget/<variant>/`:
`model.keras`, `history.json`, `result.json`; `budget/metrics.json`.
"""

from __future__ import annotations

import json
import shutil
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekd import atomic
from edgekd.recipe import ModelTrainConfig, Recipe
from edgekd.training.evaluate import Evaluation
from edgekd.training.models import build_model
from edgekd.training.run import RunDir
from edgekd.training.stages.base import (
    Stage,
    StageContext,
    StageOutcome,
    augment_of,
    check_batch_size,
)

if TYPE_CHECKING:
    import keras

UPSTREAM = ("generalist", "groups", "specialists", "ensemble")


def teacher_stages(teacher: str) -> tuple[str, ...]:
    """The upstream stages a student's teacher is made of, and so what its cost counts: a
    student taught by the generalist alone needs no groups, specialists or ensemble."""
    return ("generalist",) if teacher == "generalist" else UPSTREAM


def budget_seconds(run: RunDir, teacher_cost: str, images_per_epoch: int) -> float:
    """The method's wall time in seconds: the teacher's stages (counted) + the distilled student.

    The student's part is its epochs at its median images/s, so one epoch slowed by another
    process on the machine does not inflate the budget; upstream stages count as recorded.
    """
    student = run.stage("student").metrics
    own = student["epochs"] * images_per_epoch / float(student["images_per_s"])
    own += float(student.get("search_train_s", 0.0))
    if teacher_cost == "amortised":
        return own
    # Stored teacher targets are the teacher's work, reused by every student of the same
    # batches: counted with the teacher, amortised with it.
    own += float(student.get("teacher_targets_s", 0.0))
    stages = teacher_stages(student.get("teacher", "ensemble"))
    return own + sum(float(run.stage(s).wall_s or 0.0) for s in stages)


def budget_images(run: RunDir, recipe: Recipe, train_size: int, teacher_cost: str) -> int:
    """Training images the method's models saw: per epoch, each takes its batches' worth."""

    def seen(epochs: int, batch: int) -> int:
        return epochs * (train_size // batch) * batch

    s = recipe.student
    searched = len(run.stage("student").metrics.get("temperature_search", []))
    student = seen(s.epochs, s.batch_size) + searched * seen(s.search_epochs, s.batch_size)
    if teacher_cost == "amortised":
        return student
    g, sp = recipe.generalist, recipe.specialists
    teacher = student + seen(g.epochs, g.batch_size)
    if "specialists" not in teacher_stages(s.teacher):
        return teacher
    n_spec = len(run.stage("specialists").metrics.get("specialists", []))
    return teacher + n_spec * seen(sp.epochs, sp.batch_size)


def budget_epochs(budget: float, per_epoch: float) -> int:
    """Whole epochs that fit the budget (at least one); `per_epoch` in the budget's unit."""
    if per_epoch <= 0:
        raise ValueError(f"per-epoch cost must be > 0, got {per_epoch}")
    return max(1, int(round(budget / per_epoch)))


class BudgetStage(Stage):
    """Train the student's architecture from scratch on hard labels for the method's budget."""

    name = "budget"
    trains = True
    sections = ("seed", "data", "student", "budget", "train")
    reads = ("generalist", "groups", "specialists", "ensemble", "student")

    def needs(self, recipe: Recipe) -> tuple[str, ...]:
        """The stages the budget counts: the student's teacher's and the student's own."""
        return (*teacher_stages(recipe.student.teacher), "student")

    def check(self, recipe: Recipe, data: Any) -> None:
        check_batch_size(recipe, "budget", data)
        if recipe.budget.match == "wall_time" and not recipe.student.control:
            raise recipe.error(
                "budget.match",
                "wall_time converts seconds to epochs at the hard-label control's measured "
                "images/s; set student.control: true, or budget.match: images",
            )

    def run(self, ctx: StageContext) -> StageOutcome:
        from edgekd.training.trainer import predict_probs, train_classifier

        recipe, data, run = ctx.recipe, ctx.data, ctx.run
        cfg, student = recipe.budget, recipe.student
        root = run.stage_dir(self.name)
        n = len(data.train)
        per_epoch_images = (n // cfg.batch_size) * cfg.batch_size
        results: dict[str, Any] = {}
        artifacts: dict[str, str] = {}
        for variant in cfg.teacher_cost:
            out = root / variant
            record = out / "result.json"
            if record.is_file():
                ctx.log(f"[budget] {variant} already trained")
                results[variant] = json.loads(record.read_text())
                artifacts[f"{variant}_model"] = f"{self.name}/{variant}/model.keras"
                continue
            if cfg.match == "wall_time":
                student_epoch = (n // student.batch_size) * student.batch_size
                budget = budget_seconds(run, variant, student_epoch)
                ips = float(run.stage("student").metrics["control_images_per_s"])
                epochs = budget_epochs(budget, per_epoch_images / ips)
                what = f"{budget:.0f} s at {ips:.0f} images/s"
            else:
                budget = float(budget_images(run, recipe, n, variant))
                epochs = budget_epochs(budget, per_epoch_images)
                what = f"{budget:,.0f} training images"
            ctx.log(
                f"[budget] {variant}: {student.arch} w{student.width} from scratch on hard "
                f"labels, {epochs} epochs ({what})"
            )
            model_cfg = self._model_config(recipe, epochs)

            def build(variant: str = variant) -> keras.Model:
                return build_model(
                    student.arch, num_classes=len(data.class_names), width=student.width,
                    dropout=student.dropout, bn_momentum=student.bn_momentum,
                    input_shape=tuple(data.train.images.shape[1:]), name=f"budget_{variant}",
                    weights=student.weights,  # the student's start, on hard labels
                )  # fmt: skip

            t0 = time.perf_counter()
            res = train_classifier(
                build, model_cfg, data.train, data.val, out, seed=recipe.seed,
                augment=augment_of(ctx), accel=ctx.accel,
                tensorboard=recipe.train.tensorboard, verbose=ctx.verbose, log=ctx.log,
            )  # fmt: skip
            probs = predict_probs(res.plain, data.val.images)
            ev = Evaluation.from_probs(probs, data.val.labels, data.class_names)
            history = res.history
            row = {
                "teacher_cost": variant,
                "match": cfg.match,
                "budget": budget,
                "epochs": epochs,
                "val_accuracy": ev.accuracy,
                "per_class": ev.per_class,
                "train_s_epochs": round(sum(e.get("train_s", 0.0) for e in history), 1),
                "train_s_this_session": round(time.perf_counter() - t0, 1),
                "images_per_s": float(np.median([e["images_per_s"] for e in history]))
                if history else None,
            }  # fmt: skip
            with atomic.atomic_path(out / "model.keras") as tmp:
                res.plain.save(tmp)
            atomic.write_json(out / "history.json", history)
            atomic.write_json(record, row)  # written last: marks it finished
            shutil.rmtree(out / "checkpoint", ignore_errors=True)
            ctx.log(f"[budget] {variant}: {100 * ev.accuracy:.2f}% on val in {epochs} epochs")
            results[variant] = row
            artifacts[f"{variant}_model"] = f"{self.name}/{variant}/model.keras"
        metrics = {"match": cfg.match, "variants": results}
        first = results[cfg.teacher_cost[0]]
        metrics["val_accuracy"] = first["val_accuracy"]
        atomic.write_json(root / "metrics.json", metrics)
        artifacts["metrics"] = f"{self.name}/metrics.json"
        return StageOutcome(metrics=metrics, artifacts=artifacts)

    @staticmethod
    def _model_config(recipe: Recipe, epochs: int) -> ModelTrainConfig:
        cfg, s = recipe.budget, recipe.student
        try:
            return ModelTrainConfig(
                arch=s.arch, width=s.width, dropout=s.dropout, bn_momentum=s.bn_momentum,
                epochs=epochs, batch_size=cfg.batch_size, label_smoothing=cfg.label_smoothing,
                optimizer=cfg.optimizer, schedule=cfg.schedule,
            )  # fmt: skip
        except ValueError as exc:
            raise recipe.error(
                "budget.schedule",
                f"the budget allows {epochs} epoch(s), which this schedule cannot use: {exc}",
            ) from None
