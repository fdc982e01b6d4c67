"""Run a serialized TensorRT engine (`.engine` / `.plan`) with the TensorRT 10 or 11 Python API
(every call below is in both, NVIDIA/TensorRT's Python bindings at v10.3.0 and v11.1).

The engine is deserialized with `trt.Runtime`, its one input and one output are found by
name (`num_io_tensors`, `get_tensor_mode`), and each chunk of images is copied to the GPU,
run with `execute_async_v3` and copied back, all on one CUDA stream. Device memory and
copies go through cuda-python's runtime bindings (`cuda.bindings.runtime`, or `cuda.cudart`
in cuda-python before 12.6), so nothing here needs PyCUDA, PyTorch or TensorFlow.

An engine is tied to the GPU and TensorRT version that built it: build it on the device
(the export's `*.trtexec.sh` scripts, or `edgekd.converters.tensorrt.build_engine`).
Int8 engines built from Q/DQ ONNX files and fp16 engines built from float16 ONNX files take
float32 pixels like the float32 ones; float16 inputs and outputs are cast on the host.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.device.runtime.base import BatchedRunner, TensorSpec, dequantize_output

MISSING = (
    "TensorRT engines need the `tensorrt` Python package from JetPack/the TensorRT install "
    "and cuda-python (pip install cuda-python)"
)


def import_tensorrt() -> tuple[Any, Any]:
    """(tensorrt, cuda-python runtime bindings), or ImportError saying what to install."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise ImportError(MISSING) from exc
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as exc:
            raise ImportError(MISSING) from exc
    return trt, cudart


def _cuda(cudart: Any, call: str, result: tuple[Any, ...]) -> Any:
    """The value of a cuda-python call's `(error, *values)` result; RuntimeError naming
    the call unless the error is cudaSuccess."""
    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(f"CUDA {call} failed: {getattr(err, 'name', err)} ({int(err)})")
    return values[0] if len(values) == 1 else None


