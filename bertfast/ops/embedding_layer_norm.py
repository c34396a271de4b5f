"""embedding_layer_norm: LayerNorm(embedding_sum(...)) with the sum and the normalisation fused.

A candidate to replace the embeddings' two ops (issue: keep it if it is faster). The fused Triton
forward runs where no gradient is needed (inference) on the Triton backend; with gradients it is
embedding_sum followed by fused_residual_layer_norm, so training is exactly the unfused path.
"""
from __future__ import annotations

import torch

from bertfast import _backend
from bertfast.ops.embedding_sum import _check_ranges, embedding_sum
from bertfast.ops.layer_norm import fused_residual_layer_norm


def embedding_layer_norm(input_ids, token_type_ids, position_ids, word_weight, type_weight, position_weight,
                         ln_weight, ln_bias, eps: float = 1e-12, padding_idx: int | None = None) -> torch.Tensor:
    """[B, S, H] = LayerNorm(word[input_ids] + type[token_type_ids] + position[position_ids])."""
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (word_weight, type_weight, position_weight, ln_weight, ln_bias))
    if needs_grad or not _backend.use_triton(word_weight):
        x = embedding_sum(input_ids, token_type_ids, position_ids, word_weight, type_weight, position_weight, padding_idx)
        return fused_residual_layer_norm(x, None, ln_weight, ln_bias, eps)
    batch, seq = input_ids.shape
    if token_type_ids is None:
        token_type_ids = torch.zeros(1, 1, dtype=torch.long, device=input_ids.device)
    if position_ids is None:
        position_ids = torch.arange(seq, device=input_ids.device)[None]
    flat = [t.expand(batch, seq).reshape(-1).to(torch.long).contiguous() for t in (input_ids, token_type_ids, position_ids)]
    _check_ranges(*flat, word_weight, type_weight, position_weight)
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    from bertfast.kernels.embedding_layer_norm import embedding_layer_norm_forward

    tables = [t.contiguous() for t in (word_weight, type_weight, position_weight)]
    y = embedding_layer_norm_forward(*flat, *tables, ln_weight, ln_bias, float(eps))
    return y.view(batch, seq, -1)
