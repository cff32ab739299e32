"""Settings of `aiopt optimize`: one frozen dataclass whose fields declare the command's flags."""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

from aiopt.errors import InputError
from aiopt.llm.quantize import LMQuantizeConfig
from aiopt.measure.latency import LatencyConfig
from aiopt.options import SEQ_LEN_HELP, option

DEFAULT_STORAGE_TIMEOUT = 300.0  # seconds a worker waits for its RDB storage to come back
DEFAULT_HEARTBEAT = 30  # seconds between a worker's heartbeats

TARGETS = ("cpu", "cuda")
OBJECTIVES = ("latency", "throughput", "size")
KEEP = ("pareto", "all")
SAMPLERS = ("tpe", "nsga2")
# Twice quantize's floor (measure.quality.DEFAULT_MAX_ACCURACY_DROP, 0.005: one conversion must keep
# "equal quality"): the same quantity, accuracy lost on held-out data against the FP32 model, but the
# budget a whole chain may spend, and pruning and distillation trade accuracy for speed by design.
DEFAULT_CHAIN_ACCURACY_BUDGET = 0.01  # one point: the budget
DEFAULT_STUDY = "aiopt-optimize"
# Per trial, the trial's artifact and the FP32 reference are timed together at each batch size.
TRIAL_LATENCY = LatencyConfig(warmup=5, min_runs=10, min_time=0.6, rounds=3)


_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str, flag: str = "--time-budget") -> float:
    """"20m", "90s", "1h30m" or a number of seconds -> seconds."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([smh])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise InputError(f"{flag} {text!r} is not a duration; write e.g. 90s, 20m or 1h30m")
    return sum(float(n) * _UNITS[u] for n, u in parts)


@dataclass(frozen=True)
class OptimizeConfig:
    """Each field that `aiopt optimize` sets declares its flag, default and help once (aiopt.options);
    the command's options are generated from them (aiopt.cli.optimize)."""

    target: str = option("cpu", "--target", "cpu or cuda (no GPU: exit 4).")
    # default DEFAULT_CHAIN_ACCURACY_BUDGET unless min_cosine is given
    max_accuracy_drop: float | None = option(None, "--max-accuracy-drop",
                                             f"Budget for class outputs: accuracy lost on held-out data (default {DEFAULT_CHAIN_ACCURACY_BUDGET:g} = one point).")
    min_cosine: float | None = option(None, "--min-cosine", "Budget for embeddings and other continuous outputs: mean cosine similarity to FP32.")
    # causal LMs: the budget (default quantize's, 0.02 = 2% over FP32)
    max_perplexity_increase: float | None = option(None, "--max-perplexity-increase",
                                                   "Budget for a causal LM: perplexity over FP32's on held-out text (default 0.02 = 2%).")
    objective: str = option("latency", "--objective", "latency (all batch sizes), throughput (the largest) or size.")
    batch_sizes: tuple[int, ...] = option((1, 64), ("--batch-size", "-b"), "Batch sizes timed (repeatable; default 1 and 64).", cli_default=None)
    # seconds; None: no limit (then trials is required). The command's None: 20m unless --trials alone bounds the search (time_budget_from)
    time_budget: float | None = option(20 * 60.0, "--time-budget", "Wall-clock budget: 90s, 20m, 1h (default 20m unless --trials is given).",
                                       cli_default=None, parse=parse_duration)
    # finished trials the study should hold (this run adds the missing ones)
    trials: int | None = option(None, "--trials", "Finished trials the study should hold; a re-run adds only the missing ones.")
    # an Optuna storage URL; default: a journal file in the output folder
    storage: str | None = option(None, "--storage",
                                 "Optuna storage URL shared by several workers (sqlite:///s.db, postgresql://user:pass@host/db); default: a journal file in OUTDIR. "
                                 "Read from AIOPT_STORAGE when not given, so the password stays off the command line.", envvar="AIOPT_STORAGE")
    # seconds a worker waits for an unreachable RDB storage before it ends (exit 2)
    storage_timeout: float = option(DEFAULT_STORAGE_TIMEOUT, "--storage-timeout",
                                    "How long a worker waits for an unreachable --storage server before it ends (exit 2): 90s, 5m.", cli_default="5m", parse=parse_duration)
    # seconds between a worker's heartbeats in an RDB storage; 4 missed: its trial is run again
    heartbeat: int = option(DEFAULT_HEARTBEAT, "--heartbeat",
                            "Seconds between a worker's heartbeats in --storage; a worker silent for 4 of them is taken as dead and its trial is run again by another.")
    study: str | None = option(None, "--study", "Study name in --storage.")
    keep: str = option("pareto", "--keep", "Candidate artifacts kept: pareto (the front) or all.")
    # chains to try first ("prune=0.5,quantize=int8-dynamic")
    tries: tuple[str, ...] = option((), "--try", "A chain to try first, e.g. prune=0.5,distill=0.45,quantize=int8-dynamic (repeatable).", cli_default=None)
    sampler: str = option("tpe", "--sampler", "Optuna sampler: tpe or nsga2.")
    # after channel pruning; default: a third of the model's recipe epochs
    finetune_epochs: int | None = option(None, "--finetune-epochs", "Fine-tuning epochs after pruning (default: a third of the model's recipe).")
    distill_epochs: int | None = option(None, "--distill-epochs", "Distillation epochs (default: the student's recipe).")
    # held-out evaluation data; default: the model's test split
    data: str | None = option(None, "--data", "Held-out data for quality: .npz, .txt, mnist1d or digits (default: the model's test split).")
    # for static INT8; default: the model's training split
    calibration: str | None = option(None, "--calibration", "Calibration data for static INT8: .npz, .txt, mnist1d or digits (default: the model's training split).")
    seq_len: int = option(128, "--seq-len", SEQ_LEN_HELP)  # text data: tokens per sample
    # the only setting of the trials' timing (TRIAL_LATENCY) a user changes; the rest: `latency`
    min_time: float = option(TRIAL_LATENCY.min_time, "--min-time", "Seconds of timed runs per artifact and batch size, at least.")
    threads: int | None = option(None, "--threads", "Threads for the runtimes (default: all cores).")
    seed: int = option(0, "--seed", "Random seed.")
    lm: LMQuantizeConfig | None = None  # causal LMs: quantize's measurement settings (default: its defaults)

    @property
    def latency(self) -> LatencyConfig:
        """How each trial's artifact and the FP32 reference are timed together at each batch size."""
        return replace(TRIAL_LATENCY, min_time=self.min_time)

    @property
    def study_name(self) -> str:
        return self.study or DEFAULT_STUDY

    @property
    def budget_metric(self) -> str:
        return "cosine" if self.min_cosine is not None else "accuracy"

    @property
    def accuracy_budget(self) -> float:
        return DEFAULT_CHAIN_ACCURACY_BUDGET if self.max_accuracy_drop is None else self.max_accuracy_drop


