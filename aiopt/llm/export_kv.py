"""Export a causal LM to ONNX with its KV cache as inputs and outputs.

Route: torch.onnx.export's dynamo exporter (torch.export, strict=False) on a thin wrapper that
turns flat past tensors into transformers' DynamicCache and the updated cache back into flat
tensors. The names follow the convention ONNX Runtime GenAI and Optimum use:
inputs  input_ids, attention_mask, position_ids, past_key_values.{i}.key / .value
outputs logits, present.{i}.key / .value        (batch, sequence and past length dynamic)
The result is validated against transformers' own logits for a prefill and decode steps, and
refused (nothing written) past the tolerance.

The output is a folder: model.onnx (+ model.onnx.data past 1.5 GB), the tokenizer files and
aiopt.json; the metadata also rides in the ONNX file's metadata_props.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from aiopt.artifacts import FORMAT_ONNX, METADATA_KEY, LoadedModel, child_metadata, save_onnx_artifact, with_own_lineage
from aiopt.errors import InputError, UnsupportedModelError, first_line
from aiopt.lazy import optional_import
from aiopt.llm.causal_lm import Shape, load_causal_lm
from aiopt.folder_io import METADATA_FILE, atomic_folder, check_output_folder
from aiopt.llm.kv_names import LOGITS_START, ONNX_FILE, past_names, present_names
from aiopt.llm.runners import OrtCausalLM, TorchCausalLM

EXTERNAL_DATA_FROM = 1_500_000_000  # bytes of weights past which they go beside the graph (protobuf stops at 2 GB)
EXTERNAL_DATA_FILE = ONNX_FILE + ".data"  # the name torch.onnx gives the weights beside the graph
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "tokenizer.model", "generation_config.json")


@dataclass(frozen=True)
class KVExportConfig:
    exporter: str = "torch"  # torch (torch.onnx dynamo) or genai (ONNX Runtime GenAI's model builder)
    genai_precision: str = "fp32"  # the builder's -p: fp32, or int8/int4 (its weight-only MatMulNBits, aiopt quantize candidates)
    # the builder's prune_lm_head: a prefill computes the last position's logits only, what generation
    # reads (aiopt quantize's GenAI candidates: a quarter of gpt:base's prefill is the output layer over the prompt)
    genai_last_logits: bool = False
    genai_block_size: int | None = None  # the builder's MatMulNBits block for int8/int4 (its default: 32)
    opset: int = 18
    # max abs logit difference accepted against transformers; None records it without refusing (a
    # weight-quantized build, whose quality aiopt quantize measures on held-out text)
    atol: float | None = 1e-3
    decode_steps: int = 8
    prompt_tokens: int = 16
    external_data_from: int = EXTERNAL_DATA_FROM  # weight bytes past which they go to model.onnx.data


class FlatCacheLM(torch.nn.Module):
    """A causal LM as a function of flat tensors: (ids, mask, positions, past...) -> (logits, present...)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, past):
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=[(k, v) for k, v in past], config=self.model.config)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache, use_cache=True)
        present = []
        for layer in out.past_key_values.layers:
            present += [layer.keys, layer.values]
        return (out.logits, *present)


