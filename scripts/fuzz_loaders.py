"""Fuzz what users feed aiopt: mutated copies of real artifacts, and hostile metadata, model
folders, text files, study journals and Triton names (scripts/fuzz_surfaces.py).

    python scripts/fuzz_loaders.py                       # every surface: 4 x 500 artifacts + 8 x 400 other inputs
    python scripts/fuzz_loaders.py --cases 50 --surface-cases 20 --seed 7 --json
    python scripts/fuzz_loaders.py --surfaces none       # artifact bytes only (checkpoint, TorchScript, .pt2, ONNX)

Each artifact case flips, deletes, inserts or zeroes bytes of (or truncates) a valid artifact and
loads it with `aiopt.artifacts.load_model`; each surface case builds one hostile input and hands it
to every reader of that input. The only acceptable outcomes are a result or one of aiopt's
documented errors (AioptError: exit codes 2-4) in one line; anything else (another exception type,
a crash of the interpreter, code from a model folder that ran, a file written outside the case's
output) is a finding. Exit 0 when there is none, 1 otherwise.
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
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    from aiopt.artifacts import embed_metadata

    # as aiopt writes it: with the checksum of its graph and weights, so changed weights are refused
    embed_metadata(model, {"inputs": [{"name": "x", "shape": ["batch", 40], "dtype": "float32"}]})
    onnx.save(model, str(paths["onnx"]))
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


def fuzz(cases: int, seed: int, surface_cases: int = 0, surfaces: str = "all") -> dict:
    import torch

    from aiopt.artifacts import load_model
    from aiopt.errors import AioptError

    torch.set_num_threads(1)
    rng = random.Random(seed)
    findings, outcomes = [], {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="aiopt-fuzz-") as work:
        work = Path(work)
        if surface_cases and surfaces != "none":
            _fuzz_surfaces(work, rng, surface_cases, surfaces, findings, outcomes)
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
    return {"cases_per_format": cases, "cases_per_surface": surface_cases if surfaces != "none" else 0, "seed": seed,
            "cases": sum(sum(counts.values()) for counts in outcomes.values()), "seconds": round(time.perf_counter() - start, 1),
            "outcomes": outcomes, "findings": findings}


def _fuzz_surfaces(work: Path, rng: random.Random, cases: int, wanted: str, findings: list, outcomes: dict) -> None:
    """The inputs besides artifact bytes (fuzz_surfaces.py), each case in a fresh folder."""
    import shutil

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fuzz_surfaces import Surfaces

    surfaces = Surfaces(work, mutate)
    chosen = {k: v for k, v in surfaces.all().items() if wanted == "all" or k in wanted.split(",")}
    for name, surface in chosen.items():
        for index in range(cases):
            case = work / "case"
            case.mkdir()
            before = surfaces.outside_state()
            state = rng.getstate()
            try:
                outcome = surface(rng, case)
            except Exception as exc:  # noqa: BLE001 -- the finding: not aiopt's documented one-line error
                outcome = f"UNEXPECTED {type(exc).__name__}"
                findings.append({"format": name, "case": index, "mutation": f"rng state hash {hash(state) & 0xffffffff:x}",
                                 "error": f"{type(exc).__name__}: {exc}"[:400], "where": traceback.format_exc().splitlines()[-3:]})
            foreign = surfaces.foreign(before)
            if foreign:
                outcome = "FOREIGN"
                findings.append({"format": name, "case": index, "mutation": "", "error": foreign, "where": []})
            shutil.rmtree(case, ignore_errors=True)
            outcomes.setdefault(name, {}).setdefault(outcome, 0)
            outcomes[name][outcome] += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=500, help="mutated files per artifact format")
    parser.add_argument("--surface-cases", type=int, default=400, help="hostile inputs per other surface")
    parser.add_argument("--surfaces", default="all", help="all, none, or a comma list (onnx-metadata,hf-config,hf-tokenizer,"
                        "hf-weights,text,journal,triton-name,triton-tensor)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    import os

    # Libraries print to stdout on some damaged inputs (tokenizers' "Ignored unknown kwarg"): the
    # report owns stdout, so theirs goes to stderr while the cases run.
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        result = fuzz(args.cases, args.seed, args.surface_cases, args.surfaces)
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for name, counts in result["outcomes"].items():
            print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        print(f"{result['cases']} cases, {len(result['findings'])} findings in {result['seconds']} s")
        for finding in result["findings"][:20]:
            print(f"  {finding['format']} case {finding['case']} ({finding['mutation']}): {finding['error']}")
    return 1 if result["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())
