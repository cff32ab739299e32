"""PyTorch backend: eager modules (aiopt checkpoints, TorchScript, torch.export programs)."""
from __future__ import annotations

import numpy as np

from aiopt.errors import MissingDependencyError, UnsupportedModelError
from aiopt.runtime.base import Runner
from aiopt.specs import TensorSpec


def torch_device(device: str):
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MissingDependencyError("--device cuda was asked for but no CUDA GPU is visible to PyTorch; use --device cpu")
    return torch.device(device)


class TorchRunner(Runner):
    backend = "torch"

    def __init__(self, module, input_spec: list[TensorSpec], output_names: list[str], device: str = "cpu", source: str = ""):
        super().__init__(input_spec, output_names, device, source)
        self._device = torch_device(device)
        if hasattr(module, "to"):
            module = module.to(self._device)
        self.module = module

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        tensors = [torch.from_numpy(np.ascontiguousarray(feed[s.name])).to(self._device) for s in self.input_spec]
        with torch.inference_mode():
            outputs = self.module(*tensors)
        outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        if len(outputs) != len(self.output_names):
            raise UnsupportedModelError(f"the model returned {len(outputs)} outputs, its spec names {len(self.output_names)}")
        return {name: out.detach().float().cpu().numpy() if out.dtype in (torch.float16, torch.bfloat16) else out.detach().cpu().numpy()
                for name, out in zip(self.output_names, outputs)}
