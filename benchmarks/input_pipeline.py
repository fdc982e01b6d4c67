"""Does the input pipeline hold the training step back, and does memory grow with the data?

    python benchmarks/input_pipeline.py throughput [--steps 30]
    python benchmarks/input_pipeline.py rss [--counts 5000,20000] [--arch A] [--width W]

Make the 224-px folder first (CIFAR-10 JPEGs upscaled: it tests the machinery, not accuracy):

    python benchmarks/upscaled_cifar.py --size 224 --per-class 2000 --out datasets/cifar10-224

**throughput** (TensorFlow backend, this process). For 32 px (the CIFAR-10 JPEG folder, the
`cifar10-cpu` generalist ResNet-14 w16, pad-crop and flip) and 224 px (the upscaled folder,
`folder-128`'s student MobileNetV3-Small minimalistic at 224 px, random resized crop and
flip), it prints images/s of:

- *pipeline alone*: the training batches (shuffled, augmented, float32) pulled through the
  `tf.data` dataset Keras builds from them for `fit`, with no model, from memory and streamed
  from the on-disk store;
- *step alone*: `fit` on one batch held as a tensor and repeated, so no input work at all;
  every rate leaves out the first 3 batches (tracing, starting threads, filling queues);
- *fit*: `fit` on the real batches, from memory and streamed: what training runs at.

The pipeline never holds the step back when *pipeline alone* is well above *step alone* and
*fit* matches *step alone*. On a 2-core machine the batch threads and the step share the
cores, so *fit* is slightly below *step alone* even then.

**rss** runs `edgekd train` (generalist stage, one epoch, `--arch`/`--width`, 224 px) in a
child process per case, on `--counts` images of the 224-px folder, with `data.pipeline`
memory and stream, and prints each child's peak resident set (`ru_maxrss` from `wait4`) and
wall time. A fresh cache folder is used and deleted, so every case decodes from the JPEGs
(the memory path also writes its `.npz` cache entry, the stream path its store).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CIFAR = Path(
    os.environ.get("EDGEKD_CIFAR_JPEG", ROOT.parent / "shared" / "data" / "cifar10-jpeg" / "train")
)
FOLDER_224 = ROOT / "datasets" / "cifar10-224"


def _table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = [" | ".join(c.ljust(widths[c]) for c in columns)]
    lines.append("-|-".join("-" * widths[c] for c in columns))
    lines += [" | ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


WARM_UP = 3  # batches left out of every rate: tracing, starting threads, filling queues


def _fit_rate(model, data, steps: int, batch: int) -> int:
    """Images/s of `model.fit` over `steps` batches of `data`, timed between the ends of
    batch `WARM_UP` and of the last batch."""
    import keras

    ends: list[float] = []
    clock = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: ends.append(time.perf_counter())
    )
    model.fit(data, epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0, callbacks=[clock])
    return round((steps - WARM_UP) * batch / (ends[-1] - ends[WARM_UP - 1]))


def throughput(args: argparse.Namespace) -> None:
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    import keras
    import numpy as np
    import tensorflow as tf
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    from edgekd.data import Augment, ImageBatches, load_source
    from edgekd.training.models import build_model

    cases = [
        {
            "size": "32 px", "source": f"folder:{CIFAR}", "image_size": None,
            "per_class": args.per_class_32, "arch": "resnet14", "width": 16, "batch": 128,
            "augment": Augment(),
        },
        {
            "size": "224 px", "source": f"folder:{FOLDER_224}", "image_size": 224,
            "per_class": args.per_class_224, "arch": "mobilenetv3small_minimalistic",
            "width": 100, "batch": 64, "augment": Augment(crop="resized", scale=(0.35, 1.0)),
        },
    ]  # fmt: skip
    cache = Path(tempfile.mkdtemp(prefix="edgekd-bench-cache-"))
    rows = []
    try:
        for case in cases:
            loaded = {
                pipeline: load_source(
                    case["source"], limit_per_class=case["per_class"],
                    image_size=case["image_size"], cache_dir=cache, pipeline=pipeline,
                )  # fmt: skip
                for pipeline in ("memory", "stream")
            }
            row = {"size": case["size"], "model": f"{case['arch']} w{case['width']}",
                   "batch": case["batch"], "images": len(loaded["memory"].train)}  # fmt: skip

            def batches(pipeline: str, loaded=loaded, case=case) -> ImageBatches:
                train = loaded[pipeline].train
                return ImageBatches(
                    train.images, train.labels, batch_size=case["batch"], shuffle=True,
                    augment=case["augment"], seed=0, drop_remainder=True,
                )  # fmt: skip

            steps = min(args.steps, len(batches("memory")))
            for pipeline in ("memory", "stream"):
                adapter = PyDatasetAdapter(batches(pipeline), shuffle=False)
                dataset = adapter.get_tf_dataset()
                adapter.on_epoch_begin()
                iterator = iter(dataset)
                for _ in range(WARM_UP):
                    next(iterator)
                start = time.perf_counter()
                for _ in range(steps - WARM_UP):
                    next(iterator)
                seconds = time.perf_counter() - start
                adapter.on_epoch_end()
                rate = (steps - WARM_UP) * case["batch"] / seconds
                row[f"pipeline alone {pipeline}"] = round(rate)
                print(f"{case['size']} pipeline alone ({pipeline}): "
                      f"{row[f'pipeline alone {pipeline}']} img/s", flush=True)  # fmt: skip

            shape = loaded["memory"].train.images.shape[1:]
            model = build_model(case["arch"], num_classes=10, width=case["width"],
                                input_shape=shape)  # fmt: skip
            model.compile(
                optimizer=keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                jit_compile=False,
            )
            x = np.random.default_rng(0).integers(0, 256, (case["batch"], *shape)).astype("float32")
            y = np.arange(case["batch"]) % 10
            repeated = tf.data.Dataset.from_tensors((x, y)).repeat()
            row["step alone"] = _fit_rate(model, repeated, steps, case["batch"])
            print(f"{case['size']} step alone: {row['step alone']} img/s", flush=True)
            for pipeline in ("memory", "stream"):
                row[f"fit {pipeline}"] = _fit_rate(model, batches(pipeline), steps, case["batch"])
                print(f"{case['size']} fit ({pipeline}): {row[f'fit {pipeline}']} img/s",
                      flush=True)  # fmt: skip
            rows.append(row)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    columns = ["size", "model", "batch", "images", "pipeline alone memory",
               "pipeline alone stream", "step alone", "fit memory", "fit stream"]  # fmt: skip
    print(f"\ninput pipeline vs training step, images/s ({args.steps} steps; "
          f"{os.cpu_count()} CPUs)\n" + _table(rows, columns))  # fmt: skip


RSS_RECIPE = """\
name: rss
seed: 0
data:
  path: folder:{folder}
  image_size: 224
  limit_per_class: {per_class}
  val_fraction: 0.1
  pipeline: {pipeline}
  cache_dir: {cache}
  augment:
    crop: resized
    crop_scale: [0.35, 1.0]
