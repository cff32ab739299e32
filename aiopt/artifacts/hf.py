"""Hugging Face model folders as inputs: config.json, safetensors weights and (often) a tokenizer.

A folder loads as a LoadedModel whose `.model` is a torch module that takes the tokenizer's
inputs in a fixed order (input_ids, attention_mask, token_type_ids where the model uses them;
int64, batch x seq) and returns one tensor:
- a sentence-transformers folder (modules.json with a Pooling module): the pooled sentence
  embedding ("sentence_embedding"), L2-normalised when a Normalize module is listed;
- an architecture ending in ForSequenceClassification: "logits";
- anything else: the encoder's "last_hidden_state".
The metadata's "hf" entry names the folder (for its tokenizer), the task and the model type, so
later steps can tokenize text and pick the quality metric (cosine for embedding/features,
accuracy or agreement for classification).

transformers is imported inside the functions that need it (the `aiopt[hf]` extra), and so are
torch and numpy: this format sits in the artifact registry, which `import aiopt` loads. Weights load
from safetensors only; pickled `.bin` weights need the trust_pickle opt-in, and code shipped in a
folder (trust_remote_code) is never run.
"""
from __future__ import annotations

import functools
import inspect
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiopt.artifacts.base import FORMAT_HF, LoadedModel
from aiopt.artifacts.checks import check_hf_config, check_safetensors
from aiopt.artifacts.probe import Probe
from aiopt.errors import InputError, MissingDependencyError, UnsafeFileError, UnsupportedModelError, first_line
from aiopt.specs import TensorSpec, specs_to_json

if TYPE_CHECKING:  # annotations only: torch and numpy load when a folder does
    import numpy as np
    import torch

INSTALL_HINT = "pip install 'aiopt[hf]'"
INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model")
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# sentence-transformers modules rebuilt here; any other module (Dense, ...) would change the output
_SENTENCE_MODULES = ("Transformer", "Pooling", "Normalize")
_POOLING_MODES = {"mean_tokens": "mean", "cls_token": "cls", "max_tokens": "max"}


def sniff(probe: Probe) -> bool:
    return probe.is_dir  # probe() let only a folder with a config.json through


def load(probe: Probe, trust_pickle: bool = False, verify_integrity: bool = True) -> LoadedModel:
    return load_hf_folder(probe.path, trust_pickle)


def is_hf_folder(path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "config.json").is_file()


def import_transformers():
    """transformers, quiet: its progress bars and load reports would interleave with ours."""
    try:
        import transformers
    except ImportError as exc:
        raise MissingDependencyError(f"Hugging Face model folders need transformers; run: {INSTALL_HINT}") from exc
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def known_model_types(transformers) -> set[str]:
    """The model types transformers builds from its own code (any other needs the folder's code)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return set(CONFIG_MAPPING_NAMES)


def has_tokenizer(folder) -> bool:
    return any((Path(folder) / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer(folder):
    """The folder's tokenizer; an InputError when the folder has none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"the model's Hugging Face folder {folder} (recorded in its metadata) no longer exists; "
                         "pass token ids as .npz, or keep the folder where it was")
    if not has_tokenizer(folder):
        raise InputError(f"{folder} has no tokenizer ({' or '.join(TOKENIZER_FILES[:3])}), so text cannot be tokenized; "
                         "save one into the folder (tokenizer.save_pretrained) or pass token ids as .npz")
    transformers = import_transformers()
    try:
        # trust_remote_code=False: never the code of a tokenizer_config.json's auto_map, and no prompt on the terminal
        return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except Exception as exc:
        raise InputError(f"{folder}: its tokenizer files cannot be loaded ({first_line(exc)}); re-save the tokenizer") from exc


def load_hf_folder(path, trust_pickle: bool = False) -> LoadedModel:
    """Load a Hugging Face folder (see the module docstring for what the model returns)."""
    folder = Path(path).resolve()
    config_json = read_json(folder / "config.json")
    if not isinstance(config_json, dict):
        raise InputError(f"{folder / 'config.json'} is not a JSON object; re-save the folder with save_pretrained")
    use_safetensors = check_weights(folder, trust_pickle)
    transformers = import_transformers()
    check_hf_config(folder, config_json, known_model_types(transformers))
    head = _sentence_head(folder)
    architecture = (config_json.get("architectures") or [None])[0]
    task = "embedding" if head else "classification" if str(architecture).endswith("ForSequenceClassification") else "features"
    model = _load_transformer(transformers, folder, task, use_safetensors)
    tokenizer = load_tokenizer(folder) if has_tokenizer(folder) else None
    input_names = _input_names(model, tokenizer)
    pooling, normalize = head or (None, False)
    output = "logits" if task == "classification" else "last_hidden_state"
    module = hf_module_class()(model, input_names, output, pooling, normalize).eval()
    inputs = [TensorSpec(name, ("batch", "seq"), "int64") for name in input_names]
    outputs = [_output_spec(module, inputs, task, getattr(model.config, "vocab_size", None))]
    hf = {
        "folder": str(folder),
        "model_type": model.config.model_type,
        "architecture": architecture or type(model).__name__,
        "task": task,
        "tokenizer": tokenizer is not None,
        "pooling": pooling,
        "normalize": normalize,
        "weights": "safetensors" if use_safetensors else "pytorch-bin",
        "max_length": getattr(model.config, "max_position_embeddings", None),
        "vocab_size": getattr(model.config, "vocab_size", None),
        "transformers_version": transformers.__version__,
    }
    metadata = {"format": FORMAT_HF, "step": "import", "architecture": hf["architecture"], "inputs": specs_to_json(inputs),
                "outputs": specs_to_json(outputs), "hf": hf}
    return LoadedModel(folder, FORMAT_HF, module, metadata, inputs)


