"""Shared fixtures. Markers (gpu, tensorrt, slow) are declared in pyproject; here they skip
with a reason where the hardware or library is absent, so plain `pytest` is green on CPU."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def pytest_addoption(parser):
    parser.addoption("--cpu-times", type=int, default=0, metavar="N",
                     help="list the N tests that took the most CPU seconds (the process running the test and its finished "
                          "children, so in each xdist worker; steadier than wall time on a shared machine)")


_cpu_seconds: dict[str, float] = {}
_CPU_PROPERTY = "cpu_seconds"
_cpu_start = pytest.StashKey[float]()


def _cpu_now() -> float:
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    if item.config.getoption("--cpu-times"):
        item.stash[_cpu_start] = _cpu_now()
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # setup (a fixture's first user pays for it), call and teardown, carried by the teardown report: xdist sends
    # reports with their user_properties from the workers, so the count reaches the process that prints the summary
    if call.when == "teardown" and _cpu_start in item.stash:
        item.user_properties.append((_CPU_PROPERTY, _cpu_now() - item.stash[_cpu_start]))
    yield


def pytest_runtest_logreport(report):
    if report.when == "teardown":
        for name, value in report.user_properties:
            if name == _CPU_PROPERTY:
                _cpu_seconds[report.nodeid] = value


def pytest_terminal_summary(terminalreporter, config):
    count = config.getoption("--cpu-times")
    if count and _cpu_seconds:
        terminalreporter.write_sep("=", f"most CPU seconds (total {sum(_cpu_seconds.values()):.1f} s over {len(_cpu_seconds)} tests)")
        for nodeid, seconds in sorted(_cpu_seconds.items(), key=lambda kv: -kv[1])[:count]:
            terminalreporter.write_line(f"{seconds:8.2f}s  {nodeid}")
        per_file: dict[str, float] = {}
        for nodeid, seconds in _cpu_seconds.items():
            per_file[nodeid.split("::")[0]] = per_file.get(nodeid.split("::")[0], 0.0) + seconds
        terminalreporter.write_sep("=", "CPU seconds per file")
        for path, seconds in sorted(per_file.items(), key=lambda kv: -kv[1]):
            terminalreporter.write_line(f"{seconds:8.2f}s  {path}")


# Language-model tests whose claim is end to end over several runtimes, marked slow here because their files belong to
# the language-model work; their code paths stay in the fast subset (quantize's AWQ, GPTQ and floor tests, bench's CLI test,
# `aiopt run` on texts and bad token ids, OpenVINO's reopened stateful candidate in test_llm_openvino_runtime_options.py).
SLOW_LANGUAGE_MODEL_TESTS = {
    "tests/test_llm_quantize.py::test_quantize_measures_each_candidate_in_its_runtime_and_generate_honours_the_choice",
    "tests/test_llm_bench.py::test_bench_reports_ttft_tokens_per_s_memory_perplexity_and_the_bandwidth_fraction",
    "tests/test_llm_run.py::test_token_ids_give_the_same_logits_on_torch_onnxruntime_and_openvino",
    "tests/test_llm_quantize.py::test_an_openvino_ir_written_by_quantize_generates_the_fp32_tokens_on_openvino",
}


# The longest files, longest first: seconds of test time per file in the whole suite in 2 workers with PostgreSQL
# (2026-12-07, load 1 to 3): 265, 184, 115, 103, 47, 42, 42, 39, 34, 33, 31, 27 (of 1234 in all). Under xdist each
# worker collects and sorts alike, and `--dist loadfile --no-loadscope-reorder` (scripts/test.sh) hands the files
# out in this order, so no worker starts a long file when the other is nearly done; other files keep their places.
LONGEST_FILES_FIRST = (
    "tests/test_reference_accuracy.py",
    "tests/test_llm_quantize.py",
    "tests/test_optimize.py",
    "tests/test_optimize_postgres.py",
    "tests/test_llm_openvino_fused.py",
    "tests/test_llm_llamacpp.py",
    "tests/test_reliability.py",
    "tests/test_hf.py",
    "tests/test_llm_route.py",
    "tests/test_coverage_models.py",
    "tests/test_quantize.py",
    "tests/test_benchmarks_suite.py",
)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        rank = {path: place for place, path in enumerate(LONGEST_FILES_FIRST)}
        items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: the rest keep their order
    cuda = _cuda_available()
    tensorrt = importlib.util.find_spec("tensorrt") is not None
    for item in items:
        if item.nodeid in SLOW_LANGUAGE_MODEL_TESTS:
            item.add_marker(pytest.mark.slow)
        if "gpu" in item.keywords and not cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)"))
        if "tensorrt" in item.keywords and not tensorrt:
            item.add_marker(pytest.mark.skip(reason="needs TensorRT (pip install 'aiopt[tensorrt]' on a machine with an NVIDIA GPU)"))


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def with_metadata(source, target, **fields):
    """A copy of ONNX file `source` at `target` with `fields` set in its aiopt metadata (e.g. the
    serving plan quantize records: runtime, serving)."""
    import json

    import onnx

    from aiopt.artifacts import METADATA_KEY
    from aiopt.artifacts import embed_metadata

    model = onnx.load(str(source))
    metadata = json.loads({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    embed_metadata(model, {**metadata, **fields})
    onnx.save(model, str(target))
    return target


def run_cli(*args: str, cwd: str | os.PathLike | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real `aiopt` entry point in a fresh process, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "aiopt", *args],
        cwd=cwd, capture_output=True, text=True, timeout=600,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **(env or {})},
    )


def invoke_cli(*args: str, cwd: str | os.PathLike | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the `aiopt` command line in this process (typer's CliRunner), for tests of what a
    command does rather than of the process around it: same app, same error handling and exit
    codes, `sys.argv` as the real entry point sees it, stdout and stderr apart, and what C
    libraries write straight to file descriptors 1 and 2 caught too (placed before the Python
    text). Saves the start of a fresh interpreter (importing torch, several seconds) per call.
    Keep `run_cli` where the process itself is the subject: the entry point's exit codes,
    interrupts, concurrency, import leanness, output through a pipe, and the absence of warnings
    that a library gives once per process (in-process, an earlier test may have used them up)."""
    import signal
    import traceback

    from typer.testing import CliRunner

    from aiopt import cli

    state, argv, handler = dict(cli._state), sys.argv, signal.getsignal(signal.SIGINT)
    threads = _torch_threads()
    environment = {"NO_COLOR": "1", "COLUMNS": "200", **(env or {})}
    try:
        sys.argv = ["aiopt", *args]
        # what the module reads from the environment when a fresh process imports it
        cli._state.update(debug=bool({**os.environ, **environment}.get("AIOPT_DEBUG")), interrupted=False)
        with contextlib.chdir(cwd or os.getcwd()), _file_descriptors_caught() as written:
            result = CliRunner(env=environment).invoke(cli.app, list(args), catch_exceptions=True)
    finally:
        sys.argv = argv
        cli._state.clear()
        cli._state.update(state)
        signal.signal(signal.SIGINT, handler)
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
    # what C libraries (ONNX Runtime's logger, OpenVINO) wrote straight to the descriptors comes first,
    # as it would in a fresh process, where it precedes the final error line
    stdout, stderr = written[1] + result.stdout, written[2] + result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        # as an uncaught exception in a real process: the traceback on stderr, exit 1
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(["aiopt", *args], result.exit_code, stdout, stderr)


