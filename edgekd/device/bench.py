"""`edgekd bench`: the exported student against the gated ensemble, on the device itself.

For every student file of an export folder (each format and precision) and for the gated
ensemble of its `members/` folder, on the same images: batch-1 latency after warm-up (p50,
p90, p99), throughput at a larger batch, peak resident memory of a fresh load and run, size
on disk, top-1 accuracy through the runtime, and for the ensemble how many members ran per
image. Then the student-vs-ensemble ratios the project is about (speed-up, size, accuracy).

Each model is measured in a fresh child process (`python -c ... _child_main`), so one
model's allocations, thread pools and caches never leak into another's numbers, and the
peak RSS of a row is the peak of a process that loaded only that model.

Nothing here imports TensorFlow or Keras: only numpy, Pillow, PyYAML, `edgekd.device.runtime`
and the numpy-only parts of `edgekd.data`, so it runs where only the runtime wheels are.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import metadata, resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekd import safe_yaml
from edgekd.contract import (
    ENSEMBLE_FILE,
    FORMATS,
    LABELS_FILE,
    PRECISIONS,
    QAT_TAG,
    TRTEXEC_SUFFIX,
    ContractError,
    EnsembleSpec,
    ModelCard,
    card_of,
    parse_file_name,
    read_card,
    read_ensemble_spec,
    variant_key,
)
from edgekd.device.predict import read_image
from edgekd.errors import DataError, EdgekdError, RecipeError

if TYPE_CHECKING:
    from edgekd.recipe import Recipe

RUNTIMES = ("litert", "onnxruntime", "tensorrt", "all")
FORMAT_OF = {"litert": "tflite", "onnxruntime": "onnx", "tensorrt": "tensorrt"}
# The student files of each format are those edgekd.contract.FORMATS names: TensorRT
# engines as `sh student-int8.trtexec.sh` (or `build_engine`) writes them on the device,
# or under the other usual suffix.
_INSTALL = {
    "litert": "pip install ai-edge-litert",
    "onnxruntime": "pip install onnxruntime",
    "tensorrt": "the tensorrt Python package from JetPack/the TensorRT install, and "
    "pip install cuda-python",
}
ENSEMBLE_PRECISIONS = ("float32", "int8")  # the reference ensemble and its int8 twin
_PRECISION_ORDER = {p: i for i, p in enumerate((*PRECISIONS, f"int8{QAT_TAG}"))}

DEFAULT_BATCH = 32
DEFAULT_LIMIT = 1000
DEFAULT_WARMUP = 10  # batch-1 calls before timing
DEFAULT_RUNS = 100  # timed batch-1 calls
DEFAULT_ROUNDS = 3  # fresh processes per model; timings are medians over them

_PROFILE_KEYS = {
    "name": "profile name (defaults to the file stem)",
    "description": "one line: the hardware",
    "runtime": "litert | onnxruntime | tensorrt | all",
    "threads": "runtime threads (null: the runtime's default)",
    "delegate": "mapping: xnnpack, gpu, tensorrt, fp16 (booleans), gpu_library (a path)",
    "precisions": "list of float32, float16, dynamic, int8 to bench",
    "batch": "batch size of the throughput pass",
    "install": "how to set the device up (text)",
    "notes": "what to know about the device (text)",
}
_DELEGATE_KEYS = {
    "xnnpack": "LiteRT: keep the XNNPACK CPU delegate (default true)",
    "gpu": "ONNX Runtime: CUDA execution provider",
    "tensorrt": "ONNX Runtime: TensorRT execution provider",
    "fp16": "TensorRT: allow float16 kernels (trt_fp16_enable)",
    "gpu_library": "LiteRT: external GPU delegate library (libtensorflowlite_gpu_delegate.so)",
}


class BenchError(EdgekdError):
    """An export folder, device profile or bench option is missing or malformed."""


# --------------------------------------------------------------------------- device profiles


@dataclass
class DeviceProfile:
    """What `edgekd bench --device` reads from devices/NAME.yaml; flags override it."""

    name: str
    path: str | None = None
    description: str = ""
    runtime: str = "all"
    threads: int | None = None
    xnnpack: bool = True
    gpu: bool = False
    tensorrt: bool = False
    fp16: bool = False
    gpu_library: str | None = None
    precisions: list[str] | None = None
    batch: int = DEFAULT_BATCH
    install: str = ""
    notes: str = ""


def device_profiles() -> dict[str, Path]:
    """The built-in profiles (package data of `edgekd.devices`), by name."""
    root = resources.files("edgekd.devices")
    found = {
        e.name[: -len(".yaml")]: Path(str(e)) for e in root.iterdir() if e.name.endswith(".yaml")
    }
    return dict(sorted(found.items()))


def load_profile(name_or_path: str | Path) -> DeviceProfile:
    """A device profile from a YAML file path or a built-in name ('raspberry-pi-5').

    Raises:
        BenchError: no such file or name (the built-in names are listed), a YAML error, an
            unknown key (the file and key are named) or a value of the wrong type.
    """
    path = Path(name_or_path)
    if not path.is_file():
        builtins = device_profiles()
        stem = path.name[: -len(".yaml")] if path.name.endswith(".yaml") else path.name
        if stem not in builtins:
            raise BenchError(
                f"device profile {str(name_or_path)!r}: no such file or built-in profile "
                f"(built-in: {', '.join(builtins) or 'none'})"
            )
        path = builtins[stem]
    try:
        raw = safe_yaml.load(path.read_bytes()) or {}
    except OSError as exc:
        raise BenchError(f"{path}: cannot read device profile: {exc.strerror or exc}") from None
    except safe_yaml.YamlError as exc:
        where = f"{path}:{exc.line}" if exc.line else str(path)
        raise BenchError(f"{where}: device profile: {exc}") from None
    if not isinstance(raw, dict):
        raise BenchError(f"{path}: a device profile is a mapping of keys, got {type(raw).__name__}")

    def bad(key: str, why: str) -> BenchError:
        return BenchError(f"{path}: key {key!r}: {why}")

    for key in raw:
        if key not in _PROFILE_KEYS:
            known = ", ".join(sorted(_PROFILE_KEYS))
            raise bad(str(key), f"unknown key (known keys: {known})")
    prof = DeviceProfile(name=str(raw.get("name") or path.stem), path=str(path))
    for key in ("description", "install", "notes"):
        value = raw.get(key)
        if value is not None and not isinstance(value, str):
            raise bad(key, f"expected text, got {value!r}")
        setattr(prof, key, (value or "").strip())
    runtime = raw.get("runtime", "all")
    if runtime not in RUNTIMES:
        raise bad("runtime", f"expected one of {', '.join(RUNTIMES)}, got {runtime!r}")
    prof.runtime = runtime
    for key in ("threads", "batch"):
        value = raw.get(key, getattr(prof, key))
        if value is None and key == "threads":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad(key, f"expected a positive integer{' or null' * (key == 'threads')}, "
                      f"got {value!r}")  # fmt: skip
        setattr(prof, key, value)
    delegate = raw.get("delegate") or {}
    if not isinstance(delegate, dict):
        raise bad("delegate", f"expected a mapping ({', '.join(_DELEGATE_KEYS)}), got {delegate!r}")
    for key, value in delegate.items():
        if key not in _DELEGATE_KEYS:
            raise bad(f"delegate.{key}", f"unknown key (known: {', '.join(_DELEGATE_KEYS)})")
        if key == "gpu_library":
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise bad(f"delegate.{key}", f"expected a library path or null, got {value!r}")
            prof.gpu_library = os.path.expanduser(value.strip()) if value else None
            continue
        if not isinstance(value, bool):
            raise bad(f"delegate.{key}", f"expected true or false, got {value!r}")
        setattr(prof, key, value)
    precisions = raw.get("precisions")
    if precisions is not None:
        if isinstance(precisions, str):
            precisions = [precisions]
        if not isinstance(precisions, list) or not precisions:
            raise bad("precisions", f"expected a list of {', '.join(PRECISIONS)}")
        for p in precisions:
            if p not in PRECISIONS:
                raise bad("precisions", f"unknown precision {p!r} (known: {', '.join(PRECISIONS)})")
        prof.precisions = list(precisions)
    return prof


# ------------------------------------------------------------------------------ what to bench


@dataclass
class Target:
    """One row to measure: a student file, or the ensemble at one format and precision."""

    model: str  # "student" | "ensemble"
    format: str  # "tflite" | "onnx" | "tensorrt" (an engine: student rows only)
    precision: str  # float32, float16, dynamic, int8, int8-qat
    path: Path  # the model file, or the members/ folder
    files: list[Path]
    size_bytes: int
    card: ModelCard | None = None  # a student file's, when it has one
    params: int | None = None  # the ensemble's: all members (MACs per image depend on the gate)

    @property
    def counts(self) -> dict[str, int]:
        """Parameters and MACs as far as they are known, for the report's row."""
        params = self.params if self.card is None else self.card.params
        macs = None if self.card is None else self.card.macs
        return {k: v for k, v in (("params", params), ("macs", macs)) if v is not None}

    @property
    def label(self) -> str:
        return f"{self.model} {self.precision} {self.format}"


