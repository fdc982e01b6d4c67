"""Device profiles: YAML naming a runtime, threads, delegate and precisions, checked key by key."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from edgekd import safe_yaml
from edgekd.contract import PRECISIONS
from edgekd.device.bench.options import DEFAULT_BATCH, RUNTIMES, BenchError

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
