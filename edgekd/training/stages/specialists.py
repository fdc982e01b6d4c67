"""Stage 3: one specialist per group, trained on data enriched with the group's classes.

Each specialist predicts its group's classes plus a "dustbin" for every other class (or,
with `dustbin: false`, its classes only, trained on them alone). Batches hold a fixed share
`group_share` of group images; afterwards the dustbin logit is shifted by the log of the
oversampling factor (Hinton et al.) so probabilities match the real class mix. A specialist
starts from the generalist's weights (all but the head) when architectures match.

Reads: `groups/groups.json`, `generalist/model.keras`. Writes `specialists/specialist_<m>/`:
`model.keras` (with the correction inside), `history.json`, `metrics.json`.
"""

from __future__ import annotations

import json
import shutil
from typing import TYPE_CHECKING

import numpy as np

from edgekd import atomic
from edgekd.data import ImageSet
from edgekd.data.store import take_rows
from edgekd.maths.specialist import dustbin_correction, specialist_labels, specialist_metrics
from edgekd.training.models import build_model, inherits
from edgekd.training.stages.base import (
    Stage,
    StageContext,
    StageOutcome,
    augment_of,
    check_input_size,
)

if TYPE_CHECKING:
    import keras

    from edgekd.data.dataset import PreparedData
    from edgekd.recipe import Recipe


class SpecialistsStage(Stage):
    """Train one dustbin specialist per group."""

    name = "specialists"
    trains = True
    sections = ("seed", "data", "generalist", "specialists", "train")
    reads = ("groups",)

    def check(self, recipe: Recipe, data: PreparedData) -> None:
        check_input_size(recipe, "specialists", data)

    def run(self, ctx: StageContext) -> StageOutcome:
        recipe, data, cfg = ctx.recipe, ctx.data, ctx.recipe.specialists
        info = ctx.run.read_json("groups", "groups")
        groups: list[list[int]] = info["indices"]
        root = ctx.run.stage_dir(self.name)
        gen_cfg = recipe.generalist
        from_generalist = cfg.init == "generalist" or (
            cfg.init == "auto" and inherits(cfg.arch, cfg.width, gen_cfg.arch, gen_cfg.width)
        )
        generalist = None
        if from_generalist:
            generalist = ctx.run.load_model("generalist", "model")
        records, artifacts = [], {}
        for m, group in enumerate(groups):
            out = root / f"specialist_{m}"
            names = [data.class_names[k] for k in group]
            if (out / "metrics.json").is_file():
                ctx.log(f"[specialists] {m} ({', '.join(names)}) already trained")
                records.append(json.loads((out / "metrics.json").read_text()))
            else:
                ctx.log(f"[specialists] training {m}: {', '.join(names)}")
                records.append(self._train_one(ctx, m, group, out, generalist))
            artifacts[f"model_{m}"] = f"{self.name}/specialist_{m}/model.keras"
        return StageOutcome(metrics={"specialists": records}, artifacts=artifacts)

    def _train_one(self, ctx, m, group, out, generalist) -> dict:
        import keras

        from edgekd.data import EnrichedBatches, ImageBatches
        from edgekd.training.models import copy_weights, model_summary_stats
        from edgekd.training.models.layers import LogitAdjustment
        from edgekd.training.trainer import predict_probs, train_classifier

        recipe, data, cfg = ctx.recipe, ctx.data, ctx.recipe.specialists
        k = len(data.class_names)
        labels = specialist_labels(data.train.labels, group, k)
        in_group = np.isin(data.train.labels, group)
        val = data.val
        if cfg.dustbin:
            batches = EnrichedBatches(
                data.train.images, labels, in_group=in_group, share=cfg.group_share,
                batch_size=cfg.batch_size, augment=augment_of(ctx), seed=recipe.seed + m,
                drop_remainder=True,
            )  # fmt: skip
            val_set = ImageSet(val.images, specialist_labels(val.labels, group, k), [])
        else:
            keep = np.flatnonzero(in_group)
            batches = ImageBatches(
                take_rows(data.train.images, keep), labels[keep], batch_size=cfg.batch_size,
                shuffle=True, augment=augment_of(ctx), seed=recipe.seed + m, drop_remainder=True,
            )  # fmt: skip
            vkeep = np.flatnonzero(np.isin(val.labels, group))
            val_set = ImageSet(
                take_rows(val.images, vkeep), specialist_labels(val.labels[vkeep], group, k), []
            )
        outputs = len(group) + int(cfg.dustbin)

        def build() -> keras.Model:
            model = build_model(
                cfg.arch, num_classes=outputs, width=cfg.width, dropout=cfg.dropout,
                bn_momentum=cfg.bn_momentum, input_shape=tuple(data.train.images.shape[1:]),
                name=f"specialist_{m}", weights=cfg.weights,
            )  # fmt: skip
            if generalist is not None:
                copy_weights(generalist, model, skip={"head"})
            return model

        result = train_classifier(
            build, cfg, batches, val_set, out, seed=recipe.seed + m, augment=None,
            accel=ctx.accel, tensorboard=recipe.train.tensorboard,
            verbose=ctx.verbose, log=ctx.log,
        )  # fmt: skip
        bias = np.zeros(outputs)
        if cfg.dustbin and not in_group.all():  # a group of every class has an empty dustbin
            share = batches.per_batch_in / batches.batch_size
            bias[-1] = dustbin_correction(float(in_group.mean()), share)
        trained = result.plain
        model = keras.Model(
            trained.inputs, LogitAdjustment(bias, name="prior_correction")(trained.outputs[0]),
            name=trained.name,
        )  # fmt: skip
        probs = predict_probs(model, val.images)
        stats = model_summary_stats(model)
        metrics = {
            "index": m,
            "classes": [data.class_names[c] for c in group],
            "indices": list(group),
            "dustbin": cfg.dustbin,
            "dustbin_logit_correction": float(bias[-1]) if cfg.dustbin else 0.0,
            "initialised_from": "generalist" if generalist is not None else "scratch",
            **specialist_metrics(probs, val.labels, group, k, cfg.dustbin),
            "params": stats["params"],
            "macs": stats["macs"],
            "epochs": len(result.history),
        }
        with atomic.atomic_path(out / "model.keras") as tmp:
            model.save(tmp)
        atomic.write_json(out / "history.json", result.history)
        atomic.write_json(out / "metrics.json", metrics)  # written last: marks it finished
        shutil.rmtree(out / "checkpoint", ignore_errors=True)
        ctx.log(
            f"[specialists] {m}: own classes {100 * metrics['own_class_accuracy']:.2f}%, "
            f"among its classes {100 * metrics['group_accuracy']:.2f}%, "
            f"dustbin {100 * metrics['dustbin_accuracy']:.2f}%"
        )
        return metrics
