"""Run two artifacts on the same inputs and report how closely they agree."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from aiopt import runtime
from aiopt.artifacts import load_model
from aiopt.artifacts.hf import sample_inputs
from aiopt.errors import InputError
from aiopt.evaluate import EvalData, accuracy, eval_data, run_batches
from aiopt.measure.quality import choose_metric, compare_one, compare_outputs, judge_outputs
from aiopt.options import DEVICE_HELP, SEQ_LEN_HELP, option
from aiopt.specs import TensorSpec, parse_fixed_inputs, to_sample_first, with_fixed_values


@dataclass(frozen=True)
class CompareConfig:
    """What `aiopt compare` is asked beside the two artifacts (compare_artifacts' settings)."""
    data: str | None = option(None, "--data", "Inputs: .npz, .txt (one text per line), mnist1d or digits (default: the reference's test split, else random).")
    device: str = option("cpu", "--device", DEVICE_HELP)
    seq_len: int = option(128, "--seq-len", SEQ_LEN_HELP)
    fixed_inputs: tuple[str, ...] = option((), "--input", "NAME=VALUE: an input that always takes one value (e.g. --input sr=16000), fed to both.",
                                           cli_default=None)


def compare_artifacts(
    reference: str | os.PathLike,
    candidate: str | os.PathLike,
    data: str | os.PathLike | None = None,
    backend_reference: str | None = None,
    backend_candidate: str | None = None,
    input_spec: list[TensorSpec] | None = None,
    samples: int = 256,
    trust_pickle: bool = False,
    device: str = "cpu",
    seq_len: int = 128,
    fixed_inputs: tuple[str, ...] = (),
) -> dict:
    """Max abs/rel difference, top-1 agreement and cosine similarity of `candidate` against `reference`.

    Inputs: `data` (.npz, .txt for a Hugging Face model, or a built-in dataset name), else the test
    split the reference was trained on, else `samples` random inputs drawn from the input spec
    (sequence axes `seq_len` long).
    """
    if str(reference).endswith(runtime.ENGINE_SUFFIXES):
        first, metadata = runtime.load(reference, device, backend_reference), {}
    else:  # loaded once, for its Runner and its metadata
        loaded = load_model(reference, trust_pickle=trust_pickle, input_spec=input_spec)
        fixed = parse_fixed_inputs(fixed_inputs)
        loaded.input_spec = with_fixed_values(loaded.input_spec, fixed)
        first, metadata = runtime.runner_for(loaded, device, backend_reference), loaded.metadata
    if str(candidate).endswith(runtime.ENGINE_SUFFIXES) or str(reference).endswith(runtime.ENGINE_SUFFIXES):
        second = runtime.load(candidate, device=device, backend=backend_candidate, input_spec=input_spec or first.input_spec, trust_pickle=trust_pickle)
    else:  # the reference's full spec (fixed inputs included) describes a candidate that carries none
        other = load_model(candidate, trust_pickle=trust_pickle, input_spec=input_spec or loaded.input_spec)
        other.input_spec = with_fixed_values(other.input_spec, {k: v for k, v in fixed.items() if k in {s.name for s in other.input_spec}})
        second = runtime.runner_for(other, device, backend_candidate)
    inputs = _inputs(first.input_spec, metadata, data, samples, seq_len)
    ref_out, cand_out = run_batches(first, inputs), run_batches(second, inputs)
    result = {
        "reference": {"path": str(reference), "backend": first.backend},
        "candidate": {"path": str(candidate), "backend": second.backend},
        "inputs": inputs.source,
        "samples": len(inputs),
        "outputs": {name: compare_outputs(r, c) for name, r, c in zip(first.output_names, ref_out, cand_out)},
        "notes": list(inputs.notes),
    }
    # each output judged by what it is: a probability map by flips and whole-tensor cosine, never top-1 over a spatial axis
    judges = judge_outputs(metadata, [TensorSpec(n, ()) for n in first.output_names], ref_out, inputs.labels is not None)
    for judge, r, c in zip(judges, ref_out, cand_out):
        if judge.kind != "class":
            result["outputs"][judge.name].pop("top1_agreement", None)
        result["outputs"][judge.name]["judged"] = compare_one(r, c, judge)
        result["outputs"][judge.name]["judged"]["why"] = judge.why
    # which figure says "equal" depends on what the output is: top-1 for class scores, cosine otherwise
    metric, why = choose_metric(metadata, first.output_names[0], ref_out[0].shape, inputs.labels is not None)
    result["metric"] = {"name": metric, "why": why}
    if inputs.labels is not None:
        result["reference"]["accuracy"] = accuracy(ref_out[0], inputs.labels)
        result["candidate"]["accuracy"] = accuracy(cand_out[0], inputs.labels)
    return result


def _inputs(spec: list[TensorSpec], metadata: dict, data, samples: int, seq_len: int) -> EvalData:
    try:
        return eval_data(spec, metadata, data, seq_len=seq_len)
    except InputError:
        if data is not None:
            raise
    if "hf" in metadata:  # token ids within the vocabulary, with padding: zeros would be all padding
        return EvalData(sample_inputs(spec, metadata, samples, seq_len), None, f"{samples} random token batches (seed 0)")
    rng = np.random.default_rng(0)
    arrays = {}
    for s in spec:
        if s.value is not None:  # fixed inputs are fed by the Runner
            continue
        shape = s.concrete_shape(samples, seq_len)
        array = rng.standard_normal(shape).astype(s.dtype) if s.dtype.startswith("float") else np.zeros(shape, s.dtype)
        arrays[s.name] = to_sample_first(array, s)  # held sample-first; a state 2 x batch x 128 has its samples on axis 1
    return EvalData(arrays, None, f"{samples} random samples (seed 0)")
