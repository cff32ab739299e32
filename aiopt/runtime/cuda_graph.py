"""CUDA runners that remove launch overhead, and the peer a GPU user tries first.

- CudaGraphRunner runs a torch-cuda artifact (export/torch_cuda.py): on load, per batch bucket,
  the program is compiled (torch.compile, default mode: fusion) and the whole forward captured
  as one CUDA graph with static input and output buffers. A call copies the batch into the
  bucket's input buffer (padding up to the bucket), replays the graph and copies the rows back.
  Recurrent models gain too: whatever torch.compile leaves eager (the cuDNN LSTM) is captured
  with the rest. Compile and capture time is `compile_seconds`, apart from latency.
The peer a GPU user tries first (`torch.compile(mode="reduce-overhead")` of the FP16 model) is
built by bench/measure.py with this module's warm-up; both need CUDA (tests: the `gpu` marker).
"""
from __future__ import annotations

import time

import numpy as np

from aiopt.errors import MissingDependencyError
from aiopt.runtime.buckets import REEXPORT_HINT, bucket_for
from aiopt.runtime.base import Runner
from aiopt.runtime.torch_backend import torch_device
from aiopt.specs import TensorSpec

PEER_BACKEND = "torch-compile-reduce-overhead"
WARMUP_CALLS = 3  # reduce-overhead records its graphs after a few calls; inductor autotunes on the first


def require_cuda(device: str, what: str):
    if not str(device).startswith("cuda"):
        raise MissingDependencyError(f"{what} runs on CUDA; pass --device cuda (asked for {device})")
    return torch_device(device)


class CudaGraphRunner(Runner):
    backend = "torch-cuda-graph"

    def __init__(self, module, input_spec: list[TensorSpec], output_names: list[str], device: str, buckets: tuple[int, ...],
                 source: str = "", compile_module: bool = True):
        import torch

        super().__init__(input_spec, output_names, device, source)
        self._device = require_cuda(device, "a torch-cuda artifact's graph runner")
        self.buckets = tuple(sorted(buckets))
        self.batch_range = (1, self.buckets[-1])
        self.batch_range_hint = REEXPORT_HINT
        module = module.to(self._device).eval()
        start = time.perf_counter()
        function = torch.compile(module, dynamic=False) if compile_module else module
        self._graphs = {bucket: self._capture(function, bucket) for bucket in self.buckets}
        torch.cuda.synchronize(self._device)
        self.compile_seconds = time.perf_counter() - start

    def _capture(self, function, batch: int):
        import torch

        inputs = [torch.zeros((batch, *spec.shape[1:]), dtype=getattr(torch, spec.dtype), device=self._device) for spec in self.input_spec]
        stream = torch.cuda.Stream(self._device)
        stream.wait_stream(torch.cuda.current_stream(self._device))
        with torch.no_grad():
            with torch.cuda.stream(stream):  # warm-up off the default stream, as graph capture requires
                for _ in range(WARMUP_CALLS):
                    function(*inputs)
            torch.cuda.current_stream(self._device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                outputs = function(*inputs)
        outputs = tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)
        return graph, inputs, outputs

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        batch = len(feed[self.input_spec[0].name])
        graph, inputs, outputs = self._graphs[bucket_for(batch, self.buckets)]
        for spec, buffer in zip(self.input_spec, inputs):
            buffer[:batch].copy_(torch.from_numpy(np.ascontiguousarray(feed[spec.name])))
        graph.replay()
        return {name: out[:batch].float().cpu().numpy() for name, out in zip(self.output_names, outputs)}
