"""Bench report writers (JSON, Markdown) and the CI regression gate.

The JSON document is the source of truth (schema_version 1, README "Benchmark reports");
Markdown and HTML are views of it. The gate compares two documents record by record.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from aiopt.bench.measure import SCHEMA_VERSION
from aiopt.errors import InputError
from aiopt.fileio import human_size
from aiopt.measure.latency import MAX_ROUND_DISAGREEMENT
from aiopt.options import option


def to_json(document: dict) -> str:
    return json.dumps(document, indent=2) + "\n"


KINDS = {"latency": "a classifier/encoder report (latency percentiles)", "generative": "a generative report (TTFT, tokens/s)"}


@dataclass(frozen=True)
class ReportConfig:
    """Where `aiopt bench` writes its report, and its regression gate against a previous report."""
    json_file: str | None = option(None, "--json", "Write the report as JSON (schema in README).")
    markdown_file: str | None = option(None, "--markdown", "Write the report as Markdown (fits a CI job summary).")
    html_file: str | None = option(None, "--html", "Write one self-contained HTML page with plots.")
    plots: str | None = option(None, "--plots", "Folder to write the plots into as PNG.")
    baseline_report: str | None = option(None, "--baseline", "A previous --json report: exit 1 if anything regressed against it.")
    max_regression: float = option(0.10, "--max-regression",
                                   "Allowed p50 latency increase vs --baseline (0.10 = 10%); causal LMs: TTFT and time per decoded token.")
    max_accuracy_drop: float = option(0.01, "--max-accuracy-drop", "Allowed accuracy drop vs --baseline (0.01 = one point); causal LMs: next-token accuracy.")

    def files(self) -> dict[str, str]:
        """Report kind -> path, for each report asked for."""
        return {kind: path for kind, path in (("json", self.json_file), ("markdown", self.markdown_file), ("html", self.html_file)) if path}


def load_report(path: str | os.PathLike, kind: str = "latency") -> dict:
    """A previous bench JSON, for --baseline; refuses other schema versions, damaged files, and a
    report of the other kind (a generative report has no latency percentiles to compare, and the
    reverse)."""
    try:
        document = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"baseline report {path} does not exist; run aiopt bench --json {path} first") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"baseline report {path} is not valid JSON ({exc}); regenerate it with aiopt bench --json") from exc
    if not isinstance(document, dict) or document.get("schema_version") != SCHEMA_VERSION:
        version = document.get("schema_version") if isinstance(document, dict) else None
        raise InputError(f"baseline report {path} has schema version {version}; this aiopt reads version {SCHEMA_VERSION}: regenerate the baseline")
    if not isinstance(document.get("records"), list):
        raise InputError(f"baseline report {path} has no records list; regenerate it with aiopt bench --json")
    found = document.get("kind", "latency")
    if found != kind:
        raise InputError(f"baseline report {path} is {KINDS.get(found, repr(found))}, but these artifacts make {KINDS[kind]}; "
                         "pass a report of the same kind of model")
    return document


# ---------------------------------------------------------------- the summary: best artifact per model

ACCURACY_BUDGET = 0.01  # "best" may cost at most one point of accuracy, as the gate's --max-accuracy-drop default
NO_BASELINE = "(no baseline)"
BUDGET_TEXT = f"{ACCURACY_BUDGET * 100:g} pt"


@dataclass(frozen=True)
class Best:
    """The fastest record of one model (lineage root) at one device and batch size whose accuracy
    is within ACCURACY_BUDGET of the baseline's; the baseline itself when nothing else is."""

    model: str  # the baseline's label (its path), or NO_BASELINE
    device: str
    batch_size: int
    best: dict
    baseline: dict | None
    flagged: tuple = ()  # unsteady records of the group that may have changed the verdict (could_have_won)

    @property
    def speedup(self) -> float | None:
        if self.baseline is None:
            return None
        return self.best.get("speedup_vs_baseline") or self.baseline["latency_ms"]["p50"] / self.best["latency_ms"]["p50"]

    @property
    def accuracy_change(self) -> float | None:
        """Best minus baseline accuracy (negative: what the speed cost)."""
        before, after = (self.baseline or {}).get("accuracy"), self.best.get("accuracy")
        return None if before is None or after is None else after - before

    @property
    def unsteady(self) -> str | None:
        """Why the figures this line rests on cannot be trusted (best or baseline flagged), or None."""
        flagged = [r for r in (self.best, self.baseline, *self.flagged) if r is not None and r.get("unsteady")]
        flagged = list({id(r): r for r in flagged}.values())
        return "; ".join(f"{r.get('label') or r['artifact']}: {r['unsteady']}" for r in flagged) or None

    def describe(self) -> str:
        """One line: which artifact, how much faster, what it cost (and whether to trust it)."""
        text = self._describe()
        return text if not self.unsteady else f"{text} [UNSTEADY timing, not evidence: {self.unsteady}]"

    def _describe(self) -> str:
        name, where = self.best.get("label") or self.best["artifact"], f"batch {self.batch_size}" + ("" if self.device == "cpu" else f" on {self.device}")
        if self.baseline is None:
            return f"{name} [{self.best['backend']}] is the fastest at {where} (no baseline measured)"
        base = self.baseline.get("label") or self.baseline["artifact"]
        if self.best is self.baseline:
            return f"nothing beat {base} (FP32 PyTorch) at {where} within {BUDGET_TEXT} of its accuracy"
        text = f"{name} [{self.best['backend']}]: {self.speedup:.1f}x faster than {base} (FP32 PyTorch) at {where}"
        if self.accuracy_change is not None:
            text += f", accuracy {self.baseline['accuracy']:.1%} -> {self.best['accuracy']:.1%}"
        return text + f", size {human_size(self.baseline.get('size_bytes'))} -> {human_size(self.best.get('size_bytes'))}"


