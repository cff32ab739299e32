"""Moved to `aiopt.hardware`; this name stays so that code importing it keeps working."""
from aiopt.hardware import CpuFeatures, Int8KernelChoice, detect_cpu, int8_kernel_for

__all__ = ["CpuFeatures", "Int8KernelChoice", "detect_cpu", "int8_kernel_for"]
