"""Open a model file with the runner its format needs; the backends import only `base`."""

from __future__ import annotations

from pathlib import Path

from edgekd.contract import format_of
from edgekd.device.runtime.base import Runner
from edgekd.device.runtime.onnx import OnnxRunner
from edgekd.device.runtime.tensorrt import TensorRTRunner
from edgekd.device.runtime.tflite import TFLiteRunner


def load_runner(path: str | Path, *, threads: int | None = None, **options) -> Runner:
    """A runner for a .tflite, .onnx or TensorRT engine (.engine/.plan) file, by suffix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    fmt = format_of(path)
    if fmt == "tflite":
        return TFLiteRunner(path, threads=threads, **options)
    if fmt == "onnx":
        return OnnxRunner(path, threads=threads, **options)
    if fmt == "tensorrt":
        return TensorRTRunner(path, threads=threads, **options)
    raise ValueError(
        f"{path}: unknown model format {path.suffix.lower()!r} (expected .tflite, .onnx, or a "
        "TensorRT .engine/.plan)"
    )
