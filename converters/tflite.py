"""Keras model -> `.tflite` (LiteRT) at a chosen precision.

The exported file keeps the model's contract: NHWC RGB pixels 0..255 in, class scores out.
Normalisation is a layer inside the model, so it is converted (and for int8, quantised) with
the rest of the graph and a device feeds camera pixels straight in.

Conversion goes through Keras 3's own LiteRT export (`model.export(format="litert")`: Keras
ExportArchive -> SavedModel -> `tf.lite.TFLiteConverter`), which passes converter attributes
through; every option needed here (optimisations, representative data, target spec, integer
I/O types) is such an attribute, so no second converter path is kept.

Batch dimension: left as the model declares it, i.e. dynamic (`shape_signature` -1, allocated
as 1). `edgekd.device.runtime.tflite.TFLiteRunner` resizes the input tensor to each chunk's batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from edgekd.atomic import atomic_path
from edgekd.contract import FORMATS, IO_DTYPES

PRECISIONS = FORMATS["tflite"].precisions
"""float32: no optimisation. float16: float16 weights, float32 compute and I/O.
dynamic: int8 weights, activations quantised on the fly. int8: full-integer (needs
representative images), builtin int8 kernels only."""

"""Input/output tensor types; the integer ones are only possible with precision int8."""


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
    a `.tflite` file at `path`; `calibration` images are the int8 representative set.

    `reuse` (files this export already wrote for the model) has nothing LiteRT builds on.
    """
    del reuse
    return export_tflite(
        model, path, precision=precision, representative=calibration, io_dtype=io_dtype
    )


def export_tflite(
    model: keras.Model,
    path: str | Path,
    *,
    precision: str = "float32",
    representative: np.ndarray | None = None,
    io_dtype: str = "float32",
) -> Path:
    """Convert `model` to a `.tflite` file at `path` (written atomically) and return the path.

    Args:
        model: a single-input Keras model taking float32 pixels 0..255 (N, H, W, 3).
        path: destination; must end in `.tflite`.
        precision: one of `PRECISIONS`.
        representative: uint8 images (N, H, W, 3), required for `precision="int8"`: the
            calibration set, fed one image at a time as float32 pixels.
        io_dtype: "float32" keeps float input/output (quantise/dequantise ops inside the file);
            "uint8" or "int8" (int8 precision only) makes the input and output tensors integer,
            each with its own scale and zero point. The input's come from calibration:
            scale = (max - min) / 255 of the representative pixels, so when those span 0..255
            a uint8 input is literally the pixels (scale 1, zero point 0; int8: -128).

    Raises:
        ValueError: an unknown precision or io_dtype, int8 without representative images,
            integer I/O with a non-int8 precision, a path not ending in `.tflite`.
        Exception: whatever the converter raises, e.g. an op with no builtin int8 kernel
            (int8 allows only `TFLITE_BUILTINS_INT8`, so nothing is silently left in float).
    """
    path = Path(path)
    options = _converter_options(model, path, precision, representative, io_dtype)
    with atomic_path(path) as tmp:
        model.export(str(tmp), format="litert", verbose=False, **options)
        if tmp.stat().st_size == 0:
            raise RuntimeError(f"{path}: the LiteRT converter wrote an empty file")
        _check_io_dtype(tmp, precision, io_dtype)
    return path


def _converter_options(
    model: keras.Model,
    path: Path,
    precision: str,
    representative: np.ndarray | None,
    io_dtype: str,
) -> dict:
    """`TFLiteConverter` attributes for one precision, after checking the combination."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    if io_dtype not in IO_DTYPES:
        raise ValueError(f"unknown io_dtype {io_dtype!r}; expected one of {IO_DTYPES}")
    if io_dtype != "float32" and precision != "int8":
        raise ValueError(
            f"io_dtype {io_dtype!r} needs precision 'int8' (got {precision!r}): only a "
            "full-integer model can have integer input and output tensors"
        )
    if path.suffix.lower() != ".tflite":
        raise ValueError(f"{path}: a LiteRT model file must end in .tflite")

    # Builtin ops only for every precision: a SELECT_TF_OPS (Flex) op would need TensorFlow
    # on the device, which the runtime deliberately does without.
    if precision == "float32":
        return {"target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}}
    if precision == "float16":
        return {
            "optimizations": [tf.lite.Optimize.DEFAULT],
            "target_spec": {
                "supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS],
                "supported_types": [tf.float16],
            },
        }
    if precision == "dynamic":
        return {
            "optimizations": [tf.lite.Optimize.DEFAULT],
            "target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]},
        }

    images = _check_representative(model, representative)
    options: dict = {
        "optimizations": [tf.lite.Optimize.DEFAULT],
        "representative_dataset": _representative_dataset(images),
        "target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]},
    }
    if io_dtype != "float32":
        io_type = tf.uint8 if io_dtype == "uint8" else tf.int8
        options["inference_input_type"] = io_type
        options["inference_output_type"] = io_type
    return options


def _check_representative(model: keras.Model, representative: np.ndarray | None) -> np.ndarray:
    """The calibration images, checked against the model's input shape."""
    if representative is None:
        raise ValueError(
            "precision 'int8' needs representative images (uint8, N x H x W x 3) to "
            "calibrate activation ranges; pass representative=..."
        )
    images = np.asarray(representative)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(
            f"representative images must be a non-empty (N, H, W, C) array, got shape "
            f"{images.shape}"
        )
    inputs = getattr(model, "inputs", None)  # None for an unbuilt subclassed model
    expected = tuple(inputs[0].shape[1:]) if inputs else None
    if expected and all(d is not None for d in expected) and images.shape[1:] != expected:
        raise ValueError(
            f"representative images have shape {images.shape[1:]} per image but the model "
            f"takes {expected}"
        )
    if images.dtype != np.uint8 and (
        not np.issubdtype(images.dtype, np.number) or images.min() < 0 or images.max() > 255
    ):
        raise ValueError(
            f"representative images must be pixels 0..255 (uint8), got dtype {images.dtype}"
        )
    return images


def _representative_dataset(images: np.ndarray) -> Callable[[], Iterator[list[np.ndarray]]]:
    """The converter's calibration generator: one image per step, float32 pixels."""

    def generate() -> Iterator[list[np.ndarray]]:
        for i in range(len(images)):
            yield [images[i : i + 1].astype(np.float32)]

    return generate


def _check_io_dtype(path: Path, precision: str, io_dtype: str) -> None:
    """Fail if the written file's input/output types are not what was asked for."""
    if precision != "int8":
        return
    from edgekd.device.runtime.tflite import TFLiteRunner

    runner = TFLiteRunner(path)
    got = (runner.input.dtype, runner.output.dtype)
    if got != (io_dtype, io_dtype):
        raise RuntimeError(
            f"{path}: asked for {io_dtype} input and output, the converter wrote {got}"
        )