class TensorRTRunner(BatchedRunner):
    """A loaded TensorRT engine: pixels 0..255 in, float32 scores (N, K) out.

    Args:
        path: the serialized engine (one input, one output; NHWC float pixels, as the
            export's ONNX files).
        threads: accepted for a uniform runner interface and ignored (the GPU runs it);
            `threads` is always None.
        batch_size: images per execution. With a dynamic batch dimension each chunk sets
            the input shape (the last one may be smaller), capped at the largest batch of
            the engine's optimisation profile 0; a fixed batch dimension is used as is and
            the last chunk padded.

    Attributes:
        runtime: "tensorrt".
        max_batch: the largest batch the engine accepts.

    Raises:
        ImportError: `tensorrt` or cuda-python is missing (the message says what to install).
        RuntimeError: the engine does not deserialize here (another TensorRT version or GPU)
            or a CUDA / TensorRT call fails (the call is named).
    """

    runtime = "tensorrt"

    def __init__(
        self,
        path: str | Path,
        *,
        threads: int | None = None,
        batch_size: int = 1,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such engine file")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        del threads  # the GPU runs the engine; kept in the signature like the other runners
        self.threads: int | None = None
        # Set first so that close() works on a half-built runner.
        self._buffers: dict[str, tuple[int, int]] = {}  # tensor name -> (pointer, bytes)
        self._stream: Any = None
        self._context: Any = None

        trt, cudart = import_tensorrt()
        self._trt, self._cudart = trt, cudart
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise RuntimeError(
                f"{self.path}: TensorRT could not deserialize this engine; engines only load "
                "on the TensorRT version and GPU that built them, so rebuild it on this device"
            )
        engine = self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(
                f"{self.path}: expected one input and one output, found {len(inputs)} and "
                f"{len(outputs)}"
            )
        self.input: TensorSpec = self._spec(inputs[0])
        self.output: TensorSpec = self._spec(outputs[0])
        if self.input.dtype not in ("float32", "float16"):
            raise ValueError(
                f"{self.path}: input {self.input.name!r} is {self.input.dtype}; the engine "
                "carries no quantisation scale for it, so only float pixel inputs are supported"
            )
        if not self.input.shape or any(d is None for d in self.input.shape[1:]):
            raise ValueError(
                f"{self.path}: input shape {self.input.shape}: only the batch may be dynamic"
            )

        fixed_batch = self.input.shape[0]
        self._dynamic_batch = fixed_batch is None
        self._min_batch = 1
        if self._dynamic_batch:
            low, _, high = engine.get_tensor_profile_shape(self.input.name, 0)
            self._min_batch, self.max_batch = max(1, int(low[0])), int(high[0])
            self.batch_size = min(batch_size, self.max_batch)
        else:
            self.max_batch = self.batch_size = int(fixed_batch)

        self._context = engine.create_execution_context()
        if self._context is None:
            raise RuntimeError(f"{self.path}: TensorRT could not create an execution context")
        self._stream = _cuda(cudart, "cudaStreamCreate", cudart.cudaStreamCreate())
        self._batch_set: int | None = None  # the input batch the context was last given

    def _spec(self, name: str) -> TensorSpec:
        """A TensorSpec for one engine I/O tensor (dynamic dims, -1, become None)."""
        engine, trt = self._engine, self._trt
        try:
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name
        except TypeError as exc:  # BF16, FP8, INT4: no numpy type
            raise ValueError(
                f"{self.path}: tensor {name!r} has type {engine.get_tensor_dtype(name)}, "
                "which numpy cannot hold"
            ) from exc
        shape = tuple(None if int(d) < 0 else int(d) for d in engine.get_tensor_shape(name))
        return TensorSpec(name=name, shape=shape, dtype=dtype)

    def _reserve(self, name: str, nbytes: int) -> int:
        """A device buffer of at least `nbytes` for tensor `name`; grows, never shrinks."""
        ptr, size = self._buffers.get(name, (0, 0))
        if nbytes <= size:
            return ptr
        cudart = self._cudart
        if size:
            del self._buffers[name]
            _cuda(cudart, "cudaFree", cudart.cudaFree(ptr))
        ptr = _cuda(cudart, f"cudaMalloc({nbytes})", cudart.cudaMalloc(nbytes))
        self._buffers[name] = (ptr, nbytes)
        if not self._context.set_tensor_address(name, ptr):
            raise RuntimeError(f"{self.path}: TensorRT set_tensor_address({name!r}) failed")
        return ptr

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        """Copy one chunk to the GPU, execute, copy the scores back."""
        if self._context is None:
            raise RuntimeError(f"{self.path}: the runner is closed")
        n = len(chunk)
        rows = n if self._dynamic_batch else self.batch_size
        rows = max(rows, self._min_batch)
        if rows > n:  # fixed batch (or a profile minimum above n): pad with the last image
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], rows - n, axis=0)], axis=0)
        host_in = np.ascontiguousarray(chunk, dtype=self.input.dtype)
        if self._dynamic_batch and rows != self._batch_set:
            shape = host_in.shape
            if not self._context.set_input_shape(self.input.name, shape):
                raise RuntimeError(
                    f"{self.path}: TensorRT set_input_shape({self.input.name!r}, {shape}) "
                    f"failed (profile batches {self._min_batch}..{self.max_batch})"
                )
            self._batch_set = rows
        out_shape = tuple(int(d) for d in self._context.get_tensor_shape(self.output.name))
        host_out = np.empty(out_shape, self.output.dtype)

        cudart, stream = self._cudart, self._stream
        d_in = self._reserve(self.input.name, host_in.nbytes)
        d_out = self._reserve(self.output.name, max(host_out.nbytes, 1))
        copy, kind = cudart.cudaMemcpyAsync, cudart.cudaMemcpyKind
        result = copy(d_in, host_in, host_in.nbytes, kind.cudaMemcpyHostToDevice, stream)
        _cuda(cudart, "cudaMemcpyAsync(host to device)", result)
        if not self._context.execute_async_v3(int(stream)):
            raise RuntimeError(f"{self.path}: TensorRT execute_async_v3 failed")
        result = copy(host_out, d_out, host_out.nbytes, kind.cudaMemcpyDeviceToHost, stream)
        _cuda(cudart, "cudaMemcpyAsync(device to host)", result)
        _cuda(cudart, "cudaStreamSynchronize", cudart.cudaStreamSynchronize(stream))
        return dequantize_output(host_out[:n], self.output).reshape(n, -1)

    def close(self) -> None:
        """Free the device buffers and the stream, then the context and engine. Safe to call
        twice; raises the first CUDA error once everything has been released."""
        cudart = getattr(self, "_cudart", None)
        stream, buffers = getattr(self, "_stream", None), getattr(self, "_buffers", {})
        self._stream, self._buffers = None, {}
        pending: list[tuple[str, Any, Any]] = []
        if stream is not None:  # let queued work finish before its memory goes
            pending.append(("cudaStreamSynchronize", cudart.cudaStreamSynchronize, stream))
        pending += [("cudaFree", cudart.cudaFree, ptr) for ptr, _ in buffers.values()]
        if stream is not None:
            pending.append(("cudaStreamDestroy", cudart.cudaStreamDestroy, stream))
        errors: list[RuntimeError] = []
        for name, call, arg in pending:
            try:
                _cuda(cudart, name, call(arg))
            except RuntimeError as exc:
                errors.append(exc)
        # Context before engine before runtime, as TensorRT requires.
        self._context = None
        self._engine = None
        self._runtime = None
        if errors:
            raise errors[0]

    def __enter__(self) -> TensorRTRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # At interpreter exit CUDA may already be gone: nothing left to free then.
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        return (
            f"TensorRTRunner({str(self.path)!r}, input={self.input.dtype}{self.input.shape}, "
            f"output={self.output.dtype}{self.output.shape}, batch_size={self.batch_size}, "
            f"max_batch={self.max_batch})"
        )
