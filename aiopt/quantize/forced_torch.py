"""`aiopt quantize --backend torch`: the model's own PyTorch module at reduced precision
(recipes/torch.py), measured against its parent and saved as TorchScript with aiopt's metadata."""
from __future__ import annotations

import io
from pathlib import Path

import torch

from aiopt.artifacts import child_metadata, example_inputs, output_spec, with_own_lineage
from aiopt.errors import InputError
from aiopt.fileio import atomic_path
from aiopt.quantize.against_parent import measure_against_parent
from aiopt.quantize.config import QuantizeConfig, QuantizeResult
from aiopt.quantize.prepare import evaluation_data
from aiopt.quantize.recipes import torch as torch_quant
from aiopt.runtime.torch_backend import TorchRunner


def quantize_torch(loaded, spec, config: QuantizeConfig, method: str, reason: str, out: Path) -> QuantizeResult:

    if not loaded.is_torch:
        raise InputError(f"--backend torch needs a PyTorch artifact; {loaded.path} is ONNX (use --backend onnxruntime)")
    outputs = output_spec(loaded)
    names = [o.name for o in outputs]
    scripted = torch_quant.to_torchscript(torch_quant.reduce_precision(loaded.model, method), example_inputs(spec, 2))
    data = evaluation_data(spec, loaded.metadata, config.data, seq_len=config.seq_len)
    report = {
        "backend": "torch",
        **measure_against_parent(TorchRunner(loaded.model, spec, names, config.device), TorchRunner(scripted, spec, names, config.device), data, spec,
                                 config.latency_batch, f"the {method} model", loaded.metadata),
        "fp32_size_bytes": Path(loaded.path).stat().st_size,
        "method": method, "reason": reason, "per_channel": False,
        "layers": "Linear, LSTM" if method == "dynamic" else "all (LayerNorm in float32)",
        "torch_version": torch.__version__,
    }
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    report["size_bytes"] = buffer.getbuffer().nbytes
    metadata = child_metadata(
        loaded, "quantize", format="torchscript",
        inputs=[s.to_dict() for s in spec], outputs=[o.to_dict() for o in outputs],
        quantization={k: v for k, v in report.items() if k != "latency"},
        metrics={"accuracy": report["accuracy"], "split": "test", "measured_on": "torch"} if report["accuracy"] is not None else loaded.metadata.get("metrics"),
        agreement_with_parent=report["agreement_with_parent"],
    )
    with atomic_path(out) as tmp:
        torch_quant.save_torchscript(scripted, with_own_lineage(metadata, out), tmp)
    return QuantizeResult(str(out), method, reason, metadata, report)
