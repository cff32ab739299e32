"""Compression: pruning, quantization and distillation, each writing a new artifact."""
