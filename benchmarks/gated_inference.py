"""Gated inference skips work: ensemble time per image at several activation rates.

For one trained run, times the gated ensemble on the same validation images with top-1,
top-2 and top-3 gating, and with every specialist on every image (top-K), and prints one
table: activation rate, members run per image, MACs spent, accuracy, median ms per image
over `--repeats` runs, and the ratio to the all-specialists ensemble.

    python benchmarks/gated_inference.py runs/cifar10-cpu [--limit 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

from edgekd.data.dataset import prepare_data
from edgekd.recipe import build_recipe
from edgekd.tables import format_table
from edgekd.training.ensemble.gated import load_gated_ensemble
from edgekd.training.run import RunDir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--limit", type=int, default=2000, help="validation images to use")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    run = RunDir.open_existing(args.run)
    recipe = build_recipe(run.manifest["recipe"])
    val = prepare_data(recipe, progress=False).val
    images, labels = val.images[: args.limit], val.labels[: args.limit]
    k = len(run.manifest["data"]["classes"])
    gen_macs = run.stage("generalist").metrics["macs"]
    spec_macs = [s["macs"] for s in run.stage("specialists").metrics["specialists"]]

    # One set of loaded models; gating variants differ only in top_n. Rounds interleave the
    # variants so that a slow spell on a shared CPU hits them all alike.
    loaded = load_gated_ensemble(run.path, confidence=None)
    variants = {
        label: dataclasses.replace(loaded, top_n=top_n)
        for label, top_n in [("top-1", 1), ("top-2", 2), ("top-3", 3), ("all specialists", k)]
    }
    outputs = {label: ens.predict(images) for label, ens in variants.items()}  # warm-up
    samples: dict[str, list[float]] = {label: [] for label in variants}
    for _ in range(args.repeats):
        for label, ens in variants.items():
            t0 = time.perf_counter()
            ens.predict(images)
            samples[label].append((time.perf_counter() - t0) / len(images) * 1e3)
    rows, timings = [], {}
    for label, ens in variants.items():
        output = outputs[label]
        ms = timings[label] = statistics.median(samples[label])
        rate = output.activation_rate
        acc = float((output.probs.argmax(1) == labels).mean())
        macs = ens.macs_per_image(gen_macs, spec_macs, rate)
        rows.append([label, f"{100 * rate.mean():.1f}", f"{output.active.sum(1).mean():.2f}",
                     f"{macs / 1e6:.1f}M", f"{100 * acc:.2f}", f"{ms:.3f}"])  # fmt: skip
    base = timings["all specialists"]
    for row in rows:
        row.append(f"{float(row[5]) / base:.2f}")
    headers = ["gating", "mean activation (%)", "specialists/image", "MACs/image",
               "accuracy (%)", "median ms/image", "time vs all"]  # fmt: skip
    print(f"{args.run}: {len(images)} validation images, {len(spec_macs)} specialists, "
          f"{args.repeats} interleaved repeats, batch {loaded.batch_size}")  # fmt: skip
    print(format_table(headers, rows))


if __name__ == "__main__":
    main()
