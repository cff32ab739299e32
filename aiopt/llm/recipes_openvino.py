"""OpenVINO candidates for a causal LM: the KV-cache ONNX export read by OpenVINO, weights
compressed by NNCF's compress_weights (INT8_ASYM per channel; INT4_SYM/ASYM by group, AWQ and
scale estimation when calibration text is given), saved as IR (openvino_model.xml/.bin) and
compiled with an FP32 or, where the CPU has BF16 units, a BF16 inference precision hint.

An IR folder written here carries aiopt.json (the KV-cache layout, the precision hint): that is
what lets `aiopt generate`/`bench` run it; an IR from elsewhere has no such layout and is refused
in one line.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aiopt.errors import InputError, UnsupportedModelError
from aiopt.hardware import detect_cpu
from aiopt.llm.causal_lm import Shape
from aiopt.folder_io import METADATA_FILE, read_metadata
from aiopt.llm.lm_quality import prefill_feed

IR_FILE = "openvino_model.xml"
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with BF16 dot-product units
GROUP_SIZES = (32, 64, 128)


@dataclass(frozen=True)
class OpenVINORecipe:
    name: str
    mode: str | None  # nncf.CompressWeightsMode value, None: weights kept FP32
    group_size: int | None = None
    precision: str = "f32"  # INFERENCE_PRECISION_HINT
    data_aware: bool = False  # AWQ + scale estimation on the calibration windows
    # share of the weights in the 4-bit mode; NNCF puts the rest in INT8, the layers its sensitivity
    # metric ranks most hurt (weight quantization error without data)
    ratio: float = 1.0

    runtime = "openvino"

    def describe(self) -> str:
        weights = "FP32 weights" if self.mode is None else f"NNCF {self.mode.upper()}" + (f", group {self.group_size}" if self.group_size else ", per channel")
        mixed = f", {self.ratio:.0%} of layers INT4 and the most sensitive INT8" if self.ratio < 1 else ""
        return (f"OpenVINO {weights}{mixed}, {self.precision.upper()} inference"
                + (", AWQ + scale estimation" if self.data_aware else ""))


def has_bf16_units(flags=None) -> bool:
    flags = detect_cpu().flags if flags is None else flags
    return any(flag in flags for flag in BF16_FLAGS)


def openvino_recipes(bf16: bool, calibrated: bool) -> list[OpenVINORecipe]:
    recipes = [OpenVINORecipe("ov-fp32", None)]
    if bf16:
        recipes.append(OpenVINORecipe("ov-bf16", None, precision="bf16"))
    recipes.append(OpenVINORecipe("ov-int8-asym", "int8_asym"))
    recipes += [OpenVINORecipe(f"ov-int4-sym-g{g}", "int4_sym", g) for g in GROUP_SIZES]
    recipes.append(OpenVINORecipe("ov-int4-asym-g128", "int4_asym", 128))
    recipes.append(OpenVINORecipe("ov-int4-sym-g64-r80", "int4_sym", 64, ratio=0.8))  # mixed INT4/INT8 by sensitivity
    if calibrated:
        recipes.append(OpenVINORecipe("ov-int4-sym-g64-awq", "int4_sym", 64, data_aware=True))
    return recipes


def build_openvino(recipe: OpenVINORecipe, fp32_onnx: Path, target: Path, calibration: np.ndarray | None, shape) -> Path:
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(fp32_onnx))
    if recipe.mode is not None:
        options = {"mode": nncf.CompressWeightsMode(recipe.mode)}
        if recipe.group_size:
            # a dimension the group does not divide (gpt:tiny's FFN of 172) gets the nearest group that does
            options.update(group_size=recipe.group_size, ratio=recipe.ratio,
                           advanced_parameters=nncf.AdvancedCompressionParameters(group_size_fallback_mode=nncf.GroupSizeFallbackMode.ADJUST))
        if recipe.data_aware:
            if calibration is None:
                raise UnsupportedModelError("AWQ needs calibration text (--calibration)")
            options.update(dataset=nncf.Dataset([prefill_feed(row, shape) for row in calibration]), awq=True, scale_estimation=True,
                           subset_size=len(calibration))
        model = nncf.compress_weights(model, **options)
    target.mkdir(parents=True, exist_ok=True)
    path = target / IR_FILE
    ov.save_model(model, str(path), compress_to_fp16=False)  # the default would halve FP32 weights behind our back
    return path


def open_ir(path: Path, shape, threads: int | None, precision: str):
    from aiopt.llm.runners import OpenVINOCausalLM  # the runners import torch

    return OpenVINOCausalLM(path, shape, threads, precision=precision)


def is_ir(path) -> bool:
    path = Path(path)
    return (path / IR_FILE).is_file() if path.is_dir() else path.suffix == ".xml" and path.is_file()


def open_ir_artifact(path, threads: int | None = None, runtime: str | None = None):
    """(runner, tokenizer folder, metadata) for an IR folder aiopt quantize wrote (or its .xml)."""
    path = Path(path)
    xml = path / IR_FILE if path.is_dir() else path
    metadata = read_metadata(xml.parent)
    kv = metadata.get("kv_cache")
    if not kv or metadata.get("runtime") != "openvino":
        raise UnsupportedModelError(f"{xml} is an OpenVINO IR without aiopt's KV-cache layout (no {METADATA_FILE} from aiopt quantize beside it); "
                                    "run it with OpenVINO GenAI, or quantize the Hugging Face folder with: aiopt quantize FOLDER -o OUT")
    if runtime not in (None, "openvino"):
        raise InputError(f"{xml} is an OpenVINO IR; it runs on --runtime openvino only")
    shape = Shape(**{k: kv[k] for k in Shape.__dataclass_fields__})
    return open_ir(xml, shape, threads, metadata.get("inference_precision", "f32")), xml.parent, metadata
