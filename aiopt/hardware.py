"""What this machine's CPU can do, read once by every part that must know: quantize (which INT8
kernel flavour is safe, whether OpenVINO runs BF16), optimize (the recipes it can build) and
bench (the machine block of a report). Light on purpose: no aiopt or third-party imports.

Which INT8 kernel flavour is safe on this CPU:

ONNX Runtime runs U8S8 (uint8 activations x int8 weights) on x86 through `vpmaddubsw`,
which adds two u8*s8 products into an int16 and saturates. CPUs with VNNI (AVX512-VNNI,
AVX-VNNI, AMX) multiply-accumulate into int32 and never saturate; AVX2-only CPUs (e.g. our
AMD EPYC machines) do, and lose accuracy. ORT's documented remedies: 7-bit weights
(`reduce_range`), or U8U8. We pick reduce_range: it keeps the U8S8 kernels (the fast
ones) and halves the largest product so the int16 sum cannot overflow.
"""
from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from pathlib import Path

_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "avx512vnni")
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # BF16 units: OpenVINO's CPU plugin runs BF16 there by default


@dataclass(frozen=True)
class CpuFeatures:
    machine: str
    model: str
    flags: frozenset[str]

    @property
    def is_x86(self) -> bool:
        return self.machine.lower() in ("x86_64", "amd64", "i386", "i686")

    @property
    def has_vnni(self) -> bool:
        return any(f in self.flags for f in _VNNI_FLAGS)

    @property
    def has_bf16(self) -> bool:
        return any(f in self.flags for f in _BF16_FLAGS)


@dataclass(frozen=True)
class Int8KernelChoice:
    activation_type: str  # "uint8" | "int8"
    weight_type: str
    reduce_range: bool
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def detect_cpu(cpuinfo: str | Path = "/proc/cpuinfo") -> CpuFeatures:
    """CPU model and feature flags (Linux's /proc/cpuinfo; elsewhere only the machine type)."""
    model, flags = platform.processor() or "unknown", frozenset()
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model in ("unknown", "", platform.machine()):
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return CpuFeatures(platform.machine(), model, flags)


def int8_kernel_for(cpu: CpuFeatures) -> Int8KernelChoice:
    """The U8S8 configuration that keeps accuracy on `cpu`."""
    if cpu.is_x86 and not cpu.has_vnni:
        known = "no VNNI in its flags" if cpu.flags else "its features could not be read"
        return Int8KernelChoice("uint8", "int8", True,
                                f"x86 CPU with {known}: U8S8 through vpmaddubsw can saturate, so weights use 7 bits (reduce_range)")
    if cpu.is_x86:
        return Int8KernelChoice("uint8", "int8", False, "x86 CPU with VNNI: U8S8 accumulates in int32 without saturation")
    return Int8KernelChoice("uint8", "int8", False, f"{cpu.machine} CPU: its int8 dot-product kernels do not saturate")
