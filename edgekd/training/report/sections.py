"""The report's sections, each built from what the run directory, `edgekd eval`, the export
and the bench already hold; a section whose inputs are missing says so in one line."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgekd.contract import PRECISIONS, ContractError, ModelCard, parse_file_name, read_card
from edgekd.device.bench.report import accuracy_latency_figure, format_report
from edgekd.tables import format_table
from edgekd.training.evaluate import (
    RunEvaluation,
    comparison_table,
    overall_table,
    per_class_table,
)
from edgekd.training.report import figures
from edgekd.training.report.content import Figure, Section, Table, Text, blocks_from_text
from edgekd.training.run import RunDir

STAGES = ("generalist", "groups", "specialists", "ensemble", "student", "budget")
BASELINE = "generalist"


def pct(x: float | None) -> str:
    """A share as a percentage with two decimals; '-' when there is none."""
    return "-" if x is None or x != x else f"{100 * x:.2f}"


def _left_out(sid: str, title: str, why: str) -> Section:
    return Section(sid, title, note=f"Left out: {why}.")


def overview(run: RunDir) -> tuple[list[str], Section]:
    """The lines under the title (run, recipe, data, versions) and the stages' table."""
    m = run.manifest
    data, versions = m.get("data", {}), m.get("versions", {})
    counts = ", ".join(f"{data[k]:,} {k.removeprefix('num_')}" for k in
                       ("num_train", "num_val", "num_test") if data.get(k))  # fmt: skip
    facts = [
        f"Run `{run.path}`, recipe `{m.get('recipe', {}).get('name', '?')}` "
        f"(from `{m.get('recipe_source') or 'recipe.yaml'}`); created {m.get('created', '?')}, "
        f"last updated {m.get('updated', '?')}.",
        f"Data: `{data.get('source', '?')}`, {len(data.get('classes', []))} classes, {counts} "
        f"images (fingerprint {data.get('fingerprint', '?')}).",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
    ]
    rows = []
    for stage in STAGES:
        rec = run.stage(stage)
        if stage not in m.get("stages", {}):
            continue
        wall = "-" if rec.wall_s is None else _duration(rec.wall_s)
        rows.append([stage, rec.status, rec.finished or "-", wall, _result(stage, rec.metrics)])
    table = format_table(["stage", "status", "finished", "wall time", "result"], rows)
    return facts, Section("stages", "Stages", [Table(table)])


def _duration(seconds: float) -> str:
    """Seconds as a person reads them: 42 s, 12.5 min, 3.2 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _result(stage: str, metrics: Mapping[str, Any]) -> str:
    """One stage's headline, from the numbers the manifest recorded when it finished."""
    if stage == "groups" and "groups" in metrics:
        captured = metrics.get("captured_confusion", 0.0)
        return f"{len(metrics['groups'])} groups, {pct(captured)}% of the confusion inside them"
    if stage == "specialists":
        return f"{len(metrics.get('specialists', []))} specialists"
    if stage == "student" and "val_accuracy" in metrics:
        control = metrics.get("control_val_accuracy")
        hard = f", hard-label {pct(control)}%" if control is not None else ""
        return f"distilled {pct(metrics['val_accuracy'])}%{hard} (validation)"
    if "val_accuracy" in metrics:
        return f"{pct(metrics['val_accuracy'])}% (validation)"
    return ""


def accuracy(ev: RunEvaluation) -> Section:
    """The seed's tables from `edgekd eval`: overall, per class with Δ, paired comparisons."""
    blocks: list[Any] = [Text(f"Every model of the run on the {ev.data}, as `edgekd eval` "
                              "reports it.")]  # fmt: skip
    blocks.append(Table(overall_table(ev.results, ev.about), "Overall"))
    baseline = BASELINE if BASELINE in ev.results else None
    caption = "Per class (%)" + (f", and Δ against the {baseline} (points)" if baseline else "")
    blocks.append(Table(per_class_table(ev.results, baseline=baseline), caption))
    others = [n for n in ev.results if n != baseline and not n.endswith(" int8")]
    if baseline and others:
        base = ev.results[baseline].per_class
        names = ev.results[baseline].class_names
        deltas = {n: [ev.results[n].per_class[c] - base[c] for c in names] for n in others}
        picture = figures.delta_png(names, deltas, baseline)
        caption = f"Per-class accuracy of each model minus the {baseline}'s."
        blocks.append(Figure("per-class-delta.png", picture, caption, "per-class Δ"))
    if ev.comparisons:
        n = ev.comparisons[0].images
        blocks.append(Table(comparison_table(ev.comparisons),
                            f"Paired on the same {n} images: B − A with a 95% bootstrap interval "
                            "over images and an exact McNemar p. An interval that spans zero is "
                            "not a result."))  # fmt: skip
    if ev.seeds:
        caption = f"The student stage over {len(ev.seeds.seeds)} seeds"
        blocks.append(Table(ev.seeds.table(), caption))
    return Section("accuracy", "Accuracy", blocks)


