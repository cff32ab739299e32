"""OpenVINO candidates for a causal LM: the KV-cache ONNX export read by OpenVINO, weights
compressed by NNCF's compress_weights (INT8_ASYM per channel; INT4_SYM/ASYM by group, AWQ and
scale estimation when calibration text is given), saved as IR (openvino_model.xml/.bin) and
compiled with an FP32 or, where the CPU has BF16 units, a BF16 inference precision hint.

The CPU plugin's runtime options are part of a candidate, pinned, never left to its defaults:
on this kind of CPU (AVX-512 VNNI) OpenVINO 2026 quantizes the activations of every layer with
compressed weights by default (DYNAMIC_QUANTIZATION_GROUP_SIZE 32), so a "weights-only" IR
compiled with defaults is not weights-only. Each recipe names its group (0: off) and, for the
KV-cache candidate, KV_CACHE_PRECISION; build_openvino writes them into the IR's rt_info
`runtime_options` (which `compile_model` applies, so OpenVINO GenAI or any OpenVINO user opening
the IR gets them too) and open_ir passes the same options explicitly, so what was measured is what
`generate`/`bench` run.

An IR folder written here carries aiopt.json (the KV-cache layout, the precision hint, the runtime
options): that is what lets `aiopt generate`/`bench` run it; an IR from elsewhere has no such
layout and is refused in one line.
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
from aiopt.llm.openvino_convert import convert_causal_lm, expose_logits_start
from aiopt.llm.openvino_stateful import OpenVINOStatefulCausalLM, make_stateful, state_precisions

IR_FILE = "openvino_model.xml"
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with BF16 dot-product units
GROUP_SIZES = (32, 64, 128)
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # INT8 dot-product units: dynamic activation quantization pays off
DYNAMIC_QUANTIZATION = "DYNAMIC_QUANTIZATION_GROUP_SIZE"
KV_CACHE_PRECISION = "KV_CACHE_PRECISION"
STATEFUL_MARK = ["aiopt", "stateful"]
FUSED_FP32 = "ov-fused-fp32"  # beside the recipes' folders: the graph converted from PyTorch, before compression


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
    # NNCF's sensitivity metric ranking the layers kept INT8 when ratio < 1: None, its data-free
    # default (weight quantization error); "hessian_input_activation" ranks them on the calibration windows
    sensitivity: str | None = None
    # the CPU plugin's DYNAMIC_QUANTIZATION_GROUP_SIZE for layers with compressed weights: activations
    # quantized to INT8 per group of this many at run time; 0 off (weights only)
    dynamic_quantization: int = 0
    kv_cache: str | None = None  # KV_CACHE_PRECISION (u8): the cache kept in 8 bits, run stateful
    # run by aiopt.llm.openvino_stateful (the KV cache in OpenVINO's variables, not fed through Python each step)
    stateful: bool = False
    # where the graph comes from: "onnx", the KV-cache ONNX export read by OpenVINO (attention as MatMul/Softmax);
    # "pytorch", the Hugging Face folder converted by OpenVINO's PyTorch frontend (aiopt.llm.openvino_convert):
    # one ScaledDotProductAttention op the CPU plugin fuses with the cache, stateful, logits sliced for generation
    graph: str = "onnx"

    runtime = "openvino"

    def describe(self) -> str:
        weights = "FP32 weights" if self.mode is None else f"NNCF {self.mode.upper()}" + (f", group {self.group_size}" if self.group_size else ", per channel")
        mixed = (f", {self.ratio:.0%} of layers INT4 and the most sensitive INT8"
                 + (f" (ranked by {self.sensitivity.replace('_', ' ')} on the calibration text)" if self.sensitivity else "")
                 if self.ratio < 1 else "")
        dynamic = f", activations INT8 per group of {self.dynamic_quantization} at run time" if self.dynamic_quantization else ""
        cache = (f", {self.kv_cache.upper()} KV cache" if self.kv_cache else "") + (", stateful" if self.runs_stateful() else "")
        graph = (" (converted from PyTorch: fused attention with the KV cache, logits of the last position in a generation prefill)"
                 if self.graph == "pytorch" else "")
        return (f"OpenVINO {weights}{mixed}, {self.precision.upper()} inference{dynamic}{cache}{graph}"
                + (", AWQ + scale estimation" if self.data_aware else ""))

    def runs_stateful(self) -> bool:
        return self.stateful or self.kv_cache is not None or self.graph == "pytorch"

    def runtime_options(self) -> dict[str, str]:
        """The CPU plugin's options this candidate is measured and shipped with."""
        options = {"INFERENCE_PRECISION_HINT": self.precision}
        if self.mode is not None:  # the group acts only on layers with compressed weights
            options[DYNAMIC_QUANTIZATION] = str(self.dynamic_quantization)
        if self.kv_cache or self.graph == "pytorch":  # the fused node stores its cache in this (the plugin's default here: u8)
            options[KV_CACHE_PRECISION] = self.kv_cache or "f32"
        return options


