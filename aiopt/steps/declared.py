"""The options of the two configs whose files cannot carry them on their fields yet.

PruneConfig (compress/prune.py) and QuantizeConfig (moving to aiopt/quantize/) are being split
and moved by other work; until that lands, their flags, help and CLI defaults are declared here,
once, in the same `Option` form the other configs carry on their fields (aiopt.options). Moving
one onto its field is mechanical: `name: T = default` plus its entry here becomes
`name: T = option(default, flags, help, ...)`, and the entry is deleted.
"""
from __future__ import annotations

from aiopt.measure.quality import DEFAULT_MAX_ACCURACY_DROP
from aiopt.options import Option

SEED_HELP = "Random seed."

PRUNE_OPTIONS = {
    "method": Option(("--method",), "channel (removes channels/units/heads), magnitude (unstructured) or 2:4.", always=True),
    "sparsity": Option(("--sparsity",), "Fraction removed, strictly between 0 and 1 (2:4 is always 50% in groups of 4).", always=True),
    "scope": Option(("--scope",), "magnitude: rank weights across all layers (global) or within each (layer)."),
    # `aiopt prune` fine-tunes 10 epochs unless told; the config (and optimize) default to none
    "finetune_epochs": Option(("--finetune-epochs",), "Fine-tuning epochs after pruning (0: none; the Transformer needs about 30 after channel pruning).",
                              cli_default=10, always=True),
    "steps": Option(("--steps",), "channel: rounds of prune + fine-tune, the epochs split across them."),
    "target_params": Option(("--target-params",), "channel: keep at most this fraction of the parameters (searches the sparsity)."),
    "lr": Option(("--lr",), "Fine-tuning learning rate (default: the recipe's for channel, a third of it for magnitude and 2:4)."),
    "seed": Option(("--seed",), SEED_HELP),
    "dataset": Option(("--dataset",), "Fine-tuning data (default: the dataset the model records)."),
}

QUANTIZE_OPTIONS = {
    "method": Option(("--method",), "auto (measure every candidate here, write the fastest that keeps quality), or force one: static, dynamic, fp16, bf16."),
    "backend": Option(("--backend",), "auto (ONNX Runtime and OpenVINO candidates), or force onnxruntime, openvino, torch, or tensorrt (symmetric INT8 QDQ for TensorRT)."),
    "calibration": Option(("--calibration",), "Calibration data: DATA.npz, mnist1d or digits (default: the model's training split)."),
    "calib_method": Option(("--calib-method",), "minmax, entropy or percentile."),
    # None: 256 for classifiers, 32 text windows for a causal LM (the command resolves it)
    "calib_samples": Option(("--calib-samples",), "Calibration samples drawn from the data (default 256; causal LMs: 32 windows of the --calibration text).",
                            cli_default=None),
    "per_channel": Option(("--per-channel/--per-tensor",), "Per-channel or per-tensor weight scales."),
    "exclude": Option(("--exclude",), "ONNX node name to keep in float (repeatable).", cli_default=None),
    "max_accuracy_drop": Option(("--max-accuracy-drop",), f"Quality floor for class outputs (auto: default {DEFAULT_MAX_ACCURACY_DROP:g} = half a point; a forced recipe keeps its "
                                "most harmful layers in float until the drop fits)."),
    "data": Option(("--data",), "Evaluation data: .npz, mnist1d or digits (default: the model's test split)."),
    "seed": Option(("--seed",), "Seed for drawing calibration samples."),
    "device": Option(("--device",), "cpu or cuda (no GPU: exit 4)."),
    "metric": Option(("--metric",), "accuracy, agreement or cosine for the first output, or OUTPUT=KIND[@threshold] for any output (KIND: class, probability, "
                     "map, embedding, regression, state, exact; repeatable; default: from what each output is)."),
    "fixed_inputs": Option(("--input",), "NAME=VALUE: an input that always takes one value, e.g. --input sr=16000 (recorded in the artifact and fed by its "
                           "Runner; control flow on it is folded away).", cli_default=None),
    "state": Option(("--state",), "IN=OUT: a recurrent state the model returns and is fed back (quality also measured streaming; default: detected from "
                    "names and shapes).", cli_default=None),
    "min_cosine": Option(("--min-cosine",), "Quality floor for embeddings and other continuous outputs: mean cosine similarity to FP32."),
    # without -b the command may shrink the largest batch size for a slow model (fit_batch_sizes)
    "batch_sizes": Option(("--batch-size", "-b"), "Batch sizes the candidates are timed at (repeatable; default 1 and 64).", cli_default=None, always=True),
    "seq_len": Option(("--seq-len",), "Tokens per sample for .txt data (one text per line, tokenized by the model folder's tokenizer), and for sequence "
                      "axes without data."),
    "candidates": Option(("--candidate",), "Choose only among these recipes (repeatable; names as in the report, e.g. int8-dynamic).", cli_default=None),
    "objective": Option(("--objective",), "auto: the fastest within the floor that is no larger than the input; latency: the fastest within the floor, "
                        "whatever its size (e.g. two graphs routed by batch size)."),
}