def groups(run: RunDir, ev: RunEvaluation) -> Section:
    """The generalist's confusion as a heat map, and the groups it produced."""
    title = "Confusion and groups"
    blocks: list[Any] = []
    gen = ev.results.get(BASELINE)
    if gen is not None:
        blocks.append(Figure("confusion.png", figures.confusion_png(
            gen.confusion, gen.class_names, f"generalist: confusion ({gen.count} images)"),
            f"The generalist's confusion on the {ev.data}: colour is the share of the true "
            "class, the number the count of images.", "confusion matrix"))  # fmt: skip
    if run.stage("groups").status != "done":
        if not blocks:
            return _left_out("groups", title, "the run has no generalist or groups stage")
        blocks.append(Text("Groups: left out, the groups stage has not run."))
        return Section("groups", title, blocks)
    info = run.read_json("groups", "groups", "groups", "indices", "affinity", "class_names")
    names, indices = info["class_names"], info["indices"]
    captured = info.get("captured_confusion")
    blocks.append(Text(
        f"Groups by `{info.get('method', '?')}`: {len(indices)} specialist(s), holding "
        f"{pct(captured)}% of the generalist's validation confusion inside them."))  # fmt: skip
    rows = [[f"specialist {m}", ", ".join(names[c] for c in g)] for m, g in enumerate(indices)]
    blocks.append(Table(format_table(["specialist", "classes"], rows)))
    blocks.append(Figure("groups.png", figures.affinity_png(
        info["affinity"], names, indices, f"class affinity by {info.get('method', '?')}"),
        "The affinity the groups were cut from (validation split), classes ordered by group; "
        "a box marks each group (S0, S1, ...).", "group affinity"))  # fmt: skip
    return Section("groups", title, blocks)


def _history_label(stage: str, rel: Path) -> str:
    """A model's name in a stage's curves: student/control -> hard-label, seed-1/ -> seed 1."""
    parts = list(rel.parts)
    seed = ""
    if parts and parts[0].startswith("seed-"):
        seed = f", seed {parts.pop(0).removeprefix('seed-')}"
    if stage == "student":
        return ("hard-label" if parts == ["control"] else "distilled") + seed
    if stage == "budget" and parts:
        return f"budget-matched ({parts[0]})" + seed
    return (" ".join(parts).replace("_", " ") or stage) + seed


def histories(run: RunDir) -> tuple[dict[str, dict[str, list[dict]]], list[str]]:
    """Every finished stage's `history.json` files, by stage and model; and notes on any
    unreadable one (the curves are a picture of the run, not an input it depends on)."""
    found: dict[str, dict[str, list[dict]]] = {}
    notes: list[str] = []
    for stage in STAGES:
        rec = run.stage(stage)
        folder = run.stage_dir(stage)
        if rec.status != "done" or not folder.is_dir():
            continue
        for path in sorted(folder.rglob("history.json")):
            rel = path.parent.relative_to(folder)
            if any(p in ("checkpoint", "search") or p.startswith(".") for p in rel.parts):
                continue
            if rec.artifacts.get("history") == str(path.relative_to(run.path)):
                epochs = run.read_json(stage, "history")  # checked like every artifact
            else:
                try:
                    epochs = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                    notes.append(f"`{path.relative_to(run.path)}` unreadable ({exc}); left out.")
                    continue
            if isinstance(epochs, list) and epochs and all(isinstance(e, dict) for e in epochs):
                found.setdefault(stage, {})[_history_label(stage, rel)] = epochs
    return found, notes


def curves(run: RunDir) -> Section:
    """Accuracy and loss per epoch, one figure per stage that trained models."""
    title = "Training curves"
    found, notes = histories(run)
    if not found:
        return _left_out("curves", title, "no finished stage has a training history")
    blocks: list[Any] = [Text(n) for n in notes]
    for stage, by_model in found.items():
        blocks.append(Figure(f"curves-{stage}.png", figures.curves_png(stage, by_model),
                             f"{stage}: training (solid) and validation (dashed) per epoch, "
                             f"from `{stage}/**/history.json`.",
                             f"{stage} training curves"))  # fmt: skip
    return Section("curves", title, blocks)


