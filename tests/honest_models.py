"""Models with the shapes of real detectors, built in the tests (offline, in milliseconds)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def dense_map_detector(path: Path, channels: int = 24, seed: int = 0) -> Path:
    """A DBNet-style text detector: conv net over [batch, 3, H, W] images with dynamic H and W,
    a per-pixel probability map out ([batch, 1, H, W], sigmoid), every weight a Constant node
    (no initializers, as some exporters write them)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes = []

    def constant(name: str, array: np.ndarray) -> str:
        nodes.append(helper.make_node("Constant", [], [name], name=f"{name}_const", value=numpy_helper.from_array(array.astype(np.float32), name)))
        return name

    previous, width = "image", 3
    for index, out in enumerate((channels, channels, channels)):
        weight = constant(f"conv{index}.weight", rng.normal(0, (2 / (9 * width)) ** 0.5, (out, width, 3, 3)))
        bias = constant(f"conv{index}.bias", rng.normal(0, 0.05, out))
        nodes.append(helper.make_node("Conv", [previous, weight, bias], [f"conv{index}"], name=f"conv{index}", pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"conv{index}"], [f"relu{index}"], name=f"relu{index}"))
        previous, width = f"relu{index}", out
    head = constant("head.weight", rng.normal(0, (1 / width) ** 0.5, (1, width, 1, 1)))
    head_bias = constant("head.bias", np.zeros(1))
    nodes.append(helper.make_node("Conv", [previous, head, head_bias], ["logits"], name="head"))
    nodes.append(helper.make_node("Sigmoid", ["logits"], ["prob_map"], name="sigmoid"))
    graph = helper.make_graph(nodes, "detector", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
                              [helper.make_tensor_value_info("prob_map", TensorProto.FLOAT, ["batch", 1, "height", "width"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def detector_images(path: Path, samples: int = 48, size: int = 32, seed: int = 1) -> Path:
    """Image-like inputs for the detector (smooth blobs, not white noise), as an .npz."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (samples, 3, size // 4, size // 4)).astype(np.float32)
    x = np.repeat(np.repeat(x, 4, axis=2), 4, axis=3)  # blocks of 4x4 pixels
    np.savez(path, image=x)
    return path
