"""Accuracy, confusion and the per-class tables the seed reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from edgekd.maths.stats import PairedComparison, compare_paired, format_p, mean_std
from edgekd.tables import format_table


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts C[i, j] of images of true class i predicted as j."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (np.asarray(labels, np.int64), np.asarray(preds, np.int64)), 1)
    return cm


@dataclass
class Evaluation:
    """Top-1 accuracy overall and per class, from a confusion matrix."""

    confusion: np.ndarray
    class_names: list[str]

    @classmethod
    def from_probs(cls, probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str]):
        preds = np.argmax(probs, axis=1)
        return cls(confusion_matrix(labels, preds, len(class_names)), list(class_names))

    @property
    def count(self) -> int:
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion) / max(self.count, 1))

    @property
    def per_class(self) -> dict[str, float]:
        support = self.confusion.sum(axis=1)
        hits = np.diag(self.confusion)
        return {
            name: float(hits[i] / support[i]) if support[i] else float("nan")
            for i, name in enumerate(self.class_names)
        }

    def to_dict(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "count": self.count,
            "per_class": self.per_class,
            "confusion": self.confusion.tolist(),
            "class_names": self.class_names,
        }


def _pct(x: float) -> str:
    return "   -" if x != x else f"{100 * x:.2f}"  # x != x: NaN, a class with no images


def per_class_table(results: Mapping[str, Evaluation], baseline: str | None = None) -> str:
    """The seed's per-class table: one column per model (%), plus deltas against `baseline`."""
    names = list(results)
    classes = next(iter(results.values())).class_names
    others = [n for n in names if n != baseline] if baseline in results else []
    headers = ["class", *(f"{n} (%)" for n in names), *(f"Δ {n} (%)" for n in others)]
    rows = []
    for c in classes:
        vals = [results[n].per_class[c] for n in names]
        deltas = [results[n].per_class[c] - results[baseline].per_class[c] for n in others]
        rows.append([c, *(_pct(v) for v in vals), *(f"{100 * d:+.2f}" for d in deltas)])
    return format_table(headers, rows)


def overall_table(
    results: Mapping[str, Evaluation], about: Mapping[str, Mapping[str, str]] | None = None
) -> str:
    """The seed's overall table: model, what it is (architecture, params, MACs), accuracy."""
    about = about or {}
    extra = ["architecture", "params", "MACs/image"] if about else []
    rows = [
        [n, *(about.get(n, {}).get(k, "") for k in extra), _pct(e.accuracy), str(e.count)]
        for n, e in results.items()
    ]
    return format_table(["model", *extra, "accuracy (%)", "images"], rows)


# Table names of the stages' models: the seed's "generalist / ensemble / distilled", the
# hard-label student (the control) and the budget-matched controls. (stage, artifact) -> name.
DISPLAY = {
    ("generalist", "model"): "generalist",
    ("student", "model"): "distilled",
    ("student", "control_model"): "hard-label",
    ("budget", "counted_model"): "budget-matched",
    ("budget", "amortised_model"): "budget-matched (amortised)",
}
ORDER = [
    "generalist", "ensemble", "distilled", "hard-label", "budget-matched",
    "budget-matched (amortised)", "distilled int8", "hard-label int8",
]  # fmt: skip
# (A, B): B's gain over A, reported paired. The questions issue #11 asks of every run.
COMPARISONS = [
    ("generalist", "ensemble"),
    ("hard-label", "distilled"),
    ("budget-matched", "distilled"),
    ("budget-matched (amortised)", "distilled"),
    ("budget-matched", "hard-label"),
    ("budget-matched (amortised)", "hard-label"),
    ("distilled", "distilled int8"),
    ("hard-label", "hard-label int8"),
]


def paired_comparisons(
    correct: Mapping[str, np.ndarray], pairs: Sequence[tuple[str, str]] = COMPARISONS
) -> list[PairedComparison]:
    """Every pair in `pairs` whose two models are both in `correct` (per-image bool arrays)."""
    return [
        compare_paired(a, correct[a], b, correct[b])
        for a, b in pairs
        if a in correct and b in correct
    ]


def comparison_table(comparisons: Sequence[PairedComparison]) -> str:
    """B against A, paired on the same images: accuracies, difference, 95% CI, McNemar p."""
    rows = [
        [
            f"{c.b} vs {c.a}",
            _pct(c.accuracy_b),
            _pct(c.accuracy_a),
            f"{100 * c.difference:+.2f}",
            f"[{100 * c.ci_low:+.2f}, {100 * c.ci_high:+.2f}]",
            format_p(c.p_value),
            f"{c.only_b} / {c.only_a}",
        ]
        for c in comparisons
    ]
    headers = ["comparison (B vs A)", "B (%)", "A (%)", "B − A (pp)", "95% CI (pp)",
               "McNemar p", "only B / only A right"]  # fmt: skip
    return format_table(headers, rows)


