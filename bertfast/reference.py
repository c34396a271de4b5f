"""Pure-torch versions of every op: the ground truth the kernels are tested against.

Each is written for clarity, in the input dtype, exactly as eager PyTorch / transformers compute it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def embedding_sum_ref(input_ids, token_type_ids, position_ids, word_weight, type_weight, position_weight, padding_idx=None):
    words = F.embedding(input_ids, word_weight, padding_idx=padding_idx)
    return words + F.embedding(token_type_ids, type_weight) + F.embedding(position_ids, position_weight)


def bias_gelu_ref(x, bias, approximate: str = "none"):
    return F.gelu(x + bias, approximate=approximate)


def dropout_mask_ref(shape, p: float, seed: int, device=None):
    """Not the kernels' generator: tests compare kernels against a reference given the kernel's own mask."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    return (torch.rand(shape, generator=g) >= p).to(device)


def residual_layer_norm_ref(x, residual, weight, bias, eps, dropout_mask=None, dropout_p: float = 0.0,
                            dropout_scale: float | None = None, x_bias=None):
    """LayerNorm(dropout(x + x_bias) + residual), with the dropout given as an explicit keep-mask; kept
    values are scaled by dropout_scale (default 1 / (1 - p); the kernels' exact one is
    kernels.dropout.keep_scale)."""
    if x_bias is not None:
        x = x + x_bias
    if dropout_mask is not None:
        scale = dropout_scale if dropout_scale is not None else 1.0 / (1.0 - dropout_p)
        x = x * dropout_mask.to(x.dtype) * scale
    h = x if residual is None else x + residual
    return F.layer_norm(h, (h.shape[-1],), weight, bias, eps)


def attention_ref(q, k, v, attention_mask=None, softmax_scale=None, dropout_mask=None, dropout_p: float = 0.0,
                  dropout_scale: float | None = None):
    """softmax(q kᵀ · scale + mask) v for q, k, v [B, heads, S, D] and a [B, S] 0/1 key mask; dropout as an
    explicit keep-mask, kept probabilities scaled by dropout_scale (default 1 / (1 - p)).

    Fully padded rows (no key kept) give zeros, as the kernel does."""
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if attention_mask is not None:
        keep = attention_mask[:, None, None, :].bool()
        scores = scores.masked_fill(~keep, float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).nan_to_num(0.0).to(q.dtype)
    if dropout_mask is not None:
        scale = dropout_scale if dropout_scale is not None else 1.0 / (1.0 - dropout_p)
        probs = probs * dropout_mask.to(probs.dtype) * scale
    return torch.matmul(probs, v)
