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

    def _fixed_argument(self, name: str):
        import torch

        value = self.fixed_inputs[name]
        if value.ndim == 0 and self._takes_number(name):
            return value.item()
        return torch.from_numpy(value).to(self._device)

    def _takes_number(self, name: str) -> bool:
        """Whether a TorchScript module declares argument `name` an int or float, not a Tensor."""
        schema = getattr(getattr(self.module, "forward", None), "schema", None)
        argument = next((a for a in getattr(schema, "arguments", ()) if a.name == name), None)
        return argument is not None and str(argument.type) in ("int", "float")

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        # fixed inputs sit in the model's own argument order (a TorchScript int argument takes a Python number)
        tensors = [self._fixed_argument(name) if name in self.fixed_inputs else torch.from_numpy(np.ascontiguousarray(feed[name])).to(self._device)
                   for name in self.model_inputs]
        with torch.inference_mode():
            outputs = self.module(*tensors)
        outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        if len(outputs) != len(self.output_names):
            raise UnsupportedModelError(f"the model returned {len(outputs)} outputs, its spec names {len(self.output_names)}")
        return {name: out.detach().float().cpu().numpy() if out.dtype in (torch.float16, torch.bfloat16) else out.detach().cpu().numpy()
                for name, out in zip(self.output_names, outputs)}