def specialists(ev: RunEvaluation, bench: Mapping[str, Any] | None) -> Section:
    """How often each specialist ran, in eval's gated ensemble and in bench's runs."""
    title = "Specialists"
    if not ev.specialists:
        return _left_out("specialists", title, "the run has no finished ensemble stage")
    rates = {f"eval, {ev.results['ensemble'].count} images": [s["activation_rate"]
                                                             for s in ev.specialists]}
    for r in (bench or {}).get("rows", []):
        if r.get("model") == "ensemble" and "error" not in r and r.get("activation_rate"):
            rates[f"bench, {r['precision']} {r['format']}"] = list(r["activation_rate"])
    headers = ["specialist", "classes", "on its classes (%)", "dustbin (%)",
               *(f"ran on: {k} (%)" for k in rates)]  # fmt: skip
    rows = [[f"specialist {s['index']}", ", ".join(s["classes"]), pct(s.get("group_accuracy")),
             pct(s.get("dustbin_accuracy")),
             *(pct(v[i]) if i < len(v) else "-" for v in rates.values())]
            for i, s in enumerate(ev.specialists)]  # fmt: skip
    names = [f"S{s['index']}" for s in ev.specialists]
    return Section("specialists", title, [
        Table(format_table(headers, rows)),
        Figure("activation.png", figures.activation_png(names, rates),
               "Share of images each specialist ran on: the generalist's top-n classes wake "
               "the specialists whose groups they touch.", "specialist activation rates"),
    ])  # fmt: skip


def _card_precision(card: ModelCard) -> str:
    name = parse_file_name(card.file or "")
    return name.label if name is not None else card.precision


def export(run: RunDir, export_dir: Path) -> Section:
    """The parity table: one row per exported file, from its model card."""
    title = "Export parity"
    if not export_dir.is_dir():
        return _left_out("export", title, f"no export at `{export_dir}` (`edgekd export RUN`)")
    summary: dict[str, dict[str, Any]] = {}
    with_summary = export_dir / "export.json"
    if with_summary.is_file():
        try:
            listed = json.loads(with_summary.read_text(encoding="utf-8"))["variants"]
            summary = {str(v.get("file")): v for v in listed if isinstance(v, dict)}
        except (OSError, ValueError, KeyError, TypeError):
            summary = {}
    notes: list[str] = []
    cards: list[tuple[str, ModelCard]] = []
    for folder, prefix in ((export_dir, ""), (export_dir / "members", "members/")):
        for path in sorted(folder.glob("*.json")):
            if parse_file_name(path.name.removesuffix(".json")) is None:
                continue  # export.json, bench.json, ensemble.json: not cards
            try:
                cards.append((prefix, read_card(path)))
            except ContractError as exc:
                notes.append(f"{exc}; left out.")
    if not cards:
        return _left_out("export", title, f"`{export_dir}` holds no model cards")
    fmt_order = ["tflite", "onnx", "tensorrt", "saved_model"]
    cards.sort(key=lambda pc: (pc[0], pc[1].model or "", fmt_order.index(pc[1].format),
                               PRECISIONS.index(pc[1].precision), _card_precision(pc[1])))
    rows, stale = [], 0
    for prefix, card in cards:
        p = card.parity or {}
        note = str(summary.get(card.file or "", {}).get("note") or "")
        finished = run.stage(card.stage or "").finished
        if finished and (card.created or "") < finished:
            stale += 1
            note = "; ".join(x for x in (note, "exported before its stage last finished") if x)
        passed = p.get("passed")
        rows.append([
            card.model or "?", card.format, _card_precision(card), prefix + (card.file or "?"),
            "-" if card.size_bytes is None else f"{card.size_bytes / 1024:.0f}",
            pct(p.get("accuracy")), pct(p.get("keras_accuracy")),
            "-" if p.get("drop_pp") is None else f"{0.0 - p['drop_pp']:+.2f}",
            pct(p.get("top1_agreement")),
            "-" if p.get("max_logit_error") is None else f"{p['max_logit_error']:.3g}",
            "-" if passed is None else ("ok" if passed else "FAIL"), note,
        ])  # fmt: skip
    headers = ["model", "format", "precision", "file", "KiB", "accuracy %", "Keras %",
               "file − Keras (pp)", "agreement %", "max logit err", "parity", "note"]  # fmt: skip
    images = {c.parity.get("images") for _, c in cards if c.parity}
    blocks: list[Any] = [Text(
        f"Every exported file in `{export_dir}`, run by its own runtime on "
        f"{' / '.join(str(i) for i in sorted(images, key=str)) or '?'} validation images and "
        "compared with the Keras model it came from (its model card, `<file>.json`).")]  # fmt: skip
    if stale:
        blocks.append(Text(f"{stale} file(s) were exported before their stage last finished: "
                           "they hold an earlier model; export again."))  # fmt: skip
    blocks += [Table(format_table(headers, rows)), *(Text(n) for n in notes)]
    return Section("export", title, blocks)


