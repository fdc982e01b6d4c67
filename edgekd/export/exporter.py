"""`edgekd export` as a Python API: convert a run's model, check every file, write its card.

For each format x precision the recipe's `export` section (or the command line) asks for:
convert with the back-end in `edgekd.converters`, run the file with its real runtime
(LiteRT, ONNX Runtime) on held-out validation images, compare with the Keras float model
(accuracy of each, top-1 agreement, largest logit error), and write a model card JSON beside
the file. A file whose accuracy drops by more than `export.tolerance_pp` fails the parity
gate: the export then exits non-zero (unless forced), with the file and its card kept for
inspection. Silent int8 collapse is the most reported export failure in this field.

Layout of the export folder (default `<run>/export/`): `labels.txt`, `<model>.tflite`,
`<model>-int8.tflite`, `<model>.onnx`, `<model>-fp16.onnx`, `<model>-int8.onnx`, ...,
`<model>-int8.trtexec.sh` where TensorRT is absent, one `<file>.json` card per
file, `export.json` (every variant), and with `members`: `members/` holding the generalist
and the specialists in the same formats plus `ensemble.json`.
"""

from __future__ import annotations

import hashlib
import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekd import atomic
from edgekd.contract import (
    ENSEMBLE_FILE,
    FORMATS,
    GENERALIST,
    LABELS_FILE,
    TRTEXEC_SUFFIX,
    ModelCard,
    card_path,
    file_name,
    member_names,
    output_meaning,
    parse_file_name,
    supports,
    variant_key,
    write_card,
    write_ensemble_spec,
)
from edgekd.errors import EdgekdError, RunDirError
from edgekd.recipe import ExportConfig, Recipe, apply_overrides, build_recipe
from edgekd.tables import format_table
from edgekd.training.run import RunDir, now, package_versions

# The back-end of each format (edgekd.contract.FORMATS says which precisions it holds and
# how its files are named): a module whose `convert(model, path, *, precision, calibration,
# io_dtype, reuse)` writes one file. Imported on first use: they need TensorFlow.
CONVERTERS: dict[str, str] = {
    "tflite": "edgekd.converters.tflite",
    "onnx": "edgekd.converters.onnx",
    "tensorrt": "edgekd.converters.tensorrt",
    "saved_model": "edgekd.converters.saved_model",
}
# Formats whose files export runs here for the parity check (a TensorRT engine is built
# and run on the device; a SavedModel is what the Keras model already computes).
PARITY_FORMATS = ("tflite", "onnx")
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
    flavour: str = ""  # "cpu": the int8 ONNX file for ONNX Runtime's CPU provider

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

        from edgekd.data.dataset import prepare_data

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
        atomic.write_text(out_dir / LABELS_FILE, "\n".join(data.class_names) + "\n")
        context = {"run": str(run.path), "recipe": recipe.name, "classes": data.class_names}

        from edgekd.training.trainer import predict_logits

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
    *,
    output: str | None = None,
    outputs: list[str] | None = None,
) -> list[Variant]:
    """Every requested format x precision of one Keras model, each checked and carded.

    `reference`: the model's logits on `images`, when the caller already has them.
    `output`: "probabilities" exports the model with a softmax after its logits (parity then
    compares probabilities); defaults to `cfg.output`. `outputs`: the name of each output,
    for the `.tflite` files' metadata; defaults to the context's classes (neither: none).
    """
    from edgekd.training.models import model_summary_stats
    from edgekd.training.trainer import predict_logits

    if reference is None:
        reference = predict_logits(model, images)
    stats = model_summary_stats(model)
    output = cfg.output if output is None else output
    if output == "probabilities":
        from edgekd.maths.fusion import softmax

        model, reference = _with_softmax(model), softmax(reference)
    outputs = context.get("classes") if outputs is None else outputs
    if outputs is None and "tflite" in cfg.formats:
        log(f"[export] {name}: no class names given, its .tflite files carry no metadata")
    variants: list[Variant] = []
    written: dict[str, Path] = {}  # this model's files so far, by format/precision
    unsupported = [
        f"{fmt} {p}" for fmt in cfg.formats for p in cfg.precisions if not supports(fmt, p)
    ]
    if unsupported:
        log(f"[export] {name}: no such variant, skipped: {', '.join(unsupported)}")
    pairs = [(f, p) for f in cfg.formats for p in cfg.precisions if supports(f, p)]
    for fmt, precision in pairs:
        cpu_flavours = [False]
        if (fmt, precision) == ("onnx", "int8"):  # the TensorRT Q/DQ file and/or the ORT CPU one
            cpu_flavours = [f == "cpu" for f in cfg.onnx_int8]
        for cpu in cpu_flavours:
            io = cfg.int8_io if precision in FORMATS[fmt].integer_io else "float32"
            t0 = time.perf_counter()
            try:
                convert = importlib.import_module(CONVERTERS[fmt]).convert
                path = convert(
                    model, out_dir / file_name(name, fmt, precision, cpu=cpu),
                    precision=precision, calibration=calib, io_dtype=io, reuse=written,
                )  # fmt: skip
            except ImportError as exc:
                variants.append(Variant(name, fmt, precision, None, note=f"skipped: {exc}"))
                continue
            if fmt == "tflite" and outputs is not None:
                embed_tflite_metadata(path, cfg, name, context, list(outputs), output)
            if not cpu:  # reuse["onnx/int8"] is the TensorRT Q/DQ file a TensorRT build takes
                written[variant_key(fmt, precision)] = path
            note = "uint8 Q/DQ, ORT CPU" if cpu else _note(fmt, precision, io, path)
            variant = Variant(name, fmt, precision, path, note=note, flavour="cpu" if cpu else "")
            variant.card = check_and_card(
                path, fmt, precision, {**context, "model": name, "params": int(stats["params"]),
                "macs": int(stats["macs"]), "convert_s": round(time.perf_counter() - t0, 1)},
                cfg, images, labels, reference, log, output=output,
            )  # fmt: skip
            variants.append(variant)
    return variants


