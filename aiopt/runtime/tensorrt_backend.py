"""TensorRT backend: a serialized engine plus the sidecar aiopt wrote beside it.

The sidecar is checked against this machine's TensorRT version and GPU before the engine is
deserialised (an engine from elsewhere is refused with how to rebuild it). Inputs and outputs
live in CUDA memory owned by PyTorch tensors; one CUDA stream, synchronised per call.
"""
from __future__ import annotations

import numpy as np

from aiopt.errors import UnsupportedModelError
from aiopt.runtime.base import Runner
from aiopt.runtime.tensorrt_sidecar import check_sidecar, current_gpu, import_tensorrt
from aiopt.specs import specs_from_json


class TensorRTRunner(Runner):
    backend = "tensorrt"

    def __init__(self, engine_path: str, device: str = "cuda"):
        import torch

        trt = import_tensorrt()
        sidecar = check_sidecar(engine_path, trt.__version__, current_gpu())
        spec = specs_from_json(sidecar["inputs"])
        super().__init__(spec, list(sidecar["outputs"]), "cuda", engine_path)
        batches = [shape[0] for shapes in sidecar["profile"].values() for shape in (shapes["min"], shapes["max"])]
        self.batch_range = (min(batches), max(batches)) if batches else None
        self._logger = trt.Logger(trt.Logger.WARNING)
        with open(engine_path, "rb") as fh:
            self.engine = trt.Runtime(self._logger).deserialize_cuda_engine(fh.read())
        if self.engine is None:
            raise UnsupportedModelError(f"TensorRT could not deserialise {engine_path}; rebuild it with aiopt export --format tensorrt")
        self.context = self.engine.create_execution_context()
        self._torch_dtype = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.int64: torch.int64,
                             trt.int8: torch.int8, trt.bool: torch.bool, trt.bfloat16: torch.bfloat16}
        self._stream = torch.cuda.Stream()

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.cuda.stream(self._stream):
            inputs = {name: torch.from_numpy(np.ascontiguousarray(array)).cuda(non_blocking=True) for name, array in feed.items()}
            for name, tensor in inputs.items():
                self.context.set_input_shape(name, tuple(tensor.shape))
                self.context.set_tensor_address(name, tensor.data_ptr())
            outputs = {}
            for name in self.output_names:
                shape = tuple(self.context.get_tensor_shape(name))
                outputs[name] = torch.empty(shape, dtype=self._torch_dtype[self.engine.get_tensor_dtype(name)], device="cuda")
                self.context.set_tensor_address(name, outputs[name].data_ptr())
            if not self.context.execute_async_v3(self._stream.cuda_stream):
                raise UnsupportedModelError("TensorRT failed to run the engine")
        self._stream.synchronize()
        return {name: tensor.float().cpu().numpy() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor.cpu().numpy()
                for name, tensor in outputs.items()}
