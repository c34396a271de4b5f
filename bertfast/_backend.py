"""Which implementation runs an op: chosen per call from the tensor's device and BERTFAST_BACKEND.

BERTFAST_BACKEND = auto (default) | torch | triton
  auto    CUDA tensors -> Triton kernels and the CUDA extension; CPU tensors -> the C++ extension
          where it has the op, else the torch reference.
  torch   the pure-torch reference everywhere (debugging, parity).
  triton  the Triton kernels even on CPU tensors (needs TRITON_INTERPRET=1 there: this is how CI
          tests the kernels).
Nothing here touches CUDA or imports triton at import time.
"""
from __future__ import annotations

import functools
import importlib.util
import os

import torch

BACKENDS = ("auto", "torch", "triton")

# Inside bertfast.analysis.trace.gpu_trace(), meta tensors stand for CUDA ones (the GPU path runs on them,
# recorded instead of launched: the static checks of what a GPU would do).
_META_IS_GPU = False


def set_meta_is_gpu(value: bool) -> bool:
    """Set whether meta tensors take the GPU path; returns the previous setting."""
    global _META_IS_GPU
    previous, _META_IS_GPU = _META_IS_GPU, value
    return previous


def is_gpu(t: torch.Tensor) -> bool:
    """Whether t is on the GPU (or stands for a GPU tensor inside gpu_trace)."""
    return t.device.type == "cuda" or (_META_IS_GPU and t.device.type == "meta")


def backend_mode() -> str:
    mode = os.environ.get("BERTFAST_BACKEND", "auto").strip().lower() or "auto"
    if mode not in BACKENDS:
        raise ValueError(f"BERTFAST_BACKEND must be one of {BACKENDS}, got {mode!r}")
    return mode


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def extension():
    """The compiled module bertfast._C, or None when it was not built."""
    try:
        from bertfast import _C  # noqa: F401  (importing registers torch.ops.bertfast_C)
    except ImportError:
        return None
    return _C


def extension_has_cuda() -> bool:
    ext = extension()
    return ext is not None and ext.has_cuda()


def use_triton(t: torch.Tensor) -> bool:
    """Whether a Triton kernel should run on tensor t."""
    mode = backend_mode()
    if mode == "torch" or not triton_available():
        if mode == "triton":
            raise RuntimeError("BERTFAST_BACKEND=triton but triton is not installed")
        return False
    if mode == "triton":
        if t.device.type == "cpu" and not triton_interpreted():
            raise RuntimeError("BERTFAST_BACKEND=triton on CPU tensors needs TRITON_INTERPRET=1 set before triton is imported")
        return True
    return is_gpu(t)


def use_extension(t: torch.Tensor) -> bool:
    """Whether the compiled extension should run on tensor t."""
    if backend_mode() == "torch" or extension() is None:
        return False
    if t.device.type == "cpu":
        return True
    if _META_IS_GPU and t.device.type == "meta":
        return True  # traced as the CUDA build would run
    return t.device.type == "cuda" and extension_has_cuda()


def cuda_stream(t: torch.Tensor) -> int:
    """The current CUDA stream of t's device as an integer (0 on CPU), for the extension."""
    if t.device.type != "cuda":
        return 0
    return torch.cuda.current_stream(t.device).cuda_stream