def best_per_model(document: dict) -> list[Best]:
    """A Best per (lineage root, device, batch size), in the order the records come."""
    groups: dict[tuple, list[dict]] = {}
    for record in document.get("records", []):
        if not record.get("skipped") and (record.get("latency_ms") or {}).get("p50") is not None:
            groups.setdefault((record.get("baseline"), record["device"], record["batch_size"]), []).append(record)
    found = []
    for (root, device, batch), records in groups.items():
        baseline = next((r for r in records if r.get("is_baseline")), None)
        # the torch.compile peer shares the root's path but is not an artifact one can ship
        candidates = [r for r in records if r.get("is_baseline") or r["artifact"] != root]
        if baseline is not None and baseline.get("accuracy") is not None:
            candidates = [r for r in candidates if r.get("accuracy") is not None and r["accuracy"] >= baseline["accuracy"] - ACCURACY_BUDGET - 1e-9]
        best = min(candidates, key=lambda r: (r["latency_ms"]["p50"], r.get("size_bytes") or 0))
        model = (baseline.get("label") or baseline["artifact"]) if baseline else root or NO_BASELINE
        found.append(Best(model, device, batch, best, baseline, tuple(r for r in candidates if could_have_won(r, best))))
    return found


def could_have_won(record: dict, best: dict) -> bool:
    """Whether an unsteady record may have changed the verdict: its fastest round (its p50 when no
    rounds were kept), given a quiet machine's round-to-round spread, comes within reach of the best's
    p50. A candidate many times slower than the best stays slower whatever the noise, so its flag
    marks its own row, not the headline."""
    if not record.get("unsteady") or record is best:
        return False
    latency = record["latency_ms"]
    fastest = min([r for r in latency.get("round_p50") or () if r > 0] or [latency["p50"]])
    return fastest <= best["latency_ms"]["p50"] * MAX_ROUND_DISAGREEMENT


def headline(document: dict, batch_size: int = 64) -> str:
    """What the run found at `batch_size` (the largest measured if absent), one clause per model."""
    bests = best_per_model(document)
    sizes = {b.batch_size for b in bests}
    if not sizes:
        return "nothing was measured"
    batch = batch_size if batch_size in sizes else max(sizes)
    return "; ".join(b.describe() for b in bests if b.batch_size == batch)


