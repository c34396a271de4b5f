"""embedding_sum: word[input_ids] + type[token_type_ids] + position[position_ids], in one pass.

Forward: the compiled extension (C++ on CPU, CUDA on GPU), or the torch reference (BERTFAST_BACKEND=torch,
or when bertfast._C was not built). The sum is taken in fp32 and rounded once to the table dtype. Ids that
broadcast (HF's default segment 0 and positions 0..S-1) reach the kernels without being copied: each id
tensor is read with its own period (one id, one per position, or one per token).
Backward: gradients go into all three tables with fp32 accumulation, each table row written once in the
table's dtype, none into the word table's padding_idx row. On the GPU a Triton kernel pair
(bertfast/kernels/embedding_sum.py: the gradient read once; with torch.use_deterministic_algorithms(True),
a fixed summation order); on CPU the extension (deterministic).
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
                  padding_idx: int, check_ids: bool) -> torch.Tensor:
    # Ids are 1-D int64, periodic over the tokens (see the module docstring). The range check runs here
    # too, so that compiled graphs keep it, unless the caller checked the ids already (check_ids=False).
    if check_ids:
        _check_ranges(input_ids, token_type_ids, position_ids, word_weight, type_weight, position_weight)
    return torch.ops.bertfast_C.embedding_sum_forward(input_ids, token_type_ids, position_ids, word_weight,
                                                      type_weight, position_weight, _backend.cuda_stream(word_weight))


def _forward_fake(input_ids, token_type_ids, position_ids, word_weight, type_weight, position_weight, padding_idx,
                  check_ids):
    return word_weight.new_empty((input_ids.shape[0], word_weight.shape[1]))


def _backward_impl(grad: torch.Tensor, input_ids: torch.Tensor, token_type_ids: torch.Tensor,
                   position_ids: torch.Tensor, word_rows: int, type_rows: int, position_rows: int,
                   padding_idx: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rows = (word_rows, type_rows, position_rows)
    if _backend.use_triton(grad):
        from bertfast.kernels.embedding_sum import embedding_backward

        return embedding_backward(grad, input_ids, token_type_ids, position_ids, rows, padding_idx,
                                  torch.are_deterministic_algorithms_enabled())
    out = []
    for ids, n, pad in zip((input_ids, token_type_ids, position_ids), rows, (padding_idx, -1, -1)):
        if grad.device.type == "cpu" and _backend.use_extension(grad):
            table = torch.ops.bertfast_C.embedding_table_backward(grad, ids, None, n, pad, 0)
        else:  # no Triton and no CPU extension: torch's own scatter-add, in fp32
            full = ids.repeat(grad.shape[0] // ids.numel()) if ids.numel() != grad.shape[0] else ids
            table = grad.new_zeros((n, grad.shape[1]), dtype=torch.float32).index_add_(0, full, grad.float())
            if pad >= 0:
                table[pad] = 0
        out.append(table.to(grad.dtype))
    return tuple(out)


def _backward_fake(grad, input_ids, token_type_ids, position_ids, word_rows, type_rows, position_rows, padding_idx):
    return tuple(grad.new_empty((n, grad.shape[1])) for n in (word_rows, type_rows, position_rows))


def _setup_context(ctx, inputs, output):
    input_ids, token_type_ids, position_ids, word_weight, type_weight, position_weight, padding_idx, _ = inputs
    ctx.save_for_backward(input_ids, token_type_ids, position_ids)
    ctx.rows = (word_weight.shape[0], type_weight.shape[0], position_weight.shape[0])
    ctx.dtypes = (word_weight.dtype, type_weight.dtype, position_weight.dtype)
    ctx.padding_idx = padding_idx


def _backward(ctx, grad):
    ids = ctx.saved_tensors
    grads = _embedding_backward(grad.contiguous(), *ids, *ctx.rows, ctx.padding_idx)
    # (the tables share one dtype: the public op checks it)
    return (None, None, None, *(g if ctx.needs_input_grad[3 + i] else None for i, g in enumerate(grads)), None, None)


_embedding_backward = FusedOp("bertfast::embedding_sum_backward", _backward_impl, _backward_fake)
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


def periodic_ids(t: torch.Tensor, batch: int, seq: int) -> torch.Tensor:
    """Ids broadcastable to [batch, seq] as the kernels read them: a 1-D int64 tensor of one id for all
    tokens, one per position (repeated over the batch) or one per token, copied only when its layout is
    none of these (a [batch, 1] tensor, a non-contiguous one, int32)."""
    t = t.to(torch.long)
    if t.numel() == 1:
        return t.reshape(1)
    if t.dim() == 1 or t.shape[0] == 1:  # one id per position
        return t.reshape(-1) if t.is_contiguous() else t.reshape(-1).contiguous()
    return t.expand(batch, seq).reshape(-1).contiguous()


def embedding_sum(input_ids: torch.Tensor, token_type_ids: torch.Tensor | None, position_ids: torch.Tensor | None,
                  word_weight: torch.Tensor, type_weight: torch.Tensor, position_weight: torch.Tensor,
                  padding_idx: int | None = None, inputs_embeds: torch.Tensor | None = None,
                  ids_checked: bool = False) -> torch.Tensor:
    """[B, S, H] = word[input_ids] + type[token_type_ids] + position[position_ids].

    With inputs_embeds [B, S, H] given instead of input_ids (None), it takes the place of word[input_ids].

    input_ids: [B, S] int64/int32. token_type_ids, position_ids: broadcastable to [B, S] (None: zeros and
    arange(S)). Tables: [rows, H], one float dtype (fp32, fp16 or bf16), all on input_ids' device.
    Ids outside a table raise IndexError naming the tensor and the value, before any kernel runs: a host
    synchronisation, which ids_checked=True skips for a caller that has checked them (BertModel checks all
    its inputs in the one synchronisation of its forward).
    """
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("give exactly one of input_ids and inputs_embeds")
    if inputs_embeds is not None:
        return _embeds_plus_positions(inputs_embeds, token_type_ids, position_ids, word_weight, type_weight, position_weight)
    batch, seq, token_type_ids, position_ids, ids = _checked_ids(input_ids, token_type_ids, position_ids, word_weight,
                                                                 type_weight, position_weight)
    hidden = word_weight.shape[1]
    if not _backend.use_extension(word_weight):
        flat = [t.expand(batch, seq).reshape(-1) for t in (input_ids.long(), token_type_ids.long(), position_ids.long())]
        _check_ranges(*flat, word_weight, type_weight, position_weight)
        out = embedding_sum_ref(*flat, word_weight, type_weight, position_weight, padding_idx)
        return out.view(batch, seq, hidden)
    if not torch.compiler.is_compiling():  # (compiled graphs trace bertfast::embedding_sum's own fake)
        _register_extension_fakes()
    pad = -1 if padding_idx is None else int(padding_idx) % word_weight.shape[0]
    out = _embedding_sum(*ids, word_weight.contiguous(), type_weight.contiguous(), position_weight.contiguous(), pad,
                         not ids_checked)
    return out.view(batch, seq, hidden)


def _checked_ids(input_ids, token_type_ids, position_ids, word_weight, type_weight, position_weight):
    """embedding_sum's argument checks (clear errors), then (batch, seq, token_type_ids and position_ids
    with HF's defaults, the three id tensors as the kernels read them: periodic_ids)."""
    check_tensor("input_ids", input_ids, dtypes=INDEX_DTYPES, dim=2)
    batch, seq = input_ids.shape
    if token_type_ids is None:
        token_type_ids = torch.zeros(1, dtype=torch.long, device=input_ids.device)
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
    ids = [periodic_ids(t, batch, seq) for t in (input_ids, token_type_ids, position_ids)]
    return batch, seq, token_type_ids, position_ids, ids


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
