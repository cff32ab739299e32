"""ONNX Runtime candidates for a causal LM: weight-only INT8/INT4 MatMulNBits written by ONNX
Runtime's own quantizer (matmul_nbits_quantizer) on the KV-cache export (aiopt.llm.export_kv).

Block-wise round-to-nearest (ORT's DefaultWeightOnlyQuantConfig, symmetric) at block sizes
32/64/128, HQQ (half-quadratic, data-free) INT4, and, where calibration text is given, GPTQ INT4
(GPTQWeightOnlyQuantConfig: ORT's own copy of Intel Neural Compressor's GPTQ in
onnxruntime.quantization.neural_compressor, numpy only, no INC package needed), which runs the
FP32 graph on the calibration windows to collect each MatMul's inputs. Only MatMuls with a
constant weight are rewritten; the embedding Gather and attention stay FP32.

And ONNX Runtime GenAI's own route (GenAIRecipe): its model builder writes the Hugging Face folder
as a fused graph (GroupQueryAttention, rotary inside), FP32 or with its INT8 or INT4 MatMulNBits, run by
GenAI's runtime (og.Generator, its KV cache in place) instead of aiopt's ONNX Runtime loop.
Built with the builder's prune_lm_head: a prefill runs the output layer on the last position
only, what generation reads (gpt:base's time to first token at prompt 128: 7.2 -> 4.4 ms, the
same logits; lm_quality.score decodes the positions before it).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aiopt.errors import UnsupportedModelError
from aiopt.llm.kv_names import ONNX_FILE
from aiopt.llm.lm_quality import prefill_feed

BLOCK_SIZES = (32, 64, 128)


@dataclass(frozen=True)
class OrtRecipe:
    name: str
    bits: int
    block_size: int
    algorithm: str = "rtn"  # rtn (block-wise round-to-nearest), hqq or gptq (calibration text)

    runtime = "onnxruntime"

    def describe(self) -> str:
        return f"ONNX Runtime MatMulNBits INT{self.bits} {self.algorithm.upper()}, block {self.block_size}"


@dataclass(frozen=True)
class GenAIRecipe:
    name: str
    precision: str  # the builder's -p: fp32, int8 or int4
    block_size: int | None = None  # its MatMulNBits block (None: the builder's 32)

    runtime = "onnxruntime-genai"

    def describe(self) -> str:
        block = f", block {self.block_size}" if self.block_size else ""
        return (f"ONNX Runtime GenAI model builder {self.precision.upper()}{block} on its own runtime, the output layer on the prompt's "
                "last position only")


def genai_recipes() -> list[GenAIRecipe]:
    # INT8 in blocks of 128: 8.25 bits a weight against 9 in blocks of 32, and ONNX Runtime's kernel
    # reads them faster (the 0.5B at prompt 512: 1.22x llama.cpp Q8_0's decode, blocks of 32 0.95x, one probe)
    return [GenAIRecipe("genai-fp32", "fp32"), GenAIRecipe("genai-int8", "int8"), GenAIRecipe("genai-int8-b128", "int8", 128),
            GenAIRecipe("genai-int4", "int4")]


def genai_missing(hf_folder) -> str | None:
    """Why GenAI candidates cannot be built here (None: they can be tried)."""
    if hf_folder is None:
        return "ONNX Runtime GenAI's model builder reads the Hugging Face folder, and this export names none; quantize the folder"
    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError:
        return "onnxruntime-genai is not installed; run: pip install onnxruntime-genai"
    return None


def ort_recipes(calibrated: bool = False) -> list[OrtRecipe]:
    recipes = [OrtRecipe(f"ort-int{bits}-b{block}", bits, block) for bits in (8, 4) for block in BLOCK_SIZES]
    recipes.append(OrtRecipe("ort-int4-hqq-b64", 4, 64, "hqq"))
    return recipes + ([OrtRecipe("ort-int4-gptq-b32", 4, 32, "gptq")] if calibrated else [])


class _Windows:
    """ORT's CalibrationDataReader protocol (get_next) over prefill feeds; GPTQ deep-copies it."""

    def __init__(self, feeds: list[dict]):
        self.feeds, self.index = feeds, 0

    def get_next(self) -> dict | None:
        self.index += 1
        return self.feeds[self.index - 1] if self.index <= len(self.feeds) else None

    def __iter__(self):
        return iter(self.feeds)


def build_ort(recipe: OrtRecipe, fp32_onnx: Path, target: Path, calibration: np.ndarray | None = None, shape=None) -> Path:
    """Write the quantized graph to target/model.onnx (its metadata is stamped later)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        GPTQWeightOnlyQuantConfig,
        HQQWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    logging.getLogger("neural_compressor").setLevel(logging.WARNING)
    options = {}
    if recipe.algorithm == "gptq":
        if calibration is None:
            raise UnsupportedModelError("GPTQ needs calibration text (--calibration)")
        algo = GPTQWeightOnlyQuantConfig(calibration_data_reader=_Windows([prefill_feed(row, shape) for row in calibration]))
        options = {"block_size": recipe.block_size, "is_symmetric": True}  # GPTQ's group: the quantizer's block size
    elif recipe.algorithm == "hqq":
        algo = HQQWeightOnlyQuantConfig(block_size=recipe.block_size, bits=recipe.bits)
    else:
        algo = DefaultWeightOnlyQuantConfig(block_size=recipe.block_size, is_symmetric=True, bits=recipe.bits)
    quantizer = MatMulNBitsQuantizer(onnx.load_model(str(fp32_onnx)), algo_config=algo, **options)
    quantizer.process()
    model = quantizer.model.model
    rewritten = sum(node.op_type == "MatMulNBits" for node in model.graph.node)
    if not rewritten:
        raise UnsupportedModelError("ONNX Runtime's quantizer rewrote no MatMul (no constant weights found)")
    target.mkdir(parents=True, exist_ok=True)
    path = target / ONNX_FILE
    onnx.save_model(model, str(path))
    return path
