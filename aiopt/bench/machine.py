"""Moved to aiopt.machine (below the measuring layers, so that a step such as the causal-LM
quantize can describe the machine without importing bench); kept for benchmarks/ and tests."""
from aiopt.machine import SETTLE_S, available_cores, describe_machine, machine_id, settle

__all__ = ["SETTLE_S", "available_cores", "describe_machine", "machine_id", "settle"]
