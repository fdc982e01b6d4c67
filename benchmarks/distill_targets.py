"""Which tempered target teaches better: the fused distribution tempered, or members tempered?

For one trained run (generalist, groups, specialists done), trains the run's student
recipe for a short budget once per variant, from the same start, on the same batches, and
prints validation accuracy:

- fused:   q(T) = softmax(log q / T) of the gated ensemble's fused distribution;
- members: each member's logits divided by T, then fused (gating on the untempered
           generalist);
- control: hard labels alone.

    python benchmarks/distill_targets.py runs/cifar10-cpu --recipe cifar10-cpu [--epochs 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import keras

from edgekd.data import Augment
from edgekd.data.dataset import prepare_data
from edgekd.recipe import build_recipe, load_recipe
from edgekd.tables import format_table
from edgekd.training.accelerator import resolve
from edgekd.training.distill import Distiller
from edgekd.training.ensemble.gated import load_gated_ensemble
from edgekd.training.models import build_model
from edgekd.training.run import RunDir
from edgekd.training.trainer import predict_probs, train_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=None, help="default: the recipe's")
    parser.add_argument("--variants", default="fused,members,control")
    parser.add_argument("--recipe", help="take the student section from this recipe instead")
    args = parser.parse_args()

    run = RunDir.open_existing(args.run)
    recipe = build_recipe(run.manifest["recipe"])
    if args.recipe:
        recipe = recipe.model_copy(update={"student": load_recipe(args.recipe).student})
    cfg = recipe.student.model_copy(update={"epochs": args.epochs})
    temperature = args.temperature or recipe.student.temperature
    data = prepare_data(recipe, progress=False)
    a = recipe.data.augment
    augment = Augment(
        crop_padding=a.crop_padding, padding_mode=a.padding_mode, flip=a.flip, cutout=a.cutout
    )
    accel = resolve(recipe.train.precision, recipe.train.jit_compile)
    generalist = keras.models.load_model(run.artifact("generalist", "model"), compile=False)
    same = (cfg.arch, cfg.width) == (recipe.generalist.arch, recipe.generalist.width)
    init = generalist.get_weights() if same and cfg.init != "scratch" else None

    def build() -> keras.Model:
        model = build_model(
            cfg.arch, num_classes=len(data.class_names), width=cfg.width,
            bn_momentum=cfg.bn_momentum, input_shape=tuple(data.train.images.shape[1:]),
            name="student",
        )  # fmt: skip
        if init is not None:
            model.set_weights(init)
        return model

    rows = []
    for variant in args.variants.split(","):
        soft = variant != "control"

        def wrap(student: keras.Model, soft: bool = soft, variant: str = variant) -> Distiller:
            teacher = load_gated_ensemble(run.path).teacher() if soft else None
            return Distiller(
                student, teacher, temperature=temperature,
                soft_weight=recipe.student.soft_weight if soft else 0.0,
                target=variant if soft else "fused", label_smoothing=cfg.label_smoothing,
            )  # fmt: skip

        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            res = train_classifier(
                build, cfg, data.train, data.val, Path(tmp), seed=recipe.seed, augment=augment,
                accel=accel, tensorboard=False, verbose=2, wrap=wrap,
            )  # fmt: skip
            wall = time.perf_counter() - t0
        probs = predict_probs(res.model.student, data.val.images)
        acc = float((probs.argmax(1) == data.val.labels).mean())
        rows.append([variant, f"{100 * acc:.2f}", f"{wall:.0f}"])
        print(f"{variant}: {100 * acc:.2f}% in {wall:.0f} s", flush=True)
    start = "the generalist's weights" if init is not None else "scratch"
    print(
        f"\n{args.epochs} epoch(s) from {start}, T={temperature}, lambda="
        f"{recipe.student.soft_weight}, {len(data.train)} train / {len(data.val)} val images"
    )
    print(format_table(["target", "val top-1 %", "wall s"], rows))
    if init is not None:
        p0 = predict_probs(generalist, data.val.images)
        print(f"start (the generalist): {100 * (p0.argmax(1) == data.val.labels).mean():.2f}%")


if __name__ == "__main__":
    main()
