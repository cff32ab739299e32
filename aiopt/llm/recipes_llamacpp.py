"""llama.cpp candidates (GGUF Q8_0 / Q4_0 / Q4_K_M, run by llama-cpp-python) and the runner that
drives a GGUF through aiopt's generate loop.

How a GGUF is made from a causal-LM Hugging Face folder (Llama or Qwen2 architecture):
1. the F32 GGUF is written with the `gguf` package's GGUFWriter (llama.cpp's own Python writer):
   the hyper-parameters, the byte-level BPE vocabulary and merges of tokenizer.json, and every
   tensor under llama.cpp's name (gguf's own tensor-name map), the Llama q/k rows permuted into
   llama.cpp's rotary layout exactly as convert_hf_to_gguf.py does;
2. it is quantized by llama.cpp's own quantizer (`llama_model_quantize`, the library call behind
   `llama-quantize`) through llama-cpp-python's binding.
Why not convert_hf_to_gguf.py: neither llama-cpp-python's wheel nor the `gguf` package ships it
(it needs a llama.cpp checkout), and it refuses every BPE tokenizer whose pre-tokenizer hash is not
in its table of published models, which includes every tokenizer trained here (gpt:tiny/base).

Absent llama-cpp-python or gguf, each candidate is a skipped row with the install line, and
`--backend llamacpp` is exit 4 with it.
"""
from __future__ import annotations

import ctypes
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aiopt.errors import InputError, MissingDependencyError, UnsupportedModelError
from aiopt.lazy import optional_import
from aiopt.llm import llamacpp_cache
from aiopt.llm.causal_lm import Shape, load_causal_lm, read_config
from aiopt.folder_io import METADATA_FILE, read_metadata

INSTALL = "pip install 'aiopt[llamacpp]'  (llama-cpp-python and gguf; builds llama.cpp from source, 10+ minutes)"
GGUF_TYPES = ("Q8_0", "Q4_0", "Q4_K_M")
GGUF_FILE = "model.gguf"
# architecture in config.json -> (llama.cpp's architecture, its pre-tokenizer name, q/k permuted for llama.cpp's rotary layout)
ARCHITECTURES = {"LlamaForCausalLM": ("llama", "gpt-2", True), "Qwen2ForCausalLM": ("qwen2", "qwen2", False)}
ROTARY_PERMUTED = {arch: permuted for arch, _pre, permuted in ARCHITECTURES.values()}  # by the GGUF's general.architecture


@dataclass(frozen=True)
class LlamaCppRecipe:
    name: str
    gguf_type: str

    runtime = "llamacpp"
    precision = "f32"

    def describe(self) -> str:
        return f"llama.cpp GGUF {self.gguf_type} (llama_model_quantize on an F32 GGUF)"


def llamacpp_recipes() -> list[LlamaCppRecipe]:
    return [LlamaCppRecipe(f"llamacpp-{t.lower()}", t) for t in GGUF_TYPES]


def llamacpp_missing(hf_folder=None) -> str | None:
    """Why llama.cpp candidates cannot be built here from hf_folder (None: they can be tried)."""
    for module, label in (("llama_cpp", "llama-cpp-python"), ("gguf", "gguf")):
        try:
            __import__(module)
        except ImportError:
            return f"{label} is not installed; run: {INSTALL}"
    if hf_folder is None or not (Path(hf_folder) / "config.json").is_file():
        return "a GGUF is written from the Hugging Face folder; quantize the folder rather than its ONNX export"
    architecture = (read_config(hf_folder).get("architectures") or ["?"])[0]
    if architecture not in ARCHITECTURES:
        return f"aiopt writes GGUF for {', '.join(ARCHITECTURES)} folders, not {architecture}"
    return None


def require_llamacpp() -> None:
    for module in ("llama_cpp", "gguf"):
        try:
            __import__(module)
        except ImportError as exc:
            raise MissingDependencyError(f"--backend llamacpp needs llama-cpp-python and gguf; run: {INSTALL}") from exc


