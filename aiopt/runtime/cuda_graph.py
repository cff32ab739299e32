"""CUDA runners that remove launch overhead, and the peer a GPU user tries first.

- CudaGraphRunner runs a torch-cuda artifact (export/torch_cuda.py): on load, per batch bucket,
  the program is compiled (torch.compile, default mode: fusion) and the whole forward captured
  as one CUDA graph with static input and output buffers. A call copies the batch into the
  bucket's input buffer (padding up to the bucket), replays the graph and copies the rows back.
  Recurrent models gain too: whatever torch.compile leaves eager (the cuDNN LSTM) is captured
  with the rest. Compile and capture time is `compile_seconds`, apart from latency.
- compiled_peer is `torch.compile(mode="reduce-overhead")` of the FP16 model: the reference a
  GPU user would reach for, measured in the same bench run (`speedup_vs_peer`).
Both need CUDA; their tests carry the `gpu` marker.
"""
from __future__ import annotations

import time

import numpy as np

from aiopt.errors import MissingDependencyError
from aiopt.export.torch_cuda import REEXPORT_HINT, bucket_for
from aiopt.runtime.base import Runner
from aiopt.runtime.torch_backend import TorchRunner, torch_device
from aiopt.specs import TensorSpec

PEER_BACKEND = "torch-compile-reduce-overhead"
WARMUP_CALLS = 3  # reduce-overhead records its graphs after a few calls; inductor autotunes on the first


def _require_cuda(device: str, what: str):
    if not str(device).startswith("cuda"):
        raise MissingDependencyError(f"{what} runs on CUDA; pass --device cuda (asked for {device})")
    return torch_device(device)


class CudaGraphRunner(Runner):
    backend = "torch-cuda-graph"

    def __init__(self, module, input_spec: list[TensorSpec], output_names: list[str], device: str, buckets: tuple[int, ...],
                 source: str = "", compile_module: bool = True):
        import torch

        super().__init__(input_spec, output_names, device, source)
        self._device = _require_cuda(device, "a torch-cuda artifact's graph runner")
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


def compiled_peer(module, input_spec: list[TensorSpec], output_names: list[str], device: str, batch_sizes: tuple[int, ...],
                  source: str = "") -> TorchRunner:
    """The FP16 model under torch.compile(mode="reduce-overhead"), compiled and warmed for each
    batch size here so that compilation stays out of the latency (it is `compile_seconds`)."""
    import torch

    from aiopt.artifacts import example_inputs
    from aiopt.compress.torch_quant import reduce_precision

    device_ = _require_cuda(device, f"the {PEER_BACKEND} peer")
    compiled = torch.compile(reduce_precision(module, "fp16").to(device_), mode="reduce-overhead")
    runner = TorchRunner(compiled, input_spec, output_names, device, source)
    runner.backend = PEER_BACKEND
    start = time.perf_counter()
    for batch in batch_sizes:
        feed = {s.name: t.numpy() for s, t in zip(input_spec, example_inputs(input_spec, batch))}
        for _ in range(WARMUP_CALLS):
            runner(feed)
    torch.cuda.synchronize(device_)
    runner.compile_seconds = time.perf_counter() - start
    return runner
