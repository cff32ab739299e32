"""What every artifact format shares: the loaded result, the format names, and the one reading of
the aiopt metadata a file carries."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiopt.artifacts.checks import check_artifact_metadata
from aiopt.errors import InputError
from aiopt.specs import TensorSpec, specs_from_json

METADATA_KEY = "aiopt.json"  # extra-file name in TorchScript/.pt2 archives, metadata_props key in ONNX

FORMAT_AIOPT = "aiopt-checkpoint"
FORMAT_TORCHSCRIPT = "torchscript"
FORMAT_EXPORT = "torch-export"
FORMAT_ONNX = "onnx"
FORMAT_PICKLE = "torch-pickle"
FORMAT_HF = "hf-folder"  # a Hugging Face model folder (config.json + safetensors), loaded by artifacts.hf


@dataclass
class LoadedModel:
    """A loaded artifact: the runnable model plus what aiopt knows about it."""

    path: Path
    format: str
    model: Any  # nn.Module, or onnx.ModelProto for ONNX files
    metadata: dict = field(default_factory=dict)
    input_spec: list[TensorSpec] = field(default_factory=list)
    integrity: str | None = None  # ONNX: "ok", "mismatch" or "absent" (checks.integrity_status)

    @property
    def is_torch(self) -> bool:
        return self.format != FORMAT_ONNX


def parse_metadata(text: str | None, path: Path) -> dict:
    """The aiopt metadata embedded in a file, checked: {} when there is none, an InputError when damaged."""
    if not text:
        return {}
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        specs_from_json(data.get("inputs"))
        specs_from_json(data.get("outputs"))
        accuracy = (data.get("metrics") or {}).get("accuracy")
        if accuracy is not None and not isinstance(accuracy, (int, float)):
            raise ValueError("metrics.accuracy is not a number")
        if not isinstance(data.get("lineage", []), list) or not all(isinstance(e, dict) for e in data.get("lineage", [])):
            raise ValueError("lineage is not a list of records")
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise InputError(f"{path}: its aiopt metadata is damaged ({exc}); re-create the file") from exc
    check_artifact_metadata(data, path)  # routes, serving, companions, hf: one check for every reader
    return data