@functools.cache
def hf_module_class() -> type:
    """HFModule, a torch.nn.Module: made on the first load of a folder, so that importing this
    module (which `import aiopt` does, through the artifact registry) does not import torch."""
    import torch

    class HFModule(torch.nn.Module):
        """A transformers model as a function of positional int64 tensors returning one tensor:
        what torch.export, the ONNX exporter and the Runners expect."""

        def __init__(self, model, input_names: list[str], output: str, pooling: str | None, normalize: bool):
            super().__init__()
            self.model, self.input_names, self.output = model, list(input_names), output
            self.pooling, self.normalize = pooling, normalize

        # Named parameters, not *inputs: torch.export matches dynamic shapes to the signature. The
        # tensors map to self.input_names by position (a model may take fewer than three).
        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
            features = dict(zip(self.input_names, (input_ids, attention_mask, token_type_ids)))
            result = self.model(**features)
            if self.output == "logits":
                return result.logits
            hidden = result.last_hidden_state
            if self.pooling is None:
                return hidden
            return pool(hidden, features.get("attention_mask"), self.pooling, self.normalize)

    return HFModule


def pool(hidden: torch.Tensor, mask: torch.Tensor | None, mode: str, normalize: bool) -> torch.Tensor:
    """sentence-transformers' Pooling (and Normalize): padding never counts."""
    import torch

    if mode == "cls":
        pooled = hidden[:, 0]
    else:
        weights = (mask if mask is not None else torch.ones(hidden.shape[:2], dtype=torch.int64)).unsqueeze(-1).to(hidden.dtype)
        if mode == "max":
            pooled = hidden.masked_fill(weights == 0, -1e9).max(dim=1).values
        else:
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    if not normalize:
        return pooled
    # F.normalize's math in ops ONNX Runtime's symbolic shape inference (its quantization
    # pre-processing) follows: it loses the shape at F.normalize's Expand and at ReduceL2.
    return pooled / (pooled * pooled).sum(dim=1, keepdim=True).sqrt().clamp(min=1e-12)


