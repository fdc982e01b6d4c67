"""TensorRTRunner against stand-in `tensorrt` and `cuda.bindings.runtime` modules.

Neither TensorRT nor a GPU is here, so the stand-ins implement just the API surface the
runner uses, strictly: the "engine file" is JSON describing the engine's tensors, the engine
computes logits = (mean pixel per channel) @ W + B in numpy, and "device memory" is a dict
from fake pointers to byte arrays, so a wrong pointer, size, copy direction, stream or
input shape makes a call fail the way the real one would (an error code or False).
"""

from __future__ import annotations

import enum
import json
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgekd.device.runtime import load_runner
from edgekd.device.runtime.tensorrt import TensorRTRunner
from tests.conftest import run_python_json

H = W_ = 6
W = np.array([[1.0, 0.0, -1.0, 0.5], [0.0, 1.0, 0.0, -0.5], [0.5, 0.25, 1.0, 0.0]]) / 100
B = np.array([0.1, -0.2, 0.3, 0.0])
K = W.shape[1]


def reference(images: np.ndarray) -> np.ndarray:
    """What the stand-in engine computes, in float64."""
    return images.astype(np.float64).mean(axis=(1, 2)) @ W + B


# ------------------------------------------------------------------ stand-in cuda-python


class FakeStream:
    """cudaStream_t: an opaque handle that converts to int (as cuda-python's does)."""

    def __init__(self, handle: int) -> None:
        self.handle = handle

    def __int__(self) -> int:
        return self.handle


class FakeCudart:
    """The part of `cuda.bindings.runtime` the runner uses. Every call returns
    `(cudaError_t, *values)`; `fail[name] = error` makes the named call return that error."""

    class cudaError_t(enum.IntEnum):  # noqa: N801  (cuda-python's names)
        cudaSuccess = 0
        cudaErrorInvalidValue = 1
        cudaErrorMemoryAllocation = 2
        cudaErrorInvalidResourceHandle = 400

    class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    def __init__(self) -> None:
        self.memory: dict[int, np.ndarray] = {}  # pointer -> bytes on the "device"
        self.streams: set[int] = set()
        self.fail: dict[str, FakeCudart.cudaError_t] = {}
        self.mallocs: list[int] = []
        self._next = 0x7F0000001000
        self._next_stream = 0x5000

    def _failed(self, name: str) -> Any:
        return self.fail.get(name)

    def cudaMalloc(self, size: int) -> tuple[Any, int]:  # noqa: N802
        if err := self._failed("cudaMalloc"):
            return err, 0
        assert isinstance(size, int) and size > 0, size
        ptr, self._next = self._next, self._next + size + 256
        self.memory[ptr] = np.zeros(size, np.uint8)
        self.mallocs.append(size)
        return self.cudaError_t.cudaSuccess, ptr

    def cudaFree(self, ptr: int) -> tuple[Any]:  # noqa: N802
        if err := self._failed("cudaFree"):
            return (err,)
        if self.memory.pop(ptr, None) is None:  # unknown pointer or double free
            return (self.cudaError_t.cudaErrorInvalidValue,)
        return (self.cudaError_t.cudaSuccess,)

    def cudaStreamCreate(self) -> tuple[Any, FakeStream | None]:  # noqa: N802
        if err := self._failed("cudaStreamCreate"):
            return err, None
        self._next_stream += 1
        stream = FakeStream(self._next_stream)
        self.streams.add(stream.handle)
        return self.cudaError_t.cudaSuccess, stream

    def _stream_ok(self, stream: Any) -> bool:
        return isinstance(stream, FakeStream) and stream.handle in self.streams

    def cudaStreamSynchronize(self, stream: Any) -> tuple[Any]:  # noqa: N802
        if err := self._failed("cudaStreamSynchronize"):
            return (err,)
        if not self._stream_ok(stream):
            return (self.cudaError_t.cudaErrorInvalidResourceHandle,)
        return (self.cudaError_t.cudaSuccess,)

    def cudaStreamDestroy(self, stream: Any) -> tuple[Any]:  # noqa: N802
        if not self._stream_ok(stream):
            return (self.cudaError_t.cudaErrorInvalidResourceHandle,)
        self.streams.discard(stream.handle)
        return (self.cudaError_t.cudaSuccess,)

    def cudaMemcpyAsync(self, dst: Any, src: Any, count: int, kind: Any, stream: Any):  # noqa: N802
        if err := self._failed("cudaMemcpyAsync"):
            return (err,)
        invalid = (self.cudaError_t.cudaErrorInvalidValue,)
        if not self._stream_ok(stream):
            return (self.cudaError_t.cudaErrorInvalidResourceHandle,)
        if kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice:
            device, host = self.memory.get(dst), src
        elif kind == self.cudaMemcpyKind.cudaMemcpyDeviceToHost:
            device, host = self.memory.get(src), dst
        else:
            return invalid
        if device is None or not isinstance(host, np.ndarray) or not host.flags.c_contiguous:
            return invalid
        if count > device.size or count > host.nbytes:  # would overrun a buffer
            return invalid
        host_bytes = host.reshape(-1).view(np.uint8)
        if kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice:
            device[:count] = host_bytes[:count]
        else:
            host_bytes[:count] = device[:count]
        return (self.cudaError_t.cudaSuccess,)


