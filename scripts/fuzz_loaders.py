"""Fuzz aiopt's artifact loaders with mutated copies of real files.

    python scripts/fuzz_loaders.py --cases 1000          # per format: checkpoint, TorchScript, .pt2, ONNX
    python scripts/fuzz_loaders.py --cases 50 --seed 7 --json

Each case flips, deletes, inserts or zeroes bytes of (or truncates) a valid artifact and loads
it with `aiopt.artifacts.load_model`. The only acceptable outcomes are a model or one of aiopt's
documented errors (AioptError: exit codes 2-4); anything else (another exception type, a crash of
the interpreter) is a finding. Exit 0 when there is none, 1 otherwise.
Run it in its own process: a crash in a C++ parser must not take a test runner down with it.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path


def _seeds(folder: Path) -> dict[str, bytes]:
    """One small valid artifact per format, made here so the fuzzer needs no fixtures."""
    import numpy as np
    import onnx
    import torch
    from onnx import TensorProto, helper, numpy_helper

    from aiopt.artifacts import save_checkpoint
    from aiopt.reference_models import build_model, make_config

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(40, 8), torch.nn.ReLU(), torch.nn.Linear(8, 10)).eval()
    example = torch.randn(2, 40)
    paths = {"checkpoint": folder / "seed.pt", "torchscript": folder / "seed.ts", "pt2": folder / "seed.pt2", "onnx": folder / "seed.onnx"}

    config = make_config("cnn:tiny", (40,), 10)
    metadata = {"architecture": "cnn", "size": "tiny", "config": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(config).items()},
                "inputs": [{"name": "x", "shape": ["batch", 40], "dtype": "float32"}], "num_classes": 10}
    save_checkpoint(build_model("cnn", config), metadata, paths["checkpoint"])
    torch.jit.save(torch.jit.trace(module, example), str(paths["torchscript"]))
    torch.export.save(torch.export.export(module, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},)), str(paths["pt2"]))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 40])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(np.ones((40, 10), np.float32), "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(paths["onnx"]))
    return {name: path.read_bytes() for name, path in paths.items()}


def mutate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One random mutation; returns the bytes and a description to reproduce it by."""
    data = bytearray(data)
    kind = rng.choice(["flip", "flip", "truncate", "delete", "insert", "zero", "duplicate"])
    at = rng.randrange(len(data))
    if kind == "flip":
        spots = [rng.randrange(len(data)) for _ in range(rng.randint(1, 16))]
        for spot in spots:
            data[spot] ^= 1 << rng.randrange(8)
        return bytes(data), f"flip bits at {spots[:4]}..."
    if kind == "truncate":
        return bytes(data[:at]), f"truncate at {at}"
    span = rng.randint(1, 256)
    if kind == "delete":
        del data[at:at + span]
    elif kind == "insert":
        data[at:at] = rng.randbytes(span)
    elif kind == "zero":
        data[at:at + span] = bytes(len(data[at:at + span]))
    else:
        data[at:at] = data[at:at + span]
    return bytes(data), f"{kind} {span} bytes at {at}"


def fuzz(cases: int, seed: int) -> dict:
    import torch

    from aiopt.artifacts import load_model
    from aiopt.errors import AioptError

    torch.set_num_threads(1)
    rng = random.Random(seed)
    findings, outcomes = [], {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="aiopt-fuzz-") as work:
        work = Path(work)
        seeds = _seeds(work)
        for name, original in seeds.items():
            for index in range(cases):
                data, how = mutate(original, rng)
                path = work / f"case{Path(name).suffix or ''}.bin"
                path.write_bytes(data)
                try:
                    load_model(path)
                    outcome = "loaded"
                except AioptError as exc:
                    outcome = type(exc).__name__
                except Exception as exc:  # the finding: an error type the CLI does not map to a documented code
                    outcome = f"UNEXPECTED {type(exc).__name__}"
                    findings.append({"format": name, "case": index, "mutation": how, "error": f"{type(exc).__name__}: {exc}"[:400],
                                     "where": traceback.format_exc().splitlines()[-3:]})
                outcomes.setdefault(name, {}).setdefault(outcome, 0)
                outcomes[name][outcome] += 1
    return {"cases_per_format": cases, "seed": seed, "seconds": round(time.perf_counter() - start, 1),
            "outcomes": outcomes, "findings": findings}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=1000, help="mutated files per format")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    result = fuzz(args.cases, args.seed)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for name, counts in result["outcomes"].items():
            print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        print(f"{len(result['findings'])} findings in {result['seconds']} s")
        for finding in result["findings"][:20]:
            print(f"  {finding['format']} case {finding['case']} ({finding['mutation']}): {finding['error']}")
    return 1 if result["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())