def sample_inputs(spec: list[TensorSpec], metadata: dict | None, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Token batches shaped like real ones: random ids within the vocabulary and right padding of
    varied length (row 0 full), so a check exercises the attention mask."""
    import numpy as np

    rng = np.random.default_rng(seed)
    vocab = int(((metadata or {}).get("hf") or {}).get("vocab_size") or 100)
    lengths = np.concatenate([[seq], rng.integers(1, seq + 1, size=batch - 1)]) if batch > 1 else np.array([seq])
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    arrays = {"input_ids": rng.integers(0, vocab, size=(batch, seq)) * mask, "attention_mask": mask,
              "token_type_ids": np.zeros((batch, seq), dtype=np.int64)}
    feed = {}
    for s in spec:
        shape = s.concrete_shape(batch, seq)
        feed[s.name] = arrays[s.name].astype(s.dtype) if s.name in arrays and arrays[s.name].shape == shape else np.zeros(shape, s.dtype)
    return feed


# ---------------------------------------------------------------- loading details

def read_json(path: Path) -> Any:
    """A JSON file of the folder; missing or invalid, one InputError saying so."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError(f"{path} is missing; a model folder needs it") from exc
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is not valid JSON ({first_line(exc)}); re-save the folder with save_pretrained") from exc


def check_weights(folder: Path, trust_pickle: bool) -> bool:
    """True for safetensors weights; pickled weights only with the opt-in (they can run code)."""
    if any(os.path.lexists(folder / name) for name in SAFE_WEIGHTS):
        check_safetensors(folder)
        return True
    pickled = next((name for name in PICKLED_WEIGHTS if (folder / name).is_file()), None)
    if pickled is None:
        raise InputError(f"{folder} has a config.json but no weights (model.safetensors); save the model into it with save_pretrained")
    if not trust_pickle:
        raise UnsafeFileError(
            f"{folder} holds its weights as {pickled}, a pickle that could run code on load, so it was not loaded; "
            "convert it to model.safetensors (save_pretrained), or pass --trust-pickle only if you trust whoever made it"
        )
    return False


def _sentence_head(folder: Path) -> tuple[str, bool] | None:
    """(pooling mode, normalize) for a sentence-transformers folder, None for a plain one."""
    if not (folder / "modules.json").is_file():
        return None
    modules = read_json(folder / "modules.json")
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise InputError(f"{folder / 'modules.json'} is not a list of modules; re-save the folder with sentence-transformers")
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    if "Pooling" not in kinds:
        return None
    unknown = [m.get("type") for m, kind in zip(modules, kinds) if kind not in _SENTENCE_MODULES]
    if unknown:
        raise UnsupportedModelError(f"{folder}: modules.json lists {', '.join(map(str, unknown))}; aiopt rebuilds only the "
                                    f"{', '.join(_SENTENCE_MODULES)} modules of a sentence-transformers folder")
    pooling_dir = folder / str(modules[kinds.index("Pooling")].get("path", ""))
    if not pooling_dir.resolve().is_relative_to(folder.resolve()):
        raise InputError(f"{folder / 'modules.json'} names a Pooling folder outside the model folder; re-save the folder with sentence-transformers")
    config = read_json(pooling_dir / "config.json")
    modes = [mode for key, mode in _POOLING_MODES.items() if config.get(f"pooling_mode_{key}")]
    others = [k for k, v in config.items() if k.startswith("pooling_mode_") and v and k.removeprefix("pooling_mode_") not in _POOLING_MODES]
    if len(modes) != 1 or others:
        raise UnsupportedModelError(f"{pooling_dir / 'config.json'}: pooling {', '.join(modes + others) or 'none'} is not supported; "
                                    "aiopt rebuilds exactly one of mean, cls or max pooling")
    return modes[0], "Normalize" in kinds


def _load_transformer(transformers, folder: Path, task: str, use_safetensors: bool):
    auto = transformers.AutoModelForSequenceClassification if task == "classification" else transformers.AutoModel
    try:
        model, info = auto.from_pretrained(str(folder), local_files_only=True, use_safetensors=use_safetensors, trust_remote_code=False,
                                           output_loading_info=True, **float32_kwargs(transformers))
    except Exception as exc:  # noqa: BLE001 -- config validation, model construction: any failure means this folder cannot be built
        text = str(exc)
        if "trust_remote_code" in text or "custom code" in text:
            raise UnsupportedModelError(f"{folder} needs Python code shipped with it (trust_remote_code), which aiopt does not run") from exc
        if "Unrecognized" in text or "does not recognize" in text or "model_type" in text:
            raise UnsupportedModelError(f"{folder}: transformers does not know this model type ({first_line(exc)}); upgrade transformers") from exc
        raise InputError(f"{folder} cannot be loaded as a Hugging Face model ({first_line(exc)}); re-save it with save_pretrained") from exc
    # A head or encoder weight the file lacks would run with random values: refuse. (The pooler of
    # an encoder saved without one is unused by every output here.)
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.split(".")[0] == "pooler" and ".pooler." not in k)
    if missing:
        raise InputError(f"{folder}: the weights lack {len(missing)} tensor(s) the model needs ({', '.join(missing[:3])}); "
                         "the weights do not match config.json: re-save the model with save_pretrained")
    return model.eval()


def float32_kwargs(transformers) -> dict:
    """from_pretrained's keyword to load in float32 whatever dtype the folder was saved in (`dtype` from 4.56 on)."""
    import torch

    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": torch.float32}


def _input_names(model, tokenizer) -> list[str]:
    accepted = inspect.signature(model.forward).parameters
    names = [name for name in INPUT_ORDER if name in accepted]
    if tokenizer is not None:  # what the tokenizer does not produce, the model gets as its default
        produced = set(getattr(tokenizer, "model_input_names", ()) or ())
        names = [name for name in names if name == "input_ids" or name in produced]
    if "input_ids" not in names:
        raise UnsupportedModelError(f"{type(model).__name__} does not take input_ids; aiopt handles token-id models")
    return names


def _output_spec(module, inputs: list[TensorSpec], task: str, vocab_size: int | None) -> TensorSpec:
    """The output's shape from one tiny run: hidden size or label count as the model has them."""
    import torch

    feed = sample_inputs(inputs, {"hf": {"vocab_size": vocab_size}}, batch=1, seq=4)
    with torch.inference_mode():
        try:
            out = module(*(torch.from_numpy(feed[s.name]) for s in inputs))
        except Exception as exc:
            raise UnsupportedModelError(f"the model fails on a sample batch of tokens ({first_line(exc)})") from exc
    if task == "features":
        return TensorSpec("last_hidden_state", ("batch", "seq", *out.shape[2:]), "float32")
    return TensorSpec("sentence_embedding" if task == "embedding" else "logits", ("batch", *out.shape[1:]), "float32")

