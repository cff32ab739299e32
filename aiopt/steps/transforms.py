"""The step functions: each calls its transform in compress/ or export/ and returns
(typed result, the output's metadata, the record of what it measured on what it wrote)."""
from __future__ import annotations

from typing import Any

from aiopt.compress.distill import distill_checkpoint
from aiopt.compress.prune import prune_checkpoint
from aiopt.quantize.run import quantize_artifact
from aiopt.export.onnx import export_onnx
from aiopt.export.tensorrt import export_torch_tensorrt
from aiopt.quantize.tensorrt import export_tensorrt
from aiopt.export.torch_cuda import export_torch_cuda
from aiopt.export.triton import deploy_triton
from aiopt.steps.contract import StepHooks
from aiopt.steps.results import BuiltTensorRT, Deployed, Distilled, ExportedOnnx, ExportedTorchCuda, Pruned, Quantized

Ran = tuple[Any, dict, dict]


def prune(source: str, output: str, config, hooks: StepHooks) -> Ran:
    done = prune_checkpoint(source, output, config, force=hooks.force, on_progress=hooks.say, on_epoch=hooks.on_epoch)
    result = Pruned.from_dict({"path": done.path, **done.report})
    accuracy = result.accuracy_after_finetune if result.accuracy_after_finetune is not None else done.metadata["metrics"]["accuracy"]
    return result, done.metadata, {"accuracy": accuracy, "split": "test", "accuracy_before": result.accuracy_before,
                                   "params": result.params_after, "macs": result.macs_after, "finetune_seconds": result.finetune_seconds}


def distill(source: str, output: str, config, hooks: StepHooks) -> Ran:
    on_epoch = hooks.on_epoch or (lambda phase, stats: hooks.say(f"{phase} epoch {stats.epoch}/{stats.epochs}: loss {stats.loss:.4f}"))
    done = distill_checkpoint(source, output, config, force=hooks.force, on_progress=on_epoch)
    result = Distilled.from_dict({"path": done.path, **done.report})
    return result, done.metadata, {"accuracy": result.student_accuracy, "split": "test", "teacher_accuracy": result.teacher_accuracy,
                                   "params": result.student_params, "train_seconds": result.train_seconds}


def export(source: str, output: str, config, hooks: StepHooks) -> Ran:
    hooks.say(f"exporting {source} to ONNX (opset {config.opset})...")
    done = export_onnx(source, output, config, force=hooks.force, trust_pickle=hooks.trust_pickle, input_spec=hooks.input_spec)
    result = ExportedOnnx.from_dict({"path": done.path, "exporter": done.exporter, "opset": done.opset, "nodes_exported": done.nodes_before,
                                     "nodes_simplified": done.nodes_after, "validation": done.validation, "accuracy": done.accuracy})
    return result, done.metadata, {"accuracy": result.accuracy, "split": "test" if result.accuracy is not None else None,
                                   "validation": result.validation}


def _tensorrt_step(build):
    def run(source: str, output: str, config, hooks: StepHooks) -> Ran:
        result = BuiltTensorRT.from_dict(build(source, output, config, force=hooks.force, trust_pickle=hooks.trust_pickle, input_spec=hooks.input_spec))
        # the engine's metadata lives in its sidecar; the lineage names the step and the file
        return result, {"step": "export"}, {"precision": result.precision, "tensorrt_version": result.tensorrt_version}
    return run


export_tensorrt_step = _tensorrt_step(export_tensorrt)
export_torch_tensorrt_step = _tensorrt_step(export_torch_tensorrt)


def export_torch_cuda_step(source: str, output: str, config, hooks: StepHooks) -> Ran:
    result = ExportedTorchCuda.from_dict(export_torch_cuda(source, output, config, force=hooks.force, trust_pickle=hooks.trust_pickle,
                                                           input_spec=hooks.input_spec))
    return result, {"step": "export", "metrics": {"accuracy": result.accuracy}}, {
        "accuracy": result.accuracy, "split": "test" if result.accuracy is not None else None, "parent_accuracy": result.parent_accuracy}


def deploy(source: str, output: str, config, hooks: StepHooks) -> Ran:
    result = Deployed.from_dict(deploy_triton(source, output, config, force=hooks.force))
    return result, {"step": "deploy"}, {"platform": result.platform, "max_batch_size": result.max_batch_size}


def quantize(source: str, output: str | None, config, hooks: StepHooks) -> Ran:
    done = quantize_artifact(source, output, config, force=hooks.force, trust_pickle=hooks.trust_pickle, input_spec=hooks.input_spec,
                             on_progress=hooks.say)
    result = Quantized.from_dict({"path": done.path, **done.report})  # the report names its method and reason
    return result, done.metadata, {"runtime": done.metadata.get("runtime", "onnxruntime"), "chosen": result.chosen or done.method,
                                   "quality": result.quality or result.agreement_with_parent, "accuracy": result.accuracy,
                                   "verdict": done.reason}