generalist:
  arch: {arch}
  width: {width}
  epochs: 1
  batch_size: 64
  schedule:
    warmup_epochs: 0.1
train:
  stages: [generalist]
  tensorboard: false
"""


def rss(args: argparse.Namespace) -> None:
    rows = []
    for count in [int(c) for c in args.counts.split(",")]:
        for pipeline in ("stream", "memory"):
            work = Path(tempfile.mkdtemp(prefix="edgekd-rss-"))
            try:
                recipe = work / "rss.yaml"
                recipe.write_text(RSS_RECIPE.format(
                    folder=FOLDER_224, per_class=count // 10, pipeline=pipeline,
                    cache=work / "cache", arch=args.arch, width=args.width,
                ))  # fmt: skip
                command = [sys.executable, "-m", "edgekd", "train", str(recipe),
                           "--run-dir", str(work / "run"), "-q"]  # fmt: skip
                env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1"}
                start = time.perf_counter()
                log = open(work / "log.txt", "w")  # noqa: SIM115 - closed below
                child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
                _, status, usage = os.wait4(child.pid, 0)
                log.close()
                seconds = time.perf_counter() - start
                text = (work / "log.txt").read_text()
                if status != 0:
                    print(text[-3000:])
                    raise SystemExit(f"edgekd train failed for {count} images ({pipeline})")
                line = next((x for x in text.splitlines() if x.startswith("edgekd: run")), "")
                row = {
                    "images": count, "pipeline": pipeline,
                    "peak RSS MiB": round(usage.ru_maxrss / 1024),
                    "decoded images MiB": round(count * 224 * 224 * 3 / 2**20),
                    "wall s": round(seconds), "run line": line.split("|")[1].strip(),
                }  # fmt: skip
                print(row, flush=True)
                rows.append(row)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    columns = ["images", "pipeline", "decoded images MiB", "peak RSS MiB", "wall s"]
    print(f"\npeak RSS of `edgekd train` (generalist, 1 epoch, {args.arch} w{args.width}, "
          "224 px)\n" + _table(rows, columns))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--steps", type=int, default=30, help="batches per measurement (> 3)")
    t.add_argument("--per-class-32", type=int, default=500)
    t.add_argument("--per-class-224", type=int, default=300)
    r = sub.add_parser("rss")
    r.add_argument("--counts", default="5000,20000", help="images per case, comma-separated")
    r.add_argument("--arch", default="mobilenetv3small_minimalistic")
    r.add_argument("--width", type=int, default=50)
    args = parser.parse_args()
    if not FOLDER_224.is_dir():
        sys.exit(f"error: {FOLDER_224} is missing; make it with benchmarks/upscaled_cifar.py "
                 "--size 224 --per-class 2000 --out datasets/cifar10-224")  # fmt: skip
    throughput(args) if args.what == "throughput" else rss(args)


if __name__ == "__main__":
    main()
