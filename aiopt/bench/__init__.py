"""Benchmarks: latency, accuracy and memory measurement, and the report writers."""
