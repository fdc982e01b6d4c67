"""Keras model -> TensorFlow SavedModel folder, for serving stacks that take one.

The folder keeps the model's contract like every exported file: NHWC RGB pixels 0..255 in,
logits out; normalisation is inside the graph. Float32 only.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from edgekd.atomic import atomic_dir
from edgekd.contract import check_variant

if TYPE_CHECKING:
    import keras
    import numpy as np


def convert(
    model: keras.Model,
    path: str | Path,
    *,
    precision: str,
    calibration: np.ndarray | None = None,
    io_dtype: str = "float32",
    reuse: Mapping[str, Path] | None = None,
) -> Path:
    """The export back-end's entry point (the signature every converter shares): `model` as
    a SavedModel folder at `path` (replaced atomically).

    A SavedModel is float32 with float I/O, so `calibration` and `reuse` are not needed.
    """
    del calibration, reuse
    check_variant("saved_model", precision)
    if io_dtype != "float32":
        raise ValueError(f"a SavedModel here has float32 input and output, not {io_dtype!r}")
    path = Path(path)
    with atomic_dir(path) as tmp:
        model.export(str(tmp), format="tf_saved_model", verbose=False)
    return path
