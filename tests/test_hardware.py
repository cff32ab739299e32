"""aiopt.hardware: one place that reads the CPU's features."""
from aiopt.hardware import CpuFeatures, detect_cpu


def test_bf16_units_from_flags(tmp_path):
    assert CpuFeatures("x86_64", "Xeon", frozenset({"avx512f", "avx512_bf16"})).has_bf16
    assert CpuFeatures("x86_64", "Xeon", frozenset({"amx_bf16", "amx_int8"})).has_bf16
    assert not CpuFeatures("x86_64", "AMD EPYC", frozenset({"avx2", "fma"})).has_bf16
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu avx2 avx512_bf16\n")
    assert detect_cpu(cpuinfo).has_bf16


def test_bench_reports_the_cpu_hardware_detects():
    from aiopt.machine import describe_machine

    assert describe_machine()["cpu"] == detect_cpu().model