def validate(config: OptimizeConfig) -> None:
    """Refuse bad settings before anything is loaded."""
    if config.target not in TARGETS:
        raise InputError(f"unknown --target {config.target!r}; choose one of {', '.join(TARGETS)}")
    if config.objective not in OBJECTIVES:
        raise InputError(f"unknown --objective {config.objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if config.keep not in KEEP:
        raise InputError(f"unknown --keep {config.keep!r}; choose one of {', '.join(KEEP)}")
    if config.sampler not in SAMPLERS:
        raise InputError(f"unknown --sampler {config.sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if config.max_accuracy_drop is not None and config.min_cosine is not None:
        raise InputError("give one budget: --max-accuracy-drop (class outputs) or --min-cosine (embeddings), not both")
    if config.max_accuracy_drop is not None and not 0 <= config.max_accuracy_drop < 1:
        raise InputError(f"--max-accuracy-drop is a fraction of accuracy (0.01 = one point), got {config.max_accuracy_drop}")
    if config.max_perplexity_increase is not None and not config.max_perplexity_increase >= 0:
        raise InputError(f"--max-perplexity-increase is a fraction of FP32's perplexity (0.02 = 2%), got {config.max_perplexity_increase}")
    if config.min_cosine is not None and not 0 < config.min_cosine <= 1:
        raise InputError(f"--min-cosine is a cosine similarity in (0, 1], got {config.min_cosine}")
    if not config.batch_sizes or min(config.batch_sizes) < 1:
        raise InputError(f"batch sizes must be at least 1, got {list(config.batch_sizes)}")
    if config.trials is not None and config.trials < 1:
        raise InputError(f"--trials must be at least 1, got {config.trials}")
    if config.time_budget is not None and config.time_budget <= 0:
        raise InputError(f"--time-budget must be positive, got {config.time_budget:g} s")
    if config.time_budget is None and config.trials is None:
        raise InputError("give --trials N or --time-budget (e.g. 20m): the search needs an end")
    for name, value in (("--finetune-epochs", config.finetune_epochs), ("--distill-epochs", config.distill_epochs)):
        if value is not None and value < 1:
            raise InputError(f"{name} must be at least 1, got {value}")
    if config.storage_timeout <= 0:
        raise InputError(f"--storage-timeout must be positive, got {config.storage_timeout:g} s")
    if config.heartbeat < 1:
        raise InputError(f"--heartbeat is whole seconds, at least 1, got {config.heartbeat}")
    if config.study is not None and config.storage is None:
        raise InputError("--study names a study in a shared --storage; pass --storage URL as well (the default storage is one study per folder)")


def describe_duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.2g}s"
    seconds = round(seconds)
    if seconds < 120:
        return f"{seconds}s"
    minutes, rest = divmod(seconds, 60)
    return f"{minutes}m{rest:02d}s" if rest else f"{minutes}m"


def time_budget_from(text: str | None, trials: int | None) -> float | None:
    """--time-budget as seconds: given, or 20 minutes unless --trials alone bounds the search."""
    if text is not None:
        return parse_duration(text)
    return None if trials is not None else 20 * 60.0
