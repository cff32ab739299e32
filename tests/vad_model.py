"""A small voice-activity detector with the shapes production ones have, built in seconds:
inputs `input [B, N]`, `state [2, B, H]` (batch on axis 1), an int64 scalar `sr` that selects
the network through an ONNX `If`; outputs a speech probability `prob [B, 1]` (sigmoid) and the
next state `stateN [2, B, H]`. Conv front end, LSTM cell.

One conv channel is built 1000x larger than the others and scaled back right after the conv:
FP32 computes the same function, but static INT8, which gives the conv's output activations
one scale for the whole tensor, loses the other channels; the probabilities are centred on
0.5, so decisions flip (and flip more as the damaged state is fed back). Dynamic INT8 leaves
the conv in float and weight-only INT8 quantizes weights per channel: both keep the decisions.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

N, H, OUTLIER = 64, 16, 1000.0


def _module(seed: int = 0):
    import torch
    from torch import nn

    class TinyVAD(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(1, 8, kernel_size=8, stride=4)
            self.proj = nn.Linear(8 * 15, H)
            self.cell = nn.LSTMCell(H, H)
            self.head = nn.Linear(H, 1)
            self.register_buffer("gain", torch.ones(1, 8, 1))

        def forward(self, input, state):
            x = (torch.relu(self.conv(input.unsqueeze(1))) * self.gain).flatten(1)
            x = torch.relu(self.proj(x))
            h, c = self.cell(x, (state[0], state[1]))
            return torch.sigmoid(self.head(h)), torch.stack([h, c])

    torch.manual_seed(seed)
    model = TinyVAD().eval()
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal((512, N)).astype(np.float32))
    with torch.no_grad():
        model.conv.weight[0] *= OUTLIER
        model.conv.bias[0] *= OUTLIER
        model.gain[0, 0] = 1 / OUTLIER  # undone right after the conv: activations with one channel 1000x the others
        model.cell.weight_hh *= 2.0  # the state carries more from chunk to chunk
        p, _ = model(x, torch.zeros(2, 512, H))
        logit = torch.log(p / (1 - p))
        spread, centre = logit.std(), logit.median()
        model.head.weight /= spread  # decisions centred on 0.5, logits of unit spread
        model.head.bias.copy_((model.head.bias - centre) / spread)
    return model


def _branch(core, prefix: str, scale: float):
    from onnx import helper, numpy_helper

    graph = copy.deepcopy(core.graph)
    renamed = {}
    for tensor in graph.initializer:  # weights live inside the branch, as exporters of such models put them
        renamed[tensor.name] = tensor.name = prefix + tensor.name
    for node in graph.node:
        for i, name in enumerate(node.output):
            renamed[name] = node.output[i] = prefix + name
        node.name = prefix + (node.name or node.op_type)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
            elif name == "input" and scale != 1.0:
                node.input[i] = prefix + "scaled"
    nodes, initializers = list(graph.node), list(graph.initializer)
    if scale != 1.0:
        nodes.insert(0, helper.make_node("Mul", ["input", prefix + "k"], [prefix + "scaled"], name=prefix + "scale"))
        initializers.append(numpy_helper.from_array(np.array(scale, np.float32), prefix + "k"))
    outputs = [helper.make_tensor_value_info(renamed[o.name], o.type.tensor_type.elem_type, None) for o in graph.output]
    return helper.make_graph(nodes, prefix + "branch", [], outputs, initializers)


def build_vad(folder: Path, seed: int = 0) -> Path:
    """`folder/vad.onnx` (the If on `sr` around the network), `calib.npz` and `eval.npz`
    (input and state per chunk, the state in the model's layout [2, N, H]); returns the model."""
    import onnx
    import torch
    from onnx import TensorProto, helper, numpy_helper

    model = _module(seed)
    core_path = folder / "vad-core.onnx"
    torch.onnx.export(model, (torch.randn(2, N), torch.zeros(2, 2, H)), str(core_path), input_names=["input", "state"],
                      output_names=["prob", "stateN"], opset_version=17, dynamo=False,
                      dynamic_axes={"input": {0: "batch"}, "state": {1: "batch"}, "prob": {0: "batch"}, "stateN": {1: "batch"}})
    core = onnx.load(str(core_path))
    core_path.unlink()
    cond = helper.make_node("Equal", ["sr", "sr_16k"], ["is_16k"], name="is_16k")
    branch = helper.make_node("If", ["is_16k"], ["prob", "stateN"], name="by_sample_rate",
                              then_branch=_branch(core, "b16k_", 1.0), else_branch=_branch(core, "b8k_", 2.0))
    inputs = [*core.graph.input, helper.make_tensor_value_info("sr", TensorProto.INT64, [])]
    graph = helper.make_graph([cond, branch], "vad", inputs, list(core.graph.output), [numpy_helper.from_array(np.array(16000, np.int64), "sr_16k")])
    wrapped = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    wrapped.ir_version = 8
    onnx.checker.check_model(wrapped, full_check=True)
    path = folder / "vad.onnx"
    onnx.save(wrapped, str(path))
    for name, count, data_seed in (("calib.npz", 256, seed + 1), ("eval.npz", 512, seed + 2)):
        chunks, states = _stream_data(model, count, data_seed)
        np.savez(folder / name, input=chunks, state=states)
    return path


def _stream_data(model, count: int, seed: int, streams: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Chunks with the states the FP32 model had when it reached them (8 streams side by side),
    the state in the model's layout: [2, count, H]."""
    import torch

    rng = np.random.default_rng(seed)
    chunks = rng.standard_normal((count, N)).astype(np.float32)
    states = np.zeros((2, count, H), np.float32)
    state = torch.zeros(2, streams, H)
    steps = count // streams
    with torch.no_grad():
        for t in range(steps):
            rows = np.arange(streams) * steps + t
            states[:, rows] = state.numpy()
            _, state = model(torch.from_numpy(chunks[rows]), state)
    return chunks, states
