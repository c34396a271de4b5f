"""Importing bertfast: fast, no transformers, no triton, no CUDA."""
import subprocess
import sys

CODE = """
import sys, time
t0 = time.perf_counter(); import torch; t1 = time.perf_counter()
import bertfast; t2 = time.perf_counter()
import torch.cuda
print(t1 - t0, t2 - t1, 'transformers' in sys.modules, 'triton' in sys.modules, torch.cuda.is_initialized())
"""


def test_import_is_fast_and_light():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True).stdout.split()
    torch_s, bertfast_s, transformers_loaded, triton_loaded, cuda_initialised = out
    assert float(bertfast_s) < 1.0, f"import bertfast took {bertfast_s}s on top of torch's {torch_s}s"
    assert transformers_loaded == "False"
    assert triton_loaded == "False"
    assert cuda_initialised == "False"


def test_info_runs():
    out = subprocess.run([sys.executable, "-m", "bertfast", "info"], capture_output=True, text=True, check=True).stdout
    assert "embedding_sum" in out and "torch" in out
