"""Accuracy, confusion and the per-class tables the seed reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np


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


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table with columns padded to line up on a terminal."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        padded = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs]
        return "| " + " | ".join(padded) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


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


# Table names of the stages' models: the seed's "generalist / ensemble / distilled", plus
# the hard-label student (the control).
DISPLAY = {"generalist": "generalist", "student": "distilled"}


@dataclass
class RunEvaluation:
    """Every model of a run evaluated on one set of images."""

    results: dict[str, Evaluation]
    data: str
    about: dict[str, dict[str, str]]
    specialists: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "data": self.data,
            "models": {n: {**self.about[n], **e.to_dict()} for n, e in self.results.items()},
            "specialists": self.specialists,
        }

    def tables(self) -> str:
        parts = [
            f"Data: {self.data}",
            per_class_table(self.results, baseline="generalist"),
            overall_table(self.results, self.about),
        ]
        r = self.results
        if "distilled" in r and "hard-label" in r:
            gain = 100 * (r["distilled"].accuracy - r["hard-label"].accuracy)
            parts.append(
                f"Distillation vs the hard-label control (same student, batches and schedule): "
                f"{gain:+.2f} pp"
            )
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
    import keras

    import edgekd.losses  # noqa: F401  (registers serialisable objects used in saved models)
    import edgekd.schedules  # noqa: F401
    from edgekd.dataset import load_eval_data, prepare_data
    from edgekd.errors import RunDirError
    from edgekd.recipe import build_recipe
    from edgekd.run import RunDir
    from edgekd.trainer import predict_probs

    run = RunDir.open_existing(run_path)
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
    for stage, rec in run.manifest.get("stages", {}).items():
        if rec.get("status") != "done" or "model" not in rec.get("artifacts", {}):
            continue
        cfg = run.manifest["recipe"].get(stage, {})
        metrics = rec.get("metrics", {})
        # The student stage holds two models: the distilled student and its control.
        models = {"model": DISPLAY.get(stage, stage), "control_model": "hard-label"}
        for artifact, name in models.items():
            if artifact not in rec.get("artifacts", {}):
                continue
            model = keras.models.load_model(run.artifact(stage, artifact), compile=False)
            probs = stage_probs[name] = predict_probs(model, images.images)
            results[name] = Evaluation.from_probs(probs, images.labels, class_names)
            about[name] = {
                "architecture": f"{cfg.get('arch', '?')} w{cfg.get('width', '?')}",
                "params": f"{metrics.get('params', 0) / 1e6:.2f}M",
                "MACs/image": f"{metrics.get('macs', 0) / 1e6:.1f}M",
            }
    specialists: list[dict] = []
    if run.stage("ensemble").status == "done":
        from edgekd.ensemble.gated import load_gated_ensemble
        from edgekd.stages.specialists import specialist_metrics

        ensemble = load_gated_ensemble(run.path)
        output = ensemble.predict(images.images, general=stage_probs.get("generalist"))
        results["ensemble"] = Evaluation.from_probs(output.probs, images.labels, class_names)
        ens = run.stage("ensemble").metrics
        about["ensemble"] = {
            "architecture": f"gated, top-{ensemble.top_n}",
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
    order = ["generalist", "ensemble", "distilled", "hard-label"]
    results = dict(sorted(results.items(), key=lambda kv: order.index(kv[0])))
    return RunEvaluation(results, f"{described} ({len(images)} images)", about, specialists)