def has_bf16_units(flags=None) -> bool:
    flags = detect_cpu().flags if flags is None else flags
    return any(flag in flags for flag in BF16_FLAGS)


def has_int8_units(flags=None) -> bool:
    flags = detect_cpu().flags if flags is None else flags
    return any(flag in flags for flag in INT8_FLAGS)


def openvino_recipes(bf16: bool, calibrated: bool, int8_units: bool | None = None) -> list[OpenVINORecipe]:
    int8_units = has_int8_units() if int8_units is None else int8_units
    recipes = [OpenVINORecipe("ov-fp32", None)]
    if bf16:
        recipes.append(OpenVINORecipe("ov-bf16", None, precision="bf16"))
    recipes.append(OpenVINORecipe("ov-int8-asym", "int8_asym"))
    recipes += [OpenVINORecipe(f"ov-int4-sym-g{g}", "int4_sym", g) for g in GROUP_SIZES]
    recipes.append(OpenVINORecipe("ov-int4-asym-g128", "int4_asym", 128))
    recipes.append(OpenVINORecipe("ov-int4-sym-g64-r80", "int4_sym", 64, ratio=0.8))  # mixed INT4/INT8 by sensitivity
    if calibrated:
        recipes.append(OpenVINORecipe("ov-int4-sym-g64-awq", "int4_sym", 64, data_aware=True))
        recipes.append(OpenVINORecipe("ov-int4-sym-g64-r80-hessian", "int4_sym", 64, ratio=0.8, sensitivity="hessian_input_activation"))
    if int8_units:  # the plugin's own default group (32) on INT8 and INT4 weights, measured against weights-only
        recipes.append(OpenVINORecipe("ov-int8-asym-dq32", "int8_asym", dynamic_quantization=32))
        recipes.append(OpenVINORecipe("ov-int4-sym-g64-dq32", "int4_sym", 64, dynamic_quantization=32))
        recipes += prefill_recipes(bf16)
    recipes.append(OpenVINORecipe("ov-int8-asym-stateful", "int8_asym", stateful=True))
    recipes.append(OpenVINORecipe("ov-int8-asym-kv-u8", "int8_asym", kv_cache="u8"))
    recipes += fused_recipes(int8_units, bf16)
    return recipes


def prefill_recipes(bf16: bool) -> list[OpenVINORecipe]:
    """INT8 weights on the ONNX export's graph with activations INT8 per group of 128 (and BF16
    inference where the CPU has BF16 units): the fastest 512-token prefill measured here, for a
    route to hand its cache to llama.cpp (benchmarks/llm_prefill.py, docs/llm-quantize.md). A
    group of 128 spends a quarter of group 32's scales and requantization steps on each row; BF16
    runs the attention MatMuls and the element-wise ops at twice FP32's rate. The prefill kernels
    of the fused graph's attention-with-cache node are slower here than the ONNX graph's MatMuls."""
    recipes = [OpenVINORecipe("ov-int8-asym-dq128", "int8_asym", dynamic_quantization=128)]
    if bf16:
        recipes.append(OpenVINORecipe("ov-int8-asym-bf16-dq128", "int8_asym", precision="bf16", dynamic_quantization=128))
    return recipes


