"""fused_attention: softmax(q kᵀ · scale + key-padding mask) v.

q, k, v: [B, heads, S, D]; attention_mask: the HF 2-D [B, S] 0/1 key mask (None: no padding).
A query row whose keys are all masked gives zeros (HF gives an average of the values there; parity
is judged on real tokens).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bertfast import _backend
from bertfast._validate import FLOAT_DTYPES, check_probability, check_same_device, check_tensor


def check_attention_mask(attention_mask: torch.Tensor, batch: int, seq: int) -> torch.Tensor:
    """The [B, S] key mask as bool; any other shape or a value other than 0/1 raises."""
    check_tensor("attention_mask", attention_mask)
    if tuple(attention_mask.shape) != (batch, seq):
        raise ValueError(f"attention_mask must have shape [batch, seq] = {[batch, seq]}, got {list(attention_mask.shape)}")
    if attention_mask.dtype != torch.bool:
        if attention_mask.numel() and not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
            raise ValueError("attention_mask must hold only 0 and 1 (1 = a real token, 0 = padding)")
        attention_mask = attention_mask != 0
    return attention_mask


def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    dropout_p: float = 0.0, softmax_scale: float | None = None, training: bool = False,
                    seed: int | None = None) -> torch.Tensor:
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, dtypes=FLOAT_DTYPES, dim=4)
    if k.shape != q.shape or v.shape != q.shape or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share shape and dtype: got {tuple(q.shape)} {q.dtype}, "
                         f"{tuple(k.shape)} {k.dtype}, {tuple(v.shape)} {v.dtype}")
    check_probability("dropout_p", dropout_p)
    check_same_device(q=q, k=k, v=v, attention_mask=attention_mask)
    batch, _, seq, head_dim = q.shape
    key_mask = None if attention_mask is None else check_attention_mask(attention_mask, batch, seq)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
    p = float(dropout_p) if training else 0.0
    additive = None
    if key_mask is not None:
        additive = torch.zeros(key_mask.shape, dtype=q.dtype, device=q.device)
        additive = additive.masked_fill(~key_mask, torch.finfo(q.dtype).min)[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=additive, dropout_p=p, scale=scale)
    if key_mask is not None:
        # Rows with no key at all: zeros, not the average the additive mask would give.
        out = out.masked_fill(~key_mask.any(-1)[:, None, None, None], 0.0)
    return out