@dataclass
class SeedSummary:
    """Several seeds of the student stage: each seed's distilled vs control, and mean ± std."""

    seeds: list[int]
    distilled: list[float]
    control: list[float]
    comparisons: list[PairedComparison]

    def to_dict(self) -> dict:
        out: dict = {"seeds": self.seeds, "distilled": self.distilled, "control": self.control}
        for key in ("distilled", "control"):
            values = getattr(self, key)
            if values:
                out[f"{key}_mean"], out[f"{key}_std"] = mean_std(values)
        if self.comparisons:
            diffs = [c.difference for c in self.comparisons]
            out["difference_mean"], out["difference_std"] = mean_std(diffs)
        out["comparisons"] = [c.to_dict() for c in self.comparisons]
        return out

    def table(self) -> str:
        rows = []
        for i, seed in enumerate(self.seeds):
            c = self.comparisons[i] if self.comparisons else None
            rows.append([
                str(seed), _pct(self.distilled[i]),
                _pct(self.control[i]) if self.control else "-",
                c.describe() if c else "-",
            ])  # fmt: skip
        d = self.to_dict()
        rows.append([
            "mean ± std",
            f"{100 * d['distilled_mean']:.2f} ± {100 * d['distilled_std']:.2f}",
            f"{100 * d['control_mean']:.2f} ± {100 * d['control_std']:.2f}" if self.control
            else "-",
            f"{100 * d['difference_mean']:+.2f} ± {100 * d['difference_std']:.2f} pp"
            if self.comparisons else "-",
        ])  # fmt: skip
        headers = ["student seed", "distilled (%)", "hard-label (%)", "distilled − hard-label"]
        return format_table(headers, rows)


@dataclass
class RunEvaluation:
    """Every model of a run evaluated on one set of images."""

    results: dict[str, Evaluation]
    data: str
    about: dict[str, dict[str, str]]
    specialists: list[dict] = field(default_factory=list)
    comparisons: list[PairedComparison] = field(default_factory=list)
    seeds: SeedSummary | None = None
    correct: dict[str, np.ndarray] = field(default_factory=dict)  # per image, for pairing runs

    def to_dict(self) -> dict:
        return {
            "data": self.data,
            "models": {n: {**self.about[n], **e.to_dict()} for n, e in self.results.items()},
            "specialists": self.specialists,
            "comparisons": [c.to_dict() for c in self.comparisons],
            "student_seeds": self.seeds.to_dict() if self.seeds else None,
        }

    def tables(self) -> str:
        parts = [
            f"Data: {self.data}",
            per_class_table(self.results, baseline="generalist"),
            overall_table(self.results, self.about),
        ]
        if self.comparisons:
            n = self.comparisons[0].images
            parts.append(
                f"Paired on the same {n} images (95% bootstrap interval over images, "
                f"exact McNemar p):\n" + comparison_table(self.comparisons)
            )
        if self.seeds:
            n_seeds = len(self.seeds.seeds)
            parts.append(f"Student stage over {n_seeds} seeds:\n" + self.seeds.table())
        if self.specialists:
            rows = [
                [
                    f"specialist {s['index']}",
                    ", ".join(s["classes"]),
                    _pct(s["group_accuracy"]),
                    _pct(s["dustbin_accuracy"]),
                    _pct(s["activation_rate"]),
                ]
                for s in self.specialists
            ]
            headers = ["specialist", "classes", "on its classes (%)", "dustbin (%)", "ran on (%)"]
            parts.append(format_table(headers, rows))
        return "\n\n".join(parts)


