"""`edgekd bench` states whether the host CPU has an int8 dot product, read from /proc/cpuinfo."""

from __future__ import annotations

from pathlib import Path

from edgekd.device.bench.cpu import cpu_flags, host_cpu, int8_dot_product, int8_note
from edgekd.device.bench.report import _cpu

# Abridged from real /proc/cpuinfo texts.
EPYC_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B12
flags\t\t: fpu vme sse2 ssse3 fma avx2 bmi2
"""
XEON_VNNI = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz
flags\t\t: fpu avx2 avx512f avx512bw avx512_vnni
"""
ORIN_A78AE = """processor\t: 0
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
"""  # noqa: E501
PI4_A72 = """processor\t: 0
Features\t: fp asimd evtstrm crc32 cpuid
Hardware\t: BCM2835
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""


def test_flags_are_read_from_x86_and_arm_texts() -> None:
    assert "avx2" in cpu_flags(EPYC_AVX2) and "avx512_vnni" not in cpu_flags(EPYC_AVX2)
    assert "asimddp" in cpu_flags(ORIN_A78AE)
    assert cpu_flags("processor : 0\n") == frozenset()


def test_int8_dot_product_by_cpu() -> None:
    assert int8_dot_product(cpu_flags(EPYC_AVX2)) is None
    assert int8_dot_product(cpu_flags(XEON_VNNI)) == "AVX-512 VNNI"
    assert int8_dot_product(frozenset({"avx2", "avx_vnni"})) == "AVX-VNNI"
    assert int8_dot_product(cpu_flags(ORIN_A78AE)) == "Arm dotprod"
    assert int8_dot_product(cpu_flags(PI4_A72)) is None


def test_host_cpu_and_the_note(tmp_path: Path) -> None:
    for text, model, dot in (
        (EPYC_AVX2, "AMD EPYC 7B12", None),
        (XEON_VNNI, "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", "AVX-512 VNNI"),
        (PI4_A72, "BCM2835", None),
    ):
        (tmp_path / "cpuinfo").write_text(text)
        cpu = host_cpu(tmp_path / "cpuinfo")
        assert cpu == {"model": model, "int8_dot": dot, "flags_read": True}
        note = int8_note(cpu, int8_rows=True)
        assert (note is None) == (dot is not None)
        assert int8_note(cpu, int8_rows=False) is None
        assert _cpu(cpu) == f" ({model}, int8 dot product: {dot or 'none'})"
    assert "no int8 dot-product instruction" in int8_note(host_cpu(tmp_path / "cpuinfo"), True)
    unknown = host_cpu(tmp_path / "absent")
    assert unknown == {"model": None, "int8_dot": None, "flags_read": False}
    assert int8_note(unknown, int8_rows=True) is None and _cpu(unknown) == ""
