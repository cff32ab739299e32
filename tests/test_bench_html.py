"""The bench HTML report and plots: real matplotlib (Agg), a hand-made bench document."""
import base64
import fcntl
import html
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aiopt.bench.html import NO_ACCURACY, render_html, write_plots
from aiopt.bench.plots import pareto_front
from conftest import shared_folder

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
    """Two models (a CNN and an LSTM lineage) plus an artifact without a baseline and a skipped record."""
    records = []
    for batch, scale in ((1, 1.0), (64, 30.0)):
        records += [
            _record("cnn.pt", "torch", batch, 0.40 * scale, 0.990, 236_394, is_baseline=True, baseline="cnn.pt", speedup_vs_baseline=1.0),
            _record("cnn.int8.onnx", "onnxruntime", batch, 0.12 * scale, 0.985, 70_000, baseline="cnn.pt", speedup_vs_baseline=3.33),
            _record("<script>x.onnx", "onnxruntime", batch, 0.20 * scale, 0.970, 2_500_000, baseline="cnn.pt"),  # dominated by cnn.int8.onnx
            _record("cnn.p90.pt", "torch", batch, 0.05 * scale, 0.950, 30_000, baseline="cnn.pt", speedup_vs_baseline=8.0),  # fastest, 4 points down
            _record("lstm.pt", "torch", batch, 0.60 * scale, 0.962, 277_000, is_baseline=True, baseline="lstm.pt", speedup_vs_baseline=1.0),
            _record("lstm.int8.onnx", "onnxruntime", batch, 0.50 * scale, 0.962, 82_000, baseline="lstm.pt", speedup_vs_baseline=1.2),
        ]
    records.append(_record("model.ts", "torch", 1, 0.5, None, 240_000))  # no baseline, no accuracy: left out of plot 1
    skipped = _record("cnn.engine", "tensorrt", 1, 1.0, None, None, device="cuda", baseline="cnn.pt", skipped=SKIP_REASON)
    skipped.update(latency_ms=None, throughput=None, params=None, flops=None, peak_memory_bytes=None)
    records.append(skipped)
    return _document(records)


def test_render_html_is_self_contained_and_escaped():
    page = render_html(_full_document())
    for label in ("cnn.pt", "cnn.int8.onnx", "<script>x.onnx", "model.ts", "cnn.engine"):
        assert html.escape(label) in page
    assert "<script" not in page  # the artifact name is text, never markup
    assert page.count("data:image/png;base64,") == 9  # three plots for each of cnn.pt, lstm.pt and the artifact without a baseline
    assert 'src="http' not in page and 'href="http' not in page and "<link" not in page
    assert "default-src 'none'" in page  # nothing outside the page may load
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


def test_write_plots_writes_three_pngs_per_model(tmp_path):
    paths = write_plots(_full_document(), tmp_path / "plots")
    assert [p.name for p in paths] == [f"{model}.{plot}.png" for model in ("cnn.pt", "lstm.pt", "no-baseline")
                                       for plot in ("latency_vs_accuracy", "size", "latency_by_batch")]
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


# --- the summary: best artifact per model -----------------------------------------------------

def test_best_per_model_is_the_fastest_within_a_point_of_the_baseline():
    from aiopt.bench.report import NO_BASELINE, best_per_model

    bests = {(b.model, b.batch_size): b for b in best_per_model(_full_document())}
    assert set(bests) == {(m, batch) for m in ("cnn.pt", "lstm.pt") for batch in (1, 64)} | {(NO_BASELINE, 1)}
    cnn = bests[("cnn.pt", 64)]
    assert cnn.best["artifact"] == "cnn.int8.onnx"  # cnn.p90.pt is faster but 4 points down
    assert cnn.speedup == 3.33 and round(cnn.accuracy_change, 4) == -0.005
    assert cnn.describe() == ("cnn.int8.onnx [onnxruntime]: 3.3x faster than cnn.pt (FP32 PyTorch) at batch 64, "
                              "accuracy 99.0% -> 98.5%, size 230.9 KiB -> 68.4 KiB")
    assert bests[("lstm.pt", 1)].best["artifact"] == "lstm.int8.onnx"
    assert bests[(NO_BASELINE, 1)].speedup is None


