"""A causal-LM Hugging Face folder converted to OpenVINO from PyTorch, in the shape OpenVINO's CPU
plugin runs fastest: the graph OpenVINO GenAI runs from an Optimum-Intel export.

Why not the ONNX export: torch.onnx writes attention as MatMul/Softmax (with IsNaN/Select guards),
and OpenVINO reads it back so; OpenVINO's own PyTorch frontend (`openvino.convert_model` on the
traced module) keeps torch's scaled_dot_product_attention as one ScaledDotProductAttention op. On
a stateful model whose cache is read through a Gather by `beam_idx` (as Optimum-Intel builds it),
the CPU plugin fuses ReadValue -> Gather -> Concat -> ScaledDotProductAttention -> Assign into its
attention-with-KV-cache node: the cache lives inside that node (grown in place, in
KV_CACHE_PRECISION), not concatenated and copied at every step. Measured on Qwen2.5-0.5B's
configuration (docs/llm-quantize.md): about twice the decode rate of the ONNX-derived graph.

The model returned is stateful with the inputs
    input_ids, attention_mask, position_ids  (int64, batch x length; the mask batch x past+length)
    beam_idx      int32 (batch): the row of the cache each sequence continues (arange for greedy)
    logits_start  int64 [1]: the first position whose logits are computed; 0 all of them
                  (perplexity), -1 the last one only (a prefill for generation: a 152k vocabulary
                  over 512 positions is ~27% of a 0.5B model's prefill, and OpenVINO GenAI slices too)
and the output `logits`.
"""
from __future__ import annotations

import numpy as np

from aiopt.errors import UnsupportedModelError, first_line
from aiopt.lazy import optional_import
from aiopt.llm.causal_lm import Shape, load_causal_lm
from aiopt.llm.kv_names import LOGITS_START, past_names, present_names
from aiopt.llm.openvino_stateful import BEAM_IDX, make_stateful

TOKEN_INPUTS = ("input_ids", "attention_mask", "position_ids")


def convert_causal_lm(folder) -> tuple[object, Shape]:
    """(stateful openvino.Model in FP32, its Shape) of the causal LM in `folder`."""
    ov = optional_import("openvino", "the OpenVINO candidates", "OpenVINO")
    torch = optional_import("torch", "the OpenVINO candidates", "PyTorch")
    model, config = load_causal_lm(folder)
    shape = Shape.from_config(config)
    past, length = 5, 3  # example lengths: both dynamic in the converted model
    example = (torch.randint(0, shape.vocab_size, (1, length)), torch.ones(1, past + length, dtype=torch.int64),
               torch.arange(past, past + length)[None],
               *[torch.zeros(1, shape.kv_heads, past, shape.head_dim) for _ in range(2 * shape.layers)])
    shapes = [ov.PartialShape([-1, -1])] * 3 + [ov.PartialShape([-1, shape.kv_heads, -1, shape.head_dim])] * (2 * shape.layers)
    try:
        with torch.no_grad():
            converted = ov.convert_model(_traceable(model), example_input=example, input=shapes)
    except Exception as exc:
        raise UnsupportedModelError(f"OpenVINO's PyTorch frontend could not convert {folder} ({first_line(exc)})") from exc
    for port, name in zip(converted.inputs, [*TOKEN_INPUTS, *past_names(shape.layers)]):
        port.get_tensor().set_names({name})
    for port, name in zip(converted.outputs, ["logits", *present_names(shape.layers)]):
        port.get_tensor().set_names({name})
    if not any(op.get_type_name() == "ScaledDotProductAttention" for op in converted.get_ops()):
        raise UnsupportedModelError(f"{folder}'s attention did not convert to OpenVINO's ScaledDotProductAttention "
                                    "(the model does not use torch's scaled_dot_product_attention)")
    add_logits_start(converted)
    add_beam_idx(converted, shape.layers)
    make_stateful(converted, shape.layers)
    return converted, shape


