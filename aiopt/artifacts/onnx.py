"""An ONNX model, with aiopt's metadata in metadata_props["aiopt.json"], sealed by a checksum of its
graph and weights (checks.integrity_record) that load() verifies. It is the fallback format: any
file that is neither a zip archive nor a pickle is read as ONNX, and refused if it does not parse.

save_onnx_artifact is the one writer of an aiopt ONNX artifact (export, quantize and its companion
files): metadata with the file's own lineage entry, checksum embedded last, saved atomically."""
from __future__ import annotations

import json
import os
from pathlib import Path

from aiopt.artifacts.base import FORMAT_ONNX, METADATA_KEY, LoadedModel, parse_metadata
from aiopt.artifacts.checks import check_integrity, integrity_record, integrity_status
from aiopt.artifacts.lineage import with_own_lineage
from aiopt.artifacts.probe import Probe
from aiopt.errors import InputError, UnsafeFileError, first_line
from aiopt.fileio import atomic_path
from aiopt.specs import TensorSpec, name_the_batch, specs_from_json


def sniff(probe: Probe) -> bool:
    return not probe.is_dir and not probe.is_zip


def load(probe: Probe, trust_pickle: bool = False, verify_integrity: bool = True) -> LoadedModel:
    import onnx

    path = probe.path
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:
        raise InputError(f"{path} is not a valid checkpoint or ONNX model (it could not be parsed: {type(exc).__name__}); re-create or re-copy it") from exc
    if not model.graph.node or not model.opset_import or model.ir_version <= 0:
        raise InputError(f"{path} is not a valid checkpoint or ONNX model (no graph found); re-create or re-copy it")
    _check_external_data(model, path)
    try:
        # By path, so external data resolves against the model's folder, not the working directory.
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, ValueError, OSError) as exc:
        raise InputError(f"{path} is not a valid ONNX model ({first_line(exc)})") from exc
    props = {p.key: p.value for p in model.metadata_props}
    metadata = parse_metadata(props.get(METADATA_KEY), path)
    # before external data is read in: the checksum was taken over the model as saved
    integrity = (check_integrity if verify_integrity else integrity_status)(model, metadata, path, METADATA_KEY)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in _all_tensors(model)):
        onnx.load_external_data_for_model(model, str(path.parent))
    spec = specs_from_json(metadata.get("inputs")) or onnx_input_spec(model)
    return LoadedModel(path, FORMAT_ONNX, model, metadata, spec, integrity)


def _check_external_data(model, path: Path) -> None:
    """External tensor files must stay inside the model's folder: never read a file the model names elsewhere."""
    import onnx

    folder = path.parent.resolve()
    for tensor in _all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if not location or os.path.isabs(location) or not target.is_relative_to(folder):
            raise UnsafeFileError(f"{path}: tensor {tensor.name!r} points to external data {location!r} outside the model's folder; refused")
        if not target.is_file():
            raise InputError(f"{path}: external data file {location!r} for tensor {tensor.name!r} is missing; copy it next to the model")


def _all_tensors(model):
    """Every tensor of the model: initializers, attribute tensors and those in subgraphs."""
    from onnx.external_data_helper import _get_all_tensors

    return list(_get_all_tensors(model))


ONNX_DTYPES = {1: "float32", 10: "float16", 16: "bfloat16", 11: "float64", 7: "int64", 6: "int32", 9: "bool", 2: "uint8", 3: "int8"}


def onnx_value_specs(values, skip: set[str] = frozenset()) -> list[TensorSpec]:
    specs = []
    for value in values:
        if value.name in skip:
            continue
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim)
        specs.append(TensorSpec(value.name, dims, ONNX_DTYPES.get(tensor.elem_type, f"onnx:{tensor.elem_type}")))
    return specs


def onnx_input_spec(model) -> list[TensorSpec]:
    """The graph's inputs (initializers listed as inputs are weights, not inputs), the first axis named batch."""
    return name_the_batch(onnx_value_specs(model.graph.input, skip={t.name for t in model.graph.initializer}))


def count_onnx_parameters(graph) -> int:
    """Elements of the constant tensors a graph holds: initializers, Constant nodes (exporters
    that fold weights into the graph write them there) and both of these inside the subgraphs of
    If/Loop/Scan nodes (a model whose network sits in If branches)."""
    import onnx

    count = sum(_elements(t.dims) for t in graph.initializer)
    count += sum(_elements(t.values.dims) for t in graph.sparse_initializer)
    for node in graph.node:
        for attribute in node.attribute:
            if node.op_type == "Constant" and attribute.type == onnx.AttributeProto.TENSOR:
                count += _elements(attribute.t.dims)
            elif node.op_type == "Constant" and attribute.type in (onnx.AttributeProto.FLOATS, onnx.AttributeProto.INTS):
                count += len(attribute.floats) + len(attribute.ints)
            elif attribute.type == onnx.AttributeProto.GRAPH:
                count += count_onnx_parameters(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                count += sum(count_onnx_parameters(g) for g in attribute.graphs)
    return count


def _elements(dims) -> int:
    count = 1
    for dim in dims:
        count *= int(dim)
    return count


def embed_metadata(model, metadata: dict) -> None:
    """Store aiopt's metadata in the model, with the checksum of its graph and weights (computed
    without this entry), which load_model checks: a file changed since is refused. Call it last,
    right before saving."""
    for prop in list(model.metadata_props):
        if prop.key == METADATA_KEY:
            model.metadata_props.remove(prop)
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps({**metadata, "integrity": integrity_record(model, METADATA_KEY)}))


def save_onnx_artifact(model, metadata: dict, path: str | os.PathLike, write_to: str | os.PathLike | None = None) -> Path:
    """Write `model` as the aiopt artifact `path`: `metadata` with the artifact's own lineage entry
    and the checksum embedded, saved atomically. `write_to` is a temporary file the caller already
    holds for `path` (fileio.atomic_path) and publishes itself."""
    import onnx

    path = Path(path)
    embed_metadata(model, with_own_lineage(metadata, path))
    if write_to is not None:
        onnx.save_model(model, str(write_to))
        return path
    with atomic_path(path) as tmp:
        onnx.save_model(model, str(tmp))
    return path
