"""bertfast.info(): versions, the extension's build, and the backend each op will use."""
from __future__ import annotations

import importlib.metadata
import platform

import torch

from bertfast import _backend


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:  # (not Linux)
        return ""


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo's, else platform's)."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo: x86 'flags', Arm 'Features'); empty where it cannot be read."""
    flags: set[str] = set()
    for line in _cpuinfo().splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return flags


def backends_for(device: str) -> dict[str, str]:
    mode = _backend.backend_mode()
    is_cuda = device == "cuda"
    ext = _backend.extension() is not None and (not is_cuda or _backend.extension_has_cuda())
    if mode == "torch":
        triton_ops = "torch reference"
    elif (mode == "triton" or is_cuda) and _backend.triton_available():
        triton_ops = "triton" + (" (interpreter)" if not is_cuda else "")
    else:
        triton_ops = "torch reference"
    embed = "torch reference" if mode == "torch" or not ext else ("bertfast._C (CUDA)" if is_cuda else "bertfast._C (C++)")
    if embed != "torch reference" and triton_ops.startswith("triton"):
        embed += ", backward triton"  # (the GPU backward is a Triton kernel pair: kernels/embedding_sum.py)
    out = {"embedding_sum": embed, "fused_bias_gelu": triton_ops, "fused_residual_layer_norm": triton_ops,
           "fused_attention": triton_ops if triton_ops != "torch reference" else "torch reference (SDPA)"}
    from bertfast.ops.cpu import built as cpu_kernels_built

    if not is_cuda and triton_ops == "torch reference" and mode != "torch" and cpu_kernels_built():
        # the C++ CPU kernels (bertfast/ops/cpu.py) where nothing needs a gradient
        kernels = f"bertfast._C (C++ {_backend.extension().cpu_kernels_capability()}) without gradients, else "
        for op in ("fused_bias_gelu", "fused_residual_layer_norm"):
            out[op] = kernels + out[op]
        out["fused_attention"] = kernels.replace("without", "packed, without") + out["fused_attention"]
    return out


def info(print_out: bool = True) -> dict:
    ext = _backend.extension()
    data = {
        "bertfast": _version("bertfast"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "extension": "built" if ext is not None else "not built",
        "extension_cuda": bool(ext is not None and ext.has_cuda()),
        "BERTFAST_BACKEND": _backend.backend_mode(),
        "backends": {"cpu": backends_for("cpu"), "cuda": backends_for("cuda")},
    }
    if print_out:
        for key, value in data.items():
            if key != "backends":
                print(f"{key:>18}: {value}")
        for device, ops in data["backends"].items():
            for op, backend in ops.items():
                print(f"{device + ' ' + op:>36}: {backend}")
    return data
