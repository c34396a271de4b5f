"""embedding_layer_norm: LayerNorm(embedding_sum(...)) with the sum and the normalisation fused.

Where no gradient is needed (inference): on the CPU, the C++ kernel of bertfast._C (ops/cpu.py: one pass a
token, the sum and the statistics in fp32, rounded once to the tables' dtype; BertModel's embeddings take
it); on the Triton backend, the fused Triton forward (a candidate to replace the embeddings' two ops on
the GPU, kept only if it is faster: the model does not call it there). With gradients it is
embedding_sum followed by fused_residual_layer_norm, so training is exactly the unfused path.
"""
from __future__ import annotations

import torch

from bertfast import _backend
from bertfast.ops import cpu
from bertfast.ops.embedding_sum import _check_ranges, _checked_ids, embedding_sum
from bertfast.ops.layer_norm import fused_residual_layer_norm


def embedding_layer_norm(input_ids, token_type_ids, position_ids, word_weight, type_weight, position_weight,
                         ln_weight, ln_bias, eps: float = 1e-12, padding_idx: int | None = None,
                         ids_checked: bool = False) -> torch.Tensor:
    """[B, S, H] = LayerNorm(word[input_ids] + type[token_type_ids] + position[position_ids]), arguments as
    embedding_sum's (ids_checked: the caller checked the ids' ranges)."""
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if cpu.applies(word_weight, type_weight, position_weight, ln_weight, ln_bias):  # (no gradient needed)
        batch, seq, _, _, ids = _checked_ids(input_ids, token_type_ids, position_ids, word_weight, type_weight,
                                             position_weight)
        if not ids_checked:
            _check_ranges(*ids, word_weight, type_weight, position_weight)
        y = cpu.embedding_layer_norm(*ids, word_weight, type_weight, position_weight, ln_weight, ln_bias, eps)
        return y.view(batch, seq, word_weight.shape[1])
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (word_weight, type_weight, position_weight, ln_weight, ln_bias))
    if needs_grad or not _backend.use_triton(word_weight):
        x = embedding_sum(input_ids, token_type_ids, position_ids, word_weight, type_weight, position_weight, padding_idx,
                          ids_checked=ids_checked)
        return fused_residual_layer_norm(x, None, ln_weight, ln_bias, eps)
    batch, seq = input_ids.shape
    if token_type_ids is None:
        token_type_ids = torch.zeros(1, 1, dtype=torch.long, device=input_ids.device)
    if position_ids is None:
        position_ids = torch.arange(seq, device=input_ids.device)[None]
    flat = [t.expand(batch, seq).reshape(-1).to(torch.long).contiguous() for t in (input_ids, token_type_ids, position_ids)]
    _check_ranges(*flat, word_weight, type_weight, position_weight)
    from bertfast.kernels.embedding_layer_norm import embedding_layer_norm_forward

    tables = [t.contiguous() for t in (word_weight, type_weight, position_weight)]
    y = embedding_layer_norm_forward(*flat, *tables, ln_weight, ln_bias, float(eps))
    return y.view(batch, seq, -1)
