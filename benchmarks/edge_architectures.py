"""Edge architectures side by side: size, cost, int8 TFLite size and parity, LiteRT latency.

    python benchmarks/edge_architectures.py [--archs a,b,...] [--size 96]
        [--width published|tiny|N] [--train-images 300] [--epochs 3] [--runs 100] [--out DIR]

For each architecture (default: every edge architecture of the registry, see `EDGE_ARCHS`):

1. builds the published network (the spec's default width, 1000 classes, 224 px) only to
   count its weights and MACs, and frees it;
2. builds the benchmarked model: 10 classes, `--size` px, `--width` (`published`: the spec's
   default width; `tiny`: the widths of tests/test_edge_models.py; or a number: channels of
   the first stage for ResNets, width multiplier in percent for MobileNets/EfficientNet);
3. trains it briefly (Adam, sparse cross-entropy from logits, batch 32, `--epochs`, eager) on
   "smoke data": a seeded, class-balanced sample of `--train-images` real CIFAR-10 JPEGs,
   upscaled to `--size` px, then sets its BatchNormalization statistics from the training
   images (as tests/test_edge_models.py's `train_briefly` does);
4. exports float32 and int8 (uint8 I/O) `.tflite` files with `edgekd.export.export_model`,
   int8 calibrated on up to 256 of the training images, and scores both files on 200 other
   held-out CIFAR-10 images;
5. times batch-1 inference of the two files with LiteRT on this host, 1 thread, XNNPACK (the
   default), in this one process: 10 warm-up runs of each, then `--runs` runs of each,
   interleaved (the order flips every round), through the runner `edgekd bench` uses.

THIS TESTS THE MACHINERY, NOT ACCURACY: a few hundred images and a few epochs from scratch
leave every model far from its real accuracy (the figures only need to be above the 10% of
chance so that the int8-vs-float comparison means something). Latencies are for this host,
with whatever else it is running; compare rows of one run, not runs of different hosts.

Columns of the table (one row per architecture; all rows also go to
`<out>/edge_architectures.json`, rewritten after each architecture, with the raw numbers,
the Keras and float32 `.tflite` accuracies, top-1 agreement and McNemar's p):

- arch, width, size px: the benchmarked model (width as `--width` resolved it).
- params (224 px published), MACs (224 px published): the published network, all weights
  (BatchNormalization statistics included) and multiply-accumulates of one image as
  `edgekd.training.models.count_params` / `count_macs` count them.
- params (here), MACs (here): the same for the benchmarked model (10 classes, `--size` px).
- int8 .tflite KiB: size of the int8 file (uint8 input/output, TFLite metadata embedded).
- float acc %: the float Keras model's top-1 on the 200 held-out images (the parity gate's
  reference; the float32 `.tflite` file matches it, see the JSON).
- int8 acc %: the int8 `.tflite` file's top-1 on the same images.
- int8-float [95% CI]: their paired difference in points and its 95% bootstrap interval
  over images (`edgekd.maths.stats.compare_paired`).
- LiteRT fp32 p50 ms, LiteRT int8 p50 ms: median batch-1 latency of the float32 and the int8
  file, input quantisation and output dequantisation included (what `edgekd bench` times).

A step that fails (an architecture whose int8 conversion fails, say) is reported in its
progress line and the row's `errors`; the other steps and architectures still run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The edge architectures of the registry, in the order of the table.
EDGE_ARCHS = (
    "mobilenetv2",
    "mobilenetv3small",
    "mobilenetv3small_minimalistic",
    "mobilenetv3large",
    "mobilenetv3large_minimalistic",
    "efficientnet_lite0",
    "resnet18_imagenet",
    "resnet50",
)
# `--width tiny`: the widths of the tiny test models (tests/test_edge_models.py's EDGE).
TINY_WIDTHS = {
    "mobilenetv2": 35,
    "mobilenetv3small": 35,
    "mobilenetv3small_minimalistic": 35,
    "mobilenetv3large": 35,
    "mobilenetv3large_minimalistic": 35,
    "efficientnet_lite0": 25,
    "resnet18_imagenet": 8,
    "resnet50": 8,
}
DATA = Path(
    os.environ.get(
        "EDGEKD_CIFAR_JPEG",
        Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg" / "train",
    )
)
HELD_OUT = 200  # images scored by both files, balanced over the classes
CALIBRATION = 256  # most training images the int8 calibration takes
BATCH = 32
WARMUP = 10
PUBLISHED_SIZE = 224
PUBLISHED_CLASSES = 1000

HEADERS = [
    "arch", "width", "size px", "params (224 px published)", "MACs (224 px published)",
    "params (here)", "MACs (here)", "int8 .tflite KiB", "float acc %", "int8 acc %",
    "int8\u2212float [95% CI]", "LiteRT fp32 p50 ms", "LiteRT int8 p50 ms",
]  # fmt: skip


def log(msg: str) -> None:
    print(msg, flush=True)


def si(n: int | None) -> str:
    """3540000 -> '3.54M', 56_000_000 -> '56.0M', 1.81e9 -> '1.81G'."""
    if n is None:
        return "-"
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            value = n / scale
            return f"{value:.3g}{unit}" if value < 100 else f"{value:.0f}{unit}"
    return str(n)


def resolve_width(arch: str, width: str) -> int:
    """The width `--width` means for `arch`: published, tiny or a number."""
    from edgekd.training.models.registry import get_arch_spec

    spec = get_arch_spec(arch)
    if width == "published":
        return spec.default_width
    if width == "tiny":
        # Architectures outside the test table: width 8 for ResNets (64 published), 35%.
        return TINY_WIDTHS.get(arch, 8 if spec.default_width == 64 else 35)
    return int(width)


class SmokeData(NamedTuple):
    """Training and held-out images (uint8, N x size x size x 3), labels, class names."""

    train_x: np.ndarray
    train_y: np.ndarray
    held_x: np.ndarray
    held_y: np.ndarray
    classes: list[str]


def smoke_data(root: Path, train_images: int, size: int, seed: int) -> SmokeData:
    """Seeded, class-balanced training and held-out images of `root`, resized to `size` px.

    The images are chosen per class before decoding, decoded at their own size (and cached
    by `load_source`, so a second run reads one file), then resized with Pillow's bilinear
    filter (`resize_images`).
    """
    from edgekd.data import load_source
    from edgekd.data.folder import scan_folder
    from edgekd.data.imageset import resize_images

    k = len(scan_folder(root).class_names)
    base, extra = divmod(train_images, k)
    n_train = [base + (c < extra) for c in range(k)]
    n_held = [HELD_OUT // k + (c < HELD_OUT % k) for c in range(k)]
    dataset = load_source(
        f"folder:{root}", limit_per_class=max(n_train) + max(n_held), seed=seed, progress=False
    )
    images, labels = dataset.train.images, dataset.train.labels
    rng = np.random.default_rng(seed)
    train_idx, held_idx = [], []
    for c in range(k):
        members = rng.permutation(np.flatnonzero(labels == c))
        if len(members) < n_train[c] + n_held[c]:
            raise SystemExit(
                f"{root}: class {dataset.class_names[c]} has {len(members)} images, "
                f"{n_train[c] + n_held[c]} needed"
            )
        train_idx.append(members[: n_train[c]])
        held_idx.append(members[n_train[c] : n_train[c] + n_held[c]])
    train = rng.permutation(np.concatenate(train_idx))
    held = np.sort(np.concatenate(held_idx))
    return SmokeData(
        resize_images(images[train], size),
        labels[train].astype(np.int32),
        resize_images(images[held], size),
        labels[held].astype(np.int32),
        list(dataset.class_names),
    )


def logits_of(model: Any, images: np.ndarray, chunk: int = 50) -> np.ndarray:
    """Float logits of the Keras model, eagerly (no predict function to trace)."""
    import keras

    parts = [
        keras.ops.convert_to_numpy(model(images[s : s + chunk].astype(np.float32), training=False))
        for s in range(0, len(images), chunk)
    ]
    return np.concatenate(parts).astype(np.float32)


def train_briefly(
    model: Any, images: np.ndarray, labels: np.ndarray, epochs: int, lr: float
) -> float:
    """Adam from scratch, then BatchNormalization statistics set from the training images.

    Eager: tracing a training step costs about a minute on two cores, more than a few dozen
    eager steps. Returns the last epoch's training loss.
    """
    import keras

    model.compile(
        keras.optimizers.Adam(lr),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        run_eagerly=True,
    )
    history = model.fit(
        images.astype(np.float32), labels, batch_size=BATCH, epochs=epochs, verbose=0
    )
    # A young network's moving statistics lag its weights, and int8 calibration then sees
    # activations the float model does not: set them from one pass over training images.
    norms = [la for la in model.layers if isinstance(la, keras.layers.BatchNormalization)]
    momenta = [la.momentum for la in norms]
    for layer in norms:
        layer.momentum = 0.0
    model(images[:CALIBRATION].astype(np.float32), training=True)
    for layer, momentum in zip(norms, momenta, strict=True):
        layer.momentum = momentum
    return float(history.history["loss"][-1])


def time_interleaved(paths: dict[str, Path], images: np.ndarray, runs: int) -> dict[str, float]:
    """Median batch-1 latency (ms) of each file with LiteRT, 1 thread, XNNPACK; interleaved."""
    from edgekd.device.runtime import load_runner

    runners = {k: load_runner(p, threads=1, batch_size=1) for k, p in paths.items()}
    n = len(images)
    for i in range(WARMUP):
        for runner in runners.values():
            runner.predict(images[i % n][None])
    times: dict[str, list[float]] = {k: [] for k in runners}
    order = list(runners)
    for i in range(runs):  # round-robin, order flipped each round: a neighbour hits all alike
        x = images[i % n][None]
        for k in order if i % 2 == 0 else order[::-1]:
            t0 = time.perf_counter_ns()
            runners[k].predict(x)
            times[k].append((time.perf_counter_ns() - t0) / 1e6)
    return {k: statistics.median(v) for k, v in times.items()}


def benchmark(arch: str, args: argparse.Namespace, data: SmokeData, out: Path) -> dict[str, Any]:
    """Every step for one architecture; a failed step is recorded and the rest still run."""
    import keras

    from edgekd.device.runtime import load_runner
    from edgekd.export.exporter import export_model, representative_images
    from edgekd.maths.stats import compare_paired
    from edgekd.recipe import ExportConfig
    from edgekd.training.models import build_model, count_macs, count_params
    from edgekd.training.models.registry import get_arch_spec

    train_x, train_y, held_x, held_y, classes = data
    spec = get_arch_spec(arch)
    width, size = resolve_width(arch, args.width), args.size
    row: dict[str, Any] = {"arch": arch, "width": width, "size": size, "errors": {}}
    t_arch = time.perf_counter()

    def step(name: str, msg: str, t0: float) -> None:
        log(f"[{arch}] {name}: {msg} ({time.perf_counter() - t0:.1f} s)")

    def failed(name: str, exc: BaseException) -> None:
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        row["errors"][name] = detail
        log(f"[{arch}] {name}: FAILED: {detail.splitlines()[-1][:300]}")

    t0 = time.perf_counter()
    try:
        shape = (PUBLISHED_SIZE, PUBLISHED_SIZE, 3)
        published = build_model(arch, num_classes=PUBLISHED_CLASSES, input_shape=shape)
        row["published_params"] = count_params(published)
        row["published_macs"] = count_macs(published)
        row["published_width"] = spec.default_width
        del published
        step("1/5 published", f"width {spec.default_width}, {PUBLISHED_SIZE} px, "
             f"{PUBLISHED_CLASSES} classes: {si(row['published_params'])} params, "
             f"{si(row['published_macs'])} MACs", t0)  # fmt: skip
    except Exception as exc:  # reported in the row; the run goes on
        failed("published", exc)
    finally:
        keras.backend.clear_session()
        gc.collect()

    t0 = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    try:
        model = build_model(arch, num_classes=len(classes), width=width,
                            input_shape=(size, size, 3))  # fmt: skip
        row["params"], row["macs"] = count_params(model), count_macs(model)
        loss = train_briefly(model, train_x, train_y, args.epochs, args.lr)
        reference = logits_of(model, held_x)
        row["train_loss"] = loss
        row["keras_accuracy"] = float((reference.argmax(1) == held_y).mean())
        step("2/5 trained", f"width {width}, {size} px: {si(row['params'])} params, "
             f"{si(row['macs'])} MACs; {len(train_x)} images x {args.epochs} epoch(s), loss "
             f"{loss:.3f}, held-out {100 * row['keras_accuracy']:.1f}%", t0)  # fmt: skip
    except Exception as exc:
        failed("train", exc)
        keras.backend.clear_session()
        return row

    calib = representative_images(train_x, train_y, min(CALIBRATION, len(train_x)), args.seed)
    context = {"run": "edge_architectures", "classes": classes}
    folder = out / arch
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    predictions: dict[str, np.ndarray] = {}
    for i, precision in enumerate(("float32", "int8")):
        t0 = time.perf_counter()
        try:  # one precision a call, so that a failed int8 conversion keeps the float32 file
            cfg = ExportConfig(
                formats=("tflite",), precisions=(precision,), tolerance_pp=100.0, threads=1
            )
            (variant,) = export_model(
                model, arch, folder, cfg, calib, held_x, held_y, context,
                log=lambda m: log(f"[{arch}]   {m}"), reference=reference,
            )  # fmt: skip
            if variant.path is None:
                raise RuntimeError(variant.note or "no file written")
            files[precision] = variant.path
            parity = variant.card.get("parity", {})
            kib = variant.path.stat().st_size / 1024
            row[f"{precision}_kib"] = kib
            row[f"{precision}_parity"] = parity
            scores = load_runner(variant.path, threads=1, batch_size=50).predict(held_x)
            predictions[precision] = scores.argmax(1)
            step(f"{3 + i}/5 {precision} .tflite", f"{kib:.0f} KiB, held-out "
                 f"{100 * parity.get('accuracy', float('nan')):.1f}%, agreement with Keras "
                 f"{100 * parity.get('top1_agreement', float('nan')):.1f}%", t0)  # fmt: skip
        except Exception as exc:
            failed(f"export {precision}", exc)
    del model
    keras.backend.clear_session()
    gc.collect()

    float_correct = reference.argmax(1) == held_y
    if "int8" in predictions:
        c = compare_paired("float", float_correct, "int8", predictions["int8"] == held_y,
                           seed=args.seed)  # fmt: skip
        row["int8_vs_float"] = c.to_dict()
    if "float32" in predictions:
        row["float32_tflite_accuracy"] = float((predictions["float32"] == held_y).mean())

    t0 = time.perf_counter()
    if files:
        try:
            medians = time_interleaved(files, held_x, args.runs)
            row["latency_ms"] = medians
            step("5/5 LiteRT", ", ".join(f"{k} p50 {v:.3f} ms" for k, v in medians.items())
                 + f" (1 thread, XNNPACK, {args.runs} runs each, interleaved)", t0)  # fmt: skip
        except Exception as exc:
            failed("latency", exc)
    row["seconds"] = round(time.perf_counter() - t_arch, 1)
    return row


def table_row(r: dict[str, Any]) -> list[str]:
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}"  # noqa: E731
    ms = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    c = r.get("int8_vs_float")
    diff = "-"
    if c:
        lo, d, hi = (100 * c[k] for k in ("ci_low", "difference", "ci_high"))
        diff = f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]"
    lat = r.get("latency_ms", {})
    kib = r.get("int8_kib")
    return [
        r["arch"], str(r["width"]), str(r["size"]),
        si(r.get("published_params")), si(r.get("published_macs")),
        si(r.get("params")), si(r.get("macs")),
        "-" if kib is None else f"{kib:.0f}",
        pct(r.get("keras_accuracy")), pct(c["accuracy_b"] if c else None), diff,
        ms(lat.get("float32")), ms(lat.get("int8")),
    ]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--archs",
        default=",".join(EDGE_ARCHS),
        help="comma-separated registry names (default: the edge architectures)",
    )
    ap.add_argument("--size", type=int, default=96, help="input side in px (default 96)")
    ap.add_argument(
        "--width",
        default="published",
        help="published (default), tiny (the test models' widths) or a number",
    )
    ap.add_argument("--train-images", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--runs", type=int, default=100, help="timed runs of each file")
    ap.add_argument("--out", default=None, help="folder for the files and JSON (default: temp)")
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=str(DATA),
                    help="image folder, one sub-folder per class (default: CIFAR-10 JPEGs, "
                    "or $EDGEKD_CIFAR_JPEG)")  # fmt: skip
    args = ap.parse_args()

    from edgekd.training.models.registry import get_arch_spec

    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    if args.width not in ("published", "tiny"):
        try:
            if int(args.width) < 1:
                raise ValueError
        except ValueError:
            ap.error(f"--width must be published, tiny or a positive integer, not {args.width}")
    for flag, value in (("--train-images", args.train_images), ("--epochs", args.epochs),
                        ("--runs", args.runs), ("--size", args.size)):  # fmt: skip
        if value < 1:
            ap.error(f"{flag} must be >= 1, got {value}")
    for arch in archs:
        try:
            spec = get_arch_spec(arch)
        except ValueError as exc:
            ap.error(str(exc))
        if args.size < spec.min_size:
            ap.error(f"{arch} needs --size >= {spec.min_size}, got {args.size}")
    out = Path(args.out or tempfile.mkdtemp(prefix="edgekd-edge-archs-"))
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    data = smoke_data(Path(args.data), args.train_images, args.size, args.seed)
    log(
        f"[data] {len(data.train_x)} training and {len(data.held_x)} held-out images of "
        f"{args.data}, {len(data.classes)} classes, at {args.size} px "
        f"({time.perf_counter() - t0:.1f} s)"
    )

    import tensorflow as tf

    rows: list[dict[str, Any]] = []
    json_path = out / "edge_architectures.json"
    for arch in archs:
        rows.append(benchmark(arch, args, data, out))
        meta = {"args": vars(args), "tensorflow": tf.__version__, "rows": rows}
        json_path.write_text(json.dumps(meta, indent=2, default=str) + "\n")
    log("")
    log(
        f"{len(data.train_x)} training images x {args.epochs} epoch(s) from scratch (tests the "
        f"machinery, not accuracy); accuracy on {len(data.held_x)} held-out images; LiteRT "
        f"batch 1, "
        f"1 thread, XNNPACK, median of {args.runs} interleaved runs on this host"
    )
    from edgekd.tables import format_table

    log(format_table(HEADERS, [table_row(r) for r in rows]))
    failures = {r["arch"]: r["errors"] for r in rows if r["errors"]}
    for arch, errors in failures.items():
        for name, detail in errors.items():
            log(f"{arch}: {name} failed: {detail.splitlines()[-1][:300]}")
    log(f"rows: {json_path}")


if __name__ == "__main__":
    main()
