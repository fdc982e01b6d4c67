"""Device profiles: YAML naming a runtime, threads, delegate and precisions, schema-checked.

`ProfileSchema` is the schema of a profile file (a frozen pydantic model: unknown keys and
values of the wrong type are errors, nothing is coerced); `ShippedProfileSchema` is the
stricter one the built-in profiles (package data of `edgekd.devices`) must meet: they also
carry `description`, `runtime`, `install` and `notes`. `load_profile` turns a file into the
`DeviceProfile` that bench reads; every error names the file and the key.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

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
# What a value of each key must be, for the error message ("expected ..., got ...").
_EXPECTED = {
    "name": "text",
    "description": "text",
    "install": "text",
    "notes": "text",
    "runtime": f"one of {', '.join(RUNTIMES)}",
    "threads": "a positive integer or null",
    "batch": "a positive integer",
    "delegate": f"a mapping ({', '.join(_DELEGATE_KEYS)})",
    "precisions": f"a list of {', '.join(PRECISIONS)}",
    "delegate.gpu_library": "a library path or null",
    **{f"delegate.{k}": "true or false" for k in ("xnnpack", "gpu", "tensorrt", "fp16")},
}
# Keys a built-in profile must carry (ShippedProfileSchema); a user's file may leave them out.
SHIPPED_REQUIRED = ("description", "runtime", "install", "notes")

Runtime = Literal[RUNTIMES]  # type: ignore[valid-type]
Precision = Literal[PRECISIONS]  # type: ignore[valid-type]


class _Strict(BaseModel):
    """Unknown keys are errors, values are not coerced (no 'yes' for true, no 1.0 for 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DelegateSchema(_Strict):
    """`delegate:` of a profile: which accelerators the runtimes may use."""

    xnnpack: StrictBool = Field(True, description=_DELEGATE_KEYS["xnnpack"])
    gpu: StrictBool = Field(False, description=_DELEGATE_KEYS["gpu"])
    tensorrt: StrictBool = Field(False, description=_DELEGATE_KEYS["tensorrt"])
    fp16: StrictBool = Field(False, description=_DELEGATE_KEYS["fp16"])
    gpu_library: StrictStr | None = Field(None, description=_DELEGATE_KEYS["gpu_library"])

    @field_validator("gpu_library")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("blank")
        return value


class ProfileSchema(_Strict):
    """A device profile file (devices/NAME.yaml or a user's own). Every key is optional."""

    name: StrictStr | None = Field(None, min_length=1, description=_PROFILE_KEYS["name"])
    description: StrictStr | None = Field(None, description=_PROFILE_KEYS["description"])
    runtime: Runtime = Field("all", description=_PROFILE_KEYS["runtime"])
    threads: StrictInt | None = Field(None, ge=1, description=_PROFILE_KEYS["threads"])
    delegate: DelegateSchema | None = Field(None, description=_PROFILE_KEYS["delegate"])
    precisions: list[Precision] | None = Field(
        None, min_length=1, description=_PROFILE_KEYS["precisions"]
    )
    batch: StrictInt = Field(DEFAULT_BATCH, ge=1, description=_PROFILE_KEYS["batch"])
    install: StrictStr | None = Field(None, description=_PROFILE_KEYS["install"])
    notes: StrictStr | None = Field(None, description=_PROFILE_KEYS["notes"])

    @field_validator("precisions", mode="before")
    @classmethod
    def _one_precision(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value  # `precisions: int8`


class ShippedProfileSchema(ProfileSchema):
    """A built-in profile: it also says what the hardware is, how to set it up and what to
    know, and names its runtime rather than taking the default."""

    description: StrictStr = Field(..., min_length=1, description=_PROFILE_KEYS["description"])
    runtime: Runtime = Field(..., description=_PROFILE_KEYS["runtime"])
    install: StrictStr = Field(..., min_length=1, description=_PROFILE_KEYS["install"])
    notes: StrictStr = Field(..., min_length=1, description=_PROFILE_KEYS["notes"])


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


def _is_builtin(path: Path) -> bool:
    try:
        here = path.resolve()
        return any(here == p.resolve() for p in device_profiles().values())
    except OSError:
        return False


def _why(err: dict[str, Any], key: str) -> str:
    """One pydantic error as the words after "key 'KEY': "."""
    kind, value = err["type"], err.get("input")
    if kind == "extra_forbidden":
        parent, _, leaf = key.rpartition(".")
        known = list(_DELEGATE_KEYS if parent == "delegate" else _PROFILE_KEYS)
        hint = difflib.get_close_matches(leaf, known, n=1)
        tip = f"did you mean {hint[0]!r}? " if hint else ""
        return f"unknown key ({tip}known keys: {', '.join(sorted(known))})"
    if kind == "missing":
        what = _PROFILE_KEYS.get(key, key)
        return f"missing: a built-in profile must set it ({what})"
    if key == "precisions" and len(err["loc"]) > 1:
        return f"unknown precision {value!r} (known: {', '.join(PRECISIONS)})"
    if kind == "string_too_short":
        return f"expected {_EXPECTED.get(key, 'text')}, got an empty value"
    return f"expected {_EXPECTED.get(key, 'another value')}, got {value!r}"


def validate_profile(raw: Any, path: str | Path, *, shipped: bool = False) -> ProfileSchema:
    """`raw` (a profile file's parsed YAML) checked against the schema.

    Raises:
        BenchError: naming `path` and the key of each problem, one line each.
    """
    if not isinstance(raw, dict):
        raise BenchError(f"{path}: a device profile is a mapping of keys, got {type(raw).__name__}")
    for section, keys in ((raw, _PROFILE_KEYS), (raw.get("delegate"), _DELEGATE_KEYS)):
        for key in section if isinstance(section, dict) else ():
            if not isinstance(key, str):  # `1: x` or `true: x`: not a key name at all
                prefix = "delegate." if keys is _DELEGATE_KEYS else ""
                raise BenchError(f"{path}: key '{prefix}{key}': unknown key "
                                 f"(known keys: {', '.join(sorted(keys))})")  # fmt: skip
    schema = ShippedProfileSchema if shipped else ProfileSchema
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = [str(p) for p in err["loc"] if not isinstance(p, int)]
            key = ".".join(loc[:2])  # delegate.xnnpack; precisions[i] reports as precisions
            lines.append(f"{path}: key {key!r}: {_why(err, key)}")
        raise BenchError("\n".join(dict.fromkeys(lines))) from None


def load_profile(name_or_path: str | Path, *, shipped: bool | None = None) -> DeviceProfile:
    """A device profile from a YAML file path or a built-in name ('raspberry-pi-5').

    `shipped`: check against `ShippedProfileSchema` (the built-in profiles' schema); None
    (the default) does so for the built-in files and uses `ProfileSchema` for any other.

    Raises:
        BenchError: no such file or name (the built-in names are listed), a YAML error, an
            unknown key, a missing required key or a value of the wrong type (the file and
            the key are named).
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
        raw = safe_yaml.load(path.read_bytes())
    except OSError as exc:
        raise BenchError(f"{path}: cannot read device profile: {exc.strerror or exc}") from None
    except safe_yaml.YamlError as exc:
        where = f"{path}:{exc.line}" if exc.line else str(path)
        raise BenchError(f"{where}: device profile: {exc}") from None
    if raw is None:
        raw = {}
    checked = validate_profile(raw, path, shipped=_is_builtin(path) if shipped is None else shipped)
    delegate = checked.delegate or DelegateSchema()
    library = delegate.gpu_library
    return DeviceProfile(
        name=checked.name or path.stem,
        path=str(path),
        description=(checked.description or "").strip(),
        runtime=checked.runtime,
        threads=checked.threads,
        xnnpack=delegate.xnnpack,
        gpu=delegate.gpu,
        tensorrt=delegate.tensorrt,
        fp16=delegate.fp16,
        gpu_library=os.path.expanduser(library.strip()) if library else None,
        precisions=list(checked.precisions) if checked.precisions is not None else None,
        batch=checked.batch,
        install=(checked.install or "").strip(),
        notes=(checked.notes or "").strip(),
    )
