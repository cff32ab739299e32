"""One interface over the runtimes a causal LM runs on: prefill a batch of prompts, then step
one token at a time, the KV cache carried in an opaque state.

    logits, state = lm.prefill(ids)          # ids int64 (batch, prompt); logits (batch, prompt or 1, vocab)
    logits, state = lm.step(tokens, state)   # tokens int64 (batch, 1); logits (batch, 1, vocab)

TorchCausalLM runs transformers' model with its DynamicCache; OrtCausalLM runs an ONNX export
with past_key_values inputs and present outputs (aiopt.llm.export_kv) on ONNX Runtime.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from aiopt.errors import UnsupportedModelError, first_line
from aiopt.lazy import optional_import
from aiopt.llm.causal_lm import Shape
from aiopt.llm.kv_names import LOGITS_START, ONNX_FILE, last_position_logits_only, token_feed


class TorchCausalLM:
    runtime = "torch"
    last_logits_only = False  # a prefill gives every position's logits unless asked for the last only

    def __init__(self, model, shape: Shape):
        self.model, self.shape = model.eval(), shape

    @torch.inference_mode()
    def _run(self, ids: np.ndarray, cache, past: int, last_only: bool):
        from transformers import DynamicCache

        cache = cache if cache is not None else DynamicCache(config=self.model.config)
        batch, length = ids.shape
        out = self.model(input_ids=torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)),
                         attention_mask=torch.ones(batch, past + length, dtype=torch.int64),
                         position_ids=torch.arange(past, past + length).expand(batch, length),
                         cache=cache, use_cache=True, logits_to_keep=1 if last_only else 0)
        return out.logits.float().numpy(), (out.past_key_values, past + length)

    def prefill(self, ids: np.ndarray, last_only: bool = False):
        return self._run(ids, None, 0, last_only)

    def step(self, tokens: np.ndarray, state):
        cache, past = state
        return self._run(tokens, cache, past, True)


class OrtCausalLM:
    """The KV cache stays in ONNX Runtime's own buffers between steps: the present outputs come
    back as OrtValues and are fed as the next step's past, never copied out to numpy. A prefill
    for generation feeds `logits_start` = -1 where the export has that input, so only the last
    position's logits are computed.

    A graph whose attention is GroupQueryAttention (ONNX Runtime GenAI's model builder) decodes
    with past and present in one buffer per layer (_SharedCache), as GenAI's own generator does:
    each step writes its token's keys and values in place instead of copying the whole cache
    into a new present, which at a 640-token context is 5% more memory traffic per token on the
    0.5B configuration. `max_length` (prompt plus new tokens; generate_ids sets it) sizes the
    buffer; without it the buffer grows by CACHE_CHUNK tokens."""

    runtime = "onnxruntime"
    last_logits_only = False
    shares_cache = False
    max_length: int | None = None  # tokens a generation reaches (prompt plus new ones): the shared buffer's size

    def __init__(self, onnx_path, shape: Shape, threads: int | None = None, keep_cache_in_ort: bool = True, share_cache: bool = True):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # not the warning that `logits_start`, an input with a default, is not constant-folded
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self._ort, self.shape, self.keep_cache_in_ort = ort, shape, keep_cache_in_ort
        self._cpu = ort.OrtDevice.make("cpu", 0)._get_c_device()
        # an input with a default is listed among the overridable initializers, not the inputs
        names = [i.name for i in self.session.get_inputs()] + [i.name for i in self.session.get_overridable_initializers()]
        self._read_signature(onnx_path, names, [o.name for o in self.session.get_outputs()])
        logits_dims = next(o.shape for o in self.session.get_outputs() if o.name == "logits")
        self.last_logits_only = last_position_logits_only(logits_dims)
        self.logits_width = logits_dims[-1] if isinstance(logits_dims[-1], int) else shape.vocab_size  # a padded vocabulary has its own
        self.shares_cache = share_cache and keep_cache_in_ort and _attention_ops(onnx_path) == {"GroupQueryAttention"}

    def _read_signature(self, onnx_path, names: list[str], output_names: list[str]) -> None:
        self.past_inputs = [n for n in names if n.startswith("past_key_values.")]
        if not self.past_inputs:
            raise UnsupportedModelError(f"{onnx_path} has no past_key_values inputs (its inputs: {', '.join(names)}), so it cannot generate "
                                        "with a KV cache; export the model folder with: aiopt export FOLDER --format onnx -o OUT")
        self.takes_positions = "position_ids" in names
        self.takes_mask = "attention_mask" in names
        self.takes_logits_start = LOGITS_START in names
        # present.{i}.{kv} feeds past_key_values.{i}.{kv} next step, matched by name, not by position
        self.output_names = output_names
        outputs = set(output_names)
        self.present_for = [name.replace("past_key_values.", "present.", 1) for name in self.past_inputs]
        missing = [name for name in self.present_for if name not in outputs]
        if "logits" not in outputs or missing:
            raise UnsupportedModelError(f"{onnx_path} lacks the outputs a KV-cache model has (logits and {', '.join(missing[:2]) or 'present.*'}); "
                                        "export the model folder with: aiopt export FOLDER --format onnx -o OUT")

    def _feed(self, ids: np.ndarray, past: int, last_only: bool) -> dict:
        feed = token_feed(ids, past, self.takes_mask, self.takes_positions)
        if last_only and ids.shape[1] > 1 and self.takes_logits_start:
            feed[LOGITS_START] = np.array([-1], dtype=np.int64)
        return feed

    def _run(self, ids: np.ndarray, past_values: list | None, past: int, last_only: bool):
        if past_values is None:
            empty = np.zeros((ids.shape[0], self.shape.kv_heads, 0, self.shape.head_dim), dtype=np.float32)
            past_values = [empty] * len(self.past_inputs)
        logits, present = self._infer(self._feed(ids, past, last_only), past_values)
        return (logits[:, -1:] if last_only else logits), (present, past + ids.shape[1])

    def _infer(self, feed: dict, past_values: list) -> tuple[np.ndarray, list]:
        if not self.keep_cache_in_ort:  # the plain call: every present copied out to numpy (kept to compare against)
            feed.update(zip(self.past_inputs, past_values))
            values = dict(zip(self.output_names, self.session.run(None, feed)))
            return values["logits"], [values[name] for name in self.present_for]
        # OrtValues in and out (IO binding cannot bind `logits_start`, an input with a default), on the
        # C++ session as the classifier runner does: the Python wrapper's per-call checks and
        # wrapping cost a small model more than the copy they save (benchmarks/llm_speed_paths.py).
        wrap, cpu = self._ort.capi._pybind_state.OrtValue.ortvalue_from_numpy, self._cpu
        inputs = {name: wrap(value, cpu) for name, value in feed.items()}  # `feed` keeps the arrays alive through the run
        inputs.update((name, wrap(value, cpu) if isinstance(value, np.ndarray) else value) for name, value in zip(self.past_inputs, past_values))
        values = dict(zip(self.output_names, self.session._sess.run_with_ort_values(inputs, self.output_names, None)))
        return values["logits"].numpy(), [values[name] for name in self.present_for]

    def prefill(self, ids: np.ndarray, last_only: bool = False):
        return self._run(ids, None, 0, last_only)

    def step(self, tokens: np.ndarray, state):
        if self.shares_cache:
            return self._shared_step(tokens, state if isinstance(state, _SharedCache) else self._share(state))
        present, past = state
        return self._run(tokens, present, past, True)

    def _share(self, state) -> _SharedCache:
        """The cache a prefill (or another runtime, load_cache) left, copied once into buffers with room to decode in place."""
        present, past = state
        arrays = [value if isinstance(value, np.ndarray) else value.numpy() for value in present]
        return _SharedCache(self.session, dict(zip(self.past_inputs, arrays)), past, max(self.max_length or past + CACHE_CHUNK, past + 1))

    def _shared_step(self, tokens: np.ndarray, cache: _SharedCache):
        batch, length = tokens.shape
        cache.make_room(cache.used + length)
        feed = token_feed(tokens, cache.used, self.takes_mask, self.takes_positions)
        for name, value in feed.items():
            cache.binding.bind_cpu_input(name, value)
        # the logits go straight into a new array: no OrtValue per output to wrap and read back
        logits = np.empty((batch, length, self.logits_width), dtype=np.float32)
        cache.binding.bind_output("logits", "cpu", 0, np.float32, logits.shape, logits.ctypes.data)
        self.session._sess.run_with_iobinding(cache.binding._iobinding, None)
        cache.used += length
        return logits[:, -1:], cache

    def load_cache(self, keys: list[np.ndarray], values: list[np.ndarray]):
        """Another runtime's KV cache (aiopt.llm.route) in place of a prefill: per layer, keys and values
        (batch, KV heads, cells, head size), this graph's past layout. Returns the state `step` continues from."""
        given = {f"past_key_values.{layer}.{kind}": np.ascontiguousarray(array, dtype=np.float32)
                 for layer, pair in enumerate(zip(keys, values)) for kind, array in zip(("key", "value"), pair)}
        missing = [name for name in self.past_inputs if name not in given]
        if missing:
            raise UnsupportedModelError(f"the handed-over cache has {len(keys)} layers; this graph also takes {', '.join(missing[:2])}")
        return [given[name] for name in self.past_inputs], keys[0].shape[2]

    def kv_cache(self, state) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The cache a prefill or step left, per layer: keys and values (batch, KV heads, cells, head size),
        for another runtime to decode from (aiopt.llm.route)."""
        if isinstance(state, _SharedCache):
            arrays = {name.replace("past_key_values.", "present.", 1): array for name, array in state.filled().items()}
        else:
            present, _past = state
            arrays = {name: value if isinstance(value, np.ndarray) else value.numpy() for name, value in zip(self.present_for, present)}
        return ([arrays[f"present.{layer}.key"] for layer in range(self.shape.layers)],
                [arrays[f"present.{layer}.value"] for layer in range(self.shape.layers)])


CACHE_CHUNK = 256  # tokens a shared cache grows by when no max_length was given


def _attention_ops(onnx_path) -> set[str]:
    """The attention operators of a graph (read without its weights)."""
    import onnx

    graph = onnx.load_model(str(onnx_path), load_external_data=False).graph
    return {node.op_type for node in graph.node if node.op_type in ("GroupQueryAttention", "MultiHeadAttention", "Attention")}


class _SharedCache:
    """One buffer per past_key_values input, (batch, KV heads, capacity, head size), bound both as
    the past input and as the present output: GroupQueryAttention sees the same memory on both
    sides and appends each step's keys and values in place. `used` counts the filled cells.
    A step from this state moves it on (the buffer is written in place): decode from a state once."""

    def __init__(self, session, arrays: dict[str, np.ndarray], used: int, capacity: int):
        self.session, self.used = session, used
        self._allocate({name: array[:, :, :used] for name, array in arrays.items()}, capacity)

    def _allocate(self, filled: dict[str, np.ndarray], capacity: int) -> None:
        from onnxruntime import OrtValue

        self.buffers, self.binding, self.capacity = {}, self.session.io_binding(), capacity
        for name, array in filled.items():
            batch, heads, used, size = array.shape
            buffer = np.zeros((batch, heads, capacity, size), dtype=np.float32)
            buffer[:, :, :used] = array
            value = OrtValue.ortvalue_from_numpy(buffer)  # wraps the array's memory: GroupQueryAttention writes into `buffer`
            self.buffers[name] = buffer
            self.binding.bind_ortvalue_input(name, value)
            self.binding.bind_ortvalue_output(name.replace("past_key_values.", "present.", 1), value)

    def make_room(self, cells: int) -> None:
        if cells > self.capacity:
            self._allocate(self.filled(), max(cells, self.capacity + CACHE_CHUNK))

    def filled(self) -> dict[str, np.ndarray]:
        return {name: buffer[:, :, :self.used] for name, buffer in self.buffers.items()}


class OpenVINOCausalLM(OrtCausalLM):
    """The same ONNX export compiled by OpenVINO (FP32 precision hint): inputs and outputs as on
    ONNX Runtime, so the loop is shared. The ONNX Runtime GenAI builder's graph uses
    com.microsoft operators OpenVINO does not read; export with --exporter torch for OpenVINO."""

    runtime = "openvino"

    def __init__(self, onnx_path, shape: Shape, threads: int | None = None, precision: str = "f32", options: dict | None = None):
        ov = optional_import("openvino", "--runtime openvino", "OpenVINO")

        # options: the CPU plugin's compile options an IR from aiopt quantize carries (dynamic quantization...)
        config = {"INFERENCE_PRECISION_HINT": precision, **(options or {}), **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
        try:
            compiled = ov.Core().compile_model(str(onnx_path), "CPU", config)
        except Exception as exc:
            raise UnsupportedModelError(f"OpenVINO cannot compile {onnx_path} ({first_line(exc)}); "
                                        "export with --exporter torch for OpenVINO") from exc
        self.request, self.shape, self.options = compiled.create_infer_request(), shape, config
        self._read_signature(onnx_path, [i.get_any_name() for i in compiled.inputs], [o.get_any_name() for o in compiled.outputs])

    def _feed(self, ids: np.ndarray, past: int, last_only: bool) -> dict:
        feed = super()._feed(ids, past, last_only)
        if self.takes_logits_start:  # an IR's logits_start has no default (recipes_openvino.build_openvino exposes it): always fed
            feed.setdefault(LOGITS_START, np.array([0], dtype=np.int64))
        return feed

    def _infer(self, feed: dict, past_values: list) -> tuple[np.ndarray, list]:  # the loop is OrtCausalLM's
        feed.update(zip(self.past_inputs, past_values))
        results = self.request.infer(feed)
        values = {name: results[index] for index, name in enumerate(self.output_names)}
        return values["logits"], [values[name] for name in self.present_for]


class GenAICausalLM:
    """ONNX Runtime GenAI's own runtime (og.Generator) on a folder its model builder wrote
    (genai_config.json): the KV cache in its shared past/present buffers. Any batch size: the
    prompts go in with one append_tokens; each step hands the generator the tokens this loop
    chose by setting its logits to pick exactly them (set_logits; skipped when they are its own
    greedy choice, most steps of a greedy run), lets it append them (generate_next_token), and
    reads the next logits (get_logits, which runs the model). A graph built with prune_lm_head
    gives a prefill's last position only (last_logits_only).

    One generator serves prompt after prompt (rewind_to(0)) while the batch size and max_length
    stay the same: making one costs 0.25 ms, 7% of a 2.4M-parameter model's prefill at prompt 128,
    and its cache buffers are allocated once. So a prefill retires the previous prompt's state:
    stepping a retired state raises instead of continuing another prompt."""

    runtime = "onnxruntime-genai"

    def __init__(self, folder: Path, shape: Shape, threads: int | None = None):
        import json

        import onnxruntime_genai as og

        config = og.Config(str(folder))
        if threads:
            config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
        self.og, self.model, self.shape = og, og.Model(config), shape
        self.last_logits_only = last_position_logits_only(_graph_logits_dims(Path(folder)))
        self.max_length: int | None = None  # tokens the generator reserves its cache for; generate_ids sets it
        self._kept: tuple | None = None  # ((batch, max_length), generator) for the next prompt to rewind
        self._live: _GenAIState | None = None

    def prefill(self, ids: np.ndarray, last_only: bool = False):
        generator = self._generator(ids.shape[0])
        generator.append_tokens(np.ascontiguousarray(ids, dtype=np.int32))
        logits = generator.get_output("logits")
        self._live = _GenAIState(generator, logits[:, -1].argmax(-1))
        return (logits[:, -1:] if last_only else logits), self._live

    def _generator(self, batch: int):
        """The kept generator rewound to an empty sequence, or a new one where the batch size or
        max_length changed (or rewinding fails)."""
        if self._live is not None:
            self._live.generator = None  # retired: its generator is about to hold another prompt
        key = (batch, self.max_length or self.shape.context_length or 2048)
        if self._kept is not None and self._kept[0] == key:
            try:
                self._kept[1].rewind_to(0)
                return self._kept[1]
            except Exception:  # noqa: BLE001 -- a model GenAI cannot rewind: a new generator, as before
                pass
        self._kept = None  # released before the next one allocates its cache
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=key[1], do_sample=False, batch_size=batch)
        self._kept = (key, self.og.Generator(self.model, params))
        return self._kept[1]

    def step(self, tokens: np.ndarray, state: _GenAIState):
        if state.generator is None:
            raise RuntimeError("this state's generator has since been rewound for another prompt: "
                               "decode from the latest prefill of a GenAICausalLM")
        chosen = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if not np.array_equal(chosen, state.greedy):  # the generator picks the argmax itself (do_sample=False); anything else is forced
            forced = np.full((len(chosen), self.shape.vocab_size), -np.inf, dtype=np.float32)
            forced[np.arange(len(chosen)), chosen] = 0.0
            state.generator.set_logits(forced)
        state.generator.generate_next_token()
        logits = state.generator.get_logits().reshape(len(chosen), 1, -1)
        state.greedy = logits[:, -1].argmax(-1)
        return logits, state


def _graph_logits_dims(folder: Path) -> list:
    """The dimensions of the logits output of the decoder graph a GenAI folder names (ints, or names where dynamic)."""
    import json

    import onnx

    decoder = json.loads((folder / "genai_config.json").read_text(encoding="utf-8")).get("model", {}).get("decoder", {})
    name = Path(str(decoder.get("filename") or ONNX_FILE)).name  # a file inside the folder, never a path out of it
    graph = onnx.load_model(str(folder / name), load_external_data=False).graph
    logits = next((o for o in graph.output if o.name == "logits"), None)
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in logits.type.tensor_type.shape.dim] if logits else []


class _GenAIState:
    """A GenAI generator and the tokens it would pick greedily from its last logits."""

    def __init__(self, generator, greedy: np.ndarray):
        self.generator, self.greedy = generator, greedy
