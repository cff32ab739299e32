"""ONNX Runtime candidates for a causal LM: weight-only INT8/INT4 MatMulNBits written by ONNX
Runtime's own quantizer (matmul_nbits_quantizer) on the KV-cache export (aiopt.llm.export_kv).

Block-wise round-to-nearest (ORT's DefaultWeightOnlyQuantConfig, symmetric) at block sizes
32/64/128, and HQQ (half-quadratic, data-free) INT4. Only MatMuls with a constant weight are
rewritten; the embedding Gather and attention stay FP32. GPTQ/RTN configs of that module need
Intel Neural Compressor and are not offered.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from aiopt.errors import UnsupportedModelError
from aiopt.llm.kv_names import ONNX_FILE

BLOCK_SIZES = (32, 64, 128)


@dataclass(frozen=True)
class OrtRecipe:
    name: str
    bits: int
    block_size: int
    algorithm: str = "rtn"  # rtn (block-wise round-to-nearest) or hqq

    runtime = "onnxruntime"

    def describe(self) -> str:
        return f"ONNX Runtime MatMulNBits INT{self.bits} {self.algorithm.upper()}, block {self.block_size}"


def ort_recipes() -> list[OrtRecipe]:
    recipes = [OrtRecipe(f"ort-int{bits}-b{block}", bits, block) for bits in (8, 4) for block in BLOCK_SIZES]
    return recipes + [OrtRecipe("ort-int4-hqq-b64", 4, 64, "hqq")]


def build_ort(recipe: OrtRecipe, fp32_onnx: Path, target: Path) -> Path:
    """Write the quantized graph to target/model.onnx (its metadata is stamped later)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        HQQWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    if recipe.algorithm == "hqq":
        algo = HQQWeightOnlyQuantConfig(block_size=recipe.block_size, bits=recipe.bits)
    else:
        algo = DefaultWeightOnlyQuantConfig(block_size=recipe.block_size, is_symmetric=True, bits=recipe.bits)
    quantizer = MatMulNBitsQuantizer(onnx.load_model(str(fp32_onnx)), algo_config=algo)
    quantizer.process()
    model = quantizer.model.model
    rewritten = sum(node.op_type == "MatMulNBits" for node in model.graph.node)
    if not rewritten:
        raise UnsupportedModelError("ONNX Runtime's quantizer rewrote no MatMul (no constant weights found)")
    target.mkdir(parents=True, exist_ok=True)
    path = target / ONNX_FILE
    onnx.save_model(model, str(path))
    return path