def _student_precision(path: Path, card: ModelCard | None) -> str | None:
    """float32 / float16 / dynamic / int8 / int8-qat, from the card or else the file name;
    None for a file whose name is not an exported one and that has no card."""
    name = parse_file_name(path.name)
    if card is None:
        return None if name is None else name.label
    qat = card.qat is not None or (name is not None and name.qat)
    return f"{card.precision}{QAT_TAG}" if qat and card.precision == "int8" else card.precision


def _student_cards(export_dir: Path) -> list[ModelCard]:
    """The cards of the export's student files (`student*.<suffix>.json`), by name."""
    paths = sorted(export_dir.glob("student*.json"))
    return [read_card(p) for p in paths if parse_file_name(p.name.removesuffix(".json"))]


def ensemble_spec(export_dir: Path) -> EnsembleSpec | None:
    """The export's `members/ensemble.json`, or None without one.

    Raises:
        ContractError: it is unreadable or not what `edgekd export --members` writes.
    """
    path = export_dir / "members" / ENSEMBLE_FILE
    return read_ensemble_spec(path) if path.is_file() else None


def _readable_spec(export_dir: Path) -> EnsembleSpec | None:
    """`ensemble_spec`, with a malformed file counting as none (bench still runs the
    student; `run_bench` says why the ensemble has no rows)."""
    try:
        return ensemble_spec(export_dir)
    except ContractError:
        return None


