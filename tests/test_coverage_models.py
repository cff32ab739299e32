"""Models users bring, not ours: export, the default quantize, bench and compare work on them and
the shipped artifact meets the quality floor (cosine to FP32 without labels, top-1 agreement for
a classifier's logits).

torchvision's resnet18 and mobilenet_v3_small run where torchvision imports; PyPI's torchvision
does not load beside the CPU build of torch 2.13 on the project's machines ("operator
torchvision::nms does not exist"), so there the same op families run through small models
written here: residual blocks with BatchNorm, depthwise convolutions with hardswish and
squeeze-excite. A BERT classifier from a config (random weights, offline) covers the text side.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import invoke_cli

torch = pytest.importorskip("torch")
nn = torch.nn

# each test exports, quantizes by measurement, benches and compares a model; which recipe is fastest
# is not the claim, so quantize times its candidates briefly (conftest's brief_timing)
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("brief_timing")]


class ResidualCNN(nn.Module):
    """resnet18's op families: conv-BN-ReLU, residual adds, strided downsampling, global pooling."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                   nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.down = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.head(self.down(x).mean(dim=(2, 3)))


class DepthwiseSECNN(nn.Module):
    """mobilenet_v3_small's op families: depthwise conv, hardswish, squeeze-excite with hardsigmoid."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.Hardswish())
        self.depthwise = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.Hardswish())
        self.squeeze = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(16, 8, 1), nn.ReLU(), nn.Conv2d(8, 16, 1), nn.Hardsigmoid())
        self.project = nn.Sequential(nn.Conv2d(16, 24, 1), nn.BatchNorm2d(24))
        self.head = nn.Linear(24, classes)

    def forward(self, x):
        x = self.depthwise(self.stem(x))
        x = self.project(x * self.squeeze(x))
        return self.head(x.mean(dim=(2, 3)))


def _torchvision(name: str):
    try:
        import torchvision
    except Exception as exc:  # noqa: BLE001 -- an import that fails at op registration raises RuntimeError
        pytest.skip(f"torchvision does not import here ({str(exc).splitlines()[-1][:80]}); the in-test models cover its op families")
    return getattr(torchvision.models, name)(num_classes=10)


MODELS = {
    "resnet18": lambda: _torchvision("resnet18"),
    "mobilenet_v3_small": lambda: _torchvision("mobilenet_v3_small"),
    "residual-cnn": ResidualCNN,
    "depthwise-se-cnn": DepthwiseSECNN,
}


@pytest.mark.parametrize("name", list(MODELS))
def test_image_models_export_quantize_bench_compare(name, tmp_path):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    with torch.no_grad():  # a few batches through train mode give BatchNorm real statistics
        model.train()
        for _ in range(3):
            model(torch.randn(16, 3, 32, 32))
        model.eval()
    traced = tmp_path / f"{name}.ts"
    torch.jit.save(torch.jit.trace(model, torch.randn(2, 3, 32, 32)), str(traced))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((64, 3, 32, 32)).astype(np.float32))
    np.savez(tmp_path / "eval.npz", x=rng.standard_normal((48, 3, 32, 32)).astype(np.float32))
    shape = ("--input-shape", "batchx3x32x32")

    exported = invoke_cli("export", str(traced), *shape, "-o", str(tmp_path / f"{name}.onnx"))
    assert exported.returncode == 0, exported.stderr
    result = invoke_cli("quantize", str(traced), *shape, "--calibration", str(tmp_path / "calib.npz"), "--data", str(tmp_path / "eval.npz"),
                     "-b", "1", "-b", "4", "-o", str(tmp_path / f"{name}.q.onnx"), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["metric"] == "cosine" and report["quality"]["mean_cosine"] >= 0.99  # no labels: cosine to FP32
    bench = invoke_cli("bench", report["path"], "-b", "2", "--min-time", "0.05", "--min-runs", "3", "--warmup", "1", "--rounds", "1")
    assert bench.returncode == 0, bench.stderr
    compared = invoke_cli("compare", str(tmp_path / f"{name}.onnx"), report["path"], "--data", str(tmp_path / "eval.npz"), "--json")
    assert compared.returncode == 0, compared.stderr
    first_output = next(iter(json.loads(compared.stdout)["outputs"].values()))
    assert first_output["mean_cosine"] >= 0.99


def test_bert_classifier_from_a_config(tmp_path):
    pytest.importorskip("transformers")
    from test_hf import WORDS, make_bert_folder

    folder = make_bert_folder(tmp_path / "bert-cls", num_labels=3)
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(WORDS, size=rng.integers(3, 12))) for _ in range(48)]
    (tmp_path / "texts.txt").write_text("\n".join(lines) + "\n")
    result = invoke_cli("quantize", str(folder), "--calibration", str(tmp_path / "texts.txt"), "--seq-len", "16", "-b", "1", "-b", "4",
                     "-o", str(tmp_path / "bert.q.onnx"), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    # logits without labels: top-1 agreement with FP32 on sentences held out of calibration
    assert report["metric"] == "agreement" and "held out" in report["eval_data"]
    assert report["quality"]["top1_agreement"] >= 0.995
    bench = invoke_cli("bench", report["path"], "-b", "2", "--min-time", "0.05", "--min-runs", "3", "--warmup", "1", "--rounds", "1",
                    "--seq-len", "16")
    assert bench.returncode == 0, bench.stderr
    compared = invoke_cli("compare", str(folder), report["path"], "--data", str(tmp_path / "texts.txt"), "--seq-len", "16", "--json")
    assert compared.returncode == 0, compared.stderr
    assert json.loads(compared.stdout)["metric"]["name"] == "agreement"
