"""Save and load every artifact format aiopt reads; detect the format from the content.

Formats, by what the file holds (never by its name), one module each with `sniff` and `load`,
tried in the order of registry.FORMATS:
- hf: a Hugging Face model folder (config.json + safetensors weights, often a tokenizer).
- torch_export: a torch.export program (.pt2), with aiopt metadata in the extra file `aiopt.json`.
- torchscript: a TorchScript archive (torch.jit), with aiopt metadata in the extra file `aiopt.json`.
- checkpoint: the aiopt checkpoint, a torch zip archive holding {"aiopt_format", "metadata" (JSON
  text), "state_dict"}; loads with torch.load(weights_only=True) and is rebuilt by the builder its
  architecture registered with aiopt.architectures (aiopt.reference_models registers its own).
- torch_pickle: a legacy torch.save file or a raw pickle. Unpickling a module runs code, so it is
  refused unless the caller passes trust_pickle=True (pickles.py).
- onnx: an ONNX model, with aiopt metadata in metadata_props["aiopt.json"] (sealed by a checksum).

Beside them: probe (what sniffers read), lineage (the metadata a step writes), files (an
artifact's files, checksum, size, copy), signature (inputs, outputs, parameters), checks (one
validation of what is read from a file). This module is the package's public surface.
"""
from __future__ import annotations

from aiopt.artifacts.base import (
    FORMAT_AIOPT,
    FORMAT_EXPORT,
    FORMAT_HF,
    FORMAT_ONNX,
    FORMAT_PICKLE,
    FORMAT_TORCHSCRIPT,
    METADATA_KEY,
    LoadedModel,
)
from aiopt.artifacts.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, save_checkpoint
from aiopt.artifacts.files import artifact_files, artifact_sha256, artifact_size, copy_artifact, route_path
from aiopt.artifacts.lineage import child_metadata, command_line, lineage_entry, now_iso, parent_record, with_own_lineage
from aiopt.artifacts.onnx import ONNX_DTYPES, count_onnx_parameters, embed_metadata, onnx_value_specs, save_onnx_artifact
from aiopt.artifacts.registry import FORMATS, load_model
from aiopt.artifacts.signature import count_parameters, example_inputs, output_spec, probe_outputs, require_input_spec

__all__ = [
    "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "FORMATS", "FORMAT_AIOPT", "FORMAT_EXPORT", "FORMAT_HF", "FORMAT_ONNX", "FORMAT_PICKLE",
    "FORMAT_TORCHSCRIPT", "METADATA_KEY", "ONNX_DTYPES", "LoadedModel", "artifact_files", "artifact_sha256", "artifact_size",
    "child_metadata", "command_line", "copy_artifact", "count_onnx_parameters", "count_parameters", "embed_metadata",
    "example_inputs", "lineage_entry", "load_model", "now_iso", "onnx_value_specs", "output_spec", "parent_record", "probe_outputs",
    "require_input_spec", "route_path", "save_checkpoint",
    "save_onnx_artifact", "with_own_lineage",
]