def export_causal_lm_onnx(folder, output, config: KVExportConfig = KVExportConfig(), force: bool = False,
                          say: Callable[[str], None] | None = None) -> dict:
    """Export, validate, check and write the folder; returns the metadata written (validation included).
    The ONNX file goes through the one writer of aiopt ONNX artifacts (artifacts.save_onnx_artifact:
    metadata with its lineage, the checksum, the save) inside a folder published whole."""
    say = say or (lambda message: None)
    out = check_output_folder(output, folder, force=force)
    model, hf_config = load_causal_lm(folder)
    shape = Shape.from_config(hf_config)
    if config.exporter not in EXPORTERS:
        raise InputError(f"--exporter {config.exporter!r} is not one for causal LMs; choose {' or '.join(EXPORTERS)}")
    start = time.perf_counter()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    external = weight_bytes > config.external_data_from
    with atomic_folder(out) as tmp:
        onnx_path = tmp / ONNX_FILE
        if config.exporter == "genai":
            exporter = _export_genai(folder, tmp, say, config.genai_precision, config.genai_last_logits, config.genai_block_size)
        else:
            program = _export_torch(model, shape, config, folder, say)
            program.save(str(onnx_path), external_data=external)
            exporter = f"torch.onnx dynamo (torch {torch.__version__})"
        if not config.genai_last_logits:  # a pruned head computes the last position already
            add_logits_start(onnx_path)
        export_seconds = time.perf_counter() - start
        say("validating against transformers: a prefill and decode steps")
        validation = validate_kv_onnx(model, onnx_path, shape, config)
        if config.atol is not None and validation["max_abs_diff"] > config.atol:
            raise UnsupportedModelError(f"the exported model's logits differ from transformers' by {validation['max_abs_diff']:.2e} "
                                        f"(tolerance {config.atol:g}); nothing written")
        # the GenAI builder writes ONNX Runtime's own operators in the default domain (SimplifiedLayerNormalization),
        # which onnx's checker does not know: ONNX Runtime running it against transformers (above) is its check
        graph = check_kv_onnx(onnx_path) if config.exporter == "torch" else onnx.load_model(str(onnx_path), load_external_data=False)
        for name in TOKENIZER_FILES:
            if (Path(folder) / name).is_file():
                shutil.copy2(Path(folder) / name, tmp / name)
        metadata = child_metadata(
            _source(folder), "export", format=FORMAT_ONNX, task="causal-lm",
            architecture=(hf_config.get("architectures") or [hf_config.get("model_type")])[0],
            exporter=exporter, opset=config.opset if config.exporter == "torch" else None, onnx_checker=config.exporter == "torch",
            kv_cache={**asdict(shape), "inputs": past_names(shape.layers), "outputs": present_names(shape.layers), "dtype": "float32"},
            params=sum(p.numel() for p in model.parameters()),  # the source's: the ONNX file holds a tied table twice
            external_data=EXTERNAL_DATA_FILE if (tmp / EXTERNAL_DATA_FILE).is_file() else None,
            eos_token_id=hf_config.get("eos_token_id"), validation=validation, export_seconds=round(export_seconds, 2),
            source_folder=str(Path(folder).resolve()), source_metadata=_source_metrics(folder))
        # the graph as checked, its weights left in model.onnx.data where they are (a 0.5B model's
        # 2 GB of FP32 weights would reach protobuf's limit): the checksum covers the graph and its
        # references into that file, as load_model recomputes it
        save_onnx_artifact(graph, metadata, out / ONNX_FILE, write_to=onnx_path)
        (tmp / METADATA_FILE).write_text(json.dumps(with_own_lineage(metadata, out / ONNX_FILE), indent=2), encoding="utf-8")
    return {"path": str(out), "onnx": str(out / ONNX_FILE), **metadata}


def check_kv_onnx(onnx_path: Path):
    """onnx's checker on the file (by path, so a model past 2 GB with external data is checked
    too); returns the graph without its external weights loaded."""
    try:
        onnx.checker.check_model(str(onnx_path))
    except Exception as exc:
        raise UnsupportedModelError(f"the exported ONNX model fails onnx's checks: {first_line(exc)[:300]}") from exc
    return onnx.load_model(str(onnx_path), load_external_data=False)


def _source(folder) -> LoadedModel:
    """The Hugging Face folder as the export's parent, with the metadata aiopt wrote beside it (a
    trained gpt's lineage, dataset and size carry over)."""
    path = Path(folder).resolve()
    metadata = {"step": "import"}
    with contextlib.suppress(OSError, ValueError):
        found = json.loads((path / METADATA_FILE).read_text(encoding="utf-8"))
        metadata = found if isinstance(found, dict) else metadata
    return LoadedModel(path, "hf-folder", None, metadata)


EXPORTERS = ("torch", "genai")
GENAI_PRECISIONS = ("fp32", "int8", "int4")