def test_nothing_faster_within_the_budget_keeps_the_baseline():
    from aiopt.bench.report import best_per_model

    records = [_record("m.pt", "torch", 64, 1.0, 0.99, 1000, is_baseline=True, baseline="m.pt"),
               _record("m.fast.onnx", "onnxruntime", 64, 0.2, 0.90, 500, baseline="m.pt")]
    (best,) = best_per_model(_document(records))
    assert best.best is best.baseline and best.speedup == 1.0
    assert best.describe().startswith("nothing beat m.pt (FP32 PyTorch) at batch 64 within 1 pt")


def test_headline_and_markdown_summary_come_from_the_records():
    from aiopt.bench.report import headline, markdown

    document = _full_document()
    line = headline(document)
    assert line.startswith("cnn.int8.onnx [onnxruntime]: 3.3x faster than cnn.pt (FP32 PyTorch) at batch 64")
    assert "lstm.int8.onnx [onnxruntime]: 1.2x faster than lstm.pt" in line
    assert headline(document, batch_size=1).count("at batch 1,") == 2  # no baseline: no claim for model.ts
    text = markdown(document)
    assert text.index("Best per model") < text.index("Machine:") < text.index("| artifact |")
    assert "| cnn.pt | cpu | 64 | cnn.int8.onnx | onnxruntime | 3.600 | 3.33x | 99.0% -> 98.5% (-0.5 pt) | 230.9 KiB -> 68.4 KiB |" in text


def test_html_summary_comes_before_the_plots_and_groups_plots_per_model():
    page = render_html(_full_document())
    assert page.index("<h2>Summary</h2>") < page.index("<h2>Plots per model</h2>") < page.index("<h2>Records</h2>")
    for model in ("cnn.pt", "lstm.pt"):
        assert f'alt="{model}: latency vs accuracy"' in page
    assert "3.33\u00d7" in page


def test_point_numbers_do_not_cover_each_other():
    from aiopt.bench.plots import model_figures as _figures

    # six artifacts at nearly the same latency and accuracy: names written beside them would pile up
    records = [_record("m.pt", "torch", 1, 1.0, 0.95, 1000, is_baseline=True, baseline="m.pt")]
    records += [_record(f"m{i}.onnx", "onnxruntime", 1, 1.0 + 0.002 * i, 0.95 + 0.0002 * i, 900, baseline="m.pt") for i in range(5)]
    (_, figures), = _figures(_document(records))
    figure = figures["latency_vs_accuracy"]
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    (ax,) = [a for a in figure.axes if a.texts]
    boxes = [text.get_window_extent(renderer) for text in ax.texts]
    assert sorted(t.get_text() for t in ax.texts) == [str(n) for n in range(1, 7)]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)


# --- the page in a real browser ----------------------------------------------------------------

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--remote-debugging-pipe")