@contextlib.contextmanager
def _file_descriptors_caught():
    """Catch what is written to file descriptors 1 and 2 below Python (C libraries) while the
    command runs; CliRunner sees only sys.stdout and sys.stderr. Yields {1: text, 2: text}, filled on exit."""
    import ctypes
    import tempfile

    written = {1: "", 2: ""}
    saved = {fd: os.dup(fd) for fd in written}
    files = {fd: tempfile.TemporaryFile() for fd in written}
    try:
        for fd, file in files.items():
            os.dup2(file.fileno(), fd)
        yield written
    finally:
        ctypes.CDLL(None).fflush(None)  # C stdio buffers, before the descriptors go back
        for fd, file in files.items():
            os.dup2(saved[fd], fd)
            os.close(saved[fd])
            file.seek(0)
            written[fd] = file.read().decode(errors="replace")
            file.close()


def _torch_threads() -> int | None:
    """torch's thread count, when torch is loaded (a command's --threads must not leak into later tests)."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def shared_folder(tmp_path_factory) -> Path:
    """A folder all the xdist workers of this run share (the parent of each worker's base temp, as
    xdist's documentation does it); this run's base temp in one process."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared"
    folder.mkdir(exist_ok=True)
    return folder


def built_once(tmp_path_factory, name: str, build) -> Path:
    """`build(path)` run once for all the xdist workers of this run, path being NAME in a folder of its own: the
    first worker to ask builds it under a file lock and marks it done; the others wait on the lock and read
    what it built (a build that failed leaves no mark: the next one to ask builds again). Returns the path."""
    from filelock import FileLock

    shared = shared_folder(tmp_path_factory)
    folder, done = shared / f"{name}.build", shared / f"{name}.done"
    with FileLock(shared / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed build left
            folder.mkdir()
            build(folder / name)
            done.touch()
    return folder / name


def _trained(tmp_path_factory, name: str, epochs: int) -> Path:
    from aiopt.reference_models.train import train_reference_model

    return built_once(tmp_path_factory, f"{name.replace(':', '-')}.pt",
                      lambda path: train_reference_model(name, str(path), dataset="mnist1d", epochs=epochs, seed=0))


@pytest.fixture(scope="session")
def tiny_cnn(tmp_path_factory) -> Path:
    """A cnn:tiny trained for a few epochs on MNIST-1D, shared (read only) by the tests that only read it."""
    return _trained(tmp_path_factory, "cnn:tiny", epochs=3)


@pytest.fixture(scope="session")
def tiny_cnn_onnx(tiny_cnn, tmp_path_factory) -> Path:
    """`tiny_cnn` exported to ONNX with the defaults (cnn.onnx), shared (read only) by the OpenVINO and Triton tests."""
    from aiopt.export.onnx import export_onnx

    return built_once(tmp_path_factory, "cnn.onnx", lambda path: export_onnx(tiny_cnn, path))


@pytest.fixture(scope="session")
def tiny_lstm(tmp_path_factory) -> Path:
    """An lstm:tiny trained for two epochs, shared (read only) by the quantize, prune and export tests."""
    return _trained(tmp_path_factory, "lstm:tiny", epochs=2)


@pytest.fixture(scope="session")
def tiny_transformer(tmp_path_factory) -> Path:
    """A transformer:tiny trained for two epochs, shared (read only) by the quantize, prune, export and torch-cuda tests."""
    return _trained(tmp_path_factory, "transformer:tiny", epochs=2)


@pytest.fixture(scope="session", autouse=True)
def _tmp_path_factory_for_helpers(tmp_path_factory):
    """tmp_path_factory for the helper modules that are not fixtures (`built_once` in tests/llm_tiny.py)."""
    global TMP_PATH_FACTORY
    TMP_PATH_FACTORY = tmp_path_factory


TMP_PATH_FACTORY = None


@pytest.fixture
def brief_timing(monkeypatch):
    """Quantize's latency timing shortened for this test's runs in this process (`invoke_cli`);
    why, and what it leaves measured: tests/brief_timing.py."""
    from brief_timing import shorten

    shorten(monkeypatch.setattr)


def run_cli_brief(*args: str, **popen) -> subprocess.Popen:
    """`python -m aiopt ARGS` in a fresh process with quantize's timing shortened
    (tests/brief_timing.py), started and returned unwaited; `popen`: Popen's keywords."""
    return subprocess.Popen([sys.executable, str(Path(__file__).parent / "brief_timing.py"), *args], **popen)


@pytest.fixture(scope="session")
def linear_onnx(tmp_path_factory):
    """A two-layer MLP as ONNX (input x: batch x 8, output logits: batch x 3), for tests of runner plumbing."""
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("linear") / "linear.onnx"
    torch.onnx.export(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval(), (torch.randn(2, 8),),
                      str(path), input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
                      dynamo=False)
    return path