def _export_torch(model, shape: Shape, config: KVExportConfig, folder, say):
    """torch.onnx's dynamo exporter over FlatCacheLM: batch, sequence and past length dynamic."""
    wrapper = FlatCacheLM(model).eval()
    batch, seq, past = torch.export.Dim("batch"), torch.export.Dim("sequence"), torch.export.Dim("past_sequence")
    total = torch.export.Dim("total_sequence")
    example_batch, example_seq, example_past = 2, 3, 5
    args = (torch.randint(0, shape.vocab_size, (example_batch, example_seq)),
            torch.ones(example_batch, example_past + example_seq, dtype=torch.int64),
            torch.arange(example_past, example_past + example_seq).expand(example_batch, example_seq).contiguous(),
            [(torch.zeros(example_batch, shape.kv_heads, example_past, shape.head_dim),
              torch.zeros(example_batch, shape.kv_heads, example_past, shape.head_dim)) for _ in range(shape.layers)])
    dynamic = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: total}, "position_ids": {0: batch, 1: seq},
               "past": [({0: batch, 2: past}, {0: batch, 2: past}) for _ in range(shape.layers)]}
    say(f"exporting {folder} with torch.onnx (dynamo) and a KV cache of {shape.layers} layers")
    try:
        with torch.no_grad():
            return torch.onnx.export(wrapper, args, dynamo=True, dynamic_shapes=dynamic, opset_version=config.opset,
                                     input_names=["input_ids", "attention_mask", "position_ids", *past_names(shape.layers)],
                                     output_names=["logits", *present_names(shape.layers)], optimize=True, verbose=False)
    except Exception as exc:

        raise UnsupportedModelError(f"torch.onnx could not export {folder} with a KV cache ({first_line(exc)})") from exc


def _export_genai(folder, target: Path, say, precision: str = "fp32", last_logits: bool = False, block_size: int | None = None) -> str:
    """ONNX Runtime GenAI's model builder (CPU, FP32, INT8 or INT4): fused GroupQueryAttention, rotary inside the
    graph; writes model.onnx(.data) and genai_config.json. Run as its own process: it is a CLI
    and holds the whole model in memory while it writes. `last_logits`: its prune_lm_head option;
    `block_size`: its MatMulNBits block (int8/int4)."""
    onnxruntime_genai = optional_import("onnxruntime_genai", "--exporter genai", "ONNX Runtime GenAI")
    if precision not in GENAI_PRECISIONS:
        raise InputError(f"the GenAI model builder's precision {precision!r} is not one aiopt offers; choose {' or '.join(GENAI_PRECISIONS)}")
    say(f"exporting {folder} with ONNX Runtime GenAI {onnxruntime_genai.__version__}'s model builder ({precision}, cpu)")
    with tempfile.TemporaryDirectory(dir=target.parent) as cache:
        command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(folder), "-o", str(target), "-p", precision,
                   "-e", "cpu", "-c", cache, "--extra_options", "hf_remote=false", "hf_token=false",
                   *(["prune_lm_head=true"] if last_logits else []), *([f"block_size={block_size}"] if block_size else [])]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not (target / ONNX_FILE).is_file():
        lines = [line for line in (result.stderr or result.stdout).strip().splitlines() if line.strip()]
        raise UnsupportedModelError(f"ONNX Runtime GenAI's model builder could not export {folder} ({lines[-1] if lines else 'no output'})")
    pruned = ", prune_lm_head: the last position's logits on prefill" if last_logits else ""
    block = f", block {block_size}" if block_size else ""
    return f"onnxruntime-genai model builder {onnxruntime_genai.__version__} ({precision}{block}, cpu{pruned})"


def _source_metrics(folder) -> dict | None:
    path = Path(folder) / METADATA_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    return {"architecture": data.get("architecture"), "size": data.get("size"), "metrics": data.get("metrics")}


