"""Stateful models measured as they run: each stream feeds back the state its own model
returned, chunk after chunk, as a streaming server runs it (a quantized model's error in the
state compounds over a stream; chunk by chunk from fresh states it does not show).

State pairs (`--state IN=OUT`) are found from names and shapes where they match
(`state`->`stateN`, `h0`->`hn`, `state_in`->`state_out`, `past_x`->`present_x`).
"""
from __future__ import annotations

import re

import numpy as np

from aiopt.errors import InputError
from aiopt.specs import to_model_layout

MAX_STREAMS = 4
MIN_STEPS = 8

_IN_AFFIX = re.compile(r"^(?:(?:in|prev|past|old|input)_)?(?P<stem>.+?)(?:_?(?:in|0|prev|input))?$")
_OUT_AFFIX = re.compile(r"^(?:(?:out|next|new|present|output)_)?(?P<stem>.+?)(?:_?(?:out|n|N|next|new|1|output))?$")


def _stems(name: str, pattern: re.Pattern) -> set[str]:
    stems = {name.lower()}
    match = pattern.match(name)
    if match:
        stems.add(match.group("stem").lower())
    return stems


def _same_shape(a, b) -> bool:
    """Sizes equal, symbols on the same axes and equal (the batch may be named otherwise on an
    output; an unnamed dim, "?", fits anything): a KV cache's `past_seq` -> `present_seq` grows,
    it is not a state fed back as is."""
    return len(a) == len(b) and all(
        x == y if isinstance(x, int) and isinstance(y, int) else
        "?" in (x, y) or (isinstance(x, str) and isinstance(y, str) and (x == y or "batch" in (x, y)))
        for x, y in zip(a, b))


def detect_state_pairs(input_spec, output_spec) -> dict[str, str]:
    """input name -> output name for every input that an output of the same shape feeds back."""
    pairs = {}
    taken = set()
    for spec in input_spec:
        if getattr(spec, "value", None) is not None or not spec.shape:
            continue
        for out in output_spec:
            if out.name in taken or out.name == spec.name or not _same_shape(spec.shape, out.shape) or out.dtype != spec.dtype:
                continue
            if _stems(spec.name, _IN_AFFIX) & _stems(out.name, _OUT_AFFIX):
                pairs[spec.name] = out.name
                taken.add(out.name)
                break
    return pairs


def parse_state_pairs(values, input_spec, output_spec) -> dict[str, str]:
    """`--state IN=OUT` values, checked against the model; none given: detected."""
    if not values:
        return detect_state_pairs(input_spec, output_spec)
    inputs = {s.name: s for s in input_spec}
    outputs = {s.name: s for s in output_spec}
    pairs = {}
    for value in values:
        name, _, out = value.partition("=")
        if not name or not out:
            raise InputError(f"--state {value!r} is malformed; write INPUT=OUTPUT, e.g. --state state=stateN")
        if name not in inputs or out not in outputs:
            missing = f"input {name!r}" if name not in inputs else f"output {out!r}"
            raise InputError(f"--state {value!r}: the model has no {missing} (inputs: {', '.join(inputs)}; outputs: {', '.join(outputs)})")
        if not _same_shape(inputs[name].shape, outputs[out].shape):
            raise InputError(f"--state {value!r}: input shape {inputs[name].shape} and output shape {outputs[out].shape} differ")
        pairs[name] = out
    return pairs


def stream_plan(samples: int) -> tuple[int, int]:
    """(streams, steps): a few streams run side by side, each as long as the data allows."""
    streams = max(1, min(MAX_STREAMS, samples // (4 * MIN_STEPS)))
    return streams, samples // streams


def run_streams(runner, data, pairs: dict[str, str]) -> dict[str, np.ndarray]:
    """Every output of `runner` over `data` run as streams: sample `s * steps + t` is chunk `t`
    of stream `s`; the states start at zero and each step feeds back the state it returned.
    Returns outputs by name, the chunks of all steps concatenated on the sample axis."""
    streams, steps = stream_plan(len(data))
    if steps < 2:
        raise InputError(f"the streaming check needs at least 2 chunks per stream; the data holds {len(data)} samples")
    specs = {s.name: s for s in runner.input_spec}
    state = {name: np.zeros(specs[name].concrete_shape(streams), dtype=specs[name].dtype) for name in pairs}
    collected: dict[str, list[np.ndarray]] = {}
    rows = np.arange(streams) * steps
    for t in range(steps):
        feed = {name: to_model_layout(array[rows + t], specs[name]).astype(specs[name].dtype, copy=False)
                for name, array in data.inputs.items() if name in specs and name not in pairs}
        outputs = runner({**feed, **state})
        state = {name: outputs[out] for name, out in pairs.items()}
        for name, value in outputs.items():
            collected.setdefault(name, []).append(value)
    return {name: np.concatenate([np.atleast_1d(v) for v in values]) for name, values in collected.items()}
