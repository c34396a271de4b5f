import os

import pytest
import torch

from benchmarks.harness import Ceilings, Recorder, device

_RECORDER = None


@pytest.fixture(scope="session")
def recorder():
    global _RECORDER
    if _RECORDER is None:
        dev = device()
        _RECORDER = Recorder(dev, Ceilings.measure(dev))
    return _RECORDER


@pytest.fixture(scope="session")
def dev():
    return device()


def pytest_terminal_summary(terminalreporter):
    if _RECORDER is None or not _RECORDER.results:
        return
    table = _RECORDER.table()
    terminalreporter.write_sep("=", "bertfast comparison table")
    terminalreporter.write_line(table)
    _RECORDER.save()
    if os.environ.get("BERTFAST_BENCH_JSON"):
        terminalreporter.write_line(f"results written to {os.environ['BERTFAST_BENCH_JSON']}")


def pytest_collection_modifyitems(config, items):
    # Triton kernels on CPU would only run under the interpreter, whose timings are not performance.
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="Triton kernel: no GPU here, and interpreter timings are not performance")
        for item in items:
            if "triton_kernel" in item.keywords:
                item.add_marker(skip)