def find_targets(
    export_dir: Path,
    formats: Sequence[str],
    precisions: Sequence[str] | None = None,
) -> list[Target]:
    """The student files and ensemble configurations of `export_dir` in `formats`.

    `precisions` filters the student files (int8 includes int8-qat); the ensemble runs at
    those of float32 and int8 it names (else at all it names). None: every student file, the
    ensemble at float32 and int8. An export without members/ gives student rows only.
    """
    targets: list[Target] = []
    for fmt in formats:
        found = []
        suffixes = FORMATS[fmt].suffixes
        paths = [p for suffix in suffixes for p in export_dir.glob(f"student*{suffix}")]
        for path in sorted(paths):
            card = card_of(path)
            precision = _student_precision(path, card)
            if precision is None or (
                precisions is not None and precision.removesuffix(QAT_TAG) not in precisions
            ):
                continue
            size = path.stat().st_size
            found.append(Target("student", fmt, precision, path, [path], size, card))
        targets += sorted(found, key=lambda t: (_PRECISION_ORDER[t.precision], t.path.name))
    members = export_dir / "members"
    spec = _readable_spec(export_dir)
    if spec is not None and spec.members is not None:
        from edgekd.device.runtime.ensemble import member_path

        # The gated ensemble runs on one runtime: LiteRT where it is benched, else ONNX.
        fmt = "tflite" if "tflite" in formats else "onnx" if "onnx" in formats else None
        # float32 (the reference teacher) and int8, or what a profile asks for.
        wanted = [p for p in ENSEMBLE_PRECISIONS if p in (precisions or ENSEMBLE_PRECISIONS)]
        wanted = wanted or list(precisions or ())
        for precision in (p for p in PRECISIONS if p in wanted and fmt):
            key = variant_key(fmt, precision)
            try:  # confined to members/, as the runner will insist
                files = [
                    member_path(members, available.get(key), members / ENSEMBLE_FILE, name)
                    for name, available in spec.members.items()
                ]
            except (ValueError, OSError):
                continue  # a member file missing, or outside members/: no row for it
            size = sum(f.stat().st_size for f in files)
            params = [getattr(card_of(f), "params", None) for f in files]
            total = sum(params) if all(n is not None for n in params) else None
            targets.append(Target("ensemble", fmt, precision, members, files, size, params=total))
    return targets


