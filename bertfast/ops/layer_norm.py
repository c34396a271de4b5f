"""fused_residual_layer_norm: LayerNorm(dropout(x + x_bias) + residual) in one pass each way.

residual=None makes it a plain LayerNorm (the embeddings use it so). x_bias is the bias of the linear
layer that produced x (BERT's attention-output and output projections, run as a bias-free matmul): folded
in here, its gradient (dx summed over tokens) comes from the backward kernel's partial sums, beside
dweight and dbias, instead of a separate reduction over dx. Statistics are kept in fp32; the
output has the dtype of x + residual (a bf16 x with an fp32 residual, as under autocast, gives fp32;
fp32 weights with bf16/fp16 activations are fine); under CUDA autocast it is fp32, as PyTorch's
autocast gives layer_norm there (CPU autocast leaves layer_norm in its input dtype, and so does this op).
Dropout is drawn in the kernel from `seed` with a counter-based generator and regenerated in the
backward (no stored mask).
On the CPU without gradients or dropout: the C++ kernel (ops/cpu.py).
Registered as the custom op bertfast::residual_layer_norm, autograd through ..._backward (eager calls
skip its dispatch: see ops/_custom.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bertfast import _backend
from bertfast._validate import FLOAT_DTYPES, check_probability, check_same_device, check_tensor
from bertfast.ops import cpu
from bertfast.ops._custom import FusedOp
from bertfast.ops._seed import dropout_seed


def _forward_impl(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor | None,
                  bias: torch.Tensor | None, eps: float, p: float, seed: torch.Tensor | None,
                  x_bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from bertfast.kernels.layer_norm import residual_layer_norm_forward

    return residual_layer_norm_forward(x, residual, weight, bias, eps, p, seed, x_bias)


def _forward_fake(x, residual, weight, bias, eps, p, seed, x_bias):
    stats = x.new_empty(x.shape[0], dtype=torch.float32)
    dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    return torch.empty_like(x, dtype=dtype), stats, torch.empty_like(stats)


def _backward_impl(dy: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None,
                   weight: torch.Tensor | None, bias: torch.Tensor | None, mean: torch.Tensor, rstd: torch.Tensor,
                   p: float, seed: torch.Tensor | None, x_bias: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from bertfast.kernels.layer_norm import residual_layer_norm_backward

    dh, dx, dw, db, dxb = residual_layer_norm_backward(dy.contiguous(), x, residual, weight, bias, mean, rstd, p, seed,
                                                       x_bias)
    # Custom-op outputs may not alias each other: when dx equals dh it is returned once, as dh; a missing
    # parameter's gradient is an empty placeholder (one each: returns may not alias each other either).
    return (dh, dx if dx is not dh else dh.new_empty(0), *(g if g is not None else dh.new_empty(0) for g in (dw, db, dxb)))


def _backward_fake(dy, x, residual, weight, bias, mean, rstd, p, seed, x_bias):
    from bertfast.kernels.layer_norm import needs_separate_dx

    dh = torch.empty_like(residual if residual is not None else x)
    empty = dh.new_empty(0)
    dx = torch.empty_like(x) if needs_separate_dx(x, residual, p) else empty.clone()
    return (dh, dx, *(torch.empty_like(t) if t is not None else empty.clone() for t in (weight, bias, x_bias)))


def _setup_context(ctx, inputs, output):
    x, residual, weight, bias, eps, p, seed, x_bias = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, residual, weight, bias, mean, rstd, seed, x_bias)
    ctx.p = p
    ctx.set_materialize_grads(False)  # mean and rstd get no gradient: no zero tensors for them


def _backward(ctx, dy, _dmean, _drstd):
    x, residual, weight, bias, mean, rstd, seed, x_bias = ctx.saved_tensors
    from bertfast.kernels.layer_norm import needs_separate_dx

    if dy is None:
        return (None,) * 8

    dh, dx, dw, db, dxb = _layer_norm_backward(dy, x, residual, weight, bias, mean, rstd, ctx.p, seed, x_bias)
    if not needs_separate_dx(x, residual, ctx.p):
        dx = dh  # the op returned an empty placeholder (outputs may not alias)
    return (dx, dh if residual is not None else None, dw if weight is not None else None,
            db if bias is not None else None, None, None, None, dxb if x_bias is not None else None)


_layer_norm_backward = FusedOp("bertfast::residual_layer_norm_backward", _backward_impl, _backward_fake)
_layer_norm = FusedOp("bertfast::residual_layer_norm", _forward_impl, _forward_fake, _setup_context, _backward)


def _widest_x_bias_row() -> int:
    from bertfast.kernels.launch import WIDE_ROW  # (imports triton: only on the Triton path)

    return WIDE_ROW


def fused_residual_layer_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor | None,
                              bias: torch.Tensor | None, eps: float = 1e-12, dropout_p: float = 0.0,
                              training: bool = False, seed: int | torch.Tensor | None = None,
                              x_bias: torch.Tensor | None = None) -> torch.Tensor:
    """LayerNorm over the last dimension of dropout(x + x_bias) + residual (dropout only when training).

    x, residual: [..., n] float; weight, bias, x_bias: [n] or None. seed: the dropout seed (None: drawn
    on x's device from torch's generator, so torch.manual_seed makes runs repeatable and CUDA-graph
    replays draw new masks; see ops/_seed.py)."""
    check_tensor("x", x, dtypes=FLOAT_DTYPES)
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension")
    hidden = x.shape[-1]
    if residual is not None:
        check_tensor("residual", residual, dtypes=FLOAT_DTYPES)
        if residual.shape != x.shape:
            raise ValueError(f"residual has shape {tuple(residual.shape)} but x has {tuple(x.shape)}: they must match")
    for name, t in (("weight", weight), ("bias", bias), ("x_bias", x_bias)):
        if t is not None:
            check_tensor(name, t, dtypes=FLOAT_DTYPES, dim=1)
            if t.shape[0] != hidden:
                raise ValueError(f"{name} has shape {tuple(t.shape)} but x's last dimension is {hidden}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    check_probability("dropout_p", dropout_p)
    check_same_device(x=x, residual=residual, weight=weight, bias=bias, x_bias=x_bias)
    p = float(dropout_p) if training else 0.0
    if x.device.type == "cuda" and torch.is_autocast_enabled("cuda"):
        # PyTorch's CUDA autocast runs layer_norm in fp32 (an fp32 output). Inside BERT the residual is
        # already fp32, so this cast happens only for a LayerNorm of low-precision inputs alone.
        if (x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)) != torch.float32:
            x = x.float()
    if x_bias is not None and (not _backend.use_triton(x) or hidden > _widest_x_bias_row()):
        # Added here, as the linear layer's own bias add would (in x's dtype): on the reference path, and for
        # rows wider than the kernels fold a bias into (kernels/layer_norm.py).
        x, x_bias = x + x_bias.to(x.dtype), None
    if not _backend.use_triton(x):
        if p == 0 and cpu.applies(x, residual, weight, bias):
            return cpu.residual_layer_norm(x, residual, weight, bias, eps)
        if p > 0:
            x = F.dropout(x, p, training=True)
        h = x if residual is None else x + residual
        if any(t is not None and t.dtype != h.dtype for t in (weight, bias)):
            # Mixed precision (e.g. fp32 weights, bf16 activations): normalise in fp32, as autocast does.
            return F.layer_norm(h.float(), (hidden,), weight.float() if weight is not None else None,
                                bias.float() if bias is not None else None, eps).to(h.dtype)
        return F.layer_norm(h, (hidden,), weight, bias, eps)
    flat = x.reshape(-1, hidden).contiguous()
    res = residual.reshape(-1, hidden).contiguous() if residual is not None else None
    args = (flat, res, weight.contiguous() if weight is not None else None,
            bias.contiguous() if bias is not None else None, float(eps), p, dropout_seed(p, seed, x.device),
            x_bias.contiguous() if x_bias is not None else None)
    y, _, _ = _layer_norm(*args)
    return y.view(x.shape)
