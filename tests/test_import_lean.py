"""`import aiopt` and `aiopt --help` stay fast: no heavy or GPU library is loaded."""
import subprocess
import sys

HEAVY = ("torch", "onnxruntime", "tensorrt", "matplotlib", "onnx")

CHECK = """
import sys
{body}
heavy = [m for m in {heavy!r} if m in sys.modules]
assert not heavy, heavy
"""


def _run(body: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHECK.format(body=body, heavy=HEAVY)], capture_output=True, text=True)


def test_import_aiopt_loads_no_heavy_library():
    result = _run("import aiopt; aiopt.__version__")
    assert result.returncode == 0, result.stderr


def test_cli_help_loads_no_heavy_library():
    body = "sys.argv = ['aiopt', '--help']\nfrom aiopt.cli import main\ntry:\n    main()\nexcept SystemExit as e:\n    assert e.code in (0, None)"
    result = _run(body)
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "inspect" in result.stdout