# --------------------------------------------------------------------------------- the images


@dataclass
class EvalImages:
    """The benchmark images, in the model's class order, and where they came from."""

    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) int32
    source: str
    selection: str


def read_classes(export_dir: Path) -> list[str]:
    """Class names from labels.txt (else members/ensemble.json, else a student card)."""
    labels = export_dir / LABELS_FILE
    if labels.is_file():
        try:
            text = labels.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BenchError(f"{labels}: unreadable ({type(exc).__name__}: {exc})") from None
        names = [line.strip() for line in text.splitlines() if line.strip()]
        if names:
            return names
    spec = _readable_spec(export_dir)
    if spec is not None:
        return list(spec.classes)
    for card in _student_cards(export_dir):
        if card.classes:
            return list(card.classes)
    raise BenchError(f"{labels}: no such file; bench needs the class names of {export_dir}")


def _first_per_class(labels: np.ndarray, candidates: np.ndarray, per_class: int) -> np.ndarray:
    """The first `per_class` of `candidates` (sorted indices) from each class, in order."""
    picked = [candidates[labels[candidates] == c][:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picked)) if picked else np.empty(0, np.int64)


def _decode(paths: Sequence[Path], size: tuple[int, int]) -> np.ndarray:
    """Decode image files to (N, H, W, 3) uint8 RGB at `size` with a few threads."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return np.stack(list(pool.map(lambda p: read_image(p, size), paths)))


def _folder_images(
    root: str,
    classes: list[str],
    per_class: int,
    size: tuple[int, int],
    *,
    recipe: Recipe | None = None,
) -> tuple[np.ndarray, np.ndarray, str]:
    """First `per_class` images per class of an image folder, relabelled to `classes`.

    With `recipe` (the run's, validated) the candidates are the run's own validation
    images, chosen exactly as training chose them, so accuracy is measured on images no
    model trained on; otherwise every image of the folder is a candidate.
    """
    from edgekd.data.folder import scan_folder
    from edgekd.data.imageset import label_map
    from edgekd.data.split import choose_per_class, stratified_split

    index = scan_folder(root)
    folder_labels = index.labels
    chosen = np.arange(len(folder_labels))
    names = list(index.class_names)
    how = "first {n} per class, by file name"
    if recipe is not None:
        if recipe.data.limit_per_class:
            chosen = choose_per_class(folder_labels, recipe.data.limit_per_class, recipe.seed)
        names = list(recipe.data.classes or names)
    unknown = [n for n in index.class_names if n not in classes]
    if unknown and recipe is None:
        raise DataError(
            f"{root}: class folder {unknown[0]!r} is not one of the model's classes "
            f"({', '.join(classes)})"
        )
    # Relabel onto `names` (the run's class selection, dropping other folders)...
    to_names = label_map(index.class_names, names)
    relabelled = to_names[folder_labels[chosen]]
    keep = relabelled >= 0
    chosen, relabelled = chosen[keep], relabelled[keep]
    if recipe is not None:
        fraction = recipe.data.val_fraction
        if fraction > 0:
            _, val = stratified_split(relabelled, fraction, recipe.seed)
            chosen, relabelled = chosen[val], relabelled[val]
            how = "the run's validation split, first {n} per class"
        else:
            how = "first {n} per class (the run has no validation split: training images)"
    # ... then onto the model's class order.
    missing = [n for n in names if n not in classes]
    if missing:
        raise DataError(f"{root}: class {missing[0]!r} is not one of the model's classes")
    to_model = label_map(names, classes)
    labels = to_model[relabelled]
    pick = _first_per_class(labels, np.arange(len(labels)), per_class)
    paths = [index.root / index.files[i] for i in chosen[pick]]
    if not paths:
        raise DataError(f"{root}: no images of the model's classes ({', '.join(classes)})")
    return _decode(paths, size), labels[pick], how.format(n=per_class)


def _run_recipe(export_dir: Path) -> tuple[Recipe, Path] | None:
    """The validated recipe and the directory of the run that wrote `export_dir`: the
    export's parent, else the run a student card names; None when neither has a recipe.

    Raises:
        BenchError: a recipe.yaml is there but does not validate (and no other one does).
    """
    from edgekd.recipe import load_recipe

    candidates = [export_dir.parent]
    run = next((card.run for card in _student_cards(export_dir) if card.run), None)
    if run:
        candidates.append(Path(run))
    errors: list[str] = []
    for run_dir in candidates:
        path = run_dir / "recipe.yaml"
        if path.is_file():
            try:
                return load_recipe(path), run_dir
            except RecipeError as exc:
                errors.append(str(exc))
    if errors:
        raise BenchError(
            f"{errors[0]} (bench takes its images from the run's recipe: fix it, or pass "
            "--data folder:PATH)"
        )
    return None


def load_eval_images(
    export_dir: Path,
    data_spec: str | None,
    limit: int,
    size: tuple[int, int],
    classes: list[str],
) -> EvalImages:
    """`limit` images spread evenly over the classes (the first limit/K of each).

    With `data_spec` (folder:PATH, a bare folder, or cifar:PATH) the candidates are all of
    that source (a CIFAR source's test batch). Without it, the run's own data as its
    recipe.yaml names it, restricted to the run's validation split.
    """
    from edgekd.data.source import parse_source

    per_class = max(1, limit // len(classes))
    recipe, run_dir = None, export_dir.parent
    if data_spec is None:
        found = _run_recipe(export_dir)
        if found is None:
            raise BenchError(
                f"{export_dir}: no --data given and no run recipe beside the export to take "
                "the images from; pass --data folder:PATH (one sub-folder per class)"
            )
        recipe, run_dir = found
        data_spec = recipe.data.path
    try:
        spec = parse_source(data_spec)
    except ValueError as exc:
        raise BenchError(f"--data {data_spec}: {exc}") from exc
    location = spec.location
    if recipe is not None and not Path(location).is_absolute():
        # Recipe paths are relative to where training ran; try the usual places.
        bases = [Path.cwd(), run_dir, run_dir.parent, run_dir.parent.parent]
        found_at = next((b / location for b in bases if (b / location).exists()), None)
        location = os.path.normpath(found_at) if found_at is not None else location
    if not Path(location).exists():
        where = "--data" if recipe is None else f"{run_dir / 'recipe.yaml'} data.path"
        raise DataError(
            f"{where} {data_spec}: {location} does not exist; pass --data folder:PATH, a "
            "folder with one sub-folder of images per class"
        )
    if spec.kind == "folder":
        images, labels, how = _folder_images(location, classes, per_class, size, recipe=recipe)
    elif spec.kind == "cifar":
        from edgekd.data.source import load_source

        ds = load_source(f"cifar:{location}", progress=False)
        pool = ds.test if ds.test is not None else ds.train
        unknown = [n for n in pool.class_names if n not in classes]
        if unknown:
            raise DataError(f"{location}: class {unknown[0]!r} is not one of the model's classes")
        to_model = np.array([classes.index(n) for n in pool.class_names], np.int32)
        labels_all = to_model[pool.labels]
        pick = _first_per_class(labels_all, np.arange(len(labels_all)), per_class)
        images = pool.images[pick]
        if images.shape[1:3] != size:
            from PIL import Image

            bilinear = Image.Resampling.BILINEAR
            resized = [Image.fromarray(im).resize((size[1], size[0]), bilinear) for im in images]
            images = np.stack([np.asarray(im) for im in resized])
        labels = labels_all[pick]
        split = "test batch" if ds.test is not None else "training batches"
        how = f"first {per_class} per class of the {split}"
    else:
        raise BenchError(
            f"--data {data_spec}: {spec.kind} sources need TensorFlow, which bench does not "
            "use; pass an image folder (folder:PATH)"
        )
    return EvalImages(images, labels.astype(np.int32), f"{spec.kind}:{location}", how)


# ------------------------------------------------------------------------ the child process


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
    code += "from edgekd.device.bench import _child_main\nsys.exit(_child_main(sys.argv[1:]))\n"
    return [sys.executable, "-c", code, str(spec_path)]


def measure(target: Target, spec: dict[str, Any], workdir: Path, timeout: float) -> dict[str, Any]:
    """Measure `target` in a fresh child process; errors come back as {"error": ...}."""
    name = f"{target.model}-{target.format}-{target.precision}"
    spec = {
        **spec,
        "model": target.model,
        "format": target.format,
        "precision": target.precision.removesuffix("-qat"),
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


# --------------------------------------------------------------------------------- the bench


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
    cards = [t.card for t in targets if t.card is not None] + _student_cards(export_dir)
    for card in cards:
        shape = card.input_shape
        if shape and len(shape) == 4 and shape[1] and shape[2]:
            return int(shape[1]), int(shape[2])
    spec = _readable_spec(export_dir)
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
        raise BenchError(f"--runtime {runtime}: not installed ({_INSTALL[runtime]})")
    notes: list[str] = []
    for r in missing:
        if r != "tensorrt":
            notes.append(f"{r} not installed: its rows are skipped")
            continue
        # TensorRT is rarely there: only worth a note when the export has engines.
        engines = [t.path.name for t in find_targets(export_dir, ["tensorrt"])]
        if engines:
            notes.append(
                f"tensorrt not installed: {', '.join(engines)} skipped ({_INSTALL['tensorrt']})"
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

    return {
        "export": str(export_dir),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": {k: v for k, v in asdict(profile).items() if k not in ("install", "notes")},
        "host": {
            "system": platform.system(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
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


# ------------------------------------------------------------------------------- reporting


def _times(ratio: float, better: str, worse: str) -> str:
    """'3.1x faster' for a ratio >= 1, else '1.3x slower' (never '0.8x faster')."""
    return f"{ratio:.1f}x {better}" if ratio >= 1 else f"{1 / ratio:.1f}x {worse}"


def _headline(report: dict[str, Any]) -> list[str]:
    """The student-vs-ensemble lines: the int8 student (float32 if none) vs each ensemble."""
    rows = [r for r in report["rows"] if "error" not in r]
    students = [r for r in rows if r["model"] == "student"]
    if not students or not any(r["model"] == "ensemble" for r in rows):
        return []
    by_pref = {(r["precision"], r["format"]): r for r in students}
    pick = next(
        (by_pref[k] for k in (("int8", "tflite"), ("int8", "onnx"), ("int8-qat", "tflite"),
                              ("float32", "tflite"), ("float32", "onnx")) if k in by_pref),
        students[0],
    )  # fmt: skip
    lines = []
    for e in (r for r in rows if r["model"] == "ensemble" and r["format"] == pick["format"]):
        s_lat, e_lat = pick["latency_ms"]["p50"], e["latency_ms"]["p50"]
        delta = 100 * (pick["accuracy"] - e["accuracy"])
        size = _times(e["size_bytes"] / pick["size_bytes"], "smaller", "larger")
        lines.append(
            f"student {pick['precision']} {pick['format']} vs gated ensemble {e['precision']} "
            f"{e['format']}: {_times(e_lat / s_lat, 'faster', 'slower')} at p50 ({s_lat:.3f} "
            f"vs {e_lat:.3f} ms), {size}, accuracy {delta:+.2f} pp "
            f"({100 * pick['accuracy']:.2f}% vs {100 * e['accuracy']:.2f}%)"
        )
    return lines


def format_report(report: dict[str, Any]) -> str:
    """The terminal report: settings, one row per model and format, the headline ratios."""
    from edgekd.tables import format_table

    headers = ["model", "format", "precision", "runtime", "size MB", "accuracy %", "p50 ms",
               "p90 ms", "p99 ms", "img/s", "peak RSS MB", "members/img"]  # fmt: skip
    rows, notes = [], []
    for r in report["rows"]:
        base = [r["model"], r["format"], r["precision"]]
        size = f"{r['size_bytes'] / 1e6:.2f}"
        if "error" in r:
            rows.append([*base, "-", size, *(["-"] * 7)])
            notes.append(f"{r['model']} {r['precision']} {r['format']}: {r['error']}")
            continue
        lat = r["latency_ms"]
        rows.append([
            *base, r["backend"], size, f"{100 * r['accuracy']:.2f}",
            f"{lat['p50']:.3f}", f"{lat['p90']:.3f}", f"{lat['p99']:.3f}",
            "-" if r["throughput_ips"] is None else f"{r['throughput_ips']:.0f}",
            f"{r['rss_mb']['peak']:.0f}", f"{r['members_per_image']:.2f}",
        ])  # fmt: skip
        notes += [f"{r['model']} {r['precision']} {r['format']}: {n}" for n in r.get("notes", [])]
    s, d, h = report["settings"], report["data"], report["host"]
    threads = s["threads"] if s["threads"] is not None else "runtime default"
    versions = ", ".join(f"{k} {h[k]}" for k in ("litert", "onnxruntime", "tensorrt") if h.get(k))
    lines = [
        f"edgekd bench {report['export']}  (device profile: {report['device']['name']})",
        f"host: {h['system']} {h['machine']}, {h['cpus']} CPUs, Python {h['python']}; {versions}",
        f"data: {d['images']} images from {d['source']} ({d['selection']})",
        f"latency: batch 1, {s['warmup']} warm-up + {s['runs']} runs; throughput: batch "
        f"{s['batch']}; medians of {s.get('rounds', 1)} interleaved rounds, a fresh process "
        f"per model and round; threads: {threads}",
        "",
        format_table(headers, rows),
    ]
    ens = [r for r in report["rows"] if r["model"] == "ensemble" and "error" not in r]
    for r in ens:
        rate = ", ".join(f"{100 * a:.1f}%" for a in r.get("activation_rate", []))
        lines.append(f"ensemble {r['precision']} {r['format']}: specialist activation rate "
                     f"[{rate}], {r['members_per_image']:.2f} models run per image")  # fmt: skip
    lines += _headline(report)
    lines += [f"note: {n}" for n in [*report["notes"], *notes]]
    return "\n".join(lines)


# Where a point's label may go, in points from it: right, above, below, left.
_LABEL_OFFSETS = ((5, 4), (5, -11), (-5, 7), (-5, -14), (5, 14), (5, -21), (-5, 17), (-5, -24))


def _place_labels(fig: Any, ax: Any, rows: Sequence[dict[str, Any]]) -> None:
    """Label each point with its precision at the first offset whose text overlaps no label
    placed before it (points in latency order), so close points stay readable."""
    fig.canvas.draw()  # settles the axis limits, so display positions are final
    renderer = fig.canvas.get_renderer()
    placed: list[Any] = []
    for r in sorted(rows, key=lambda r: r["latency_ms"]["p50"]):
        xy = (r["latency_ms"]["p50"], 100 * r["accuracy"])
        for dx, dy in _LABEL_OFFSETS:
            label = ax.annotate(
                r["precision"], xy, textcoords="offset points", xytext=(dx, dy), fontsize=8,
                ha="left" if dx > 0 else "right",
            )  # fmt: skip
            label.update_positions(renderer)
            box = label.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                break
            label.remove()
        else:  # nowhere free: keep the first choice
            label = ax.annotate(r["precision"], xy, textcoords="offset points",
                                xytext=_LABEL_OFFSETS[0], fontsize=8)  # fmt: skip
            label.update_positions(renderer)
            box = label.get_window_extent(renderer)
        placed.append(box)


def save_plot(report: dict[str, Any], path: str | Path) -> str:
    """Accuracy vs p50 latency, one point per row; a message saying what happened.

    matplotlib is optional (a device rarely needs it): without it the plot is skipped.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return "plot skipped: matplotlib not installed (pip install matplotlib)"
    rows = [r for r in report["rows"] if "error" not in r]
    if not rows:
        return "plot skipped: no successful rows"
    fig, ax = plt.subplots(figsize=(8, 5))
    styles = {
        ("student", "tflite"): ("tab:blue", "o"),
        ("student", "onnx"): ("tab:blue", "^"),
        ("student", "tensorrt"): ("tab:blue", "v"),
        ("ensemble", "tflite"): ("tab:orange", "s"),
        ("ensemble", "onnx"): ("tab:orange", "D"),
    }
    for (model, fmt), (colour, marker) in styles.items():
        pts = [r for r in rows if (r["model"], r["format"]) == (model, fmt)]
        if pts:
            ax.scatter([r["latency_ms"]["p50"] for r in pts], [100 * r["accuracy"] for r in pts],
                       color=colour, marker=marker, s=55, label=f"{model} {fmt}")  # fmt: skip
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("p50 latency, batch 1 (ms, log scale)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{Path(report['export']).resolve().parent.name}: accuracy vs latency "
                 f"({report['data']['images']} images)")  # fmt: skip
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _place_labels(fig, ax, rows)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"plot: {path}"


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