def _traceable(model):
    """(ids, mask, positions, *flat past) -> (logits, *flat present) around a transformers model, the
    cache handed over as a DynamicCache whose layers already hold the past (TorchScript cannot trace
    DynamicCache's lazy empty tensor concatenated with the past). Built here: torch is optional."""
    torch = optional_import("torch", "the OpenVINO candidates", "PyTorch")

    class Traceable(torch.nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids, attention_mask, position_ids, *past):
            from transformers import DynamicCache

            cache = DynamicCache(config=self.lm.config)
            for layer, key, value in zip(cache.layers, past[0::2], past[1::2]):
                layer.lazy_initialization(key, value)
                layer.keys, layer.values = key, value
            out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                          use_cache=True)
            present = []
            for layer in out.past_key_values.layers:
                present += [layer.keys, layer.values]
            return (out.logits, *present)

    return Traceable(model).eval()


def add_logits_start(model) -> None:
    """Slice the hidden states before the output layer from the input `logits_start` (int64 [1])."""
    from openvino import PartialShape, Type, opset13

    node = model.output("logits").get_node().input_value(0).get_node()
    while node.get_type_name() in ("Convert", "Reshape"):
        node = node.input_value(0).get_node()
    if node.get_type_name() != "MatMul":
        raise UnsupportedModelError(f"the logits do not come from a MatMul (found {node.get_type_name()}); cannot slice before the output layer")
    slot = next((i for i in range(2) if node.input_value(i).get_node().get_type_name() != "Constant"
                 and not _from_constants(node.input_value(i).get_node())), None)
    if slot is None:
        raise UnsupportedModelError("the output layer's MatMul has no activation input to slice")
    start = opset13.parameter(PartialShape([1]), Type.i64, name=LOGITS_START)
    start.output(0).get_tensor().set_names({LOGITS_START})
    hidden = node.input_value(slot)
    sliced = opset13.slice(hidden, start, opset13.constant(np.array([np.iinfo(np.int64).max], np.int64)),
                           opset13.constant(np.ones(1, np.int64)), opset13.constant(np.ones(1, np.int64)))
    node.input(slot).replace_source_output(sliced.output(0))
    model.add_parameters([start])
    model.validate_nodes_and_infer_types()


def expose_logits_start(model) -> bool:
    """The ONNX export's `logits_start` (an initializer with a default, which OpenVINO's ONNX reader
    folds into a Constant) made an input again, so a generation prefill on the ONNX graph also
    computes the output layer on the last position only. False where the graph has no such Slice."""
    from openvino import PartialShape, Type, opset13

    found = next((op for op in model.get_ops() if op.get_type_name() == "Slice" and op.get_friendly_name() == f"{LOGITS_START}/Slice"), None)
    if found is None or found.input_value(1).get_node().get_type_name() != "Constant":
        return False
    start = opset13.parameter(PartialShape([1]), Type.i64, name=LOGITS_START)
    start.output(0).get_tensor().set_names({LOGITS_START})
    found.input(1).replace_source_output(start.output(0))
    model.add_parameters([start])
    model.validate_nodes_and_infer_types()
    return True


def _from_constants(node, depth: int = 0) -> bool:
    """A weight: a Constant, or computed from Constants only (a Convert or Transpose of the tied table)."""
    if node.get_type_name() == "Constant":
        return True
    if node.get_type_name() == "Parameter" or depth > 4 or node.get_input_size() == 0:
        return False
    return all(_from_constants(node.input_value(i).get_node(), depth + 1) for i in range(node.get_input_size()))


def add_beam_idx(model, layers: int) -> None:
    """Read every past tensor through Gather(past, beam_idx, axis 0), as Optimum-Intel's export does:
    the CPU plugin's stateful attention fusion matches that Gather (it reorders beams in place)."""
    from openvino import PartialShape, Type, opset13

    beam = opset13.parameter(PartialShape([-1]), Type.i32, name=BEAM_IDX)
    beam.output(0).get_tensor().set_names({BEAM_IDX})
    model.add_parameters([beam])
    for name in past_names(layers):
        port = model.input(name).get_node().output(0)
        consumers = port.get_target_inputs()
        gathered = opset13.gather(port, beam, opset13.constant(np.int64(0)))
        for consumer in consumers:
            consumer.replace_source_output(gathered.output(0))
    model.validate_nodes_and_infer_types()
