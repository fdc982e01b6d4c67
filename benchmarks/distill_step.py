"""What distillation costs per step: the Distiller's step against student step + teacher forward.

On one random batch (uint8-valued float32 pixels, integer labels) times three things:

- student step: a plain student train step, `Distiller(student, None, soft_weight=0)`;
- teacher forward: the teacher alone (the run's gated ensemble by default) in a
  `tf.function`, its result forced with `.numpy()`;
- distillation step: `Distiller(student, teacher)`, a second student instance of the same
  architecture, whose train step runs the teacher inside it.

Each is warmed up first (tracing excluded), then rounds interleave the three (a, b, c, a, b,
c, ...) so that a slow spell on a shared CPU hits them all alike; a round times `--steps`
consecutive calls of each. The table gives median ms/step over rounds and images/s, and
`overhead = distill / (student + teacher) - 1`, which should stay within 15%: distilling
should cost no more than training the student and running the teacher separately.

    python benchmarks/distill_step.py runs/cifar10-cpu [--batch 128] [--steps 20] [--rounds 5]
    python benchmarks/distill_step.py --synthetic [--classes 4] [--steps 5] [--rounds 3]

`--synthetic` needs no run: a random resnet10 (width 4) generalist and two specialists with
a dustbin over `--classes` classes, and a student of the same shape. With a run, the student
is the recipe's (or, where the recipe has no student section, the generalist's arch, width
and batch size) and the teacher the recipe's `student.teacher` unless `--teacher` says.
`--json` adds the numbers as one JSON object (`--json PATH` writes them to a file).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from edgekd.recipe import build_recipe
from edgekd.tables import format_table
from edgekd.training.distill import Distiller, ModelTeacher
from edgekd.training.ensemble.gated import GatedEnsemble, load_gated_ensemble
from edgekd.training.models import build_model
from edgekd.training.run import RunDir
from edgekd.training.schedules import Ramp
from edgekd.training.stages.student import ramp_of

LIMIT = 0.15  # distillation step <= (1 + LIMIT) x (student step + teacher forward)
ITEMS = ("student train step", "teacher forward", "distillation step")


@dataclass
class Setup:
    """What to time: how to build a student, the teacher, and the distillation settings."""

    source: str
    build_student: Callable[[], keras.Model]
    student_desc: str
    teacher: Callable[..., Any]
    teacher_desc: str
    num_classes: int
    input_shape: tuple[int, int, int]
    batch: int
    temperature: Ramp
    soft_weight: Ramp
    target: str


def synthetic_setup(classes: int, batch: int | None) -> Setup:
    """A random resnet10 (width 4) gated ensemble with two dustbin specialists, no run needed."""
    if classes < 2:
        raise SystemExit("--classes must be at least 2")
    shape = (32, 32, 3)
    half = classes // 2
    groups = [list(range(half)), list(range(half, classes))]
    generalist = build_model(
        "resnet10", num_classes=classes, width=4, input_shape=shape, name="generalist"
    )
    specialists = [
        build_model(
            "resnet10", num_classes=len(g) + 1, width=4, input_shape=shape, name=f"specialist_{s}"
        )
        for s, g in enumerate(groups)
    ]
    ensemble = GatedEnsemble(
        generalist, specialists, groups, classes, top_n=1, dustbin=True, batch_size=256, flip=False
    )

    def student() -> keras.Model:
        return build_model("resnet10", num_classes=classes, width=4, input_shape=shape)

    return Setup(
        source=f"synthetic ({classes} classes)",
        build_student=student,
        student_desc="resnet10 w4",
        teacher=ensemble.teacher(),
        teacher_desc=f"gated ensemble: resnet10 w4 + {len(groups)} specialists, top-1",
        num_classes=classes,
        input_shape=shape,
        batch=batch or 32,
        temperature=Ramp(4.0),
        soft_weight=Ramp(0.8),
        target="fused",
    )


def run_setup(path: str, batch: int | None, teacher_kind: str | None) -> Setup:
    """The student and teacher of a trained run (generalist, groups and specialists done)."""
    run = RunDir.open_existing(path)
    raw = run.manifest["recipe"]
    recipe = build_recipe(raw)
    classes = len(run.manifest["data"]["classes"])
    if "student" in raw:
        cfg = recipe.student
        arch, width, bs = cfg.arch, cfg.width, cfg.batch_size
        extra = {"dropout": cfg.dropout, "bn_momentum": cfg.bn_momentum}
        temperature, soft_weight = ramp_of(cfg.temperature, 1000), ramp_of(cfg.soft_weight, 1000)
        target, kind = cfg.target, teacher_kind or cfg.teacher
        where = "student"
    else:  # no student section: a student shaped like the generalist, default distillation
        gen = recipe.generalist
        arch, width, bs = gen.arch, gen.width, gen.batch_size
        extra = {"bn_momentum": gen.bn_momentum}
        temperature, soft_weight, target = Ramp(4.0), Ramp(0.8), "fused"
        kind = teacher_kind or "ensemble"
        where = "generalist's"
    if soft_weight.constant and soft_weight.start == 0.0:
        raise SystemExit("the recipe's student.soft_weight is 0: there is no teacher to time")
    if kind == "generalist":
        model = keras.models.load_model(run.artifact("generalist", "model"), compile=False)
        teacher: Callable[..., Any] = ModelTeacher(model)
        shape = tuple(model.input_shape[1:])
        teacher_desc = "generalist"
    else:
        overrides: dict[str, Any] = {}
        if kind == "full_ensemble":
            overrides = {"top_n": classes, "confidence": None}
        ensemble = load_gated_ensemble(run.path, **overrides)
        teacher = ensemble.teacher()
        shape = tuple(ensemble.generalist.input_shape[1:])
        teacher_desc = f"{kind}: generalist + {len(ensemble.specialists)} specialists"
        teacher_desc += f", top-{ensemble.top_n}"

    def student() -> keras.Model:
        return build_model(
            arch, num_classes=classes, width=width, input_shape=shape, name="student", **extra
        )

    return Setup(
        source=str(path),
        build_student=student,
        student_desc=f"{arch} w{width} ({where} arch)",
        teacher=teacher,
        teacher_desc=teacher_desc,
        num_classes=classes,
        input_shape=shape,  # type: ignore[arg-type]
        batch=batch or bs,
        temperature=temperature,
        soft_weight=soft_weight,
        target=target,
    )


def compiled(distiller: Distiller) -> Distiller:
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=False,
    )
    return distiller


def measure(setup: Setup, steps: int, rounds: int, warmup: int, seed: int = 0) -> dict:
    """ms/step per round for each item, timed on one batch, rounds interleaved."""
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (setup.batch, *setup.input_shape)).astype(np.float32)
    y = rng.integers(0, setup.num_classes, (setup.batch,)).astype(np.int32)
    x_tensor = tf.constant(x)

    plain = compiled(Distiller(setup.build_student(), None, soft_weight=0.0))
    distiller = compiled(
        Distiller(
            setup.build_student(), setup.teacher, temperature=setup.temperature,
            soft_weight=setup.soft_weight, target=setup.target,
        )
    )  # fmt: skip
    # The teacher as the Distiller calls it: "members" tempers members before fusing.
    t_value = tf.constant(setup.temperature.start, tf.float32)
    if setup.target == "members":
        forward = tf.function(lambda v: setup.teacher(v, temperature=t_value), jit_compile=False)
    else:
        forward = tf.function(lambda v: setup.teacher(v), jit_compile=False)

    calls: dict[str, Callable[[], Any]] = {
        ITEMS[0]: lambda: plain.train_on_batch(x, y),
        ITEMS[1]: lambda: forward(x_tensor).numpy(),
        ITEMS[2]: lambda: distiller.train_on_batch(x, y),
    }
    for call in calls.values():  # traces here, not in the timed rounds
        for _ in range(warmup):
            call()
    samples: dict[str, list[float]] = {item: [] for item in ITEMS}
    for _ in range(rounds):
        for item, call in calls.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                call()
            samples[item].append((time.perf_counter() - t0) / steps * 1e3)
    return samples


def summarise(setup: Setup, samples: dict[str, list[float]], steps: int, rounds: int) -> dict:
    med = {item: statistics.median(v) for item, v in samples.items()}
    student, teacher, distill = (med[i] for i in ITEMS)
    separate = student + teacher
    per_round = [d / (s + t) - 1.0 for s, t, d in zip(*(samples[i] for i in ITEMS), strict=True)]
    overhead = distill / separate - 1.0
    return {
        "source": setup.source,
        "student": setup.student_desc,
        "teacher": setup.teacher_desc,
        "target": setup.target,
        "batch": setup.batch,
        "steps": steps,
        "rounds": rounds,
        "ms_per_step": {
            "student_step": student,
            "teacher_forward": teacher,
            "student_plus_teacher": separate,
            "distill_step": distill,
        },
        "samples_ms": {item: samples[item] for item in ITEMS},
        "overhead": overhead,
        "overhead_per_round_median": statistics.median(per_round),
        "limit": LIMIT,
        "pass": overhead <= LIMIT,
    }


def report(result: dict) -> str:
    ms, batch = result["ms_per_step"], result["batch"]
    named = [
        ("student train step", ms["student_step"]),
        ("teacher forward", ms["teacher_forward"]),
        ("student + teacher", ms["student_plus_teacher"]),
        ("distillation step", ms["distill_step"]),
    ]
    rows = [[label, f"{v:.2f}", f"{batch / v * 1e3:.0f}"] for label, v in named]
    table = format_table(["item", "median ms/step", "img/s"], rows)
    verdict = "PASS" if result["pass"] else "FAIL"
    return "\n".join([
        f"{result['source']}: batch {batch}, student {result['student']}, "
        f"teacher {result['teacher']} (target {result['target']}), "
        f"{result['rounds']} interleaved rounds of {result['steps']} steps",
        table,
        f"overhead = distill / (student + teacher) - 1 = {100 * result['overhead']:+.1f}% "
        f"(median of per-round ratios {100 * result['overhead_per_round_median']:+.1f}%): "
        f"{verdict} (limit {100 * result['limit']:.0f}%)",
    ])  # fmt: skip


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", help="a trained run directory")
    parser.add_argument("--synthetic", action="store_true", help="tiny random models, no run")
    parser.add_argument("--classes", type=int, default=4, help="--synthetic: number of classes")
    parser.add_argument("--batch", type=int, help="default: the recipe's (synthetic: 32)")
    parser.add_argument("--steps", type=int, default=20, help="timed calls per item per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per item first")
    parser.add_argument(
        "--teacher", choices=("ensemble", "full_ensemble", "generalist"),
        help="with a run: default the recipe's student.teacher (or ensemble)",
    )  # fmt: skip
    parser.add_argument(
        "--json", nargs="?", const="-", metavar="PATH",
        help="also give the numbers as JSON, on stdout or in PATH",
    )  # fmt: skip
    parser.add_argument("--check", action="store_true", help="exit 1 when the overhead fails")
    args = parser.parse_args(argv)
    if args.synthetic == bool(args.run):
        parser.error("give a run directory or --synthetic (not both)")
    if min(args.steps, args.rounds) < 1 or args.warmup < 0:
        parser.error("--steps and --rounds must be at least 1, --warmup at least 0")

    if args.synthetic:
        setup = synthetic_setup(args.classes, args.batch)
    else:
        setup = run_setup(args.run, args.batch, args.teacher)
    samples = measure(setup, args.steps, args.rounds, args.warmup)
    result = summarise(setup, samples, args.steps, args.rounds)
    print(report(result))
    if args.json == "-":
        print(json.dumps(result))
    elif args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.check and not result["pass"]:
        sys.exit(1)
    return result


if __name__ == "__main__":
    main()
