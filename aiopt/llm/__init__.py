"""Causal language models: the `gpt` reference model, causal-LM folders, export with a KV cache,
generation and generative benchmarks.

Nothing here is imported by `import aiopt`: torch, transformers and onnxruntime are imported by
the modules that need them.
"""
