"""Run a `.onnx` file with ONNX Runtime; no TensorFlow (a device has only the runtime wheel).

Float and int8 Q/DQ files alike take float32 pixels and return float32 logits: the Q/DQ
nodes are inside the graph, so nothing is quantised here unless a file declares an integer
input (then `quantize_input` would need a scale, which ONNX inputs do not carry: refused).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.device.runtime.base import BatchedRunner, TensorSpec, dequantize_output

_PREFERRED_PROVIDERS = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)

_ONNX_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


def default_providers() -> list[str]:
    """TensorRT, then CUDA execution providers where this onnxruntime build has them; CPU last."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    chosen = [p for p in _PREFERRED_PROVIDERS if p in available]
    return chosen or ["CPUExecutionProvider"]


def _spec(arg: Any) -> TensorSpec:
    """A TensorSpec from an onnxruntime NodeArg (symbolic or unknown dims become None)."""
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in (arg.shape or ()))
    dtype = _ONNX_DTYPES.get(arg.type)
    if dtype is None:
        raise ValueError(f"tensor {arg.name!r} has unsupported type {arg.type}")
    return TensorSpec(name=arg.name, shape=shape, dtype=dtype)


class OnnxRunner(BatchedRunner):
    """A loaded `.onnx` model: pixels 0..255 in, float32 scores (N, K) out.

    Args:
        path: the `.onnx` file (one input, one output).
        threads: `SessionOptions.intra_op_num_threads`; None lets onnxruntime choose.
        providers: execution providers in order of preference (names or (name, options)
            tuples, as onnxruntime takes them); default `default_providers()`.
        batch_size: images per `run`. A file with a fixed batch dimension uses that instead
            and pads the last chunk.
        reference: run the graph as its operators define it, with onnxruntime's graph
            optimisations off: a Q/DQ file then computes DequantizeLinear -> float op ->
            QuantizeLinear, the integer-exact arithmetic TensorRT performs, not ORT's fused
            x86 int8 kernels (which saturate on CPUs without VNNI). For checking a file meant
            for another runtime; slow.

    Attributes:
        runtime: "onnxruntime".
        providers: the providers the session actually uses, in order.
    """

    runtime = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        *,
        threads: int | None = None,
        providers: Sequence[str | tuple[str, dict[str, Any]]] | None = None,
        batch_size: int = 1,
        reference: bool = False,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such model file")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive int or None, got {threads!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.threads = threads

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only: fallback notices are not our output
        self.reference = reference
        if reference:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        requested = list(providers) if providers is not None else default_providers()
        self._session = ort.InferenceSession(str(self.path), options, providers=requested)
        self.providers: list[str] = list(self._session.get_providers())

        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(
                f"{self.path}: expected one input and one output, found {len(inputs)} and "
                f"{len(outputs)}"
            )
        self.input: TensorSpec = _spec(inputs[0])
        self.output: TensorSpec = _spec(outputs[0])
        if self.input.dtype not in ("float32", "float16"):
            raise ValueError(
                f"{self.path}: input {self.input.name!r} is {self.input.dtype}; ONNX inputs "
                "carry no quantisation scale, so only float pixel inputs are supported"
            )
        fixed_batch = self.input.shape[0] if self.input.shape else None
        self._dynamic_batch = fixed_batch is None
        self.batch_size = batch_size if self._dynamic_batch else int(fixed_batch)

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        """One session run on at most `batch_size` images."""
        n = len(chunk)
        if not self._dynamic_batch and n < self.batch_size:
            pad = np.repeat(chunk[-1:], self.batch_size - n, axis=0)
            chunk = np.concatenate([chunk, pad], axis=0)
        (out,) = self._session.run(
            [self.output.name], {self.input.name: np.ascontiguousarray(chunk)}
        )
        return dequantize_output(out[:n], self.output).reshape(n, -1)

    def __repr__(self) -> str:
        return (
            f"OnnxRunner({str(self.path)!r}, providers={self.providers}, "
            f"input={self.input.dtype}{self.input.shape}, output={self.output.dtype}"
            f"{self.output.shape}, batch_size={self.batch_size}, threads={self.threads})"
        )
