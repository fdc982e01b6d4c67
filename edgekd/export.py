"""`edgekd export` as a Python API: convert a run's model, check every file, write its card.

For each format x precision the recipe's `export` section (or the command line) asks for:
convert with the back-end in `edgekd.converters`, run the file with its real runtime
(LiteRT, ONNX Runtime) on held-out validation images, compare with the Keras float model
(accuracy of each, top-1 agreement, largest logit error), and write a model card JSON beside
the file. A file whose accuracy drops by more than `export.tolerance_pp` fails the parity
gate: the export then exits non-zero (unless forced), with the file and its card kept for
inspection. Silent int8 collapse is the most reported export failure in this field.

Layout of the export folder (default `<run>/export/`): `labels.txt`, `<model>.tflite`,
`<model>-int8.tflite`, `<model>.onnx`, `<model>-int8.onnx`, ..., one `<file>.json` card per
file, `export.json` (every variant), and with `members`: `members/` holding the generalist
and the specialists in the same formats plus `ensemble.json`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekd import atomic
from edgekd.errors import EdgekdError, RunDirError
from edgekd.evaluate import format_table
from edgekd.recipe import ExportConfig, Recipe, apply_overrides, build_recipe
from edgekd.run import RunDir, now, package_versions

# Which precisions each format can hold; others are skipped with a note.
SUPPORTED = {
    "tflite": ("float32", "float16", "dynamic", "int8"),
    "onnx": ("float32", "int8"),
    "tensorrt": ("float32", "float16", "int8"),
    "saved_model": ("float32",),
}
SUFFIX = {"float32": "", "float16": "-fp16", "dynamic": "-dynamic", "int8": "-int8"}
# The run stage and artifact holding each exportable model.
MODELS = {
    "student": ("student", "model"),
    "control": ("student", "control_model"),
    "generalist": ("generalist", "model"),
}


class ParityError(EdgekdError):
    """An exported file lost more accuracy than the recipe allows."""

    exit_code = 3


@dataclass
class Variant:
    """One exported file and what was measured on it."""

    name: str  # e.g. "student"
    format: str
    precision: str
    path: Path | None
    card: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.card.get("parity", {}).get("passed", True)


def representative_images(images: np.ndarray, labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A seeded, class-balanced sample of `n` images (calibration data for quantisation)."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per = -(-n // len(classes))
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per] for c in classes]
    idx = np.concatenate(picks)
    return images[rng.permutation(idx)[:n]]


def parity(
    runner: Any, images: np.ndarray, labels: np.ndarray, reference: np.ndarray, tolerance_pp: float
) -> dict[str, Any]:
    """Accuracy of the file and of Keras on the same images, top-1 agreement, logit error.

    A file whose outputs are not all finite fails, whatever its argmax happens to score.
    """
    got = runner.predict(images)
    finite = bool(np.isfinite(got).all())
    keras_acc = float((reference.argmax(1) == labels).mean())
    acc = float((got.argmax(1) == labels).mean())
    drop = 100.0 * (keras_acc - acc)
    return {
        "images": int(len(images)),
        "keras_accuracy": keras_acc,
        "accuracy": acc,
        "drop_pp": drop,
        "top1_agreement": float((got.argmax(1) == reference.argmax(1)).mean()),
        "max_logit_error": float(np.abs(got - reference).max()) if finite else None,
        "finite": finite,
        "tolerance_pp": tolerance_pp,
        "passed": bool(finite and drop <= tolerance_pp),
    }


def export_run(
    run_path: str | Path,
    *,
    formats: tuple[str, ...] | None = None,
    precisions: tuple[str, ...] | None = None,
    members: bool | None = None,
    qat: bool | None = None,
    out: str | Path | None = None,
    force: bool = False,
    overrides: tuple[str, ...] = (),
    log: Any = print,
) -> list[Variant]:
    """Export the run's model (and members) as configured; raise ParityError on a failed gate.

    `overrides` are `--set export.key=value` strings applied to the run's recipe.
    """
    run = RunDir.open_existing(run_path)
    with run.lock():  # one writer: a train or another export on this run waits its turn
        origins: dict[str, str] = {}
        resolved = apply_overrides(run.manifest["recipe"], overrides, origins)
        recipe = build_recipe(resolved, origins=origins, source=str(run.path / "recipe.yaml"))
        cfg = recipe.export.model_copy(
            update={
                k: v
                for k, v in {
                    "formats": formats,
                    "precisions": precisions,
                    "members": members,
                    "qat": qat,
                }.items()
                if v is not None
            }
        )
        cfg = ExportConfig.model_validate(cfg.model_dump())  # re-check overridden values
        stage, artifact = MODELS[cfg.model]
        if run.stage(stage).status != "done" or artifact not in run.stage(stage).artifacts:
            raise RunDirError(
                f"{run.path}: export.model is {cfg.model!r}, but stage {stage!r} has not finished "
                f"(train it with `edgekd train` first, or --set export.model=generalist)"
            )
        if cfg.members and run.stage("specialists").status != "done":
            raise RunDirError(f"{run.path}: --members needs the specialists stage, not finished")

        from edgekd.dataset import prepare_data

        data = prepare_data(recipe, progress=True)
        calib = representative_images(
            data.train.images, data.train.labels, cfg.calibration_images, recipe.seed
        )
        val = data.val
        if cfg.parity_images and cfg.parity_images < len(val):
            keep = representative_images(np.arange(len(val)), val.labels, cfg.parity_images, 1)
            val = val.subset(np.sort(keep))
        out_dir = Path(out) if out else run.path / "export"
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(out_dir / "labels.txt", "\n".join(data.class_names) + "\n")
        context = {"run": str(run.path), "recipe": recipe.name, "classes": data.class_names}

        from edgekd.trainer import predict_logits

        model = run.load_model(stage, artifact)
        reference = predict_logits(model, val.images)  # the Keras logits every file is held to
        if not np.isfinite(reference).all():
            raise RunDirError(
                f"{run.artifact(stage, artifact)}: the Keras model's outputs are not finite (NaN "
                "or inf) on the validation images; it cannot be exported. Retrain the stage"
            )
        variants = export_model(
            model, cfg.model, out_dir, cfg, calib, val.images, val.labels,
            {**context, "stage": stage, "artifact": artifact}, log, reference=reference,
        )  # fmt: skip
        if cfg.qat:
            variants.append(_export_qat(
                run, recipe, cfg, model, out_dir, data, calib, val, reference, context, log
            ))  # fmt: skip
        if cfg.members:
            variants += _export_members(
                run, recipe, cfg, out_dir / "members", calib, val, context, log
            )
        summary = [_row(v) for v in variants]
        atomic.write_json(out_dir / "export.json", {"created": now(), "variants": summary})
        log(summary_table(variants))
        failed = [v for v in variants if not v.passed]
        if failed and not force:
            names = ", ".join(
                f"{v.path.name} ({v.card['parity']['drop_pp']:+.2f} pp)" for v in failed
            )
            raise ParityError(
                f"parity gate failed: {names} lost more than export.tolerance_pp="
                f"{cfg.tolerance_pp} points of accuracy against the Keras model; the files and "
                f"their cards are in {out_dir}. Use --force to accept them, or try --qat."
            )
        return variants


def export_model(
    model: Any,
    name: str,
    out_dir: Path,
    cfg: ExportConfig,
    calib: np.ndarray,
    images: np.ndarray,
    labels: np.ndarray,
    context: dict[str, Any],
    log: Any = print,
    reference: np.ndarray | None = None,
) -> list[Variant]:
    """Every requested format x precision of one Keras model, each checked and carded.

    `reference`: the model's logits on `images`, when the caller already has them.
    """
    from edgekd.models import model_summary_stats
    from edgekd.trainer import predict_logits

    if reference is None:
        reference = predict_logits(model, images)
    stats = model_summary_stats(model)
    variants: list[Variant] = []
    onnx_float: Path | None = None
    unsupported = [
        f"{fmt} {p}" for fmt in cfg.formats for p in cfg.precisions if p not in SUPPORTED[fmt]
    ]
    if unsupported:
        log(f"[export] {name}: no such variant, skipped: {', '.join(unsupported)}")
    for fmt in cfg.formats:
        for precision in cfg.precisions:
            if precision not in SUPPORTED[fmt]:
                continue
            t0 = time.perf_counter()
            try:
                path, note = _convert(model, name, fmt, precision, out_dir, cfg, calib, onnx_float)
            except ImportError as exc:
                variants.append(Variant(name, fmt, precision, None, note=f"skipped: {exc}"))
                continue
            if fmt == "onnx" and precision == "float32":
                onnx_float = path
            variant = Variant(name, fmt, precision, path, note=note)
            variant.card = check_and_card(
                path, fmt, precision, {**context, "model": name, "params": stats["params"],
                "macs": stats["macs"], "convert_s": round(time.perf_counter() - t0, 1)},
                cfg, images, labels, reference, log,
            )  # fmt: skip
            variants.append(variant)
    return variants


def check_and_card(
    path: Path,
    fmt: str,
    precision: str,
    context: dict[str, Any],
    cfg: ExportConfig,
    images: np.ndarray,
    labels: np.ndarray,
    reference: np.ndarray,
    log: Any = print,
) -> dict[str, Any]:
    """Run one exported file with its runtime against the Keras reference; write its card."""
    from edgekd.runtime import load_runner

    card: dict[str, Any] = {
        **context,
        "format": fmt,
        "precision": precision,
        "file": path.name,
        "created": now(),
        "labels": "labels.txt",
        "edgekd": package_versions().get("edgekd"),
    }
    if path.is_file() and path.suffix != ".sh":
        card["size_bytes"] = path.stat().st_size
        card["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    if fmt in ("tflite", "onnx"):
        runner = load_runner(path, threads=cfg.threads, batch_size=min(64, len(images)) or 1)
        card["runtime"] = getattr(runner, "runtime", "")
        card["input"] = {**runner.input.__dict__, "layout": "NHWC", "pixels": "RGB 0..255"}
        card["output"] = {**runner.output.__dict__, "meaning": "logits, labels.txt order"}
        card["parity"] = p = parity(runner, images, labels, reference, cfg.tolerance_pp)
        log(
            f"[export] {path.name}: {100 * p['accuracy']:.2f}% (Keras "
            f"{100 * p['keras_accuracy']:.2f}%), agreement {100 * p['top1_agreement']:.2f}%, "
            + (f"max logit error {p['max_logit_error']:.3g}" if p["finite"] else "outputs NaN/inf")
            + ("" if p["passed"] else "  FAILS the parity gate")
        )
    if fmt == "onnx" and precision == "int8":
        from edgekd.converters.onnx import describe_qdq

        card["qdq"] = describe_qdq(path)
    if path.exists():
        atomic.write_json(path.with_name(path.name + ".json"), card)
    return card


def _convert(
    model: Any,
    name: str,
    fmt: str,
    precision: str,
    out_dir: Path,
    cfg: ExportConfig,
    calib: np.ndarray,
    onnx_float: Path | None,
) -> tuple[Path, str]:
    """Write one file; returns its path and a note for the table."""
    base = out_dir / f"{name}{SUFFIX[precision]}"
    if fmt == "tflite":
        from edgekd.converters.tflite import export_tflite

        io = cfg.int8_io if precision == "int8" else "float32"
        path = export_tflite(
            model, base.with_suffix(".tflite"), precision=precision,
            representative=calib if precision == "int8" else None, io_dtype=io,
        )  # fmt: skip
        return path, f"{io} I/O" if precision == "int8" else ""
    if fmt == "onnx":
        from edgekd.converters.onnx import export_onnx, quantize_onnx_int8

        float_path = out_dir / f"{name}.onnx"
        if precision == "float32":
            return export_onnx(model, float_path), ""
        if onnx_float is None:
            onnx_float = export_onnx(model, float_path)
        return quantize_onnx_int8(onnx_float, base.with_suffix(".onnx"), calib), "Q/DQ"
    if fmt == "tensorrt":
        from edgekd.converters import tensorrt as trt

        onnx_path = out_dir / f"{name}{'-int8' if precision == 'int8' else ''}.onnx"
        if not onnx_path.is_file():
            from edgekd.converters.onnx import export_onnx, quantize_onnx_int8

            float_path = onnx_float or export_onnx(model, out_dir / f"{name}.onnx")
            if precision == "int8":
                quantize_onnx_int8(float_path, onnx_path, calib)
        engine = base.with_suffix(".engine")
        if trt.tensorrt_available():
            return trt.build_engine(onnx_path, engine, _trt_precision(precision)), "TensorRT"
        script = trt.write_trtexec_script(onnx_path, engine, _trt_precision(precision))
        return script, "tensorrt not installed: build on the device with " + script.name
    if fmt == "saved_model":
        path = out_dir / f"{name}_saved_model"
        with atomic.atomic_path(path) as tmp:
            model.export(str(tmp), format="tf_saved_model", verbose=False)
        return path, ""
    raise ValueError(f"unknown format {fmt!r}")


def _export_qat(
    run: RunDir,
    recipe: Recipe,
    cfg: ExportConfig,
    model: Any,
    out_dir: Path,
    data: Any,
    calib: np.ndarray,
    val: Any,
    reference: np.ndarray,
    context: dict[str, Any],
    log: Any,
) -> Variant:
    """Quantisation-aware fine-tuning, then int8 TFLite; the distilled student keeps its
    distillation loss (the teacher's targets at the recipe's final T, once per image)."""
    from edgekd.converters.qat import qat_int8_tflite
    from edgekd.recipe import RampConfig

    section = recipe.generalist if cfg.model == "generalist" else recipe.student
    soft = None
    temperature = 4.0
    lam = 0.0
    if cfg.model == "student":
        from edgekd.ensemble.gated import load_gated_ensemble
        from edgekd.losses import temper

        st = recipe.student
        last = lambda v: v.end if isinstance(v, RampConfig) else v  # noqa: E731
        temperature, lam = last(st.temperature), last(st.soft_weight)
        log(f"[export] QAT: teacher targets for {len(data.train)} training images")
        probs = load_gated_ensemble(run.path).predict(data.train.images).probs
        soft = np.asarray(temper(probs, temperature), np.float32)
    path = out_dir / f"{cfg.model}-int8-qat.tflite"
    t0 = time.perf_counter()
    info = qat_int8_tflite(
        model, path, arch=section.arch, width=section.width,
        num_classes=len(data.class_names), input_shape=tuple(data.train.images.shape[1:]),
        images=data.train.images, labels=data.train.labels, soft_targets=soft,
        temperature=float(temperature), soft_weight=float(lam), epochs=cfg.qat_epochs,
        batch_size=section.batch_size, lr=cfg.qat_lr, calibration=calib, io_dtype=cfg.int8_io,
        seed=recipe.seed, log=log,
    )  # fmt: skip
    from edgekd.models import model_summary_stats

    stats = model_summary_stats(model)
    card = check_and_card(
        path, "tflite", "int8", {**context, "model": cfg.model, "params": stats["params"],
        "macs": stats["macs"], "convert_s": round(time.perf_counter() - t0, 1),
        "qat": {k: v for k, v in info.items() if k != "path"}},
        cfg, val.images, val.labels, reference, log,
    )  # fmt: skip
    variant = Variant(cfg.model, "tflite", "int8", path, card=card, note="QAT")
    return variant


def _trt_precision(precision: str) -> str:
    return {"float32": "fp32", "float16": "fp16", "int8": "int8"}[precision]


def _export_members(
    run: RunDir,
    recipe: Recipe,
    cfg: ExportConfig,
    out_dir: Path,
    calib: np.ndarray,
    val: Any,
    context: dict[str, Any],
    log: Any,
) -> list[Variant]:
    """The generalist and every specialist, plus `ensemble.json` naming their files."""
    from edgekd.ensemble.gated import load_gated_ensemble

    ensemble = load_gated_ensemble(run.path)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out_dir / "labels.txt", "\n".join(context["classes"]) + "\n")
    members = {"generalist": ensemble.generalist}
    members.update({f"specialist_{m}": s for m, s in enumerate(ensemble.specialists)})
    variants: list[Variant] = []
    files: dict[str, dict[str, str]] = {}
    for member, model in members.items():
        if member == "generalist":
            labels = val.labels
        else:
            from edgekd.stages.specialists import specialist_labels

            m = int(member.split("_")[1])
            labels = specialist_labels(val.labels, ensemble.groups[m], ensemble.num_classes)
        got = export_model(
            model, member, out_dir, cfg, calib, val.images, labels,
            {**context, "stage": "generalist" if member == "generalist" else "specialists"}, log,
        )  # fmt: skip
        for v in got:
            if v.path is not None:
                files.setdefault(member, {})[f"{v.format}/{v.precision}"] = v.path.name
        variants += got
    config = ensemble.config(context["classes"])
    config["members"] = {
        "generalist": {"files": files.get("generalist", {}), "outputs": context["classes"]},
        "specialists": [
            {
                "files": files.get(f"specialist_{m}", {}),
                "classes": [context["classes"][c] for c in group],
                "outputs": [context["classes"][c] for c in group]
                + (["<dustbin>"] if ensemble.dustbin else []),
            }
            for m, group in enumerate(ensemble.groups)
        ],
    }
    config["dustbin_layout"] = (
        "each specialist's last output is the dustbin (every class outside its group); its "
        "prior correction is already inside the exported logits"
        if ensemble.dustbin
        else "no dustbin: specialists output their own classes only"
    )
    config["fusion"].update({"tol": 1e-6, "eps": 1e-12, "start": "em step from observed weights"})
    config["input"] = {"layout": "NHWC", "pixels": "RGB 0..255", "shape": list(calib.shape[1:])}
    atomic.write_json(out_dir / "ensemble.json", config)
    return variants


def _row(v: Variant) -> dict[str, Any]:
    p = v.card.get("parity", {})
    return {
        "model": v.name,
        "format": v.format,
        "precision": v.precision,
        "file": v.path.name if v.path else None,
        "size_bytes": v.card.get("size_bytes"),
        "accuracy": p.get("accuracy"),
        "keras_accuracy": p.get("keras_accuracy"),
        "top1_agreement": p.get("top1_agreement"),
        "max_logit_error": p.get("max_logit_error"),
        "passed": v.passed,
        "note": v.note,
    }


def summary_table(variants: list[Variant]) -> str:
    """One row per exported file, like Ultralytics' export summary."""
    rows = []
    for v in variants:
        r = _row(v)
        pct = lambda x: "" if x is None else f"{100 * x:.2f}"  # noqa: E731
        size = r["size_bytes"]
        rows.append([
            v.name, v.format, v.precision, r["file"] or "-",
            "" if size is None else f"{size / 1024:.0f}",
            pct(r["accuracy"]), pct(r["keras_accuracy"]), pct(r["top1_agreement"]),
            "" if r["max_logit_error"] is None else f"{r['max_logit_error']:.3g}",
            ("ok" if v.passed else "FAIL") if v.card.get("parity") else "", v.note,
        ])  # fmt: skip
    headers = ["model", "format", "precision", "file", "KiB", "accuracy %", "Keras %",
               "agreement %", "max logit err", "parity", "note"]  # fmt: skip
    return format_table(headers, rows)
