"""The KV-cache ONNX export as a stateful OpenVINO model: the past/present pairs become
OpenVINO variables (ReadValue/Assign) that live inside the infer request, so a decode step feeds
only the new token, its mask and its position, and the cache never crosses the Python boundary.

OpenVINO's own conversion does the work (`openvino._offline_transformations.
apply_make_stateful_transformation`, the pass Optimum-Intel's stateful export runs, done here
without Optimum-Intel, which would pull a CUDA torch into the environment). What it leaves to the
caller, as Optimum-Intel's `build_state_initializer` does: each variable's initial value, here
zeros of shape (batch of this call's input_ids, KV heads, 0, head size), so a fresh request
starts with an empty cache at any batch size. Each prefill takes a new infer request: its state
is that sequence batch's cache.

`options` are the CPU plugin's compile options (an IR from aiopt quantize carries them); with
KV_CACHE_PRECISION among them the runner checks the compiled graph keeps its variables in that
precision (`cache_precision`, read from the graph), so a decode step runs through the cache asked for.
"""
from __future__ import annotations

import re

import numpy as np

from aiopt.errors import UnsupportedModelError, first_line
from aiopt.lazy import optional_import
from aiopt.llm.causal_lm import Shape
from aiopt.llm.kv_names import LOGITS_START, past_names, token_feed

RUNTIME = "openvino-stateful"
BEAM_IDX = "beam_idx"  # int32 (batch): the cache row each sequence continues, an input of Optimum-Intel's and aiopt's converted IRs


def make_stateful(model, layers: int):
    """Turn an openvino.Model of the KV-cache export into a stateful one, in place; returns it."""
    from openvino import opset13
    from openvino._offline_transformations import apply_make_stateful_transformation

    names = {name for port in model.inputs for name in port.get_names()}
    pairs = {past: past.replace("past_key_values.", "present.", 1) for past in past_names(layers)}
    if not set(pairs) <= names:
        raise UnsupportedModelError("the model has no past_key_values inputs to make stateful; export the folder with: "
                                    "aiopt export FOLDER --format onnx -o OUT")
    apply_make_stateful_transformation(model, pairs)
    batch = opset13.gather(opset13.shape_of(model.input("input_ids"), output_type="i64"), opset13.constant([0]), opset13.constant(0))
    for op in model.get_ops():
        if op.get_type_name() == "ReadValue":  # (batch, KV heads, past 0, head size): an empty cache for this batch
            dims = [opset13.constant(np.array([d.min_length], np.int64)) for d in op.get_output_partial_shape(0)]
            shape = opset13.concat([batch, *dims[1:]], axis=0)
            op.set_arguments([opset13.broadcast(opset13.constant(0.0, dtype=op.get_output_element_type(0)), shape)])
    model.validate_nodes_and_infer_types()
    return model


def is_stateful(model) -> bool:
    """The model keeps a state (ReadValue ops): made stateful already."""
    return any(op.get_type_name() == "ReadValue" for op in model.get_ops())


def state_precisions(compiled) -> list[str]:
    """The element type each variable of a compiled stateful model is stored in (its MemoryInput
    nodes in the CPU plugin's runtime graph), e.g. ['f32', 'f32'] or ['u8', 'u8']."""
    found = []
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) == "MemoryInput":
            found.append(info["outputPrecisions"].astype(str).lower())
    return found


class OpenVINOStatefulCausalLM:
    """prefill/step over a stateful compile of the KV-cache export (FP32 hint by default)."""

    runtime = RUNTIME

    def __init__(self, onnx_path, shape: Shape, threads: int | None = None, precision: str = "f32", options: dict | None = None):
        ov = optional_import("openvino", "--runtime openvino-stateful", "OpenVINO")
        config = {"INFERENCE_PRECISION_HINT": precision, **(options or {}), **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
        core = ov.Core()
        try:
            model = core.read_model(str(onnx_path))
            if not is_stateful(model):  # the KV-cache ONNX export (or its IR); aiopt.llm.openvino_convert's IR is stateful already
                model = make_stateful(model, shape.layers)
            self.compiled = core.compile_model(model, "CPU", config)
        except UnsupportedModelError:
            raise
        except Exception as exc:
            raise UnsupportedModelError(f"OpenVINO cannot make {onnx_path} stateful ({first_line(exc)}); "
                                        "export with --exporter torch, or use --runtime openvino") from exc
        self.shape, self.options = shape, config
        inputs = {name for port in self.compiled.inputs for name in port.get_names()}
        self.takes_positions, self.takes_mask = "position_ids" in inputs, "attention_mask" in inputs
        self.takes_beam_idx, self.takes_logits_start = BEAM_IDX in inputs, LOGITS_START in inputs
        # the fused attention-with-cache node (graphs read through beam_idx) keeps the cache inside itself, in
        # KV_CACHE_PRECISION, behind MemoryInput nodes that still say f32: the check below reads the unfused graph only
        self.cache_precision = (str(config.get("KV_CACHE_PRECISION", "plugin default")) if self.takes_beam_idx
                                else "/".join(sorted(set(state_precisions(self.compiled)))))
        wanted = config.get("KV_CACHE_PRECISION")
        if wanted and not self.takes_beam_idx and self.cache_precision != str(wanted):
            raise UnsupportedModelError(f"OpenVINO keeps {onnx_path}'s KV cache in {self.cache_precision}, not KV_CACHE_PRECISION={wanted}; "
                                        "open it without that option")

    def _run(self, request, ids: np.ndarray, past: int, last_only: bool):
        feed = token_feed(ids, past, self.takes_mask, self.takes_positions)
        if self.takes_beam_idx:  # each sequence continues its own row of the cache (greedy: no beams)
            feed[BEAM_IDX] = np.arange(ids.shape[0], dtype=np.int32)
        if self.takes_logits_start:  # -1: the output layer on the last position only
            feed[LOGITS_START] = np.array([-1 if last_only else 0], dtype=np.int64)
        request.infer(feed)
        return request.get_tensor("logits").data.copy(), (request, past + ids.shape[1])

    def prefill(self, ids: np.ndarray, last_only: bool = False):
        logits, state = self._run(self.compiled.create_infer_request(), ids, 0, last_only)
        return (logits[:, -1:] if last_only else logits), state

    def step(self, tokens: np.ndarray, state):
        request, past = state
        logits, state = self._run(request, tokens, past, True)
        return logits[:, -1:], state

    def kv_cache(self, state) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The cache in the request's variables, per layer: keys and values (batch, KV heads, cells, head
        size), read with query_state, for another runtime to decode from (aiopt.llm.route)."""
        request, _past = state
        found = {}
        for variable in request.query_state():
            match = _VARIABLE.search(variable.name)
            if match:
                found[(int(match[1]), match[2])] = np.array(variable.state.data, dtype=np.float32)
        missing = [f"{layer}.{kind}" for layer in range(self.shape.layers) for kind in ("key", "value") if (layer, kind) not in found]
        if missing:
            raise UnsupportedModelError(f"the stateful OpenVINO model has no variable for the cache {', '.join(missing[:2])}; "
                                        "it cannot hand its KV cache to another runtime")
        return ([found[(layer, "key")] for layer in range(self.shape.layers)],
                [found[(layer, "value")] for layer in range(self.shape.layers)])


_VARIABLE = re.compile(r"past_key_values\.(\d+)\.(key|value)")  # make_stateful's names: past_key_values.{i}.{kind}present.{i}.{kind}