def add_logits_start(onnx_path: Path) -> bool:
    """Give the graph an optional input `logits_start` (int64 [1], default 0) that slices the
    hidden states before the output layer: a prefill fed -1 computes only the last position's
    logits (generation), one left at the default computes all (perplexity). With a vocabulary of
    152k, all 512 positions of a prompt cost about 70 GFLOP and 311 MB of logits that generation
    drops. Graphs whose logits do not come from a MatMul are left as they are (False)."""
    model = onnx.load_model(str(onnx_path), load_external_data=False)
    graph = model.graph
    if any(i.name == LOGITS_START for i in graph.input):
        return True
    producer = {out: node for node in graph.node for out in node.output}
    constant = {i.name for i in graph.initializer} | {out for node in graph.node if node.op_type == "Constant" for out in node.output}

    def is_constant(name: str, depth: int = 0) -> bool:  # an initializer, or computed from initializers only (a Transpose of the tied table)
        if name in constant:
            return True
        node = producer.get(name)
        return node is not None and depth < 4 and all(is_constant(i, depth + 1) for i in node.input if i)

    node = producer.get("logits")
    while node is not None and node.op_type in ("Cast", "Identity", "Reshape") and node.input:
        node = producer.get(node.input[0])  # a dtype or shape wrapper around the output layer
    if node is None or node.op_type != "MatMul":
        return False
    slot = next((i for i, name in enumerate(node.input[:2]) if not is_constant(name)), None)
    if slot is None:
        return False
    hidden = node.input[slot]
    sliced = f"{hidden}/{LOGITS_START}"
    graph.initializer.extend([numpy_helper.from_array(np.zeros(1, np.int64), LOGITS_START),
                              numpy_helper.from_array(np.array([np.iinfo(np.int64).max], np.int64), f"{LOGITS_START}/end"),
                              numpy_helper.from_array(np.ones(1, np.int64), f"{LOGITS_START}/axis")])
    # an initializer that is also a graph input is an input with a default (ONNX IR >= 4)
    graph.input.append(helper.make_tensor_value_info(LOGITS_START, TensorProto.INT64, [1]))
    node.input[slot] = sliced
    index = list(graph.node).index(node)
    graph.node.insert(index, helper.make_node("Slice", [hidden, LOGITS_START, f"{LOGITS_START}/end", f"{LOGITS_START}/axis"], [sliced],
                                              name=f"{LOGITS_START}/Slice"))
    onnx.save_model(model, str(onnx_path))
    return True


def _stamp(onnx_path: Path, metadata: dict) -> None:
    """Replace the metadata of an ONNX file in place, without a checksum (aiopt.llm.quantize's
    winner; the export itself writes through save_onnx_artifact)."""
    model = onnx.load_model(str(onnx_path), load_external_data=False)
    del model.metadata_props[:]
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps(metadata))
    onnx.save_model(model, str(onnx_path))


@torch.no_grad()
def validate_kv_onnx(model, onnx_path, shape: Shape, config: KVExportConfig) -> dict:
    """Logits of ONNX Runtime vs transformers: a prefill of `prompt_tokens`, then greedy decode
    steps fed the same tokens to both (batch 1), and a batch-2 prefill."""
    ort_lm, torch_lm = OrtCausalLM(onnx_path, shape), TorchCausalLM(model, shape)
    rng = np.random.default_rng(0)
    diffs = []
    prompt = rng.integers(0, shape.vocab_size, size=(1, config.prompt_tokens))
    kept = slice(-1, None) if ort_lm.last_logits_only else slice(None)  # a pruned output layer: the last position's logits
    logits_t, state_t = torch_lm.prefill(prompt)
    logits_o, state_o = ort_lm.prefill(prompt)
    diffs.append(float(np.abs(logits_t[:, kept] - _same_shape(logits_o, logits_t[:, kept])).max()))
    last_only = float(np.abs(logits_t[:, -1:] - ort_lm.prefill(prompt, last_only=True)[0]).max())  # the generation prefill (logits_start)
    diffs.append(last_only)
    agree = 0
    for _ in range(config.decode_steps):
        token = logits_t[:, -1].argmax(-1)[:, None]
        agree += int((logits_o[:, -1].argmax(-1) == token[:, 0]).all())
        logits_t, state_t = torch_lm.step(token, state_t)
        logits_o, state_o = ort_lm.step(token, state_o)
        diffs.append(float(np.abs(logits_t - logits_o).max()))
    pair = rng.integers(0, shape.vocab_size, size=(2, max(2, config.prompt_tokens // 2)))
    expected = torch_lm.prefill(pair)[0][:, kept]
    batch_diff = float(np.abs(expected - _same_shape(ort_lm.prefill(pair)[0], expected)).max())
    return {"max_abs_diff": max(diffs + [batch_diff]), "prefill_tokens": config.prompt_tokens, "decode_steps": config.decode_steps,
            "per_step_max_abs_diff": diffs, "batch2_prefill_max_abs_diff": batch_diff, "last_position_prefill_max_abs_diff": last_only,
            "greedy_agreement": agree / config.decode_steps, "tolerance": config.atol, "last_position_logits_only": ort_lm.last_logits_only}


def _same_shape(got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """`got`, refused unless shaped like `expected` (numpy would broadcast a single position against all)."""
    if got.shape != expected.shape:
        raise UnsupportedModelError(f"the exported graph's logits are shaped {got.shape}, not {expected.shape} as transformers' are")
    return got
