"""The bench HTML report and plots: real matplotlib (Agg), a hand-made bench document."""
import base64
import html
import re
import subprocess
import sys

from aiopt.bench.html import NO_ACCURACY, pareto_front, render_html, write_plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SKIP_REASON = "TensorRT is not installed: pip install 'aiopt[tensorrt]'"


def _record(artifact, backend, batch, p50, accuracy, size, **extra):
    return {
        "artifact": artifact, "backend": backend, "device": "cpu", "batch_size": batch,
        "latency_ms": {"mean": p50 * 1.05, "std": p50 * 0.1, "p50": p50, "p90": p50 * 1.2, "p99": p50 * 1.6,
                       "min": p50 * 0.9, "max": p50 * 3, "runs": 100},
        "throughput": batch * 1e3 / (p50 * 1.05), "accuracy": accuracy, "agreement": 1.0 if accuracy else None,
        "size_bytes": size, "params": 58218, "flops": 2115860, "peak_memory_bytes": 12_345_678, "load_seconds": 0.05,
        "speedup_vs_baseline": None, "is_baseline": False, "step": "train", "format": "onnx", "skipped": None, **extra,
    }


def _document(records):
    return {
        "schema_version": 1, "created_at": "2026-11-23T17:00:00+00:00",
        "machine": {"id": "amd-epyc-2c", "cpu": "AMD EPYC 7B13", "cores": 2, "gpu": None, "python": "3.11.9", "torch": "2.13.0",
                    "onnxruntime": "1.32.0", "onnx": "1.19.0", "tensorrt": None, "platform": "Linux-6.1-x86_64"},
        "command": "aiopt bench cnn.pt cnn.int8.onnx --batch-size 1 --batch-size 64",
        "settings": {"warmup": 10, "min_runs": 20, "min_time": 1.0, "threads": 2, "batch_sizes": [1, 64]},
        "records": records,
    }


def _full_document():
    records = []
    for batch, scale in ((1, 1.0), (64, 30.0)):
        records += [
            _record("cnn.pt", "torch", batch, 0.40 * scale, 0.990, 236_394, label="cnn.pt", is_baseline=True, speedup_vs_baseline=1.0),
            _record("cnn.int8.onnx", "onnxruntime", batch, 0.12 * scale, 0.985, 70_000, speedup_vs_baseline=3.3),
            _record("<script>x.onnx", "onnxruntime", batch, 0.20 * scale, 0.970, 2_500_000),  # dominated by cnn.int8.onnx
        ]
    records.append(_record("model.ts", "torch", 1, 0.5, None, 240_000))  # no accuracy: left out of plot 1
    skipped = _record("cnn.engine", "tensorrt", 1, 1.0, None, None, device="cuda", skipped=SKIP_REASON)
    skipped.update(latency_ms=None, throughput=None, params=None, flops=None, peak_memory_bytes=None)
    records.append(skipped)
    return _document(records)


def test_render_html_is_self_contained_and_escaped():
    page = render_html(_full_document())
    for label in ("cnn.pt", "cnn.int8.onnx", "<script>x.onnx", "model.ts", "cnn.engine"):
        assert html.escape(label) in page
    assert "<script" not in page  # the artifact name is text, never markup
    assert page.count("data:image/png;base64,") == 3
    assert 'src="http' not in page and 'href="http' not in page and "<link" not in page
    assert html.escape(SKIP_REASON) in page
    assert "same-run ratio vs the baseline record" in page
    assert NO_ACCURACY not in page
    for encoded in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page):
        assert base64.b64decode(encoded).startswith(PNG_MAGIC)


def test_render_html_with_one_record_and_no_accuracy():
    page = render_html(_document([_record("only.onnx", "onnxruntime", 1, 0.3, None, 1000)]))
    assert "only.onnx" in page
    assert NO_ACCURACY in page
    assert page.count("data:image/png;base64,") == 3


def test_write_plots_writes_three_pngs(tmp_path):
    paths = write_plots(_full_document(), tmp_path / "plots")
    assert [p.name for p in paths] == ["latency_vs_accuracy.png", "size.png", "latency_by_batch.png"]
    for path in paths:
        assert path.parent == tmp_path / "plots"
        assert path.read_bytes().startswith(PNG_MAGIC) and path.stat().st_size > 1000


def test_pareto_front_drops_dominated_points():
    points = [(1.0, 0.90, "fast"), (2.0, 0.95, "balanced"), (3.0, 0.99, "accurate"),
              (2.5, 0.94, "slower and worse than balanced"), (1.0, 0.80, "same speed as fast, worse"), (4.0, 0.99, "slower, no better")]
    assert [p[2] for p in pareto_front(points)] == ["fast", "balanced", "accurate"]
    assert pareto_front([]) == []
    assert pareto_front([(5.0, 0.5)]) == [(5.0, 0.5)]


def test_import_does_not_load_matplotlib():
    code = "import aiopt.bench.html, sys; assert 'matplotlib' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
