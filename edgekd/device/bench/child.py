"""One model measured in a fresh child process: latency, throughput, peak memory, accuracy."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.device.bench.options import base_precision
from edgekd.device.bench.targets import Target


def _rss_kib(field_name: str) -> int | None:
    """VmRSS / VmHWM of this process in KiB from /proc (Linux), else None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB (VmHWM, else getrusage)."""
    hwm = _rss_kib("VmHWM")
    if hwm is not None:
        return hwm / 1024
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _onnx_providers(spec: dict[str, Any], notes: list[str]) -> list[Any] | None:
    """Execution providers a profile asks for, keeping only those this onnxruntime has."""
    if not (spec.get("tensorrt") or spec.get("gpu")):
        return ["CPUExecutionProvider"] if spec.get("cpu_only") else None
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    wanted: list[Any] = []
    if spec.get("tensorrt"):
        options = {
            "trt_fp16_enable": bool(spec.get("fp16")),
            "trt_int8_enable": spec["precision"].startswith("int8"),  # scales from Q/DQ nodes
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": spec["trt_cache"],
        }
        if "TensorrtExecutionProvider" in available:
            wanted.append(("TensorrtExecutionProvider", options))
        else:
            notes.append("TensorRT EP not in this onnxruntime build")
    if spec.get("tensorrt") or spec.get("gpu"):
        if "CUDAExecutionProvider" in available:
            wanted.append("CUDAExecutionProvider")
        else:
            notes.append("CUDA EP not in this onnxruntime build")
    return [*wanted, "CPUExecutionProvider"]


def _backend(runner: Any, xnnpack: bool) -> str:
    """'litert/xnnpack', 'onnxruntime/CPU', 'tensorrt/engine', ...: the runtime and what
    executes the graph (an external TFLite delegate by its library's name)."""
    runtime = str(getattr(runner, "runtime", "?"))
    if runtime == "tensorrt":
        return "tensorrt/engine"
    providers = getattr(runner, "providers", None)
    if providers:
        return f"{runtime}/{str(providers[0]).removesuffix('ExecutionProvider')}"
    delegates = getattr(runner, "delegates", ())
    if delegates:
        names = (Path(d).name.split(".")[0].removeprefix("lib") for d in delegates)
        return f"{runtime}/{'+'.join(names)}"
    return f"{runtime}/{'xnnpack' if xnnpack else 'builtin'}"


def measure_here(spec: dict[str, Any]) -> dict[str, Any]:
    """Load one model and measure it in this process (the child side of `measure`)."""
    images = np.load(spec["images"])
    labels = np.load(spec["labels"])
    notes: list[str] = []
    fmt, batch = spec["format"], int(spec["batch"])
    options: dict[str, Any] = {"batch_size": batch}
    if fmt == "tflite":
        import_name = next(
            (m for m in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")
             if importlib.util.find_spec(m.split(".")[0]) is not None), None,
        )  # fmt: skip
        if import_name:
            __import__(import_name)  # its memory belongs to the baseline, not the model
        options["xnnpack"] = bool(spec.get("xnnpack", True))
        if spec.get("delegates"):
            options["delegates"] = list(spec["delegates"])
    elif fmt == "tensorrt":
        from edgekd.device.runtime.tensorrt import import_tensorrt

        import_tensorrt()  # baseline, as above
    else:
        import onnxruntime  # noqa: F401  (baseline)

        providers = _onnx_providers(spec, notes)
        if providers is not None:
            options["providers"] = providers
    baseline = _rss_kib("VmRSS")
    threads = spec.get("threads")

    start = time.perf_counter()
    if spec["model"] == "student":
        from edgekd.device.runtime import load_runner

        runner = load_runner(spec["path"], threads=threads, **options)
        backend = _backend(runner, options.get("xnnpack", True))

        def one(x: np.ndarray) -> Any:
            return runner.predict(x)

        def many(x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
            return runner.predict(x), None
    else:
        from edgekd.device.runtime.ensemble import EnsembleRunner

        ens = EnsembleRunner(
            spec["path"], format=fmt, precision=spec["precision"], threads=threads, **options
        )
        backend = _backend(ens.generalist, options.get("xnnpack", True))

        def one(x: np.ndarray) -> Any:
            return ens.predict_one(x)

        def many(x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
            result = ens.predict(x)
            return result.probs, result.active

    load_s = time.perf_counter() - start
    if backend.endswith("/Tensorrt") and spec.get("fp16"):
        backend += "+fp16"

    n = len(images)
    for i in range(int(spec["warmup"])):
        one(images[i % n][None])
    times = np.empty(int(spec["runs"]), np.float64)
    for i in range(len(times)):
        x = images[i % n][None]
        t0 = time.perf_counter_ns()
        one(x)
        times[i] = (time.perf_counter_ns() - t0) / 1e6

    many(images[:batch])  # warm the batch shape; not timed
    preds, active, elapsed = [], [], 0.0
    for s in range(0, n, batch):
        chunk = images[s : s + batch]
        t0 = time.perf_counter()
        scores, act = many(chunk)
        elapsed += time.perf_counter() - t0
        if not np.all(np.isfinite(scores)):
            raise ValueError(
                f"{spec['path']}: outputs are not finite (NaN or inf) on images {s}..."
                f"{s + len(chunk) - 1}; the model is broken, so it gets no accuracy"
            )
        preds.append(np.argmax(scores, axis=1))
        if act is not None:
            active.append(np.asarray(act))
    pred = np.concatenate(preds)
    result: dict[str, Any] = {
        "backend": backend,
        "load_s": round(load_s, 4),
        "latency_ms": {
            "p50": float(np.percentile(times, 50)),
            "p90": float(np.percentile(times, 90)),
            "p99": float(np.percentile(times, 99)),
            "mean": float(times.mean()),
            "min": float(times.min()),
        },
        "throughput_ips": n / elapsed if elapsed > 0 else None,
        "accuracy": float(np.mean(pred == labels)),
        "predictions": pred.astype(int).tolist(),
        "rss_mb": {
            "baseline": None if baseline is None else baseline / 1024,
            "peak": _peak_rss_mib(),
        },
        "notes": notes,
        # Proof for the tests (and anyone curious) that the row ran without TensorFlow.
        "tensorflow_imported": any(m.split(".")[0] in ("tensorflow", "keras") and
                                   sys.modules[m] is not None for m in list(sys.modules)),
    }  # fmt: skip
    if active:
        act = np.concatenate(active).astype(np.float32)
        members = 1.0 + (float(act.sum(1).mean()) if act.shape[1] else 0.0)
        result["members_per_image"] = members
        result["activation_rate"] = act.mean(0).tolist() if len(act) else []
        result["activation_any"] = float((act.sum(1) > 0).mean()) if act.shape[1] else 0.0
    else:
        result["members_per_image"] = 1.0
    return result


def _child_main(argv: Sequence[str]) -> int:
    """Entry of the child process: measure the spec in argv[0], write the result JSON."""
    spec = json.loads(Path(argv[0]).read_text())
    try:
        result = measure_here(spec)
    except Exception as exc:  # reported on the row; the other rows still run
        result = {"error": f"{type(exc).__name__}: {exc}"}
    Path(spec["out"]).write_text(json.dumps(result))
    return 0


def _child_command(spec_path: Path) -> list[str]:
    """`python -c` running `_child_main`; modules blocked in this process (set to None in
    sys.modules, e.g. to prove TensorFlow is not needed) stay blocked in the child."""
    blocked = sorted(
        name for name in ("tensorflow", "keras", "tf_keras") if
        name in sys.modules and sys.modules[name] is None
    )  # fmt: skip
    code = "import sys\n"
    code += "".join(f"sys.modules[{name!r}] = None\n" for name in blocked)
    code += "from edgekd.device.bench.child import _child_main\n"
    code += "sys.exit(_child_main(sys.argv[1:]))\n"
    return [sys.executable, "-c", code, str(spec_path)]


def measure(target: Target, spec: dict[str, Any], workdir: Path, timeout: float) -> dict[str, Any]:
    """Measure `target` in a fresh child process; errors come back as {"error": ...}."""
    name = f"{target.model}-{target.format}-{target.precision}"
    spec = {
        **spec,
        "model": target.model,
        "format": target.format,
        "precision": base_precision(target.precision),
        "path": str(target.path),
        "out": str(workdir / f"{name}.out.json"),
    }
    spec_path = workdir / f"{name}.spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    try:
        proc = subprocess.run(
            _child_command(spec_path), capture_output=True, text=True, timeout=timeout, env=env
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    out = Path(spec["out"])
    if not out.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"child process exited {proc.returncode}: {' / '.join(tail)}"}
    return json.loads(out.read_text())


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
