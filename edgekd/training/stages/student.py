"""Stage 5: the student, distilled from the teacher, and its hard-label twin (the control).

Both are the same architecture, start from the same weights, see the same batches in the
same order under the same schedule; only the loss differs. The control answers the
question the seed leaves open: how much of the student's accuracy comes from the teacher
rather than from training at all.

Reads: the generalist, groups and specialists (the teacher; the generalist alone for
`teacher: generalist`), the recipe's `ensemble` and `student` sections. Writes `student/`:
`model.keras` (the distilled student alone), `control/model.keras`, `search/T=<t>/` (when
searching T), `history.json`, `metrics.json`;
with `targets: stored`, the teacher's targets under the run's `targets/` (kept across
students, since another student with the same batches reuses them).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekd import atomic
from edgekd.errors import TrainingError
from edgekd.recipe import RampConfig, Recipe
from edgekd.training.evaluate import Evaluation
from edgekd.training.models import build_model, inherits
from edgekd.training.stages.base import (
    Stage,
    StageContext,
    StageOutcome,
    augment_of,
    check_batch_size,
    check_input_size,
)

if TYPE_CHECKING:
    import keras

    from edgekd.training.distill import Distiller
    from edgekd.training.schedules import Ramp
    from edgekd.training.teacher_targets import TargetBatches
    from edgekd.training.trainer import TrainResult

TARGETS = "targets"  # the run's folder of stored teacher targets, shared by every student


def ramp_of(value: float | RampConfig, total_steps: int) -> Ramp:
    """A recipe value (number or {start, end, shape}) as a Ramp over `total_steps`."""
    from edgekd.training.schedules import Ramp

    if isinstance(value, RampConfig):
        return Ramp(value.start, value.end, total_steps, value.shape)
    return Ramp(float(value))


class StudentStage(Stage):
    """Distil the teacher into the student; train the control; evaluate all of them."""

    name = "student"
    trains = True
    sections = ("seed", "data", "ensemble", "student", "train")
    reads = ("generalist", "groups", "specialists")

    def needs(self, recipe: Recipe) -> tuple[str, ...]:
        """A student taught by the generalist alone needs no groups or specialists."""
        return ("generalist",) if recipe.student.teacher == "generalist" else self.reads

    def check(self, recipe: Recipe, data: Any) -> None:
        cfg = recipe.student
        check_batch_size(recipe, "student", data)
        check_input_size(recipe, "student", data)
        if cfg.temperature_search and isinstance(cfg.temperature, RampConfig):
            raise recipe.error(
                "student.temperature_search",
                "searches a constant temperature; student.temperature is a ramp",
            )

    def extends(self, recipe: Recipe, metrics: dict[str, Any]) -> bool:
        return recipe.student.seeds > (len(metrics.get("seeds", ())) or 1)

    def run(self, ctx: StageContext) -> StageOutcome:
        from edgekd.training.distill import Distiller, StoredTeacher
        from edgekd.training.models import copy_weights, model_summary_stats
        from edgekd.training.trainer import predict_probs, train_classifier

        recipe, data, run = ctx.recipe, ctx.data, ctx.run
        cfg = recipe.student
        out = run.stage_dir(self.name)
        gen_cfg = recipe.generalist
        from_generalist = cfg.init == "generalist" or (
            cfg.init == "auto" and inherits(cfg.arch, cfg.width, gen_cfg.arch, gen_cfg.width)
        )
        generalist = None
        if from_generalist:
            generalist = run.load_model("generalist", "model")
        teacher = self._teacher(ctx)
        teacher_probs = self._teacher_val_probs(ctx)
        teacher_ev = Evaluation.from_probs(teacher_probs, data.val.labels, data.class_names)
        ctx.log(f"[student] teacher ({cfg.teacher}): {100 * teacher_ev.accuracy:.2f}% on val")

        def build() -> keras.Model:
            model = build_model(
                cfg.arch, num_classes=len(data.class_names), width=cfg.width,
                dropout=cfg.dropout, bn_momentum=cfg.bn_momentum,
                input_shape=tuple(data.train.images.shape[1:]), name="student",
                weights=cfg.weights,
            )  # fmt: skip
            if generalist is not None:
                copy_weights(generalist, model)
            return model

        stored = cfg.targets == "stored"
        labelled: dict[int, float] = {}  # seed: seconds the stored targets took to label

        def fit(workdir: Path, epochs: int, temperature: Any, soft: bool, seed: int) -> TrainResult:
            run_cfg = cfg.model_copy(update={"epochs": epochs})
            steps = (len(data.train) // cfg.batch_size) * epochs
            train, val = data.train, data.val
            if soft and stored:
                train, val, labelled[seed] = self._stored_batches(
                    ctx, teacher, teacher_probs, seed, epochs
                )

            def wrap(student: keras.Model) -> Distiller:
                return Distiller(
                    student, (StoredTeacher() if stored else teacher()) if soft else None,
                    temperature=ramp_of(temperature, steps),
                    soft_weight=ramp_of(cfg.soft_weight, steps) if soft else 0.0,
                    target=cfg.target, label_smoothing=cfg.label_smoothing,
                )  # fmt: skip

            return train_classifier(
                build, run_cfg, train, val, workdir, seed=seed,
                augment=augment_of(ctx), accel=ctx.accel,
                tensorboard=recipe.train.tensorboard, verbose=ctx.verbose, log=ctx.log,
                wrap=wrap,
            )  # fmt: skip

        metrics: dict[str, Any] = {
            "teacher": cfg.teacher,
            "teacher_val_accuracy": teacher_ev.accuracy,
            "initialised_from": "generalist" if from_generalist else "scratch",
            "target": cfg.target,
            "targets": cfg.targets,
        }
        temperature: Any = cfg.temperature
        if cfg.temperature_search:
            search = []
            for t in cfg.temperature_search:
                workdir = out / "search" / f"T={t:g}"
                done = workdir / "result.json"
                if done.is_file():
                    search.append(json.loads(done.read_text()))
                    continue
                ctx.log(f"[student] temperature search: T={t:g}, {cfg.search_epochs} epoch(s)")
                res = fit(workdir, cfg.search_epochs, t, soft=True, seed=recipe.seed)
                acc = _accuracy(res.plain, data)
                train_s = round(sum(e.get("train_s", 0.0) for e in res.history), 1)
                row = {"temperature": t, "val_accuracy": acc, "train_s_epochs": train_s}
                atomic.write_json(done, row)
                shutil.rmtree(workdir / "checkpoint", ignore_errors=True)
                search.append(row)
            best = max(search, key=lambda r: r["val_accuracy"])
            temperature = best["temperature"]
            metrics["temperature_search"] = search
            tried = ", ".join(
                f"T={r['temperature']:g} {100 * r['val_accuracy']:.2f}%" for r in search
            )
            ctx.log(f"[student] temperature search: {tried}; using T={temperature:g}")
        metrics["temperature"] = (
            temperature if not isinstance(temperature, RampConfig) else temperature.model_dump()
        )

        results: dict[str, Any] = {}
        runs = []
        for k in range(cfg.seeds):
            base, key = (out if k == 0 else out / f"seed-{k}"), _seed_key(k)
            runs.append((f"{key}distilled", base, True, recipe.seed + k))
            if cfg.control:
                runs.append((f"{key}control", base / "control", False, recipe.seed + k))
        for label, workdir, soft, seed in runs:
            record = workdir / "result.json"
            shown = label.replace("_", " ") + (f" (seed {seed})" if cfg.seeds > 1 else "")
            if record.is_file():
                ctx.log(f"[student] {shown} already trained")
                results[label] = json.loads(record.read_text())
                continue
            ctx.log(
                f"[student] training the {shown} student"
                + (f" (T={_show(temperature)}, lambda={_show(cfg.soft_weight)})" if soft else
                   " on hard labels alone (the control)")
            )  # fmt: skip
            t0 = time.perf_counter()
            res = fit(workdir, cfg.epochs, temperature, soft, seed)
            student = res.plain
            probs = predict_probs(student, data.val.images)
            ev = Evaluation.from_probs(probs, data.val.labels, data.class_names)
            history = res.history
            row = {
                "seed": seed,
                "val_accuracy": ev.accuracy,
                "per_class": ev.per_class,
                "epochs": len(history),
                "train_s_this_session": round(time.perf_counter() - t0, 1),
                "train_s_epochs": round(sum(e.get("train_s", 0.0) for e in history), 1),
                "images_per_s": float(np.median([e["images_per_s"] for e in history]))
                if history else None,
                "evaluation": ev.to_dict(),
            }  # fmt: skip
            if soft and stored:
                row["teacher_targets_s"] = round(labelled[seed], 1)
            with atomic.atomic_path(workdir / "model.keras") as tmp:
                student.save(tmp)
            atomic.write_json(workdir / "history.json", history)
            atomic.write_json(record, row)  # written last: marks it finished
            shutil.rmtree(workdir / "checkpoint", ignore_errors=True)
            ctx.log(f"[student] {shown}: {100 * ev.accuracy:.2f}% on val")
            results[label] = row

        distilled = results["distilled"]
        stats = model_summary_stats(build())
        metrics.update(
            val_accuracy=distilled["val_accuracy"],
            per_class=distilled["per_class"],
            params=stats["params"],
            macs=stats["macs"],
            epochs=distilled["epochs"],
            images_per_s=distilled["images_per_s"],
            train_s_epochs=distilled["train_s_epochs"],
        )
        if "teacher_targets_s" in distilled:
            metrics["teacher_targets_s"] = distilled["teacher_targets_s"]
        if "control" in results:
            c = results["control"]
            metrics.update(
                control_val_accuracy=c["val_accuracy"],
                control_per_class=c["per_class"],
                control_images_per_s=c["images_per_s"],
                control_train_s_epochs=c["train_s_epochs"],
            )
            ctx.log(
                f"[student] distilled {100 * distilled['val_accuracy']:.2f}% vs hard-label "
                f"control {100 * c['val_accuracy']:.2f}% vs teacher "
                f"{100 * teacher_ev.accuracy:.2f}%"
            )
        if cfg.seeds > 1:
            metrics["seeds"] = [
                {
                    "seed": recipe.seed + k,
                    "val_accuracy": results[f"{_seed_key(k)}distilled"]["val_accuracy"],
                    **({"control_val_accuracy":
                        results[f"{_seed_key(k)}control"]["val_accuracy"]} if cfg.control else {}),
                }
                for k in range(cfg.seeds)
            ]  # fmt: skip
        if metrics.get("temperature_search"):
            metrics["search_train_s"] = round(
                sum(r.get("train_s_epochs", 0.0) for r in metrics["temperature_search"]), 1
            )
        atomic.write_json(
            out / "metrics.json",
            {**metrics, "evaluation": distilled["evaluation"],
             "teacher_evaluation": teacher_ev.to_dict()},
        )  # fmt: skip
        artifacts = {"model": f"{self.name}/model.keras", "metrics": f"{self.name}/metrics.json"}
        if "control" in results:
            artifacts["control_model"] = f"{self.name}/control/model.keras"
        for k in range(1, cfg.seeds):
            artifacts[f"seed{k}_model"] = f"{self.name}/seed-{k}/model.keras"
            if cfg.control:
                artifacts[f"seed{k}_control_model"] = f"{self.name}/seed-{k}/control/model.keras"
        return StageOutcome(metrics=metrics, artifacts=artifacts)

    def _teacher(self, ctx: StageContext):
        """A factory for the teacher, called inside the distribution scope of each fit."""
        import keras

        from edgekd.training.distill import ModelTeacher

        gather = not ctx.accel.jit_compile and keras.backend.backend() == "tensorflow"

        def make():
            loaded = _load_teacher(ctx)
            if isinstance(loaded, keras.Model):
                return ModelTeacher(loaded)
            return loaded.teacher(gather=gather)

        return make

    def _stored_batches(
        self, ctx: StageContext, teacher: Any, val_probs: np.ndarray, seed: int, epochs: int
    ) -> tuple[TargetBatches, TargetBatches, float]:
        """Training and validation batches that bring the teacher's stored targets, labelling
        the epochs not stored yet; and the seconds those epochs took to label (when written,
        so a reused store reports its cost too)."""
        from edgekd.data import ImageBatches
        from edgekd.training.teacher_targets import TargetBatches, TargetStore, label_epochs

        recipe, data, run, cfg = ctx.recipe, ctx.data, ctx.run, ctx.recipe.student
        upstream = ("generalist",) if cfg.teacher == "generalist" else self.reads
        inputs = {
            "teacher": cfg.teacher,
            "upstream": {s: run.stage(s).hash for s in upstream},
            "ensemble": None if cfg.teacher == "generalist" else recipe.ensemble.model_dump(),
            "data": data.fingerprint,
            "seed": seed,
            "batch_size": cfg.batch_size,
            "augment": recipe.data.augment.model_dump(),
        }
        store = TargetStore(run.path / TARGETS, inputs, len(data.class_names))
        stream = dict(
            batch_size=cfg.batch_size, shuffle=True, augment=augment_of(ctx), seed=seed,
            drop_remainder=True,
        )  # fmt: skip
        plain = ImageBatches(data.train.images, data.train.labels, **stream)
        label_epochs(teacher(), plain, store, epochs, ctx.log)
        rows = len(plain) * cfg.batch_size
        loaded: dict[int, np.ndarray] = {}

        def targets(epoch: int) -> np.ndarray:
            if epoch not in loaded:
                array = store.load(epoch, rows)
                if array is None:
                    raise TrainingError(
                        f"{store.epoch_path(epoch)}: the stored teacher targets of epoch "
                        f"{epoch + 1} are missing or damaged; run the same command again to "
                        "label them anew"
                    )
                loaded[epoch] = array
            return loaded[epoch]

        train = TargetBatches(data.train.images, data.train.labels, targets=targets, **stream)
        val = TargetBatches(
            data.val.images, data.val.labels, batch_size=max(cfg.batch_size, 256),
            targets=lambda _epoch: val_probs,
        )  # fmt: skip
        return train, val, store.label_seconds(epochs)

    def _teacher_val_probs(self, ctx: StageContext) -> np.ndarray:
        import keras

        from edgekd.training.trainer import predict_probs

        loaded, images = _load_teacher(ctx), ctx.data.val.images
        if isinstance(loaded, keras.Model):
            return predict_probs(loaded, images)
        return loaded.predict(images).probs


def _load_teacher(ctx: StageContext) -> Any:
    """The recipe's teacher: the generalist (a keras.Model) or a GatedEnsemble."""
    from edgekd.training.ensemble.gated import load_gated_ensemble

    cfg, run = ctx.recipe.student, ctx.run
    if cfg.teacher == "generalist":
        return run.load_model("generalist", "model")
    overrides = {}
    if cfg.teacher == "full_ensemble":
        overrides = {"top_n": len(ctx.data.class_names), "confidence": None}
    return load_gated_ensemble(run.path, **overrides)


def _seed_key(k: int) -> str:
    """Result/artifact key prefix of the k-th extra seed ('' for the recipe's own seed)."""
    return "" if k == 0 else f"seed{k}_"


def _accuracy(model: keras.Model, data: Any) -> float:
    from edgekd.training.trainer import predict_probs

    probs = predict_probs(model, data.val.images)
    return float((probs.argmax(1) == data.val.labels).mean())


def _show(value: float | RampConfig) -> str:
    if isinstance(value, RampConfig):
        return f"{value.start:g}->{value.end:g} ({value.shape})"
    return f"{value:g}"