def fused_recipes(int8_units: bool, bf16: bool = False) -> list[OpenVINORecipe]:
    """The graph converted from PyTorch (aiopt.llm.openvino_convert), as OpenVINO GenAI runs an
    Optimum-Intel export: INT8 and INT4 weights, with and without INT8 activations, an INT8 cache,
    and, where the CPU has the units, OpenVINO GenAI's own CPU defaults pinned (BF16 inference,
    activations INT8 per group of 32, INT8 cache)."""
    recipes = [OpenVINORecipe("ov-int8-asym-fused", "int8_asym", graph="pytorch"),
               OpenVINORecipe("ov-int8-asym-fused-kv-u8", "int8_asym", kv_cache="u8", graph="pytorch"),
               OpenVINORecipe("ov-int4-sym-g64-fused", "int4_sym", 64, graph="pytorch")]
    if int8_units:
        recipes += [OpenVINORecipe("ov-int8-asym-fused-dq32", "int8_asym", dynamic_quantization=32, graph="pytorch"),
                    OpenVINORecipe("ov-int8-asym-fused-dq32-kv-u8", "int8_asym", dynamic_quantization=32, kv_cache="u8", graph="pytorch"),
                    OpenVINORecipe("ov-int4-sym-g64-fused-dq32", "int4_sym", 64, dynamic_quantization=32, graph="pytorch")]
    if int8_units and bf16:
        recipes.append(OpenVINORecipe("ov-int8-asym-fused-bf16-dq32-kv-u8", "int8_asym", precision="bf16", dynamic_quantization=32,
                                      kv_cache="u8", graph="pytorch"))
    return recipes


def build_openvino(recipe: OpenVINORecipe, fp32_onnx: Path, target: Path, calibration: np.ndarray | None, shape) -> Path:
    import nncf
    import openvino as ov

    core = ov.Core()
    if recipe.graph == "pytorch":
        if recipe.data_aware or recipe.sensitivity:
            raise UnsupportedModelError(f"{recipe.name}: calibrated NNCF recipes run on the ONNX export's graph only")
        model = core.read_model(str(converted_fp32(fp32_onnx, target.parent / FUSED_FP32)))
    else:
        model = core.read_model(str(fp32_onnx))
        expose_logits_start(model)  # an input again (OpenVINO's ONNX reader folds one with a default)
    if recipe.kv_cache and recipe.graph == "onnx":  # before any compression: refuse a cache precision this OpenVINO would not apply to this graph
        require_cache_precision(core, model.clone(), shape, recipe.runtime_options())
    if recipe.mode is not None:
        options = {"mode": nncf.CompressWeightsMode(recipe.mode)}
        if recipe.group_size:
            # a dimension the group does not divide (gpt:tiny's FFN of 172) gets the nearest group that does
            options.update(group_size=recipe.group_size, ratio=recipe.ratio,
                           advanced_parameters=nncf.AdvancedCompressionParameters(group_size_fallback_mode=nncf.GroupSizeFallbackMode.ADJUST))
        if recipe.data_aware or recipe.sensitivity:
            if calibration is None:
                raise UnsupportedModelError(f"{recipe.name} needs calibration text (--calibration)")
            options.update(dataset=nncf.Dataset([prefill_feed(row, shape) for row in calibration]), subset_size=len(calibration))
        if recipe.data_aware:
            options.update(awq=True, scale_estimation=True)
        if recipe.sensitivity:
            options.update(sensitivity_metric=nncf.SensitivityMetric(recipe.sensitivity))
        model = nncf.compress_weights(model, **options)
    for name, value in recipe.runtime_options().items():  # compile_model applies the IR's runtime_options
        model.set_rt_info(value, ["runtime_options", name])
    if recipe.runs_stateful():  # aiopt's own mark (not an OpenVINO property): open_ir runs it stateful
        model.set_rt_info("true", STATEFUL_MARK)
    target.mkdir(parents=True, exist_ok=True)
    path = target / IR_FILE
    ov.save_model(model, str(path), compress_to_fp16=False)  # the default would halve FP32 weights behind our back
    return path


