"""What the host CPU offers int8 inference: whether it has an int8 dot-product instruction.

On CPUs without one, ONNX Runtime's and XNNPACK's int8 kernels multiply in 16 bits (x86
AVX2's ``vpmaddubsw``, Arm NEON's ``smull``), which is little or no faster than float32 FMA
for the small layers of edge models. With one (x86 AVX-512 VNNI or AVX-VNNI, Arm's
``sdot``/``udot``, "asimddp" in Linux's flags) int8 does four multiply-adds per lane and
is the faster path. ``edgekd bench`` states which, so an int8 row that is not faster than
float32 reads as what the CPU allows, not as a broken file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Linux /proc/cpuinfo flag names, best first.
INT8_DOT_FLAGS: tuple[tuple[str, str], ...] = (
    ("avx512_vnni", "AVX-512 VNNI"),
    ("avx_vnni", "AVX-VNNI"),
    ("asimddp", "Arm dotprod"),
)


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of the first processor in a /proc/cpuinfo text (x86 "flags",
    Arm "Features"); empty if it names none."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


def int8_dot_product(flags: frozenset[str]) -> str | None:
    """The int8 dot-product instruction set the flags show, or None."""
    return next((name for flag, name in INT8_DOT_FLAGS if flag in flags), None)


def host_cpu(cpuinfo_path: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """The CPU's model name and int8 dot-product instruction; ``flags_read`` is False where
    the system does not say (no /proc/cpuinfo: macOS, Windows)."""
    try:
        text = cpuinfo_path.read_text(errors="replace")
    except OSError:
        return {"model": None, "int8_dot": None, "flags_read": False}
    model = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("model name", "hardware", "cpu model") and value.strip():
            model = value.strip()
            break
    flags = cpu_flags(text)
    return {"model": model, "int8_dot": int8_dot_product(flags), "flags_read": bool(flags)}


def int8_note(cpu: dict[str, Any], int8_rows: bool) -> str | None:
    """The bench note for int8 rows on a CPU without an int8 dot product, else None."""
    if not int8_rows or not cpu.get("flags_read") or cpu.get("int8_dot"):
        return None
    return (
        "this CPU has no int8 dot-product instruction (no AVX-512 VNNI / AVX-VNNI / Arm "
        "dotprod): int8 kernels multiply in 16 bits here and are rarely faster than float32; "
        "bench the int8 files on the target CPU"
    )
