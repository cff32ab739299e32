"""The one writer of `aiopt quantize`'s ONNX result, for the forced recipe and the measured choice:
the graph checked, the quantize step's metadata (lineage, inputs and outputs, what was measured)
embedded, one atomic write. A by-batch choice writes its companion files the same way, first.
"""
from __future__ import annotations

from pathlib import Path

from aiopt.artifacts import child_metadata, onnx_value_specs, save_onnx_artifact
from aiopt.export.onnx import check_onnx
from aiopt.fileio import check_output_path, sha256_file
from aiopt.quantize.candidates import Candidate


def write_onnx(graph, out: Path, loaded, **fields) -> dict:
    """`graph` (a path, or an onnx.ModelProto already checked) at `out`, with the metadata of a
    child of `loaded` made by the quantize step (`fields` added) embedded. Returns the metadata."""
    import onnx

    model = graph if isinstance(graph, onnx.ModelProto) else check_onnx(graph)
    metadata = child_metadata(loaded, "quantize", **fields)
    save_onnx_artifact(model, metadata, out)
    return metadata


def write_forced(result: Path, out: Path, loaded, spec, report: dict) -> None:
    """The forced recipe's graph (measured on ONNX Runtime) at `out`."""
    model = check_onnx(result)
    accuracy = report.get("accuracy")
    report["_metadata"] = write_onnx(
        model, out, loaded,
        format="onnx",
        inputs=[s.to_dict() for s in spec],
        outputs=[o.to_dict() for o in onnx_value_specs(model.graph.output)],
        quantization={k: v for k, v in report.items() if k not in ("latency",)},
        metrics={"accuracy": accuracy, "split": "test", "measured_on": "onnxruntime"} if accuracy is not None else loaded.metadata.get("metrics"),
        agreement_with_parent=report["agreement_with_parent"],
    )


def _compact(selection: dict, metric: str) -> dict:
    """What the artifact keeps of the choice (the full record is in the command's report): a
    small model must not double in size from its own metadata."""
    key = {"accuracy": "accuracy", "agreement": "top1_agreement", "cosine": "mean_cosine"}.get(metric)
    rows = [{"name": c["name"], "runtime": c["runtime"], "size_bytes": c["size_bytes"], **({metric: (c["quality"] or {}).get(key)} if key else {}),
             **({"outputs": _verdicts(c["quality"])} if (c["quality"] or {}).get("outputs") else {}),
             "p50_ms": c["latency_ms"], "problem": c["problem"]} for c in selection["candidates"]]
    return {**{k: v for k, v in selection.items() if k != "candidates"}, "candidates": rows}


def _verdicts(quality: dict) -> dict:
    """Each output's kind, figures and verdict, chunk by chunk and (stateful models) streaming."""
    streaming = (quality.get("streaming") or {}).get("outputs", {})
    return {name: {**{k: v for k, v in figures.items() if k != "finite"},
                   **({"streaming": {k: v for k, v in streaming[name].items() if k not in ("finite", "kind")}} if name in streaming else {})}
            for name, figures in quality["outputs"].items()}


def write_chosen(chosen: Candidate, out: Path, loaded, spec, report: dict, inputs: tuple, force: bool) -> None:
    """The chosen file at `out`, its metadata embedded; a by-batch choice whose routes use other
    graphs writes each as a companion file beside it first (`OUT-STEM.upto-bN.onnx`), named with
    its sha256 in the main file's routes."""
    model = check_onnx(chosen.path)
    quality = report["quality"]
    metrics = ({"accuracy": quality["accuracy"], "split": "test", "measured_on": chosen.runtime} if quality.get("accuracy") is not None
               else loaded.metadata.get("metrics"))
    routes = chosen.recipe.get("dispatch")
    # one companion per graph other than the main file's (two routes may share one: e.g. two thread counts)
    first_route = {}
    for route in routes or []:
        if Path(route["path"]) != chosen.path:
            first_route.setdefault(route["path"], route)
    companions = [(route, out.with_name(f"{out.name.removesuffix('.onnx')}.upto-b{route['max_batch']}.onnx")) for route in first_route.values()]
    for _, target in companions:  # all refused before any is written
        check_output_path(target, *inputs, force=force)
    common = dict(format="onnx", quality_metric=report["metric"], inputs=[s.to_dict() for s in spec],
                  outputs=[o.to_dict() for o in onnx_value_specs(model.graph.output)])
    files = {}
    for route, target in companions:
        write_onnx(route["path"], target, loaded, runtime=route["runtime"], serving=route["serving"], companion_of=out.name,
                   serves_batches_up_to=route["max_batch"], recipe=route["candidate"], **common)
        files[route["path"]] = {"file": target.name, "sha256": sha256_file(target)}
    if routes:
        # the routes as the artifact records them: companion file names, never this run's work paths
        routes = [{**{k: v for k, v in route.items() if k != "path"}, **files.get(route["path"], {})} for route in routes]
        report["recipe"] = {**report["recipe"], "dispatch": routes}
        report["files"] = [out.name, *(f["file"] for f in files.values())]
    # the main file alone serves as its own (last) route does; a by-batch choice's own serving (padding trim) applies to every route
    main_serving = {**routes[-1]["serving"], **chosen.serving} if routes else chosen.serving
    serving = {"runtime": routes[-1]["runtime"] if routes else chosen.runtime, **({"dispatch": routes} if routes else {})}
    if main_serving:
        serving["serving"] = main_serving
    try:
        report["_metadata"] = write_onnx(model, out, loaded, **serving, **common,
                                         quantization={k: v for k, v in report.items() if k not in ("latency", "selection")},
                                         selection=_compact(report["selection"], report["metric"]), metrics=metrics, agreement_with_parent=quality)
    except BaseException:  # no companion without its main file
        for _, target in companions:
            target.unlink(missing_ok=True)
        raise