def _summary_markdown(document: dict) -> list[str]:
    bests = best_per_model(document)
    if not bests:
        return []
    lines = [f"Best per model: the fastest artifact within {BUDGET_TEXT} of the baseline's accuracy (speedup: same-run ratio of p50 latencies).", "",
             "| model | device | batch | best | backend | p50 ms | speedup | accuracy | size |", "|---|---|---:|---|---|---:|---:|---:|---:|"]
    for b in bests:
        base = b.baseline or {}
        flag = " ⚠" if b.unsteady else ""
        accuracy = _fmt(b.best.get("accuracy"), ".1%") if b.accuracy_change is None else \
            f"{base['accuracy']:.1%} -> {b.best['accuracy']:.1%} ({b.accuracy_change * 100:+.1f} pt)"
        size = human_size(b.best.get("size_bytes")) if not base else f"{human_size(base.get('size_bytes'))} -> {human_size(b.best.get('size_bytes'))}"
        lines.append(f"| {b.model} | {b.device} | {b.batch_size} | {b.best.get('label') or b.best['artifact']} | {b.best['backend']} | "
                     f"{b.best['latency_ms']['p50']:.3f}{flag} | {'-' if b.speedup is None else f'{b.speedup:.2f}x'}{flag} | {accuracy} | {size} |")
    return lines + [""]


def _fmt(value, spec: str = ".3f", none: str = "-") -> str:
    return none if value is None else format(value, spec)



