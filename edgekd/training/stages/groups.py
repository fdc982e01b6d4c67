"""Stage 2: specialist class groups, from the generalist's validation confusion.

Reads: `generalist/val_probs.npy` and the validation labels; the recipe's `groups` section.
Writes `groups/groups.json`: the groups (names and indices), the method, the affinity
matrix they were cut from and the share of the generalist's confusion they capture.
"""

from __future__ import annotations

import re

import numpy as np

from edgekd import atomic
from edgekd.data.dataset import PreparedData
from edgekd.maths.grouping import (
    captured_mass,
    confusion_affinity,
    covariance_affinity,
    find_groups,
    validate_groups,
)
from edgekd.recipe import Recipe
from edgekd.training.evaluate import confusion_matrix
from edgekd.training.stages.base import Stage, StageContext, StageOutcome


def explicit_groups(recipe: Recipe, class_names: list[str]) -> list[list[int]]:
    """The recipe's explicit groups as indices; errors point at `groups.explicit[i][j]`."""
    try:
        return validate_groups([list(g) for g in recipe.groups.explicit or ()], class_names)
    except ValueError as exc:
        match = re.match(r"groups((?:\[\d+\])*): (.*)", str(exc), re.S)
        if match:
            raise recipe.error(f"groups.explicit{match.group(1)}", match.group(2)) from None
        raise recipe.error("groups.explicit", str(exc)) from None


class GroupsStage(Stage):
    """Cluster the classes the generalist confuses into specialist groups."""

    name = "groups"
    sections = ("groups",)
    reads = ("generalist",)

    def check(self, recipe: Recipe, data: PreparedData) -> None:
        if recipe.groups.method == "explicit":
            explicit_groups(recipe, data.class_names)
        n, k = recipe.groups.n_groups, len(data.class_names)
        if isinstance(n, int) and 2 * n > k:
            raise recipe.error(
                "groups.n_groups",
                f"{n} groups of at least 2 classes need {2 * n} classes; the data has {k}",
            )
        if len(data.val) == 0 and recipe.groups.method != "explicit":
            raise recipe.error(
                "data.val_fraction", "automatic groups need validation images; raise it above 0"
            )

    def run(self, ctx: StageContext) -> StageOutcome:
        recipe, data, cfg = ctx.recipe, ctx.data, ctx.recipe.groups
        names = data.class_names
        probs = np.load(ctx.run.artifact("generalist", "val_probs"))
        confusion = confusion_matrix(data.val.labels, probs.argmax(1), len(names))
        if cfg.method == "explicit":
            affinity = confusion_affinity(confusion)
            groups = explicit_groups(recipe, names)
        else:
            affinity = (
                confusion_affinity(confusion)
                if cfg.method == "confusion"
                else covariance_affinity(probs)
            )
            try:
                groups = find_groups(
                    affinity, cfg.n_groups, overlap=cfg.overlap, max_group_size=cfg.max_group_size
                )
            except ValueError as exc:
                raise recipe.error("groups", str(exc)) from None
        captured = captured_mass(confusion, groups) if groups else 0.0
        for i, group in enumerate(groups):
            ctx.log(f"[groups] specialist {i}: {', '.join(names[k] for k in group)}")
        ctx.log(
            f"[groups] {len(groups)} group(s) by {cfg.method}; they capture "
            f"{100 * captured:.1f}% of the generalist's validation confusion"
        )
        out = ctx.run.stage_dir(self.name)
        atomic.write_json(
            out / "groups.json",
            {
                "method": cfg.method,
                "groups": [[names[k] for k in g] for g in groups],
                "indices": groups,
                "captured_confusion": captured,
                "affinity": affinity.tolist(),
                "confusion": confusion.tolist(),
                "class_names": names,
            },
        )
        return StageOutcome(
            metrics={
                "groups": [[names[k] for k in g] for g in groups],
                "captured_confusion": captured,
            },
            artifacts={"groups": f"{self.name}/groups.json"},
        )