def evaluate_run(run_path: str, data_spec: str | None = None, split: str = "val") -> RunEvaluation:
    """Evaluate every model a run has on its validation (or test) split, or on `data_spec`."""
    from edgekd.data.dataset import load_eval_data, prepare_data
    from edgekd.errors import RunDirError
    from edgekd.recipe import build_recipe
    from edgekd.training.run import RunDir

    run = RunDir.open_existing(run_path)  # before Keras: a wrong path fails in a second
    import edgekd.training.losses  # noqa: F401  (registers serialisable objects used in saved models)
    import edgekd.training.schedules  # noqa: F401
    from edgekd.training.trainer import predict_probs

    recipe = build_recipe(run.manifest["recipe"], source=str(run.path / "recipe.yaml"))
    class_names = list(run.manifest["data"]["classes"])
    if data_spec is not None:
        images = load_eval_data(recipe, data_spec, class_names)
        described = data_spec
    else:
        prepared = prepare_data(recipe, progress=True)
        images = prepared.val if split == "val" else prepared.test
        if images is None:
            raise RunDirError(
                f"{prepared.source} has no test split; evaluate on held-out images with --data"
            )
        described = f"{'validation' if split == 'val' else 'test'} split of {prepared.source}"
    results: dict[str, Evaluation] = {}
    about: dict[str, dict[str, str]] = {}
    stage_probs: dict[str, np.ndarray] = {}
    student_metrics = run.stage("student").metrics
    for (stage, artifact), name in DISPLAY.items():
        rec = run.manifest.get("stages", {}).get(stage, {})
        if rec.get("status") != "done" or artifact not in rec.get("artifacts", {}):
            continue
        # The budget-matched controls have the student's architecture.
        cfg = getattr(recipe, "student" if stage == "budget" else stage)
        metrics = student_metrics if stage == "budget" else rec.get("metrics", {})
        model = run.load_model(stage, artifact)
        probs = stage_probs[name] = predict_probs(model, images.images)
        results[name] = Evaluation.from_probs(probs, images.labels, class_names)
        about[name] = {
            "architecture": f"{cfg.arch} w{cfg.width}",
            "params": f"{metrics.get('params', 0) / 1e6:.2f}M",
            "MACs/image": f"{metrics.get('macs', 0) / 1e6:.1f}M",
        }
        if stage == "budget":
            variant = artifact.removesuffix("_model")
            row = rec.get("metrics", {}).get("variants", {}).get(variant, {})
            about[name]["architecture"] += f", {row.get('epochs', '?')} epochs from scratch"
    for name, probs in _exported_int8(run, images.images).items():
        stage_probs[name] = probs
        results[name] = Evaluation.from_probs(probs, images.labels, class_names)
        base = about.get(name.removesuffix(" int8"), {})
        about[name] = {**base, "architecture": base.get("architecture", "") + ", int8 .tflite"}
    specialists: list[dict] = []
    if run.stage("ensemble").status == "done":
        from edgekd.maths.specialist import specialist_metrics
        from edgekd.training.ensemble.gated import load_gated_ensemble

        ensemble = load_gated_ensemble(run.path)
        output = ensemble.predict(images.images, general=stage_probs.get("generalist"))
        results["ensemble"] = Evaluation.from_probs(output.probs, images.labels, class_names)
        ens = run.stage("ensemble").metrics
        about["ensemble"] = {
            "architecture": f"gated, top-{ensemble.top_n}"
            + (", mirror-averaged" if ensemble.flip else ""),
            "params": "",
            "MACs/image": f"{ens.get('macs_per_image', 0) / 1e6:.1f}M",
        }
        for rec, rate in zip(
            run.stage("specialists").metrics.get("specialists", []),
            output.activation_rate,
            strict=True,
        ):
            m = rec["index"]
            probs = predict_probs(ensemble.specialists[m], images.images)
            measured = specialist_metrics(
                probs, images.labels, rec["indices"], len(class_names), ensemble.dustbin
            )
            specialists.append({**rec, **measured, "activation_rate": float(rate)})
    if not results:
        raise RunDirError(f"{run.path}: no finished stage has a model yet")
    results = dict(sorted(results.items(), key=lambda kv: ORDER.index(kv[0])))
    correct = {n: e_probs.argmax(1) == images.labels for n, e_probs in stage_probs.items()}
    if "ensemble" in results:
        correct["ensemble"] = output.probs.argmax(1) == images.labels
    seeds = _seed_summary(run, images, correct)
    return RunEvaluation(
        results, f"{described} ({len(images)} images)", about, specialists,
        comparisons=paired_comparisons(correct), seeds=seeds, correct=correct,
    )  # fmt: skip


def _seed_summary(run, images, correct: Mapping[str, np.ndarray]) -> SeedSummary | None:
    """Each seed of the student stage (seed 0: the stage's own models) on these images."""
    from edgekd.training.trainer import predict_probs

    rec = run.stage("student")
    seeds = rec.metrics.get("seeds")
    if rec.status != "done" or not seeds or len(seeds) < 2:
        return None
    distilled, control, comparisons = [], [], []
    for k in range(len(seeds)):
        got = {}
        for key, name in (("model", "distilled"), ("control_model", "hard-label")):
            artifact = key if k == 0 else f"seed{k}_{key}"
            if k == 0 and name in correct:
                got[name] = correct[name]
            elif artifact in rec.artifacts:
                model = run.load_model("student", artifact)
                got[name] = predict_probs(model, images.images).argmax(1) == images.labels
        distilled.append(float(got["distilled"].mean()))
        if "hard-label" in got:
            control.append(float(got["hard-label"].mean()))
            comparisons.append(
                compare_paired("hard-label", got["hard-label"], "distilled", got["distilled"])
            )
    return SeedSummary([int(r["seed"]) for r in seeds], distilled, control, comparisons)


def _exported_int8(run, images: np.ndarray) -> dict[str, np.ndarray]:
    """Scores of the run's exported int8 .tflite files of the student or its control, run by
    LiteRT, so the int8-vs-float comparison is paired on the same images."""
    from edgekd.contract import ContractError, card_path, file_name, read_card
    from edgekd.device.runtime import load_runner

    export_dir = run.path / "export"
    names = {"model": "distilled int8", "control_model": "hard-label int8"}
    trained = run.stage("student").finished or ""
    out: dict[str, np.ndarray] = {}
    for path in sorted(export_dir.glob(card_path(file_name("*", "tflite", "int8")).name)):
        try:
            card = read_card(path)
        except ContractError:  # not a card this version can read: not one to compare
            continue
        name = names.get(card.artifact or "") if card.stage == "student" else None
        tflite = export_dir / (card.file or "")
        # A file exported before the student was last trained is of another model.
        stale = (card.created or "") < trained
        if name is None or name in out or stale or not tflite.is_file():
            continue
        out[name] = load_runner(tflite, batch_size=64).predict(images)
    return out
