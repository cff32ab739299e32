"""What a loaded model takes and gives: its input spec (given by the user, merged with the file's,
required), its outputs, example inputs and its parameter count, whatever the format."""
from __future__ import annotations

from aiopt.artifacts.base import FORMAT_EXPORT, FORMAT_ONNX, LoadedModel
from aiopt.artifacts.onnx import count_onnx_parameters, onnx_value_specs
from aiopt.errors import InputError, UnsupportedModelError
from aiopt.specs import TensorSpec, specs_from_json


def merge_input_spec(loaded: LoadedModel, given: list[TensorSpec]) -> list[TensorSpec]:
    """A user-given spec fills in a missing one, and must agree with a known one."""
    if not loaded.input_spec:
        return given
    known = loaded.input_spec
    mismatch = len(known) != len(given) or any(
        len(k.shape) != len(g.shape) or any(isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(k.shape[1:], g.shape[1:]))
        for k, g in zip(known, given)
    )
    if mismatch:
        raise InputError(
            f"--input-shape does not match the model: expected {'; '.join(map(str, known))}, got {'; '.join(map(str, given))}"
        )
    return [_merge_one(k, g) for k, g in zip(known, given)]


def _merge_one(known: TensorSpec, given: TensorSpec) -> TensorSpec:
    # a batch the user places where the model has a symbol (state:2xbatchx128) is kept where it is given
    if given.batch_axis is not None and given.batch_axis != known.batch_axis and not isinstance(known.shape[given.batch_axis], int):
        return TensorSpec(known.name, given.shape, known.dtype, known.value)
    # a size the user gives for one of the model's symbolic axes is honoured, not silently replaced
    shape = (known.shape[0], *(g if isinstance(g, int) and not isinstance(k, int) else k for k, g in zip(known.shape[1:], given.shape[1:])))
    return TensorSpec(known.name, shape, known.dtype, known.value)


def require_input_spec(loaded: LoadedModel) -> list[TensorSpec]:
    if not loaded.input_spec:
        raise InputError(f"{loaded.path} carries no input spec; pass --input-shape (e.g. --input-shape 1x40) and --input-dtype if not float32")
    return loaded.input_spec


def count_parameters(loaded: LoadedModel) -> int:
    if loaded.format == FORMAT_ONNX:
        return count_onnx_parameters(loaded.model.graph)
    if "params_count" in loaded.metadata and loaded.format == FORMAT_EXPORT:
        return int(loaded.metadata["params_count"])
    return int(sum(p.numel() for p in loaded.model.parameters()))


def output_spec(loaded: LoadedModel) -> list[TensorSpec]:
    """Outputs from metadata, the ONNX graph, or one run on an example input."""
    if loaded.metadata.get("outputs"):
        return specs_from_json(loaded.metadata["outputs"])
    if loaded.format == FORMAT_ONNX:
        return onnx_value_specs(loaded.model.graph.output)
    if not loaded.input_spec:
        return []
    return probe_outputs(loaded.model, loaded.input_spec)


def example_inputs(spec: list[TensorSpec], batch_size: int = 2, seq_len: int | None = None):
    """One tensor per input: symbolic dims other than batch take `seq_len` (default 1); an
    attention mask is all ones (a real batch is never all padding), other integers zeros."""
    import torch

    tensors = []
    for s in spec:
        dtype = getattr(torch, s.dtype, None)
        if dtype is None:
            raise UnsupportedModelError(f"input {s.name} has dtype {s.dtype}, which aiopt cannot make example data for")
        shape = s.concrete_shape(batch_size, seq_len or 1)
        fill = torch.ones if s.name == "attention_mask" else torch.zeros
        tensors.append(torch.randn(shape).to(dtype) if dtype.is_floating_point else fill(shape, dtype=dtype))
    return tuple(tensors)


def probe_outputs(module, spec: list[TensorSpec]) -> list[TensorSpec]:
    import torch

    with torch.no_grad():
        try:
            outputs = module(*example_inputs(spec))
        except Exception as exc:
            raise InputError(
                f"the model rejected an example input of {'; '.join(map(str, spec))} ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); check --input-shape"
            ) from exc
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    # Neutral names: a name such as "logits" would claim the output is class scores, which
    # decides how quality is judged (measure/quality.py); nothing here knows that.
    return [TensorSpec(f"output_{i}", ("batch", *o.shape[1:]), str(o.dtype).removeprefix("torch.")) for i, o in enumerate(outputs)]
