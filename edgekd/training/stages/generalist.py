"""Stage 1: the generalist, trained on all classes.

Reads: the recipe's `data` and `generalist` sections. Writes `generalist/`: `model.keras`,
`history.json`, `val_probs.npy` (its validation probabilities, for the groups stage),
`metrics.json` (accuracy, per-class accuracy, confusion matrix, params, MACs).
"""

from __future__ import annotations

import shutil
import time

import numpy as np

from edgekd import atomic
from edgekd.data.dataset import PreparedData
from edgekd.recipe import Recipe
from edgekd.training.evaluate import Evaluation
from edgekd.training.models import build_model
from edgekd.training.stages.base import (
    Stage,
    StageContext,
    StageOutcome,
    augment_of,
    check_batch_size,
    check_input_size,
)


class GeneralistStage(Stage):
    """Train the generalist on every class and evaluate it on the validation split."""

    name = "generalist"
    trains = True
    sections = ("seed", "data", "generalist", "train")

    def check(self, recipe: Recipe, data: PreparedData) -> None:
        check_batch_size(recipe, "generalist", data)
        check_input_size(recipe, "generalist", data)

    def run(self, ctx: StageContext) -> StageOutcome:
        from edgekd.training.models import model_summary_stats
        from edgekd.training.trainer import predict_probs, train_classifier

        recipe, data = ctx.recipe, ctx.data
        cfg = recipe.generalist
        out = ctx.run.stage_dir(self.name)

        def build():
            return build_model(
                cfg.arch,
                num_classes=len(data.class_names),
                width=cfg.width,
                dropout=cfg.dropout,
                bn_momentum=cfg.bn_momentum,
                weights=cfg.weights,
                input_shape=tuple(data.train.images.shape[1:]),
                name=self.name,
            )

        t0 = time.perf_counter()
        result = train_classifier(
            build,
            cfg,
            data.train,
            data.val,
            out,
            seed=recipe.seed,
            augment=augment_of(ctx),
            accel=ctx.accel,
            tensorboard=recipe.train.tensorboard,
            verbose=ctx.verbose,
            log=ctx.log,
        )
        train_s = time.perf_counter() - t0
        model = result.plain

        probs = predict_probs(model, data.val.images)
        ev = Evaluation.from_probs(probs, data.val.labels, data.class_names)
        stats = model_summary_stats(model)
        epochs = result.history
        metrics = {
            "val_accuracy": ev.accuracy,
            "per_class": ev.per_class,
            "params": stats["params"],
            "macs": stats["macs"],
            "epochs": len(epochs),
            "train_s_this_session": round(train_s, 1),
            "train_s_epochs": round(sum(e.get("train_s", 0.0) for e in epochs), 1),
            "images_per_s": float(np.median([e["images_per_s"] for e in epochs]))
            if epochs
            else None,
        }
        with atomic.atomic_path(out / "model.keras") as tmp:
            model.save(tmp)
        with atomic.atomic_path(out / "val_probs.npy") as tmp:
            np.save(tmp, probs)
        atomic.write_json(out / "history.json", epochs)
        atomic.write_json(out / "metrics.json", {**metrics, "evaluation": ev.to_dict()})
        shutil.rmtree(out / "checkpoint", ignore_errors=True)
        return StageOutcome(
            metrics=metrics,
            artifacts={
                "model": f"{self.name}/model.keras",
                "history": f"{self.name}/history.json",
                "val_probs": f"{self.name}/val_probs.npy",
                "metrics": f"{self.name}/metrics.json",
            },
        )
