"""What every runtime offers: load a model file, describe its tensors, predict on pixels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as the file declares it.

    `scale`/`zero_point` are set for quantised tensors: real = scale * (q - zero_point).
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: str  # numpy dtype name: "float32", "float16", "uint8", "int8"
    scale: float | None = None
    zero_point: int | None = None


class Runner(Protocol):
    """A loaded model file. `predict` takes RGB pixels 0..255 (N, H, W, 3), uint8 or float,
    quantises them as the input tensor says, and returns float32 scores (N, K), dequantised."""

    path: Path
    input: TensorSpec
    output: TensorSpec

    def predict(self, images: np.ndarray) -> np.ndarray: ...


class BatchedRunner:
    """Shared `predict` for runtimes: check the image shape, quantise once, run in chunks
    of `batch_size` (subclasses implement `_run` on one chunk), join the scores."""

    path: Path
    input: TensorSpec
    output: TensorSpec
    batch_size: int

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Scores (N, K) float32 for pixels (N, H, W, C) 0..255, uint8 or float."""
        images = np.asarray(images)
        expected = self.input.shape[1:]
        if images.ndim != len(self.input.shape) or any(
            e is not None and e != g for e, g in zip(expected, images.shape[1:], strict=True)
        ):
            raise ValueError(
                f"{self.path}: images have shape {images.shape}, the model takes {('N', *expected)}"
            )
        x = quantize_input(images, self.input)
        results = [
            self._run(x[start : start + self.batch_size])
            for start in range(0, len(x), self.batch_size)
        ]
        if not results:
            k = self.output.shape[-1] if self.output.shape else 0
            return np.zeros((0, k or 0), np.float32)
        return np.concatenate(results, axis=0)

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def quantize_input(images: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Pixels 0..255 in the dtype the input tensor wants, using its own quantisation."""
    x = np.asarray(images, np.float32)
    if spec.dtype in ("float32", "float16"):
        return x.astype(spec.dtype)
    info = np.iinfo(spec.dtype)
    if spec.scale is None or spec.scale == 0.0:
        raise ValueError(f"input {spec.name!r} is {spec.dtype} but has no quantisation scale")
    q = np.round(x / spec.scale + (spec.zero_point or 0))
    return np.clip(q, info.min, info.max).astype(spec.dtype)


def dequantize_output(values: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Scores as float32, undoing the output tensor's quantisation if it has one."""
    v = np.asarray(values)
    if spec.dtype in ("uint8", "int8", "int16") and spec.scale:
        return (spec.scale * (v.astype(np.float32) - (spec.zero_point or 0))).astype(np.float32)
    return v.astype(np.float32)