@pytest.fixture(scope="session")
def chromium(tmp_path_factory) -> str:
    """Debian's chromium; installed with apt-get when absent and running as root (CI), else skipped
    (by one xdist worker at a time: apt-get takes dpkg's lock)."""
    from filelock import FileLock

    with FileLock(shared_folder(tmp_path_factory) / "apt-get.lock"):
        found = shutil.which("chromium")
        if found:
            return found
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.skip("needs chromium (apt-get install -y chromium); not root or no apt-get here to install it")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:  # a clean machine has no package lists yet: update once when the plain install fails
            for commands in ([["apt-get", "install", "-y", "-q", "chromium"]],
                             [["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]]):
                if all(subprocess.run(c, env=env, capture_output=True, timeout=900).returncode == 0 for c in commands):
                    break
        except subprocess.TimeoutExpired:
            pytest.skip("apt-get install -y chromium took more than 15 minutes")
        return shutil.which("chromium") or pytest.skip("apt-get install -y chromium failed; install it to run the browser test")


class _DevTools:
    """Chromium driven over the Chrome DevTools protocol on --remote-debugging-pipe: JSON messages
    ended by NUL, commands written to the browser's fd 3, replies and events read from its fd 4."""

    def __init__(self, binary: str, profile: Path, timeout: float = 60):
        to_browser, self._writer = os.pipe()
        self._reader, from_browser = os.pipe()

        def as_fds_3_and_4():  # in the child; moved out of the way first so neither dup2 clobbers the other
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser, from_browser)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.process = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=(3, 4, to_browser, from_browser),
                                        preexec_fn=as_fds_3_and_4)
        os.close(to_browser)
        os.close(from_browser)
        self._buffer, self._id, self.events, self._deadline = b"", 0, [], time.monotonic() + timeout

    def _message(self) -> dict:
        while b"\0" not in self._buffer:
            left = self._deadline - time.monotonic()
            if left <= 0 or not select.select([self._reader], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._reader, 1 << 16)
            if not chunk:
                raise RuntimeError(f"chromium exited: {self.process.stderr.read().decode(errors='replace')[-2000:]}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        os.write(self._writer, json.dumps({"id": self._id, "method": method, "params": params or {},
                                           **({"sessionId": session} if session else {})}).encode() + b"\0")
        while True:
            message = self._message()
            if message.get("id") == self._id:
                assert "error" not in message, (method, message["error"])
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, event: str) -> None:
        while not any(e.get("method") == event for e in self.events):
            self.events.append(self._message())

    def close(self) -> None:
        try:
            self.send("Browser.close")
            self.process.wait(10)
        except (OSError, RuntimeError, TimeoutError, subprocess.TimeoutExpired):
            self.process.kill()
        os.close(self._reader)
        os.close(self._writer)


def _open_in_chromium(binary: str, page: Path, profile: Path) -> tuple[list[dict], list[str]]:
    """Load `page` in headless Chromium: every <img> as {alt, naturalWidth} once loaded, and the
    console errors, uncaught exceptions and failed loads it logged."""
    browser = _DevTools(binary, profile)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
        browser.wait_for("Page.loadEventFired")
        images = browser.send("Runtime.evaluate", {"expression": "[...document.images].map(i => ({alt: i.alt, naturalWidth: i.naturalWidth}))",
                                                   "returnByValue": True}, session=session)["result"]["value"]
        errors = []
        for event in browser.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                errors.append(params["exceptionDetails"].get("exception", {}).get("description") or params["exceptionDetails"]["text"])
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                errors.append(f"{params['entry']['text']} {params['entry'].get('url', '')}")
        return images, errors
    finally:
        browser.close()


@pytest.mark.slow  # a real browser; on a fresh machine its fixture first installs chromium with apt-get
def test_report_renders_in_chromium_without_errors_and_its_images_load(chromium, tmp_path):
    page = tmp_path / "report.html"
    page.write_text(render_html(_full_document()))
    images, errors = _open_in_chromium(chromium, page, tmp_path / "profile")
    assert errors == []
    assert len(images) == 9 and all(image["naturalWidth"] > 0 for image in images), images


@pytest.mark.slow  # a real browser; on a fresh machine its fixture first installs chromium with apt-get
def test_the_browser_check_sees_errors_and_broken_images(chromium, tmp_path):
    page = tmp_path / "broken.html"
    page.write_text('<img alt="broken" src="data:image/png;base64,AAAA"><script>console.error("boom"); missing();</script>')
    images, errors = _open_in_chromium(chromium, page, tmp_path / "profile")
    assert images == [{"alt": "broken", "naturalWidth": 0}]
    assert any("boom" in e for e in errors) and any("missing is not defined" in e for e in errors)
