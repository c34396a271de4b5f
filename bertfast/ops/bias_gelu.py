"""fused_bias_gelu: gelu(x + bias) in one pass each way (Triton on CUDA, the torch reference on CPU)."""
from __future__ import annotations

import torch

from bertfast import _backend
from bertfast._validate import FLOAT_DTYPES, check_same_device, check_tensor
from bertfast.reference import bias_gelu_ref

APPROXIMATIONS = ("none", "tanh")


def fused_bias_gelu(x: torch.Tensor, bias: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """gelu(x + bias) over the last dimension; approximate="none" is erf GELU, "tanh" the tanh form."""
    check_tensor("x", x, dtypes=FLOAT_DTYPES)
    check_tensor("bias", bias, dtypes=FLOAT_DTYPES, dim=1)
    if x.dim() == 0 or bias.shape[0] != x.shape[-1]:
        raise ValueError(f"bias has shape {tuple(bias.shape)} but x's last dimension is {x.shape[-1] if x.dim() else None}")
    if approximate not in APPROXIMATIONS:
        raise ValueError(f"approximate must be one of {APPROXIMATIONS}, got {approximate!r}")
    check_same_device(x=x, bias=bias)
    if _backend.use_triton(x):
        from bertfast.ops._triton_ops import bias_gelu

        return bias_gelu(x, bias, approximate)
    return bias_gelu_ref(x, bias, approximate)