def markdown(document: dict, violations: list[Violation] | None = None) -> str:
    machine = document["machine"]
    gpu = machine.get("gpu") or {}
    lines = [
        "## aiopt bench",
        "",
        *_summary_markdown(document),
        f"Machine: {machine['cpu']} ({machine['cores']} cores)" + (f", GPU {gpu['name']} (driver {gpu.get('driver')}, CUDA {gpu.get('cuda')})" if gpu else ", no GPU")
        + f"; python {machine['python']}, torch {machine.get('torch')}, onnxruntime {machine.get('onnxruntime')}, onnx {machine.get('onnx')}, tensorrt {machine.get('tensorrt')}.",
        f"Settings: {document['settings']['threads']} threads, warm-up {document['settings']['warmup']}, at least {document['settings']['min_runs']} runs "
        f"and {document['settings']['min_time']} s per measurement. Speedup: same-run ratio of p50 latencies vs the baseline (marked *), or without one vs the lineage parent in the run; on CUDA also vs the torch.compile reduce-overhead FP16 peer.",
        *([f"Batch sizes: {document['settings']['batch_note']}."] if document["settings"].get("batch_note") else []),
        "",
        "| artifact | backend | device | batch | p50 ms | p90 ms | p99 ms | mean ± std ms | samples/s | accuracy | agreement | speedup | size | params | peak mem |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in document["records"]:
        name = r.get("label") or r["artifact"]
        name = f"{name} *" if r.get("is_baseline") else name
        if r.get("skipped"):
            lines.append(f"| {name} | {r['backend']} | {r['device']} | {r['batch_size']} | skipped: {short_reason(r['skipped'])} |||||||||||")
            continue
        lat = r["latency_ms"]
        flag = " ⚠ unsteady" if r.get("unsteady") else ""
        lines.append(
            f"| {name} | {r['backend']} | {r['device']} | {r['batch_size']} | {lat['p50']:.3f}{flag} | {lat['p90']:.3f} | {lat['p99']:.3f} | "
            f"{lat['mean']:.3f} ± {lat['std']:.3f} | {_fmt(r['throughput'], ',.0f')} | {_fmt(r['accuracy'], '.4f')} | {_fmt(r['agreement'], '.4f')} | "
            f"{_speedup(r)} | {human_size(r['size_bytes'])} | "
            f"{_fmt(r['params'], ',d')} | {human_size(r['peak_memory_bytes'])} |"
        )
    flagged = [r for r in document["records"] if r.get("unsteady")]
    if flagged or document.get("unsteady"):
        lines += ["", f"**Unsteady figures** (⚠): {document.get('unsteady') or ''}", ""]
        lines += [f"- {r.get('label') or r['artifact']} [{r['backend']}/{r['device']}] batch {r['batch_size']}: {r['unsteady']}" for r in flagged]
    lines += ["", f"Command: `{document.get('command', '')}`"]
    if violations is not None:
        lines += gate_markdown(violations)
    return "\n".join(lines) + "\n"


def gate_markdown(violations: list[Violation]) -> list[str]:
    """The regression gate's section of a Markdown report (classifier and generative alike)."""
    return ["", "### Regression gate", "", *([f"- {v.describe()}" for v in violations] or ["- no regression against the baseline"])]


def _speedup(record: dict) -> str:
    """vs the baseline, and on CUDA vs the torch.compile reduce-overhead peer of the same run;
    without a baseline, vs the lineage parent measured in the same run."""
    return speedup_text(record)


def speedup_text(record: dict) -> str:
    """The speedup cell of a record (shared by the CLI table and the Markdown report)."""
    if record.get("speedup_vs_baseline") is not None:
        text = f"{record['speedup_vs_baseline']:.2f}x"
    elif record.get("speedup_vs_parent") is not None:
        text = f"{record['speedup_vs_parent']:.2f}x vs parent {Path(record['parent']).name}"
    else:
        text = "-"
    if record.get("speedup_vs_peer") is not None:
        text += f" (peer {record['speedup_vs_peer']:.2f}x)"
    return text + (" ⚠" if record.get("unsteady") and text != "-" else "")


def short_reason(text: str, limit: int = 90) -> str:
    """A table cell's version of a long reason: its first line, cut at `limit` characters (the
    whole reason stays in the JSON)."""
    first = text.strip().split("\n")[0]
    return first if len(first) <= limit else first[: limit - 1].rstrip() + "…"


# ---------------------------------------------------------------- the CI gate

@dataclass(frozen=True)
class Violation:
    key: tuple
    metric: str
    baseline: float
    current: float
    limit: str

    def describe(self) -> str:
        artifact, backend, device, batch = self.key
        where = f"{artifact} [{backend}/{device}, batch {batch}]"
        if self.metric == "missing":
            return f"{where}: measured in the baseline, missing or skipped now"
        if self.metric == "accuracy":
            return f"{where}: accuracy {self.current:.4f} vs {self.baseline:.4f} (drop {100 * (self.baseline - self.current):.2f} pt > {self.limit})"
        change = self.current / self.baseline - 1
        if self.metric != "latency":  # a generative figure (aiopt.bench.generative): its name says its unit
            return f"{where}: {self.metric} {self.current:.4g} vs {self.baseline:.4g} ({change:+.1%}; allowed {self.limit})"
        return f"{where}: p50 latency {self.current:.3f} ms vs {self.baseline:.3f} ms ({change:+.1%} > {self.limit})"


def _key(record: dict) -> tuple:
    return (record.get("label") or record["artifact"], record["backend"], record["device"], record["batch_size"])


def compare(current: dict, baseline: dict, max_regression: float = ReportConfig.max_regression,
            max_accuracy_drop: float = ReportConfig.max_accuracy_drop) -> list[Violation]:
    """Records that got slower by more than `max_regression` (p50) or lost more than
    `max_accuracy_drop` accuracy against the baseline report; matched by artifact, backend,
    device and batch size."""
    if max_regression < 0 or max_accuracy_drop < 0:
        raise InputError("--max-regression and --max-accuracy-drop must not be negative")
    now = {_key(r): r for r in current["records"]}
    violations = []
    for old in baseline["records"]:
        if old.get("skipped"):
            continue
        key = _key(old)
        new = now.get(key)
        if new is None or new.get("skipped"):
            violations.append(Violation(key, "missing", 0.0, 0.0, "present"))
            continue
        old_p50, new_p50 = old["latency_ms"]["p50"], new["latency_ms"]["p50"]
        if new_p50 > old_p50 * (1 + max_regression):
            violations.append(Violation(key, "latency", old_p50, new_p50, f"{max_regression:.0%}"))
        if old.get("accuracy") is not None and new.get("accuracy") is not None and old["accuracy"] - new["accuracy"] > max_accuracy_drop + 1e-12:
            violations.append(Violation(key, "accuracy", old["accuracy"], new["accuracy"], f"{100 * max_accuracy_drop:.2f} pt"))
    return violations


def append_github_summary(text: str) -> bool:
    """Append to GitHub's job summary when running in Actions (GITHUB_STEP_SUMMARY set)."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return False
    with open(target, "a", encoding="utf-8") as fh:
        fh.write(text)
    return True