def read_bench(path: Path) -> tuple[dict[str, Any] | None, str]:
    """A bench result, or None and why it cannot be used."""
    if not path.is_file():
        return None, f"no bench result at `{path}` (`edgekd bench RUN/export` on the device)"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return None, f"`{path}` is not a bench result ({type(exc).__name__}: {exc})"
    needed = ("rows", "settings", "data", "host", "device", "notes", "export")  # format_report's
    missing = [k for k in needed if not isinstance(report, dict) or k not in report]
    if missing or not isinstance(report["rows"], list):
        return None, f"`{path}` is not a bench result (no {', '.join(missing) or 'list of rows'})"
    return report, ""


def _competitors(bench: Mapping[str, Any], ev: RunEvaluation, run: RunDir) -> list[dict]:
    """The generalist and the controls as points beside bench's rows, at eval's accuracy.
    The hard-label and budget-matched controls are the student's network, so they take the
    latency bench measured for the student file of the same precision; the generalist too
    when it has the student's architecture, else that latency times its MACs ratio (an
    estimate, drawn hollow)."""
    rows = [r for r in bench["rows"] if r["model"] == "student" and "error" not in r]
    order = ["tflite", "onnx", "tensorrt"]
    arch = ev.about.get(BASELINE, {}).get("architecture")
    same_arch = arch is not None and arch == ev.about.get("distilled", {}).get("architecture")
    macs = {s: run.stage(s).metrics.get("macs") for s in (BASELINE, "student")}
    points = []
    for name, precision, colour, marker in (
        ("hard-label", "float32", "tab:green", "P"), ("hard-label int8", "int8", "tab:green", "P"),
        ("budget-matched", "float32", "tab:purple", "X"),
        ("budget-matched (amortised)", "float32", "tab:brown", "X"),
        (BASELINE, "float32", "tab:red", "*"),
    ):  # fmt: skip
        same = [r for r in rows if r["precision"] == precision and r["format"] in order]
        if name not in ev.results or not same:
            continue
        row = min(same, key=lambda r: order.index(r["format"]))
        latency, legend = row["latency_ms"]["p50"], f"{name.removesuffix(' int8')} (eval)"
        hollow = name == BASELINE and not same_arch
        if hollow:
            if not macs[BASELINE] or not macs["student"]:
                continue
            latency *= macs[BASELINE] / macs["student"]
            legend = f"{BASELINE} (eval; latency estimated from MACs)"
        points.append({"legend": legend, "precision": precision, "accuracy":
                       ev.results[name].accuracy, "latency_ms": {"p50": latency},
                       "color": colour, "marker": marker, "hollow": hollow})  # fmt: skip
    return points


def bench(result: Mapping[str, Any] | None, why: str, ev: RunEvaluation, run: RunDir) -> Section:
    """Bench's table and headline, and accuracy against latency with the competitors."""
    title = "On the device: accuracy against latency"
    if result is None:
        return _left_out("bench", title, why)
    blocks = blocks_from_text(format_report(dict(result)))
    extra = _competitors(result, ev, run)
    name = f"{run.path.name}: accuracy vs latency"
    fig = accuracy_latency_figure(dict(result), extra, title=name)
    if fig is not None:
        caption = (f"Student files and the gated ensemble: bench's accuracy on its "
                   f"{result['data'].get('images', '?')} images and p50 latency at batch 1.")
        if extra:
            caption += (f" Generalist and controls: eval's accuracy on the {ev.data}, placed "
                        "at the latency bench measured for the student file of the same "
                        "precision (the controls are the student's network; a hollow marker is "
                        "an estimate scaled by MACs).")  # fmt: skip
        blocks.append(Figure("accuracy-latency.png", figures.png(fig), caption,
                             "accuracy against latency"))
    return Section("bench", title, blocks)


def recipe_text(run: RunDir) -> str:
    """The run's `recipe.yaml` as written when it started, for the appendix."""
    path = run.path / "recipe.yaml"
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""