def converted_fp32(fp32_onnx: Path, folder: Path) -> Path:
    """The FP32 IR converted from PyTorch, made once under `folder` and read by every recipe of that
    graph (a 0.5B model's conversion takes minutes)."""
    import openvino as ov

    path = folder / IR_FILE
    if not path.is_file():
        model, _ = convert_causal_lm(source_folder(fp32_onnx))
        folder.mkdir(parents=True, exist_ok=True)
        ov.save_model(model, str(path), compress_to_fp16=False)
    return path


def source_folder(fp32_onnx: Path) -> Path:
    """The Hugging Face folder the KV-cache export was made from (its aiopt.json's source_folder)."""
    source = read_metadata(Path(fp32_onnx).parent).get("source_folder")
    if not source or not (Path(source) / "config.json").is_file():
        raise UnsupportedModelError(f"the graph converted from PyTorch needs the Hugging Face folder {fp32_onnx.parent} was exported from "
                                    f"({source or 'not recorded'}), which is not there; quantize the folder itself")
    return Path(source)


def require_cache_precision(core, model, shape: Shape, options: dict) -> None:
    """Compile `model` stateful with `options` and check the KV cache's variables are stored in the
    KV_CACHE_PRECISION asked for (read from the compiled graph's MemoryInput nodes); one line when
    OpenVINO keeps them wider, as its CPU plugin does outside its fused attention-with-cache node."""
    wanted = options[KV_CACHE_PRECISION]
    compiled = core.compile_model(make_stateful(model, shape.layers), "CPU", options)
    stored = state_precisions(compiled)
    if not stored or any(precision != wanted for precision in stored):
        raise UnsupportedModelError(f"OpenVINO keeps this graph's KV cache in {'/'.join(sorted(set(stored))) or 'no state'}, not "
                                    f"{KV_CACHE_PRECISION}={wanted} (compressed only in the CPU plugin's fused attention-with-cache node)")


def runtime_options_of(path) -> dict[str, str]:
    """The runtime_options an IR carries in its rt_info (written by build_openvino; {} for others)."""
    return _rt_info(path)[0]


def _rt_info(path) -> tuple[dict[str, str], bool]:
    """(the IR's runtime_options, whether build_openvino marked it to run stateful)."""
    import openvino as ov

    model = ov.Core().read_model(str(path))
    options = ({name: value.astype(str) for name, value in model.get_rt_info("runtime_options").astype(dict).items()}
               if model.has_rt_info("runtime_options") else {})
    return options, model.has_rt_info(STATEFUL_MARK)


def open_ir(path: Path, shape, threads: int | None, precision: str):
    """The runner for an IR, compiled with the runtime options it carries: stateful (the cache in
    OpenVINO's variables) where build_openvino marked it so or its options name a KV cache precision,
    else the plain loop that feeds the cache in and out each step."""
    from aiopt.llm.runners import OpenVINOCausalLM  # the runners import torch

    carried, stateful = _rt_info(path)
    options = {"INFERENCE_PRECISION_HINT": precision, **carried}
    if stateful or KV_CACHE_PRECISION in options:
        return OpenVINOStatefulCausalLM(path, shape, threads, options=options)
    return OpenVINOCausalLM(path, shape, threads, options=options)


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
    shape = Shape.from_kv_cache(kv, xml.parent / METADATA_FILE)
    return open_ir(xml, shape, threads, metadata.get("inference_precision", "f32")), xml.parent, metadata
