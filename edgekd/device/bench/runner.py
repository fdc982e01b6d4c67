"""`run_bench`: every target of an export folder, each in its own processes, in one report."""

from __future__ import annotations

import importlib.util
import os
import platform
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.contract import ENSEMBLE_FILE, FORMATS, TRTEXEC_SUFFIX, ContractError
from edgekd.device.bench.child import measure
from edgekd.device.bench.cpu import host_cpu, int8_note
from edgekd.device.bench.images import load_eval_images, read_classes
from edgekd.device.bench.options import (
    DEFAULT_LIMIT,
    DEFAULT_ROUNDS,
    DEFAULT_RUNS,
    DEFAULT_WARMUP,
    FORMAT_OF,
    INSTALL_HINTS,
    RUNTIMES,
    BenchError,
)
from edgekd.device.bench.profiles import DeviceProfile, load_profile
from edgekd.device.bench.targets import (
    Target,
    ensemble_spec,
    find_targets,
    readable_spec,
    student_cards,
)


def merge_rounds(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One row from several rounds: medians of the timings, the rest from the first round
    (accuracy and memory do not depend on the round). An error in any round wins."""
    errors = [r for r in results if "error" in r]
    if errors:
        return errors[0]
    merged = dict(results[0])
    keys = results[0]["latency_ms"].keys()
    merged["latency_ms"] = {k: float(np.median([r["latency_ms"][k] for r in results]))
                            for k in keys}  # fmt: skip
    merged["p50_by_round"] = [r["latency_ms"]["p50"] for r in results]
    ips = [r["throughput_ips"] for r in results if r.get("throughput_ips")]
    merged["throughput_ips"] = float(np.median(ips)) if ips else None
    return merged


def _importable(module: str) -> bool:
    """Whether `module` can be found, without importing it (its parents may be imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent, or a stub without a spec
        return False


def _runtime_available(runtime: str) -> bool:
    """Whether this machine has `runtime`'s Python package(s); TensorRT needs cuda-python too."""
    if runtime == "tensorrt":
        return _importable("tensorrt") and (
            _importable("cuda.bindings.runtime") or _importable("cuda.cudart")
        )
    modules = ("ai_edge_litert", "tflite_runtime") if runtime == "litert" else ("onnxruntime",)
    return any(_importable(m) for m in modules)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _input_size(targets: Sequence[Target], export_dir: Path) -> tuple[int, int]:
    """(height, width) the models take, from a model card or ensemble.json."""
    # Any student card will do (all take the same images): an engine built on the device
    # has no card of its own, but the ONNX file it came from has.
    cards = [t.card for t in targets if t.card is not None] + student_cards(export_dir)
    for card in cards:
        shape = card.input_shape
        if shape and len(shape) == 4 and shape[1] and shape[2]:
            return int(shape[1]), int(shape[2])
    spec = readable_spec(export_dir)
    if spec is not None and spec.input_shape is not None:
        return spec.input_shape[0], spec.input_shape[1]
    from edgekd.device.runtime import load_runner  # no card: ask the file itself

    first = next(t for t in targets if t.model == "student") if targets else None
    if first is None:
        raise BenchError(f"{export_dir}: cannot tell the models' input size")
    spec = load_runner(first.path).input.shape
    return int(spec[1]), int(spec[2])


def compare(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Student vs ensemble ratios for every student row against every ensemble row of the
    same format: speed-up at p50, size ratio, accuracy delta (percentage points)."""
    out = []
    for s in rows:
        if s["model"] != "student" or "error" in s:
            continue
        for e in rows:
            if e["model"] != "ensemble" or "error" in e or e["format"] != s["format"]:
                continue
            out.append({
                "student": f"{s['precision']} {s['format']}",
                "ensemble": f"{e['precision']} {e['format']}",
                "speedup_p50": e["latency_ms"]["p50"] / s["latency_ms"]["p50"],
                "throughput_ratio": (s["throughput_ips"] / e["throughput_ips"]
                                     if s["throughput_ips"] and e["throughput_ips"] else None),
                "size_ratio": e["size_bytes"] / s["size_bytes"],
                "accuracy_delta_pp": 100 * (s["accuracy"] - e["accuracy"]),
                "agreement": s.get("agreement_with", {}).get(e["precision"]),
            })  # fmt: skip
    return out


def select_formats(export_dir: Path, runtime: str) -> tuple[list[str], list[str]]:
    """The file formats `--runtime` benches on this machine, and notes on those skipped.

    Raises:
        BenchError: the one runtime asked for is not installed (the message says what to
            install), or none is.
    """
    wanted = ["litert", "onnxruntime", "tensorrt"] if runtime == "all" else [runtime]
    missing = [r for r in wanted if not _runtime_available(r)]
    if missing and runtime != "all":
        raise BenchError(f"--runtime {runtime}: not installed ({INSTALL_HINTS[runtime]})")
    notes: list[str] = []
    for r in missing:
        if r != "tensorrt":
            notes.append(f"{r} not installed: its rows are skipped")
            continue
        # TensorRT is rarely there: only worth a note when the export has engines.
        engines = [t.path.name for t in find_targets(export_dir, ["tensorrt"])]
        if engines:
            notes.append(
                f"tensorrt not installed: {', '.join(engines)} skipped "
                f"({INSTALL_HINTS['tensorrt']})"
            )
    formats = [FORMAT_OF[r] for r in wanted if r not in missing]
    if not formats:
        raise BenchError('no runtime installed: pip install "edgekd[runtime]"')
    return formats, notes


def run_bench(
    export_dir: str | Path,
    *,
    device: str | Path | None = None,
    runtime: str | None = None,
    threads: int | None = None,
    data: str | None = None,
    limit: int = DEFAULT_LIMIT,
    batch: int | None = None,
    warmup: int = DEFAULT_WARMUP,
    runs: int = DEFAULT_RUNS,
    rounds: int = DEFAULT_ROUNDS,
    timeout: float = 1800,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure every student file and the gated ensemble of `export_dir`; the JSON report.

    Each model is measured `rounds` times, each time in a fresh process, the rounds
    interleaved (A B C, A B C, ...) so that a slow spell on a shared machine hits every row
    alike; latency and throughput are the medians over rounds.

    Flags given here override the device profile's values, which override the defaults
    (all runtimes, the runtime's default threads, batch 32, XNNPACK on).
    """
    say = log or (lambda _msg: None)
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise BenchError(
            f"{export_dir}: no such export folder (edgekd export RUN writes RUN/export)"
        )
    profile = load_profile(device) if device is not None else DeviceProfile(name="default")
    runtime = runtime or profile.runtime
    if runtime not in RUNTIMES:
        raise BenchError(f"--runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    threads = threads if threads is not None else profile.threads
    batch = batch if batch is not None else profile.batch
    for name, value, low in (("--limit", limit, 1), ("--batch", batch, 1), ("--runs", runs, 1),
                             ("--rounds", rounds, 1),
                             ("--warmup", warmup, 0), ("--threads", threads or 1, 1)):  # fmt: skip
        if value < low:
            raise BenchError(f"{name} must be >= {low}, got {value}")

    formats, notes = select_formats(export_dir, runtime)
    targets = find_targets(export_dir, formats, profile.precisions)
    if not targets:
        patterns = [f"student*{s}" for f in formats for s in FORMATS[f].suffixes]
        hint = ""
        if "tensorrt" in formats:
            hint = f"; on the device, *{TRTEXEC_SUFFIX} builds the engines"
        raise BenchError(
            f"{export_dir}: no {'/'.join(patterns)} files and no members/{ENSEMBLE_FILE} to "
            f"bench (edgekd export RUN writes them{hint})"
        )
    if not any(t.model == "ensemble" for t in targets):
        if (export_dir / "members" / ENSEMBLE_FILE).is_file():
            try:
                ensemble_spec(export_dir)
                notes.append(
                    "no gated ensemble rows: it runs on LiteRT or ONNX Runtime, and members/ "
                    f"has no files for {', '.join(formats)} at the precisions benched"
                )
            except ContractError as exc:
                notes.append(f"no gated ensemble rows: {exc}")
        else:
            notes.append(
                "no gated ensemble rows: the export has no members/ (edgekd export --members)"
            )
    classes = read_classes(export_dir)
    size = _input_size(targets, export_dir)
    data_set = load_eval_images(export_dir, data, limit, size, classes)
    say(f"bench: {len(data_set.images)} images from {data_set.source} ({data_set.selection}); "
        f"{len(targets)} models, each in a fresh process")  # fmt: skip

    settings = {"threads": threads, "batch": batch, "warmup": warmup, "runs": runs,
                "rounds": rounds, "xnnpack": profile.xnnpack}  # fmt: skip
    rows: list[dict[str, Any]] = []
    predictions: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="edgekd-bench-") as tmp:
        work = Path(tmp)
        np.save(work / "images.npy", data_set.images)
        np.save(work / "labels.npy", data_set.labels)
        spec = {
            **settings, "images": str(work / "images.npy"), "labels": str(work / "labels.npy"),
            "gpu": profile.gpu, "tensorrt": profile.tensorrt, "fp16": profile.fp16,
            "delegates": [profile.gpu_library] if profile.gpu_library else [],
            "trt_cache": str(export_dir / "trt-cache"),
        }  # fmt: skip
        per_round: list[list[dict[str, Any]]] = [[] for _ in targets]
        for r in range(rounds):
            for i, target in enumerate(targets):
                per_round[i].append(measure(target, spec, work, timeout))
            if rounds > 1:
                say(f"round {r + 1}/{rounds} done")
        for i, target in enumerate(targets, 1):
            result = merge_rounds(per_round[i - 1])
            row: dict[str, Any] = {
                "model": target.model,
                "format": target.format,
                "precision": target.precision,
                "file": str(target.path.relative_to(export_dir))
                if target.model == "student" else "members/",
                "files": [f.name for f in target.files],
                "size_bytes": target.size_bytes,
                **target.counts,
                **{k: v for k, v in result.items() if k != "predictions"},
            }  # fmt: skip
            if "predictions" in result:
                predictions[f"{target.model}/{target.precision}/{target.format}"] = np.asarray(
                    result["predictions"]
                )
            rows.append(row)
            if "error" in result:
                say(f"[{i}/{len(targets)}] {target.label}: error: {result['error']}")
            else:
                lat = result["latency_ms"]
                say(f"[{i}/{len(targets)}] {target.label}: p50 {lat['p50']:.3f} ms, "
                    f"accuracy {100 * result['accuracy']:.2f}%")  # fmt: skip
    # Top-1 agreement of each student row with each ensemble row of the same format.
    for row in rows:
        key = f"{row['model']}/{row['precision']}/{row['format']}"
        if row["model"] != "student" or key not in predictions:
            continue
        for other in rows:
            okey = f"ensemble/{other['precision']}/{other['format']}"
            if (
                other["model"] == "ensemble"
                and other["format"] == row["format"]
                and okey in predictions
            ):
                agree = float(np.mean(predictions[key] == predictions[okey]))
                row.setdefault("agreement_with", {})[other["precision"]] = agree

    cpu = host_cpu()
    cpu_int8 = not profile.gpu and any(
        r["precision"].startswith("int8") and r["format"] != "tensorrt" for r in rows
    )
    if note := int8_note(cpu, cpu_int8):
        notes.append(note)
    if any(
        r["format"] == "onnx" and r["precision"] == "int8" and r.get("backend", "").endswith("CPU")
        for r in rows
    ):
        notes.append(
            "student-int8.onnx is the TensorRT Q/DQ file: export checks it with ONNX Runtime's "
            "graph optimisations off (what TensorRT computes); ONNX Runtime's fused CPU kernels "
            "may differ from it on x86 without VNNI. On a CPU, deploy student-int8-cpu.onnx"
        )
    return {
        "export": str(export_dir),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": {k: v for k, v in asdict(profile).items() if k not in ("install", "notes")},
        "host": {
            "system": platform.system(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "cpu": cpu,
            "litert": _version("ai-edge-litert") or _version("tflite-runtime"),
            "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
            "tensorrt": _version("tensorrt"),
        },
        "settings": {**settings, "runtime": runtime, "limit": limit},
        "data": {
            "source": data_set.source,
            "selection": data_set.selection,
            "images": int(len(data_set.images)),
            "classes": classes,
        },
        "memory": "peak RSS (VmHWM) of a fresh child process per row: interpreter, numpy, the "
        "runtime, the images and the model; 'baseline' is its RSS before the model loaded",
        "rows": rows,
        "comparisons": compare(rows),
        "notes": notes,
    }
