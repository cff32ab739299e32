"""What `aiopt quantize LM_FOLDER` writes: the winner's folder (its model file(s), the tokenizer,
aiopt.json naming its runtime) and the report's table of every candidate."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import aiopt
from aiopt.artifacts import command_line, now_iso
from aiopt.folder_io import METADATA_FILE, atomic_folder
from aiopt.llm.recipes_openvino import runtime_options_of
from aiopt.llm.route import phase_runtime

FORMATS = {"openvino": "openvino-ir", "llamacpp": "gguf", "onnxruntime": "onnx", "onnxruntime-genai": "onnx", "route": "route"}


def model_files(path: Path) -> list[Path]:
    """The model's file(s): the graph and its external weights (ONNX), the .xml and its .bin, or the GGUF."""
    files = [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path, Path(str(path) + ".data")]
    return [f for f in files if f.is_file()]


def write_winner(winner, export: dict, out: Path, report: dict, folder) -> dict:
    """The winner's model file(s), the tokenizer and aiopt.json naming its runtime, written whole."""
    from aiopt.llm.export_kv import TOKENIZER_FILES, _stamp  # torch

    keep = ("architecture", "kv_cache", "params", "eos_token_id", "source_folder", "source_metadata", "task")
    metadata = {**{k: export.get(k) for k in keep}, "aiopt_version": aiopt.__version__, "step": "quantize",
                "format": FORMATS.get(winner.runtime, "onnx"), "runtime": winner.runtime,
                "recipe": winner.name, "recipe_description": winner.recipe, "inference_precision": winner.precision,
                "quality": {"perplexity": winner.perplexity, "perplexity_increase": winner.perplexity_increase,
                            "agreement_with_fp32": winner.agreement, "decode_agreement_with_fp32": winner.decode_agreement,
                            "cache_drift": winner.cache_drift},
                "quantize_report": report, "command": command_line(), "created_at": now_iso()}
    models = winner.parts or (winner,)  # a route (aiopt.llm.route): the prefill model and the decode model
    if winner.parts:
        metadata["route"] = {phase: {"runtime": phase_runtime(part.runtime), "file": part.path.name, "recipe": part.name,
                                     "inference_precision": part.precision}
                             for phase, part in zip(("prefill", "decode"), winner.parts)}
    for part in models:
        if part.runtime == "openvino":  # the CPU plugin's options it was measured with (also in the IR's rt_info, which open_ir reads)
            metadata["openvino_runtime_options"] = runtime_options_of(part.path)
    with atomic_folder(out) as tmp:
        for file in (file for part in models for file in model_files(part.path)):
            shutil.copy2(file, tmp / file.name)
        if winner.runtime == "onnxruntime-genai":  # GenAI's runtime reads its builder's configuration beside the graph
            shutil.copy2(winner.path.parent / "genai_config.json", tmp / "genai_config.json")
        for name in TOKENIZER_FILES:
            if (Path(folder) / name).is_file():
                shutil.copy2(Path(folder) / name, tmp / name)
        if winner.runtime in ("onnxruntime", "onnxruntime-genai"):
            _stamp(tmp / winner.path.name, metadata)
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=str), encoding="utf-8")
    return metadata


def markdown_table(report: dict) -> str:
    """Every candidate: quality, size, TTFT, tokens/s, fraction of the bandwidth limit, why it lost."""
    timing = report["timing"]
    header = (f"| candidate | runtime | perplexity | vs FP32 | agreement (decode steps) | size | TTFT p{timing['prompt_len']} | "
              f"tok/s b{timing['batch_sizes'][0]} | of limit | result |")
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in report["candidates"]:
        mark = "**" if r["name"] == report["chosen"] else ""
        d = r["decode"][0] if r["decode"] else {}
        cells = [f"{mark}{r['name']}{mark}", r["runtime"],
                 f"{r['perplexity']:.3f}" if r["perplexity"] is not None else "-",
                 f"{r['perplexity_increase'] * 100:+.2f}%" if r["perplexity_increase"] is not None else "-",
                 f"{r['agreement']:.3f} ({r['decode_agreement']:.3f})" if r["agreement"] is not None else "-",
                 f"{r['size_bytes'] / 1024:.0f} KiB" if r["size_bytes"] else "-",
                 f"{r['ttft_ms']:.1f} ms" if r["ttft_ms"] is not None else "-",
                 f"{d['tokens_per_s']:.1f}" if d.get("tokens_per_s") is not None else "-", f"{d['fraction_of_limit']:.3f}" if "fraction_of_limit" in d else "-",
                 r["why"] if r["status"] == "measured" else f"{r['status']}: {r['why']}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
