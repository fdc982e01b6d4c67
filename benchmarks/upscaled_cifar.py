"""Make a class-per-folder JPEG dataset of CIFAR-10 images upscaled to a larger size.

    python benchmarks/upscaled_cifar.py --size 128 --per-class 500 --out datasets/cifar10-128

A stand-in for a user's own folder of large images, to exercise the large-image machinery
(edge architectures, random resized crops, the streaming pipeline) on this offline machine.
Upscaled 32-px images carry no more detail than the originals: figures trained on them test
the machinery, not accuracy.

Takes a seeded, class-balanced sample of ``--per-class`` JPEGs per class from ``--source``
(the shared CIFAR-10 JPEG training folder), resizes each to ``--size`` px with Pillow's
bicubic filter and writes it as a quality-90 JPEG under ``--out/<class>/``. An existing
``--out`` is refused unless it was made by this script with the same arguments (then it is
kept as it is); files are written to a temporary folder that is renamed when complete, so an
interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = Path(
    os.environ.get("EDGEKD_CIFAR_JPEG", ROOT.parent / "shared" / "data" / "cifar10-jpeg" / "train")
)
STAMP = "upscaled_cifar.json"


def choose(files: list[Path], per_class: int, seed: int, class_index: int) -> list[Path]:
    """A seeded choice of `per_class` files (all of them if fewer), in name order."""
    if per_class >= len(files):
        return files
    rng = np.random.default_rng([seed, class_index])
    picked = np.sort(rng.choice(len(files), per_class, replace=False))
    return [files[i] for i in picked]


def upscale(source: Path, out: Path, size: int, per_class: int, seed: int) -> int:
    """Write the upscaled folder; returns the number of images written."""
    stamp = {"source": str(source.resolve()), "size": size, "per_class": per_class, "seed": seed}
    if out.exists():
        stamp_file = out / STAMP
        if stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
            print(f"{out} already holds these images; kept as it is")
            return sum(1 for _ in out.glob("*/*.jpg"))
        sys.exit(f"error: {out} exists and was not made by this script with these arguments; "
                 "choose another --out")  # fmt: skip
    classes = sorted(p.name for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        sys.exit(f"error: {source} holds no class folders")
    jobs: list[tuple[Path, str]] = []
    for index, name in enumerate(classes):
        files = sorted((source / name).glob("*.jpg"))
        jobs += [(path, name) for path in choose(files, per_class, seed, index)]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        for name in classes:
            (tmp / name).mkdir()

        def work(job: tuple[Path, str]) -> None:
            path, name = job
            with Image.open(path) as image:
                big = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
            big.save(tmp / name / path.name, quality=90)

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            for done, _ in enumerate(pool.map(work, jobs), 1):
                if done % 5000 == 0:
                    print(f"upscaled {done:,}/{len(jobs):,}", flush=True)
        (tmp / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"wrote {len(jobs):,} images of {size}x{size} px in {len(classes)} classes to {out}")
    return len(jobs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, required=True, help="side of the output images, px")
    parser.add_argument("--per-class", type=int, default=500, help="images per class")
    parser.add_argument("--out", type=Path, required=True, help="the folder to create")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE,
                        help="class-per-folder CIFAR JPEGs ($EDGEKD_CIFAR_JPEG)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.size < 32 or args.per_class < 1:
        parser.error("--size must be >= 32 and --per-class >= 1")
    upscale(args.source, args.out, args.size, args.per_class, args.seed)


if __name__ == "__main__":
    main()
