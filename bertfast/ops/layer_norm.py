"""fused_residual_layer_norm: LayerNorm(dropout(x) + residual) in one pass each way.

residual=None makes it a plain LayerNorm (the embeddings use it so). Statistics in fp32; dropout drawn in
the kernel from a seed and regenerated in the backward (no stored mask).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bertfast import _backend
from bertfast._validate import FLOAT_DTYPES, check_probability, check_same_device, check_tensor


def fused_residual_layer_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor | None,
                              bias: torch.Tensor | None, eps: float = 1e-12, dropout_p: float = 0.0,
                              training: bool = False, seed: int | None = None) -> torch.Tensor:
    check_tensor("x", x, dtypes=FLOAT_DTYPES)
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension")
    hidden = x.shape[-1]
    if residual is not None:
        check_tensor("residual", residual, dtypes=FLOAT_DTYPES)
        if residual.shape != x.shape:
            raise ValueError(f"residual has shape {tuple(residual.shape)} but x has {tuple(x.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            check_tensor(name, t, dtypes=FLOAT_DTYPES, dim=1)
            if t.shape[0] != hidden:
                raise ValueError(f"{name} has shape {tuple(t.shape)} but x's last dimension is {hidden}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    check_probability("dropout_p", dropout_p)
    check_same_device(x=x, residual=residual, weight=weight, bias=bias)
    p = float(dropout_p) if training else 0.0
    if _backend.use_triton(x):
        from bertfast.ops._triton_ops import residual_layer_norm

        return residual_layer_norm(x, residual, weight, bias, float(eps), p, seed)
    if p > 0:
        x = F.dropout(x, p, training=True)
    h = x if residual is None else x + residual
    return F.layer_norm(h, (hidden,), weight, bias, eps)