def write_f32_gguf(hf_folder, path: Path) -> Path:
    """The folder's weights and tokenizer as an F32 GGUF that llama.cpp loads."""
    gguf = optional_import("gguf", "writing a GGUF", "gguf")
    config = read_config(hf_folder)
    arch, pre, permute = ARCHITECTURES[(config.get("architectures") or ["?"])[0]]
    if config.get("rope_scaling"):
        raise UnsupportedModelError("the folder's config has rope_scaling, which aiopt's GGUF writer does not carry over")
    model, _ = load_causal_lm(hf_folder)
    shape = Shape.from_config(config)
    tensors = {name: value.detach().float().numpy() for name, value in model.state_dict().items()}
    del model
    if config.get("tie_word_embeddings", True):
        tensors.pop("lm_head.weight", None)  # llama.cpp uses token_embd as the output layer when output.weight is absent
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA if arch == "llama" else gguf.MODEL_ARCH.QWEN2, shape.layers)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(Path(hf_folder).resolve().name)
    writer.add_context_length(int(config.get("max_position_embeddings") or 2048))
    writer.add_embedding_length(shape.hidden_size)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_rope_freq_base(float(config.get("rope_theta") or (config.get("rope_parameters") or {}).get("rope_theta") or 10000.0))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    _add_tokenizer(writer, gguf, hf_folder, config, shape.vocab_size, pre)
    for name, value in tensors.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise UnsupportedModelError(f"no GGUF name for the tensor {name}; aiopt's GGUF writer knows Llama and Qwen2 layouts only")
        if permute and name.endswith(("q_proj.weight", "k_proj.weight")):
            value = _permute(value, shape.heads, shape.heads if "q_proj" in name else shape.kv_heads)
        writer.add_tensor(target, np.ascontiguousarray(value, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _permute(weights: np.ndarray, heads: int, kv_heads: int) -> np.ndarray:
    """HF's rotate-half rows -> llama.cpp's interleaved pairs (convert_hf_to_gguf.py's LlamaModel.permute)."""
    n = kv_heads if kv_heads != heads else heads
    return weights.reshape(n, 2, weights.shape[0] // n // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _add_tokenizer(writer, gguf, hf_folder, config: dict, vocab_size: int, pre: str) -> None:
    """A byte-level BPE tokenizer.json as llama.cpp's `gpt2` tokenizer model, padded to the embedding rows."""
    file = Path(hf_folder) / "tokenizer.json"
    if not file.is_file():
        raise UnsupportedModelError(f"{hf_folder} has no tokenizer.json (a byte-level BPE tokenizer), which the GGUF needs")
    document = json.loads(file.read_text(encoding="utf-8"))
    model = document.get("model") or {}
    if model.get("type") != "BPE":
        raise UnsupportedModelError(f"{file} is a {model.get('type')} tokenizer; aiopt writes GGUF for byte-level BPE tokenizers only")
    vocab = dict(model["vocab"])
    special = {t["content"]: t["id"] for t in document.get("added_tokens", [])}
    vocab.update(special)
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [gguf.TokenType.UNUSED] * vocab_size
    for token, index in vocab.items():
        if index < vocab_size:
            tokens[index] = token
            types[index] = gguf.TokenType.CONTROL if token in special else gguf.TokenType.NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    eos = config.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) else eos
    if eos is not None:
        writer.add_eos_token_id(int(eos))
    bos = config.get("bos_token_id")
    if bos is not None:
        writer.add_bos_token_id(int(bos))
    writer.add_add_bos_token(False)  # aiopt feeds token ids itself, tokenized as the HF tokenizer does


def quantize_gguf(f32_gguf: Path, target: Path, gguf_type: str, threads: int | None = None) -> Path:
    """llama.cpp's own quantizer (llama_model_quantize) from the F32 GGUF to gguf_type."""
    llama_cpp = optional_import("llama_cpp", "llama.cpp candidates", "llama-cpp-python")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{gguf_type}")
    params.nthread = threads or 0
    target.parent.mkdir(parents=True, exist_ok=True)
    code = llama_cpp.llama_model_quantize(str(f32_gguf).encode(), str(target).encode(), ctypes.byref(params))
    if code != 0 or not target.is_file():
        raise UnsupportedModelError(f"llama.cpp's quantizer failed to write {gguf_type} (code {code})")
    return target


def build_llamacpp(recipe: LlamaCppRecipe, hf_folder, target: Path, f32_gguf: Path, threads: int | None = None) -> Path:
    """target/model.gguf; the F32 GGUF (shared by the llama.cpp recipes) is written on first use."""
    if not f32_gguf.is_file():
        f32_gguf.parent.mkdir(parents=True, exist_ok=True)
        write_f32_gguf(hf_folder, f32_gguf)
    return quantize_gguf(f32_gguf, target / GGUF_FILE, recipe.gguf_type, threads)


class LlamaCppCausalLM:
    """A GGUF on llama.cpp through llama-cpp-python, behind aiopt's runner interface (prefill/step)
    at any batch size: batch b runs b sequences (seq ids 0..b-1) in one llama.cpp context made for
    b sequences (a KV cache of the model's context for each), kept per batch size and made on
    first use; batch 1 uses the context llama-cpp-python's Llama made. The KV cache lives in the
    context: the state is the number of tokens each sequence holds, and a prefill clears it.
    Logits are read from the context after each decode; a generation prefill asks llama.cpp for
    each sequence's last position only, as llama.cpp's own loop does."""

    runtime = "llamacpp"

    def __init__(self, gguf_path, shape: Shape, threads: int | None = None):
        llama_cpp = optional_import("llama_cpp", "a GGUF model", "llama-cpp-python")
        self.context = shape.context_length or 2048
        self._llama_cpp, self.shape = llama_cpp, shape
        self.llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=self.context, n_batch=self.context, n_ubatch=min(self.context, 512),
                                   n_threads=threads, n_threads_batch=threads, logits_all=False, verbose=False)
        self.vocab = self.llm.n_vocab()
        self._contexts = {1: (self.llm._ctx, self.llm._batch)}  # llama-cpp-python's own context and batch: Llama.eval without its copies
        self._layouts: dict[int, llamacpp_cache.CacheLayout] = {}

    def _context(self, batch: int):
        if batch not in self._contexts:
            from llama_cpp import _internals  # llama-cpp-python's context and batch wrappers, as Llama itself builds them

            params = type(self.llm.context_params).from_buffer_copy(self.llm.context_params)  # the same settings (threads, ...) ...
            params.n_seq_max, params.kv_unified, params.n_ctx = batch, False, batch * self.context  # ... for `batch` sequences, a cache each
            params.n_batch, params.n_outputs_max_per_seq = batch * self.context, self.context  # every position's logits, for scoring
            context = _internals.LlamaContext(model=self.llm._model, params=params, verbose=False)
            self._contexts[batch] = (context, _internals.LlamaBatch(n_tokens=batch * self.context, embd=0, n_seq_max=batch, verbose=False))
        return self._contexts[batch]

    def _decode(self, ids: np.ndarray, past: int, all_logits: bool) -> np.ndarray:
        """Decode `ids` (batch x length), sequence b at positions past.. in seq id b; logits (batch, length or 1, vocab)."""
        rows, length = ids.shape
        context, batch = self._context(rows)
        llama_batch = batch.batch
        llama_batch.n_tokens = rows * length
        for b in range(rows):
            for t in range(length):
                i = b * length + t
                llama_batch.token[i], llama_batch.pos[i] = int(ids[b, t]), past + t
                llama_batch.seq_id[i][0], llama_batch.n_seq_id[i] = b, 1
                llama_batch.logits[i] = all_logits or t == length - 1
        context.decode(batch)
        kept = length if all_logits else 1
        logits = np.ctypeslib.as_array(self._llama_cpp.llama_get_logits(context.ctx), shape=(rows * kept, self.vocab))
        return logits.reshape(rows, kept, self.vocab).copy()

    def prefill(self, ids: np.ndarray, last_only: bool = False):
        ids = np.atleast_2d(ids)
        if ids.shape[1] > self.context:
            raise InputError(f"a prompt of {ids.shape[1]} tokens exceeds the context of {self.context}")
        # new sequences: clear every sequence's cache (llama-cpp-python's kv_cache_seq_rm(-1, ...) clears seq 0 only)
        self._llama_cpp.llama_memory_clear(self._context(ids.shape[0])[0].memory, True)
        return self._decode(ids, 0, not last_only), ids.shape[1]

    def step(self, tokens: np.ndarray, state):
        tokens = np.asarray(tokens).reshape(-1, 1)
        return self._decode(tokens, state, False), state + 1

    def load_cache(self, keys: list[np.ndarray], values: list[np.ndarray]) -> int:
        """Put a KV cache computed by another runtime into llama.cpp (aiopt.llm.llamacpp_cache) in place
        of a prefill: per layer, keys and values (batch, kv_heads, cells, head_dim) as Hugging Face
        computes them; sequence b gets row b. Returns the state `step` continues from (the cells held)."""
        architecture = self.llm.metadata.get("general.architecture")
        if architecture not in ROTARY_PERMUTED:
            raise UnsupportedModelError(f"a KV cache is handed to llama.cpp for {', '.join(ROTARY_PERMUTED)} GGUFs, not {architecture}")
        rows, cells = keys[0].shape[0], keys[0].shape[2]
        context, _ = self._context(rows)
        layout = self._layout(rows)
        self._llama_cpp.llama_memory_clear(context.memory, True)
        for b in range(rows):
            state = llamacpp_cache.build(layout, [llamacpp_cache.hf_to_llamacpp_keys(k[b], ROTARY_PERMUTED[architecture]) for k in keys],
                                         [llamacpp_cache.hf_to_llamacpp_values(v[b]) for v in values])
            llamacpp_cache.write_sequence(self._llama_cpp, context.ctx, b, state)
        return cells

    def _layout(self, rows: int) -> llamacpp_cache.CacheLayout:
        """The cache layout of the context for `rows` sequences, read from the state of a one-token sequence."""
        if rows not in self._layouts:
            self._llama_cpp.llama_memory_clear(self._context(rows)[0].memory, True)
            self._decode(np.zeros((rows, 1), dtype=np.int64), 0, False)
            self._layouts[rows] = llamacpp_cache.read_sequence(self._llama_cpp, self._context(rows)[0].ctx, 0).layout
        return self._layouts[rows]


def is_gguf(path) -> bool:
    path = Path(path)
    return path.suffix == ".gguf" and path.is_file() or path.is_dir() and (path / GGUF_FILE).is_file() and not (path / "config.json").is_file()


def open_gguf(path, threads: int | None = None, runtime: str | None = None):
    """(runner, tokenizer folder, metadata) for a folder aiopt quantize wrote with a llama.cpp winner
    (model.gguf + tokenizer + aiopt.json), or its model.gguf. A GGUF from elsewhere has no
    tokenizer folder aiopt reads: one line naming llama-cpp-python's own server."""
    path = Path(path)
    gguf_file = path / GGUF_FILE if path.is_dir() else path
    optional_import("llama_cpp", f"{gguf_file} (a GGUF model, which runs on llama.cpp)", "llama-cpp-python")
    if runtime not in (None, "llamacpp"):
        raise InputError(f"{gguf_file} is a GGUF model; it runs on --runtime llamacpp only")
    metadata = read_metadata(gguf_file.parent)
    kv = metadata.get("kv_cache")
    if not kv or metadata.get("runtime") != "llamacpp" or not (gguf_file.parent / "tokenizer.json").is_file():
        raise UnsupportedModelError(f"{gguf_file} is a GGUF without aiopt's metadata and tokenizer beside it (no {METADATA_FILE} from aiopt "
                                    "quantize); run it with llama-cpp-python: python -m llama_cpp.server --model FILE")
    shape = Shape.from_kv_cache(kv, gguf_file.parent / METADATA_FILE)
    return LlamaCppCausalLM(gguf_file, shape, threads), gguf_file.parent, metadata