def _with_softmax(model: Any) -> Any:
    """`model` followed by a softmax: probabilities out instead of logits."""
    import keras

    return keras.Sequential([model, keras.layers.Softmax()], name=model.name)


def embed_tflite_metadata(
    path: Path,
    cfg: ExportConfig,
    model: str,
    context: dict[str, Any],
    outputs: list[str],
    output: str = "logits",
) -> None:
    """The TFLite metadata MediaPipe Tasks' ImageClassifier reads, into the `.tflite` file at
    `path`: the output names as `labels.txt`, the input's normalisation (mean 0, std 1: raw
    pixels), size and colour space, and `export.metadata`'s name, version and licence."""
    from edgekd.converters.tflite_metadata import embed_metadata

    meta = cfg.metadata
    recipe = context.get("recipe") or "edgekd"
    embed_metadata(
        path, outputs, labels_file=LABELS_FILE, output=output,
        name=meta.name or f"{recipe}-{model}", version=meta.version,
        description=meta.description or (
            f"{model} of edgekd recipe {recipe}: an image classifier over {len(outputs)} "
            f"classes; RGB pixels 0..255 in, {output_meaning(output)}"
        ),
        author=meta.author, license=meta.license,
    )  # fmt: skip


def _note(fmt: str, precision: str, io_dtype: str, path: Path) -> str:
    """What the summary table says about a file beyond its format and precision."""
    if path.name.endswith(TRTEXEC_SUFFIX):
        return "tensorrt not installed: build on the device with " + path.name
    if fmt == "tensorrt":
        return "TensorRT"
    if precision in FORMATS[fmt].integer_io:
        return f"{io_dtype} I/O"
    return {("onnx", "int8"): "Q/DQ", ("onnx", "float16"): "float32 I/O"}.get((fmt, precision), "")


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
    *,
    output: str = "logits",
) -> dict[str, Any]:
    """Run one exported file with its runtime against the Keras reference; write its card.

    `output`: what the file outputs, "logits" or "probabilities" (then `reference` holds the
    Keras probabilities).

    Returns the card as JSON types (`edgekd.contract.ModelCard.to_json`).
    """
    from edgekd.device.runtime import load_runner

    card = ModelCard.from_json(
        {
            **context,
            "format": fmt,
            "precision": precision,
            "file": path.name,
            "created": now(),
            "labels": LABELS_FILE,
            "edgekd": package_versions().get("edgekd"),
        },
        card_path(path),
    )
    if path.is_file() and not path.name.endswith(TRTEXEC_SUFFIX):
        card.size_bytes = path.stat().st_size
        card.sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    parsed = parse_file_name(path.name)
    tensorrt_qdq = fmt == "onnx" and precision == "int8" and not (parsed and parsed.cpu)
    if fmt in PARITY_FORMATS:
        # The TensorRT Q/DQ file is checked as its operators define it (what TensorRT
        # computes), not through ORT's x86 int8 kernels, which saturate without VNNI.
        options = {"reference": True} if tensorrt_qdq else {}
        runner = load_runner(
            path, threads=cfg.threads, batch_size=min(64, len(images)) or 1, **options
        )
        card.runtime = getattr(runner, "runtime", "")
        if tensorrt_qdq:
            card.runtime += " (reference: graph optimisations off, Q/DQ as defined)"
        card.input = {**runner.input.__dict__, "layout": "NHWC", "pixels": "RGB 0..255"}
        card.output = {**runner.output.__dict__, "meaning": output_meaning(output)}
        card.parity = p = parity(runner, images, labels, reference, cfg.tolerance_pp)
        log(
            f"[export] {path.name}: {100 * p['accuracy']:.2f}% (Keras "
            f"{100 * p['keras_accuracy']:.2f}%), agreement {100 * p['top1_agreement']:.2f}%, "
            + (f"max logit error {p['max_logit_error']:.3g}" if p["finite"] else "outputs NaN/inf")
            + ("" if p["passed"] else "  FAILS the parity gate")
        )
    if fmt == "onnx" and precision == "int8":
        from edgekd.converters.onnx import describe_int8

        card.flavour = None if tensorrt_qdq else "cpu"
        card.qdq, card.quantization = describe_int8(path, flavour=card.flavour or "tensorrt")
    if path.exists():
        write_card(path, card)
    return card.to_json()


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
    temperature, lam = 1.0, 0.0  # hard labels alone unless the model is the distilled student
    if cfg.model == "student":
        from edgekd.training.ensemble.gated import load_gated_ensemble
        from edgekd.training.losses import temper

        st = recipe.student
        last = lambda v: v.end if isinstance(v, RampConfig) else v  # noqa: E731
        temperature, lam = last(st.temperature), last(st.soft_weight)
        log(f"[export] QAT: teacher targets for {len(data.train)} training images")
        probs = load_gated_ensemble(run.path).predict(data.train.images).probs
        soft = np.asarray(temper(probs, temperature), np.float32)
    path = out_dir / file_name(cfg.model, "tflite", "int8", qat=True)
    t0 = time.perf_counter()
    info = qat_int8_tflite(
        model, path, arch=section.arch, width=section.width,
        num_classes=len(data.class_names), input_shape=tuple(data.train.images.shape[1:]),
        images=data.train.images, labels=data.train.labels, soft_targets=soft,
        temperature=float(temperature), soft_weight=float(lam), epochs=cfg.qat_epochs,
        batch_size=section.batch_size, lr=cfg.qat_lr, calibration=calib, io_dtype=cfg.int8_io,
        label_smoothing=section.label_smoothing, seed=recipe.seed, log=log,
    )  # fmt: skip
    from edgekd.training.models import model_summary_stats

    embed_tflite_metadata(path, cfg, cfg.model, context, list(data.class_names))  # logits
    stats = model_summary_stats(model)
    card = check_and_card(
        path, "tflite", "int8", {**context, "model": cfg.model, "params": int(stats["params"]),
        "macs": int(stats["macs"]), "convert_s": round(time.perf_counter() - t0, 1),
        "qat": {k: v for k, v in info.items() if k != "path"}},
        cfg, val.images, val.labels, reference, log,
    )  # fmt: skip
    variant = Variant(cfg.model, "tflite", "int8", path, card=card, note="QAT")
    return variant


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
    from edgekd.maths.specialist import specialist_labels
    from edgekd.training.ensemble.gated import load_gated_ensemble

    ensemble = load_gated_ensemble(run.path)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out_dir / LABELS_FILE, "\n".join(context["classes"]) + "\n")
    names = member_names(len(ensemble.groups))
    models = [ensemble.generalist, *ensemble.specialists]
    variants: list[Variant] = []
    files: dict[str, dict[str, str]] = {name: {} for name in names}
    outputs = ensemble.spec(context["classes"]).outputs  # each member's output names
    for m, (member, model) in enumerate(zip(names, models, strict=True), start=-1):
        if member == GENERALIST:
            labels = val.labels
        else:
            labels = specialist_labels(val.labels, ensemble.groups[m], ensemble.num_classes)
        got = export_model(
            model, member, out_dir, cfg, calib, val.images, labels,
            {**context, "stage": "generalist" if member == GENERALIST else "specialists"}, log,
            output="logits", outputs=outputs(member),  # ensemble.json fuses members' logits
        )  # fmt: skip
        for v in got:
            if v.path is not None and not v.flavour:  # ensemble.json: one file per variant
                files[member][variant_key(v.format, v.precision)] = v.path.name
        variants += got
    spec = ensemble.spec(context["classes"], members=files, input_shape=tuple(calib.shape[1:]))
    write_ensemble_spec(out_dir / ENSEMBLE_FILE, spec)
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
