"""Tiny synthetic image folders: each class a distinct colour plus noise, learnable in seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = [(220, 40, 40), (40, 200, 40), (40, 60, 220), (220, 220, 40), (200, 40, 200)]


def make_folder(
    root: Path,
    classes: int = 3,
    per_class: int = 20,
    size: int = 32,
    seed: int = 0,
    fmt: str = "png",
) -> Path:
    """Write `classes` x `per_class` images under root/<class_k>/; returns root."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.normal(0, 40, (size, size, 3))
            img = np.clip(np.array(COLOURS[c % len(COLOURS)]) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"{i:04d}.{fmt}")
    return root
