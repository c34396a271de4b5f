"""embedding_sum: word[input_ids] + type[token_type_ids] + position[position_ids], in one pass.

Runs in the compiled extension (C++ on CPU, CUDA on GPU) or the torch reference (BERTFAST_BACKEND=torch,
or when bertfast._C was not built). The sum is taken in fp32 and rounded once to the table dtype.
Gradients go into all three tables with fp32 accumulation; none into the word table's padding_idx row.
On CUDA with torch.use_deterministic_algorithms(True) the backward sums each row in a fixed order.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bertfast import _backend
from bertfast._validate import FLOAT_DTYPES, INDEX_DTYPES, check_ids_in_range, check_same_device, check_tensor
from bertfast.ops._custom import FusedOp
from bertfast.reference import embedding_sum_ref


def _forward_impl(input_ids: torch.Tensor, token_type_ids: torch.Tensor, position_ids: torch.Tensor,
                  word_weight: torch.Tensor, type_weight: torch.Tensor, position_weight: torch.Tensor,
                  padding_idx: int) -> torch.Tensor:
    # Ids are flat, contiguous int64 [tokens]; range checked here too, so compiled graphs keep the check.
    _check_ranges(input_ids, token_type_ids, position_ids, word_weight, type_weight, position_weight)
    return torch.ops.bertfast_C.embedding_sum_forward(input_ids, token_type_ids, position_ids, word_weight,
                                                      type_weight, position_weight, _backend.cuda_stream(word_weight))


def _forward_fake(input_ids, token_type_ids, position_ids, word_weight, type_weight, position_weight, padding_idx):
    return word_weight.new_empty((input_ids.shape[0], word_weight.shape[1]))


def _table_backward_impl(grad: torch.Tensor, ids: torch.Tensor, num_rows: int, padding_idx: int) -> torch.Tensor:
    order = None
    if grad.is_cuda and torch.are_deterministic_algorithms_enabled():
        order = torch.argsort(ids, stable=True)
    return torch.ops.bertfast_C.embedding_table_backward(grad, ids, order, num_rows, padding_idx,
                                                         _backend.cuda_stream(grad))


def _setup_context(ctx, inputs, output):
    input_ids, token_type_ids, position_ids, word_weight, type_weight, position_weight, padding_idx = inputs
    ctx.save_for_backward(input_ids, token_type_ids, position_ids)
    ctx.rows = (word_weight.shape[0], type_weight.shape[0], position_weight.shape[0])
    ctx.dtypes = (word_weight.dtype, type_weight.dtype, position_weight.dtype)
    ctx.padding_idx = padding_idx


def _backward(ctx, grad):
    ids = ctx.saved_tensors
    grad = grad.contiguous()
    grads = [None] * 7
    for i, (table_ids, rows, dtype) in enumerate(zip(ids, ctx.rows, ctx.dtypes)):
        if ctx.needs_input_grad[3 + i]:
            pad = ctx.padding_idx if i == 0 else -1
            grads[3 + i] = _table_backward(grad, table_ids, rows, pad).to(dtype)
    return tuple(grads)


_table_backward = FusedOp("bertfast::embedding_table_backward", _table_backward_impl,
                          lambda grad, ids, num_rows, padding_idx:
                          grad.new_empty((num_rows, grad.shape[1]), dtype=torch.float32))
_embedding_sum = FusedOp("bertfast::embedding_sum", _forward_impl, _forward_fake, _setup_context, _backward)

# Fake (meta) kernels of the raw extension ops, so they can be traced directly too.
_C_FAKES_REGISTERED = False


def _register_extension_fakes():
    global _C_FAKES_REGISTERED
    if _C_FAKES_REGISTERED or _backend.extension() is None:
        return
    torch.library.register_fake("bertfast_C::embedding_sum_forward")(
        lambda ids, tt, pos, w, t, p, stream: w.new_empty((ids.shape[0], w.shape[1])))
    torch.library.register_fake("bertfast_C::embedding_table_backward")(
        lambda grad, ids, order, rows, pad, stream: grad.new_empty((rows, grad.shape[1]), dtype=torch.float32))
    _C_FAKES_REGISTERED = True


def _check_ranges(input_ids, token_type_ids, position_ids, word_weight, type_weight, position_weight):
    check_ids_in_range([("input_ids", input_ids, word_weight.shape[0]),
                        ("token_type_ids", token_type_ids, type_weight.shape[0]),
                        ("position_ids", position_ids, position_weight.shape[0])])


def embedding_sum(input_ids: torch.Tensor, token_type_ids: torch.Tensor | None, position_ids: torch.Tensor | None,
                  word_weight: torch.Tensor, type_weight: torch.Tensor, position_weight: torch.Tensor,
                  padding_idx: int | None = None, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """[B, S, H] = word[input_ids] + type[token_type_ids] + position[position_ids].

    With inputs_embeds [B, S, H] given instead of input_ids (None), it takes the place of word[input_ids].

    input_ids: [B, S] int64/int32. token_type_ids, position_ids: broadcastable to [B, S] (None: zeros and
    arange(S)). Tables: [rows, H], one float dtype (fp32, fp16 or bf16), all on input_ids' device.
    Ids outside a table raise IndexError naming the tensor and the value, before any kernel runs.
    """
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("give exactly one of input_ids and inputs_embeds")
    if inputs_embeds is not None:
        return _embeds_plus_positions(inputs_embeds, token_type_ids, position_ids, word_weight, type_weight, position_weight)
    check_tensor("input_ids", input_ids, dtypes=INDEX_DTYPES, dim=2)
    batch, seq = input_ids.shape
    if token_type_ids is None:
        token_type_ids = torch.zeros(1, 1, dtype=torch.long, device=input_ids.device)
    if position_ids is None:
        position_ids = torch.arange(seq, dtype=torch.long, device=input_ids.device)[None]
    for name, t in (("token_type_ids", token_type_ids), ("position_ids", position_ids)):
        check_tensor(name, t, dtypes=INDEX_DTYPES, dim=(1, 2))
        try:
            torch.broadcast_shapes(t.shape, (batch, seq))
        except RuntimeError:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, which does not broadcast to input_ids' {(batch, seq)}") from None
    for name, w in (("word_weight", word_weight), ("type_weight", type_weight), ("position_weight", position_weight)):
        check_tensor(name, w, dtypes=FLOAT_DTYPES, dim=2)
        if w.dtype != word_weight.dtype or w.shape[1] != word_weight.shape[1]:
            raise ValueError(f"{name} is {w.dtype} [{w.shape[0]}, {w.shape[1]}] but word_weight is {word_weight.dtype} "
                             f"[.., {word_weight.shape[1]}]: the tables must share dtype and hidden size")
    check_same_device(input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids,
                      word_weight=word_weight, type_weight=type_weight, position_weight=position_weight)
    flat = [t.expand(batch, seq).reshape(-1).to(torch.long).contiguous() for t in (input_ids, token_type_ids, position_ids)]
    hidden = word_weight.shape[1]
    if not _backend.use_extension(word_weight):
        _check_ranges(*flat, word_weight, type_weight, position_weight)
        out = embedding_sum_ref(*flat, word_weight, type_weight, position_weight, padding_idx)
        return out.view(batch, seq, hidden)
    if not torch.compiler.is_compiling():  # (compiled graphs trace bertfast::embedding_sum's own fake)
        _register_extension_fakes()
    pad = -1 if padding_idx is None else int(padding_idx) % word_weight.shape[0]
    out = _embedding_sum(*flat, word_weight.contiguous(), type_weight.contiguous(), position_weight.contiguous(), pad)
    return out.view(batch, seq, hidden)


def _embeds_plus_positions(inputs_embeds, token_type_ids, position_ids, word_weight, type_weight, position_weight):
    """inputs_embeds + type[token_type_ids] + position[position_ids] (the user brought the word vectors)."""
    check_tensor("inputs_embeds", inputs_embeds, dtypes=FLOAT_DTYPES, dim=3)
    batch, seq, hidden = inputs_embeds.shape
    if hidden != word_weight.shape[1]:
        raise ValueError(f"inputs_embeds has hidden size {hidden}, the embedding tables {word_weight.shape[1]}")
    if token_type_ids is None:
        token_type_ids = torch.zeros(1, 1, dtype=torch.long, device=inputs_embeds.device)
    if position_ids is None:
        position_ids = torch.arange(seq, device=inputs_embeds.device)[None]
    check_same_device(inputs_embeds=inputs_embeds, token_type_ids=token_type_ids, position_ids=position_ids,
                      type_weight=type_weight, position_weight=position_weight)
    tt, pos = (t.expand(batch, seq) for t in (token_type_ids, position_ids))
    check_ids_in_range([("token_type_ids", tt, type_weight.shape[0]), ("position_ids", pos, position_weight.shape[0])])
    return inputs_embeds + F.embedding(tt, type_weight) + F.embedding(pos, position_weight)
