"""fused_bias_gelu: gelu(x + bias) in one pass each way.

Triton on CUDA (and under the interpreter with BERTFAST_BACKEND=triton); on the CPU without gradients the
C++ kernel (ops/cpu.py), else the torch reference.
Registered as the custom op bertfast::bias_gelu (autograd through bertfast::bias_gelu_backward), so
torch.compile traces it as one node (eager calls skip its dispatch: see ops/_custom.py). The backward
recomputes x + bias rather than storing it.
"""
from __future__ import annotations

import torch

from bertfast import _backend
from bertfast._validate import FLOAT_DTYPES, check_same_device, check_tensor
from bertfast.ops import cpu
from bertfast.ops._custom import FusedOp
from bertfast.reference import bias_gelu_ref

APPROXIMATIONS = ("none", "tanh")


def _forward_impl(x: torch.Tensor, bias: torch.Tensor, approximate: str) -> torch.Tensor:
    from bertfast.kernels.bias_gelu import bias_gelu_forward

    return bias_gelu_forward(x, bias, approximate)


def _backward_impl(dy: torch.Tensor, x: torch.Tensor, bias: torch.Tensor,
                   approximate: str) -> tuple[torch.Tensor, torch.Tensor]:
    from bertfast.kernels.bias_gelu import bias_gelu_backward

    return bias_gelu_backward(dy.contiguous(), x, bias, approximate)


def _setup_context(ctx, inputs, output):
    x, bias, approximate = inputs
    ctx.save_for_backward(x, bias)
    ctx.approximate = approximate


def _backward(ctx, dy):
    x, bias = ctx.saved_tensors
    dx, dbias = _bias_gelu_backward(dy, x, bias, ctx.approximate)
    return dx, dbias, None


_bias_gelu_backward = FusedOp("bertfast::bias_gelu_backward", _backward_impl,
                              lambda dy, x, bias, approximate: (torch.empty_like(x), torch.empty_like(bias)))
_bias_gelu = FusedOp("bertfast::bias_gelu", _forward_impl, lambda x, bias, approximate: torch.empty_like(x),
                     _setup_context, _backward)


def fused_bias_gelu(x: torch.Tensor, bias: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """gelu(x + bias) over the last dimension; approximate="none" is erf GELU, "tanh" the tanh form.
    x: [..., n] float; bias: [n]. The output has x's dtype."""
    check_tensor("x", x, dtypes=FLOAT_DTYPES)
    check_tensor("bias", bias, dtypes=FLOAT_DTYPES, dim=1)
    if x.dim() == 0 or bias.shape[0] != x.shape[-1]:
        raise ValueError(f"bias has shape {tuple(bias.shape)} but x's last dimension is {x.shape[-1] if x.dim() else None}")
    if approximate not in APPROXIMATIONS:
        raise ValueError(f"approximate must be one of {APPROXIMATIONS}, got {approximate!r}")
    check_same_device(x=x, bias=bias)
    if not _backend.use_triton(x):
        if cpu.applies(x, bias):
            return cpu.bias_gelu(x, bias, approximate)
        return bias_gelu_ref(x, bias, approximate).to(x.dtype)
    if x.numel() == 0:
        return torch.empty_like(x)
    return _bias_gelu(x.reshape(-1, x.shape[-1]).contiguous(), bias.contiguous(), approximate).view(x.shape)
