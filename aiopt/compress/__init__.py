"""Compression that changes the network: pruning and distillation, each writing a new artifact (quantization: aiopt.quantize)."""