# --------------------------------------------------------------------- stand-in tensorrt


class DataType(enum.Enum):
    FLOAT = "float32"
    HALF = "float16"
    INT8 = "int8"
    UINT8 = "uint8"
    INT32 = "int32"
    BF16 = "bfloat16"


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


def nptype(dtype: DataType) -> type:
    if dtype is DataType.BF16:
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
    return np.dtype(dtype.value).type


class FakeContext:
    """IExecutionContext: input shape, tensor addresses, execute_async_v3."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.input_shape = tuple(engine.desc["input"]["shape"])
        self.addresses: dict[str, int] = {}
        self.shapes_set: list[tuple[int, ...]] = []
        self.executed: list[int] = []  # batch of each execution

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        desc = self.engine.desc
        shape = tuple(int(d) for d in shape)
        if name != desc["input"]["name"] or desc.get("profile") is None:
            return False
        low, _, high = desc["profile"]
        if len(shape) != len(low) or any(
            not lo <= d <= hi for d, lo, hi in zip(shape, low, high, strict=True)
        ):
            return False
        self.input_shape = shape
        self.shapes_set.append(shape)
        return True

    def get_tensor_shape(self, name: str) -> list[int]:
        if name == self.engine.desc["input"]["name"]:
            return list(self.input_shape)
        return [self.input_shape[0], K]

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        if name not in self.engine.names or ptr not in self.engine.cudart.memory:
            return False
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        cudart, desc = self.engine.cudart, self.engine.desc
        if type(stream_handle) is not int or stream_handle not in cudart.streams:
            return False
        if any(d < 0 for d in self.input_shape):
            return False  # dynamic input shape never set
        i_name, o_name = desc["input"]["name"], desc["output"]["name"]
        if i_name not in self.addresses or o_name not in self.addresses:
            return False
        i_dtype = np.dtype(desc["input"]["dtype"].value)
        o_dtype = np.dtype(desc["output"]["dtype"].value)
        n_in = int(np.prod(self.input_shape)) * i_dtype.itemsize
        device_in = cudart.memory[self.addresses[i_name]]
        device_out = cudart.memory[self.addresses[o_name]]
        n = self.input_shape[0]
        n_out = n * K * o_dtype.itemsize
        if device_in.size < n_in or device_out.size < n_out:
            return False
        x = device_in[:n_in].view(i_dtype).reshape(self.input_shape)
        device_out[:n_out] = reference(x).astype(o_dtype).reshape(-1).view(np.uint8)
        self.executed.append(n)
        return True


class FakeEngine:
    """ICudaEngine from the JSON "engine file"; the output is listed first, so the runner
    must find the input by its mode, not its index."""

    def __init__(self, desc: dict[str, Any], cudart: FakeCudart) -> None:
        self.desc, self.cudart = desc, cudart
        self.names = [desc["output"]["name"], desc["input"]["name"]]
        self.contexts: list[FakeContext] = []

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def _tensor(self, name: str) -> dict[str, Any]:
        return next(t for t in (self.desc["input"], self.desc["output"]) if t["name"] == name)

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode.INPUT if name == self.desc["input"]["name"] else TensorIOMode.OUTPUT

    def get_tensor_shape(self, name: str) -> list[int]:
        return list(self._tensor(name)["shape"])

    def get_tensor_dtype(self, name: str) -> DataType:
        return self._tensor(name)["dtype"]

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[list[int]]:
        if self.desc.get("profile") is None or profile_index != 0:
            raise RuntimeError("no such optimisation profile")
        assert name == self.desc["input"]["name"]
        return [list(s) for s in self.desc["profile"]]

    def create_execution_context(self) -> FakeContext:
        self.contexts.append(FakeContext(self))
        return self.contexts[-1]


def fake_modules(cudart: FakeCudart, *, legacy_cuda: bool = False) -> dict[str, Any]:
    """sys.modules entries for `tensorrt` and cuda-python (`cuda.bindings.runtime`, or the
    pre-12.6 `cuda.cudart` with `cuda.bindings` absent)."""
    trt = types.ModuleType("tensorrt")
    engines: list[FakeEngine] = []

    class Logger:
        WARNING = 2

        def __init__(self, severity: int) -> None:
            self.severity = severity

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            assert isinstance(logger, Logger)

        def deserialize_cuda_engine(self, data: bytes) -> FakeEngine | None:
            try:
                desc = json.loads(data)
            except ValueError:
                return None  # TensorRT logs the error and returns None
            for t in ("input", "output"):
                desc[t]["dtype"] = DataType[desc[t]["dtype"]]
            engines.append(FakeEngine(desc, cudart))
            return engines[-1]

    trt.Logger, trt.Runtime, trt.DataType = Logger, Runtime, DataType
    trt.TensorIOMode, trt.nptype, trt.engines = TensorIOMode, nptype, engines
    cuda = types.ModuleType("cuda")
    modules: dict[str, Any] = {"tensorrt": trt, "cuda": cuda}
    if legacy_cuda:
        cuda.cudart = cudart
        modules["cuda.cudart"] = cudart
        modules["cuda.bindings"] = None  # `from cuda.bindings import ...` raises ImportError
    else:
        bindings = types.ModuleType("cuda.bindings")
        bindings.runtime = cudart
        cuda.bindings = bindings
        modules["cuda.bindings"] = bindings
        modules["cuda.bindings.runtime"] = cudart
    return modules


def write_engine(
    path: Path,
    *,
    batch: int | None = None,
    profile: tuple[int, int, int] | None = (1, 4, 8),
    dtype: str = "FLOAT",
    out_dtype: str | None = None,
    shape: tuple[int, ...] = (H, W_, 3),
) -> Path:
    """A stand-in engine file: dynamic batch with `profile` (min, opt, max), or `batch`."""
    desc = {
        "input": {"name": "pixels", "shape": [batch or -1, *shape], "dtype": dtype},
        "output": {"name": "logits", "shape": [batch or -1, K], "dtype": out_dtype or dtype},
        "profile": None if batch else [[b, *shape] for b in profile],
    }
    path.write_text(json.dumps(desc))
    return path


@pytest.fixture
def cudart(monkeypatch: pytest.MonkeyPatch) -> FakeCudart:
    fake = FakeCudart()
    for name, module in fake_modules(fake).items():
        monkeypatch.setitem(sys.modules, name, module)
    return fake


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (11, H, W_, 3), dtype=np.uint8)


def context_of(runner: TensorRTRunner) -> FakeContext:
    return runner._context


# ------------------------------------------------------------------------------- the tests


def test_dynamic_batch_chunks_and_reallocates_only_when_growing(cudart, images, tmp_path):
    runner = TensorRTRunner(write_engine(tmp_path / "m.engine"), batch_size=4)
    assert (runner.runtime, runner.batch_size, runner.max_batch) == ("tensorrt", 4, 8)
    assert runner.input.shape == (None, H, W_, 3) and runner.output.shape == (None, K)
    assert runner.input.name == "pixels" and runner.output.name == "logits"
    scores = runner.predict(images[:10])  # chunks of 4, 4, 2
    assert scores.dtype == np.float32 and scores.shape == (10, K)
    np.testing.assert_allclose(scores, reference(images[:10]), rtol=1e-5, atol=1e-6)
    ctx = context_of(runner)
    assert ctx.executed == [4, 4, 2]
    assert [s[0] for s in ctx.shapes_set] == [4, 2]  # set only when the batch changes
    assert cudart.mallocs == [4 * H * W_ * 3 * 4, 4 * K * 4]  # input, output; no shrinking
    # Bigger chunks than ever before: both buffers grow, the old ones are freed.
    big = TensorRTRunner(write_engine(tmp_path / "big.plan"), batch_size=8)
    big.predict(images[:2])
    np.testing.assert_allclose(big.predict(images), reference(images), rtol=1e-5, atol=1e-6)
    assert context_of(big).executed == [2, 8, 3]
    assert cudart.mallocs[2:] == [2 * H * W_ * 3 * 4, 2 * K * 4, 8 * H * W_ * 3 * 4, 8 * K * 4]
    assert len(cudart.memory) == 4  # two buffers per runner
    assert runner.predict(images[:0]).shape == (0, K)


def test_batch_is_capped_at_the_profile_max(cudart, images, tmp_path):
    runner = TensorRTRunner(write_engine(tmp_path / "m.engine", profile=(1, 2, 3)), batch_size=16)
    assert (runner.batch_size, runner.max_batch) == (3, 3)
    scores = runner.predict(images[:8])
    np.testing.assert_allclose(scores, reference(images[:8]), rtol=1e-5, atol=1e-6)
    assert context_of(runner).executed == [3, 3, 2]


def test_profile_minimum_above_the_chunk_pads(cudart, images, tmp_path):
    runner = TensorRTRunner(write_engine(tmp_path / "m.engine", profile=(2, 4, 4)), batch_size=4)
    scores = runner.predict(images[:5])  # 4, then 1 padded to the profile's minimum 2
    np.testing.assert_allclose(scores, reference(images[:5]), rtol=1e-5, atol=1e-6)
    assert context_of(runner).executed == [4, 2]


def test_fixed_batch_pads_the_last_chunk(cudart, images, tmp_path):
    runner = TensorRTRunner(write_engine(tmp_path / "m.engine", batch=4), batch_size=1)
    assert (runner.batch_size, runner.max_batch) == (4, 4)
    assert runner.input.shape == (4, H, W_, 3)
    scores = runner.predict(images[:6])
    assert scores.shape == (6, K)
    np.testing.assert_allclose(scores, reference(images[:6]), rtol=1e-5, atol=1e-6)
    ctx = context_of(runner)
    assert ctx.executed == [4, 4] and ctx.shapes_set == []  # fixed shape: never set
    # Fewer images than the batch from the start: still a full (padded) batch on the GPU.
    fresh = TensorRTRunner(write_engine(tmp_path / "f.engine", batch=4))
    np.testing.assert_allclose(fresh.predict(images[:1]), reference(images[:1]), atol=1e-5)
    assert context_of(fresh).executed == [4]


def test_float16_io_is_cast(cudart, images, tmp_path):
    runner = TensorRTRunner(write_engine(tmp_path / "h.engine", dtype="HALF"), batch_size=4)
    assert runner.input.dtype == runner.output.dtype == "float16"
    scores = runner.predict(images[:7])
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, reference(images[:7]), rtol=2e-3, atol=2e-3)
    # float16 input, float32 output (a mixed engine) also works.
    mixed = write_engine(tmp_path / "m.engine", dtype="HALF", out_dtype="FLOAT")
    scores = TensorRTRunner(mixed, batch_size=4).predict(images[:7])
    np.testing.assert_allclose(scores, reference(images[:7]), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize(
    "call, error",
    [
        ("cudaStreamCreate", "cudaErrorMemoryAllocation"),
        ("cudaMalloc", "cudaErrorMemoryAllocation"),
        ("cudaMemcpyAsync", "cudaErrorInvalidValue"),
        ("cudaStreamSynchronize", "cudaErrorInvalidResourceHandle"),
    ],
)
def test_failing_cuda_call_is_named(cudart, images, tmp_path, call, error):
    engine = write_engine(tmp_path / "m.engine")
    cudart.fail[call] = FakeCudart.cudaError_t[error]
    with pytest.raises(RuntimeError, match=rf"CUDA {call}\b.*failed: {error}"):
        TensorRTRunner(engine, batch_size=2).predict(images[:3])


def test_close_frees_device_memory(cudart, images, tmp_path):
    with TensorRTRunner(write_engine(tmp_path / "m.engine"), batch_size=4) as runner:
        runner.predict(images[:5])
        assert len(cudart.memory) == 2 and len(cudart.streams) == 1
    assert cudart.memory == {} and cudart.streams == set()
    runner.close()  # twice is fine: nothing is freed again
    with pytest.raises(RuntimeError, match="closed"):
        runner.predict(images[:1])
    # __del__ frees too (and never raises).
    other = TensorRTRunner(write_engine(tmp_path / "o.engine"), batch_size=2)
    other.predict(images[:2])
    assert len(cudart.memory) == 2
    del other
    assert cudart.memory == {} and cudart.streams == set()


def test_load_runner_takes_engine_and_plan(cudart, images, tmp_path):
    for name in ("m.engine", "m.PLAN"):
        runner = load_runner(write_engine(tmp_path / name), threads=4, batch_size=2)
        assert isinstance(runner, TensorRTRunner) and runner.threads is None
        assert repr(runner).startswith(f"TensorRTRunner({str(tmp_path / name)!r}")
        np.testing.assert_allclose(runner.predict(images[:3]), reference(images[:3]), atol=1e-5)
    with pytest.raises(ValueError, match=r"\.engine/\.plan"):
        (tmp_path / "m.bin").write_bytes(b"")
        load_runner(tmp_path / "m.bin")


def test_legacy_cuda_python_import(monkeypatch, images, tmp_path):
    fake = FakeCudart()
    for name, module in fake_modules(fake, legacy_cuda=True).items():
        monkeypatch.setitem(sys.modules, name, module)
    runner = TensorRTRunner(write_engine(tmp_path / "m.engine"), batch_size=2)
    assert runner._cudart is fake
    np.testing.assert_allclose(runner.predict(images[:3]), reference(images[:3]), atol=1e-5)


def test_missing_packages_say_what_to_install(monkeypatch, tmp_path):
    engine = write_engine(tmp_path / "m.engine")
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(ImportError, match=r"`tensorrt` Python package .*pip install cuda-python"):
        load_runner(engine)
    # TensorRT there, cuda-python not.
    for name, module in fake_modules(FakeCudart()).items():
        monkeypatch.setitem(sys.modules, name, module)
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match="pip install cuda-python"):
        TensorRTRunner(engine)


def test_unusable_engines_are_refused(cudart, tmp_path):
    garbage = tmp_path / "g.engine"
    garbage.write_bytes(b"\x00not an engine")
    with pytest.raises(RuntimeError, match="rebuild it on this device"):
        TensorRTRunner(garbage)
    with pytest.raises(ValueError, match="only float pixel inputs"):
        TensorRTRunner(write_engine(tmp_path / "i.engine", dtype="UINT8"))
    with pytest.raises(ValueError, match="numpy cannot hold"):
        TensorRTRunner(write_engine(tmp_path / "b.engine", dtype="BF16"))
    with pytest.raises(ValueError, match="only the batch may be dynamic"):
        TensorRTRunner(write_engine(tmp_path / "d.engine", shape=(-1, W_, 3)))
    with pytest.raises(FileNotFoundError):
        TensorRTRunner(tmp_path / "missing.engine")
    with pytest.raises(ValueError, match="batch_size"):
        TensorRTRunner(write_engine(tmp_path / "m.engine"), batch_size=0)


def test_runner_never_imports_tensorflow(images, tmp_path):
    """In a fresh interpreter, loading and running an engine leaves no TensorFlow or Keras
    module behind (nothing is blocked: an import would succeed and show up)."""
    engine = write_engine(tmp_path / "m.engine")
    np.save(tmp_path / "images.npy", images)
    script = textwrap.dedent(
        """
        import json, sys
        import numpy as np
        from tests.test_runtime_tensorrt import FakeCudart, fake_modules
        sys.modules.update(fake_modules(FakeCudart()))
        from edgekd.device.runtime import load_runner
        runner = load_runner(sys.argv[1], batch_size=4)
        scores = runner.predict(np.load(sys.argv[2]))
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
        print(json.dumps({"heavy": heavy, "scores": scores.tolist()}))
        """
    )
    out = run_python_json(script, str(engine), str(tmp_path / "images.npy"))
    assert out["heavy"] == []
    np.testing.assert_allclose(np.array(out["scores"]), reference(images), atol=1e-5)


def test_bench_measures_an_engine_row(cudart, images, tmp_path):
    """The bench child's side of an engine row: the runner, the backend name, accuracy."""
    from edgekd.device.bench import measure_here

    labels = np.argmax(reference(images), axis=1).astype(np.int32)
    labels[0] = (labels[0] + 1) % K  # one wrong label: accuracy 10/11
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "labels.npy", labels)
    spec = {"images": str(tmp_path / "images.npy"), "labels": str(tmp_path / "labels.npy"),
            "format": "tensorrt", "model": "student", "precision": "int8", "batch": 32,
            "path": str(write_engine(tmp_path / "student-int8.engine", profile=(1, 4, 4))),
            "threads": 2, "warmup": 1, "runs": 3}  # fmt: skip
    result = measure_here(spec)
    assert result["backend"] == "tensorrt/engine"
    assert result["accuracy"] == pytest.approx(10 / 11)
    assert result["predictions"][1:] == labels[1:].tolist()
    assert result["throughput_ips"] > 0 and result["members_per_image"] == 1.0
