"""`aiopt export --format torch-cuda`: a GPU artifact that removes launch overhead.

These models are launch-bound on a GPU (../shared/gpu-notes.md: tens of microseconds per kernel
launch, far more than the math at small batch), so the lever is running the whole forward as one
replayed CUDA graph, not precision alone. The artifact is a `torch.export` program (`.pt2`):
  - reduced precision inside, float32 at the edges: the module casts its input to fp16/bf16 and
    its output back, LayerNorm runs in float32 (export/torch_precision.py), attention goes
    through scaled_dot_product_attention whose fused kernels accumulate the softmax in float32;
  - a dynamic batch dim up to the largest bucket, and the buckets in its metadata: on CUDA the
    Runner compiles the program once per bucket and captures each as a CUDA graph
    (runtime/cuda_graph.py); a batch pads up to the smallest bucket that holds it, a batch above
    the largest is refused;
  - lineage, precision and the measured agreement with the FP32 parent in aiopt's metadata
    (extra file `aiopt.json`, as for every .pt2 aiopt writes).
Export and validation run on CUDA when there is one, else on the CPU (the program is the same;
the CPU has fp16/bf16 kernels for these models, slowly): everything but the graph capture is
testable without a GPU.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aiopt.artifacts import METADATA_KEY, child_metadata, example_inputs, load_model, output_spec, require_input_spec, with_own_lineage
from aiopt.data import DATASETS
from aiopt.errors import InputError, UnsupportedModelError
from aiopt.evaluate import accuracy, eval_data
from aiopt.fileio import atomic_path, check_output_path, write_with
from aiopt.measure.quality import check_against_parent
from aiopt.options import option
# How an artifact's buckets are read lives with the runtime (below this layer); re-exported here
from aiopt.runtime.buckets import REEXPORT_HINT, bucket_for, buckets_of  # noqa: F401
from aiopt.runtime.torch_backend import torch_device

PRECISIONS = ("fp32", "fp16", "bf16")
DEFAULT_BUCKETS = (1, 256)
# Above this accuracy cost (on the test split) the export says so and suggests --precision fp32.
WARN_ACCURACY_DROP = 0.005
# What a Runner of this artifact tells a user whose batch is outside its buckets.



@dataclass(frozen=True)
class TorchCudaConfig:
    # one --precision on `aiopt export` sets this and TensorRTConfig.precision: its help is declared there
    precision: str = option("fp16", "--precision", "fp32, fp16 or bf16.")
    batch_sizes: tuple[int, ...] = option(DEFAULT_BUCKETS, ("--batch-size", "-b"), "torch-cuda: batch buckets compiled and captured on load (repeatable; default 1 and 256).", cli_default=None)
    device: str | None = option(None, "--device", "torch-cuda: export and validate on cpu or cuda (default: cuda when present).")


def validate(config: TorchCudaConfig) -> None:
    if config.precision not in PRECISIONS:
        raise InputError(f"unknown --precision {config.precision!r} for --format torch-cuda; choose one of {', '.join(PRECISIONS)}")
    if not config.batch_sizes or min(config.batch_sizes) < 1:
        raise InputError(f"--batch-size values must be at least 1, got {list(config.batch_sizes)}")








def export_torch_cuda(source: str | os.PathLike, output: str | os.PathLike, config: TorchCudaConfig = TorchCudaConfig(),
                      force: bool = False, trust_pickle: bool = False, input_spec=None) -> dict:
    import torch

    from aiopt.export.torch_precision import cast_to  # its modules subclass torch's nn.Module: torch at its top

    validate(config)
    out = check_output_path(output, source, force=force)
    loaded = load_model(source, trust_pickle=trust_pickle, input_spec=input_spec)
    if not loaded.is_torch:
        raise InputError(f"{source} is ONNX; --format torch-cuda exports PyTorch models (aiopt checkpoints, TorchScript, .pt2)")
    spec = require_input_spec(loaded)
    if len(spec) != 1:
        raise InputError(f"--format torch-cuda handles single-input models; {source} has {len(spec)} inputs (use --format onnx)")
    if any(s.dtype != "float32" for s in spec):
        raise InputError("--format torch-cuda handles float32 inputs (it casts them to the export precision inside)")
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_device(device)  # --device cuda without a GPU: exit 4 here
    buckets = tuple(sorted(set(config.batch_sizes)))
    parent = loaded.model.eval()
    module = parent if config.precision == "fp32" else cast_to(parent, config.precision)
    module = module.to(device).eval()
    example = tuple(t.to(device) for t in example_inputs(spec, batch_size=min(2, buckets[-1])))
    batch = torch.export.Dim("batch", min=1, max=max(buckets[-1], 2))
    dynamic = tuple({0: batch} if s.shape and s.shape[0] == "batch" else None for s in spec)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. the LSTM's flat weights "assigned during export": harmless here
            program = torch.export.export(module, example, dynamic_shapes=dynamic)
    except Exception as exc:
        raise UnsupportedModelError(f"torch.export could not capture the model: {str(exc).splitlines()[0][:300]}") from exc
    check = _against_parent(parent.to(device), program.module(), spec, loaded.metadata, device, buckets[-1])
    metadata = child_metadata(
        loaded, "export", format="torch-export",
        inputs=[s.to_dict() for s in spec], outputs=[o.to_dict() for o in output_spec(loaded)],
        torch_cuda={"precision": config.precision, "batch_sizes": list(buckets), "exported_on": device,
                    "torch_version": torch.__version__, "float32_ops": ["LayerNorm", "softmax (fused attention)"]},
        metrics=check.pop("metrics") or loaded.metadata.get("metrics"),
        agreement_with_parent=check["agreement"],
    )
    with atomic_path(out) as tmp:
        extra = {METADATA_KEY: json.dumps(with_own_lineage(metadata, out))}
        write_with(tmp, lambda fh: torch.export.save(program, fh, extra_files=extra))
    return {"path": str(out), "precision": config.precision, "batch_sizes": list(buckets), "exported_on": device, **check}


def _against_parent(parent, candidate, spec, metadata: dict, device: str, max_batch: int) -> dict:
    """Accuracy and agreement of the exported program against the FP32 parent on the test split
    (random inputs when the model records no dataset). NaN or collapse raises; a large accuracy
    cost is reported with the FP32 fallback suggested."""
    known = ((metadata.get("dataset") or {}).get("name")) in DATASETS
    data = eval_data(spec, metadata) if known else None
    inputs = data.inputs[spec[0].name] if known else np.random.default_rng(0).standard_normal((64, *spec[0].shape[1:])).astype("float32")
    reference, exported = _logits(parent, inputs, device, max_batch), _logits(candidate, inputs, device, max_batch)
    agreement = {**check_against_parent(reference, exported, "the exported program"), "inputs": "test split" if known else "random"}
    result = {"agreement": agreement, "metrics": None}
    if known and data.labels is not None:
        before, after = accuracy(reference, data.labels), accuracy(exported, data.labels)
        result["metrics"] = {"accuracy": after, "split": "test", "measured_on": f"torch ({device})"}
        result.update(accuracy=after, parent_accuracy=before)
        if before - after > WARN_ACCURACY_DROP:
            warnings.warn(f"reduced precision costs {100 * (before - after):.1f} points of accuracy ({before:.4f} -> {after:.4f}); "
                          "--precision fp32 keeps the parent's accuracy")
    return result


def _logits(module, inputs, device: str, batch_size: int = 256):
    import torch

    chunks = []
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(inputs[start:start + batch_size])).to(device)
            chunks.append(module(chunk).float().cpu().numpy())
    return np.concatenate(chunks)


def default_output(source: str | os.PathLike, precision: str) -> Path:
    source = Path(source)
    return source.with_name(f"{source.name.removesuffix(source.suffix)}.cuda-{precision}.pt2")
