"""Stage 4: evaluate the gated ensemble on the validation split.

Reads: the generalist, the groups and the specialists; the recipe's `ensemble` section.
Writes `ensemble/`: `ensemble.json` (classes, groups, gating, fusion: what a runtime needs
besides the model files), `metrics.json` (accuracy overall and per class against the
generalist's, each specialist's activation rate, MACs per image spent) and `val_probs.npy`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edgekd import atomic
from edgekd.training.evaluate import Evaluation
from edgekd.training.stages.base import Stage, StageContext, StageOutcome

if TYPE_CHECKING:
    from edgekd.data.dataset import PreparedData
    from edgekd.recipe import Recipe


class EnsembleStage(Stage):
    """Run the gated ensemble on validation data and record what it costs and gains."""

    name = "ensemble"
    sections = ("ensemble",)
    reads = ("generalist", "groups", "specialists")

    def check(self, recipe: Recipe, data: PreparedData) -> None:
        classes = len(data.class_names)
        if recipe.ensemble.top_n > classes:
            raise recipe.error(
                "ensemble.top_n",
                f"{recipe.ensemble.top_n} is more than the {classes} classes; at most {classes}",
            )

    def run(self, ctx: StageContext) -> StageOutcome:
        from edgekd.training.ensemble.gated import load_gated_ensemble

        data, run = ctx.data, ctx.run
        ensemble = load_gated_ensemble(run.path)
        output = ensemble.predict(data.val.images)
        ev = Evaluation.from_probs(output.probs, data.val.labels, data.class_names)
        general = Evaluation.from_probs(output.general, data.val.labels, data.class_names)
        spec_records = run.stage("specialists").metrics.get("specialists", [])
        spec_macs = [int(r["macs"]) for r in spec_records]
        gen_macs = int(run.stage("generalist").metrics["macs"])
        rates = output.activation_rate.tolist()
        metrics = {
            "val_accuracy": ev.accuracy,
            "generalist_val_accuracy": general.accuracy,
            "per_class": ev.per_class,
            "per_class_delta": {c: ev.per_class[c] - general.per_class[c] for c in ev.per_class},
            "activation_rate": rates,
            "specialists_per_image": float(output.active.sum(1).mean()) if rates else 0.0,
            "macs_per_image": ensemble.macs_per_image(gen_macs, spec_macs, rates),
            "macs_all_specialists": float(gen_macs + sum(spec_macs)),
            "generalist_macs": gen_macs,
            "top_n": ensemble.top_n,
        }
        out = run.stage_dir(self.name)
        atomic.write_json(out / "ensemble.json", ensemble.config(data.class_names))
        with atomic.atomic_path(out / "val_probs.npy") as tmp:
            np.save(tmp, output.probs)
        atomic.write_json(out / "metrics.json", {**metrics, "evaluation": ev.to_dict()})
        groups = run.read_json("groups", "groups", "groups")["groups"]
        for g, rate in zip(groups, rates, strict=True):
            ctx.log(f"[ensemble] specialist ({', '.join(g)}) ran on {100 * rate:.1f}% of images")
        ctx.log(
            f"[ensemble] {100 * ev.accuracy:.2f}% vs generalist {100 * general.accuracy:.2f}%; "
            f"{metrics['macs_per_image'] / 1e6:.1f}M MACs/image (all specialists: "
            f"{metrics['macs_all_specialists'] / 1e6:.1f}M)"
        )
        return StageOutcome(
            metrics=metrics,
            artifacts={
                "config": f"{self.name}/ensemble.json",
                "metrics": f"{self.name}/metrics.json",
                "val_probs": f"{self.name}/val_probs.npy",
            },
        )
