"""Run a `.tflite` file with LiteRT; no TensorFlow on the normal path.

The interpreter comes from `ai_edge_litert` (LiteRT), else `tflite_runtime`, else, as a last
resort on a machine that has it anyway, `tensorflow.lite`. A device needs only the first.
External delegates (a GPU delegate library, say) load through that runtime's own
`load_delegate` and reach the interpreter as `experimental_delegates`.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from edgekd.device.runtime.base import BatchedRunner, TensorSpec, dequantize_output

_RUNTIMES = (
    ("litert", "ai_edge_litert.interpreter"),
    ("tflite_runtime", "tflite_runtime.interpreter"),
)


class _InterpreterModule(NamedTuple):
    """What the runner takes from a TFLite runtime: its name and three of its symbols."""

    name: str
    interpreter: Any  # the Interpreter class
    resolver: Any  # the OpResolverType enum, or None where the runtime lacks it
    load_delegate: Any  # load_delegate(library, options=None) -> Delegate


def _load_interpreter_module() -> _InterpreterModule:
    """The first TFLite runtime found: LiteRT, tflite_runtime, else TensorFlow."""
    for name, module_name in _RUNTIMES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        return _InterpreterModule(
            name,
            module.Interpreter,
            getattr(module, "OpResolverType", None),
            getattr(module, "load_delegate", None),
        )
    try:
        import tensorflow as tf  # last resort: heavy, and absent on a device
    except ImportError as e:
        raise ImportError(
            "no TFLite runtime found: install ai-edge-litert (pip install ai-edge-litert)"
        ) from e
    experimental = getattr(tf.lite, "experimental", None)
    return _InterpreterModule(
        "tensorflow",
        tf.lite.Interpreter,
        getattr(experimental, "OpResolverType", None),
        getattr(experimental, "load_delegate", None),
    )


def _load_delegate(module: _InterpreterModule, library: str) -> Any:
    """An external delegate (e.g. the GPU delegate's .so) loaded with the runtime's own
    `load_delegate`; RuntimeError naming the library when it cannot be loaded."""
    if module.load_delegate is None:
        raise RuntimeError(f"{module.name} cannot load external delegates (asked for {library})")
    # A path with a folder is checked here: the runtime's own message for a missing file is
    # an OSError from ctypes plus a traceback printed from its half-built Delegate.
    if ("/" in library or "\\" in library) and not Path(library).is_file():
        raise RuntimeError(f"TFLite delegate {library}: no such file")
    try:
        return module.load_delegate(library)
    except (OSError, ValueError, AttributeError, RuntimeError) as exc:
        # OSError: dlopen failed; AttributeError: not a TFLite delegate library (no
        # tflite_plugin_create_delegate); ValueError: the delegate refused to start.
        detail = str(exc).strip().replace("\n", " ") or type(exc).__name__
        raise RuntimeError(f"TFLite delegate {library}: cannot load it: {detail}") from exc


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
        delegates: external delegate libraries to load and hand to the interpreter
            (`load_delegate` + `experimental_delegates`), e.g. the GPU delegate
            `libtensorflowlite_gpu_delegate.so`: a path, or a name the dynamic loader finds.
            Operations a delegate does not take run on the CPU kernels as usual.
        batch_size: images per `invoke`. With a dynamic batch dimension the input tensor is
            resized to each chunk (the last one may be smaller); with a fixed batch dimension
            the file's batch is used instead and the last chunk is padded.

    Attributes:
        runtime: which interpreter loaded the file: "litert", "tflite_runtime", "tensorflow".

    Raises:
        RuntimeError: a delegate library cannot be loaded (the library is named).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        threads: int | None = None,
        xnnpack: bool = True,
        delegates: Sequence[str | Path] = (),
        batch_size: int = 1,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such model file")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive int or None, got {threads!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if isinstance(delegates, (str, Path)):
            delegates = [delegates]
        self.threads = threads
        self.xnnpack = bool(xnnpack)
        self.delegates: tuple[str, ...] = tuple(str(d) for d in delegates)

        module = _load_interpreter_module()
        self.runtime = module.name
        kwargs: dict[str, Any] = {"model_path": str(self.path), "num_threads": threads}
        if not self.xnnpack:
            if module.resolver is None:
                raise RuntimeError(f"{self.runtime} cannot disable the default delegates")
            kwargs["experimental_op_resolver_type"] = (
                module.resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            )
        if self.delegates:  # the interpreter keeps them (and frees them after itself)
            kwargs["experimental_delegates"] = [_load_delegate(module, d) for d in self.delegates]
        try:
            self._interpreter = module.interpreter(**kwargs)
        except (RuntimeError, ValueError) as exc:
            if not self.delegates:
                raise
            raise RuntimeError(
                f"{self.path}: the interpreter failed with delegate(s) "
                f"{', '.join(self.delegates)}: {exc}"
            ) from exc

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
            f"xnnpack={self.xnnpack}, delegates={list(self.delegates)})"
        )
