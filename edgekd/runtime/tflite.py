"""Run a `.tflite` file with LiteRT; no TensorFlow on the normal path.

The interpreter comes from `ai_edge_litert` (LiteRT), else `tflite_runtime`, else, as a last
resort on a machine that has it anyway, `tensorflow.lite`. A device needs only the first.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.runtime.base import BatchedRunner, TensorSpec, dequantize_output

_RUNTIMES = (
    ("litert", "ai_edge_litert.interpreter"),
    ("tflite_runtime", "tflite_runtime.interpreter"),
)


def _load_interpreter_module() -> tuple[str, Any, Any]:
    """(runtime name, Interpreter class, OpResolverType enum) from the first runtime found."""
    for name, module_name in _RUNTIMES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        return name, module.Interpreter, getattr(module, "OpResolverType", None)
    try:
        import tensorflow as tf  # last resort: heavy, and absent on a device
    except ImportError as e:
        raise ImportError(
            "no TFLite runtime found: install ai-edge-litert (pip install ai-edge-litert)"
        ) from e
    resolver = getattr(getattr(tf.lite, "experimental", None), "OpResolverType", None)
    return "tensorflow", tf.lite.Interpreter, resolver


def _spec(detail: dict[str, Any]) -> TensorSpec:
    """A TensorSpec from one entry of `get_input_details()`/`get_output_details()`."""
    shape_sig = detail.get("shape_signature")
    if shape_sig is None or len(shape_sig) == 0:
        shape_sig = detail["shape"]
    shape = tuple(None if int(d) < 0 else int(d) for d in shape_sig)
    scale, zero_point = detail.get("quantization", (0.0, 0))
    quantised = bool(scale)
    return TensorSpec(
        name=str(detail["name"]),
        shape=shape,
        dtype=np.dtype(detail["dtype"]).name,
        scale=float(scale) if quantised else None,
        zero_point=int(zero_point) if quantised else None,
    )


class TFLiteRunner(BatchedRunner):
    """A loaded `.tflite` model: pixels 0..255 in, float32 scores (N, K) out.

    Args:
        path: the `.tflite` file (one input, one output).
        threads: interpreter threads; None lets the runtime choose (LiteRT: 1).
        xnnpack: keep the default XNNPACK delegate; False runs the builtin kernels only
            (`OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES`), e.g. to compare kernels.
        batch_size: images per `invoke`. With a dynamic batch dimension the input tensor is
            resized to each chunk (the last one may be smaller); with a fixed batch dimension
            the file's batch is used instead and the last chunk is padded.

    Attributes:
        runtime: which interpreter loaded the file: "litert", "tflite_runtime", "tensorflow".
    """

    def __init__(
        self,
        path: str | Path,
        *,
        threads: int | None = None,
        xnnpack: bool = True,
        batch_size: int = 1,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such model file")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive int or None, got {threads!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.threads = threads
        self.xnnpack = bool(xnnpack)

        self.runtime, interpreter_cls, resolver = _load_interpreter_module()
        kwargs: dict[str, Any] = {"model_path": str(self.path), "num_threads": threads}
        if not self.xnnpack:
            if resolver is None:
                raise RuntimeError(f"{self.runtime} cannot disable the default delegates")
            kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        self._interpreter = interpreter_cls(**kwargs)

        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(
                f"{self.path}: expected one input and one output, found {len(inputs)} and "
                f"{len(outputs)}"
            )
        self._input_index = int(inputs[0]["index"])
        self._output_index = int(outputs[0]["index"])
        self.input: TensorSpec = _spec(inputs[0])
        self.output: TensorSpec = _spec(outputs[0])

        fixed_batch = self.input.shape[0] if self.input.shape else None
        self._dynamic_batch = fixed_batch is None
        self.batch_size = batch_size if self._dynamic_batch else int(fixed_batch)
        self._allocated_batch = int(inputs[0]["shape"][0]) if len(inputs[0]["shape"]) else 1
        self._interpreter.allocate_tensors()

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        """One invoke on a chunk of at most `batch_size` quantised images."""
        n = len(chunk)
        if self._dynamic_batch:
            if n != self._allocated_batch:
                self._interpreter.resize_tensor_input(self._input_index, [n, *chunk.shape[1:]])
                self._interpreter.allocate_tensors()
                self._allocated_batch = n
        elif n < self.batch_size:  # fixed batch: pad with copies of the last image
            pad = np.repeat(chunk[-1:], self.batch_size - n, axis=0)
            chunk = np.concatenate([chunk, pad], axis=0)
        self._interpreter.set_tensor(self._input_index, np.ascontiguousarray(chunk))
        self._interpreter.invoke()
        out = self._interpreter.get_tensor(self._output_index)[:n]
        return dequantize_output(out, self.output).reshape(n, -1)

    def __repr__(self) -> str:
        return (
            f"TFLiteRunner({str(self.path)!r}, runtime={self.runtime!r}, "
            f"input={self.input.dtype}{self.input.shape}, output={self.output.dtype}"
            f"{self.output.shape}, batch_size={self.batch_size}, threads={self.threads}, "
            f"xnnpack={self.xnnpack})"
        )
