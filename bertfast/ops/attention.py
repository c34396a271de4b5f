"""Attention with BERT's padding: fused_attention (padded, key mask), fused_attention_varlen (packed
tokens), fused_attention_qkv (either, with q, k and v in one tensor: the three projections as one
matmul, one gradient), and unpad / pad to move between the two.

fused_attention: q, k, v [B, heads, S, D] (any strides; the kernel reads [B, S, heads, D] memory, which
is what `linear(x).view(B, S, heads, D).transpose(1, 2)` gives, without a copy); attention_mask the HF
[B, S] 0/1 key mask. fused_attention_varlen: q, k, v [total, heads, D] with cu_seqlens (int32,
[B + 1]). A query row with no key to attend to (a fully padded or zero-length sequence) gives zeros and
zero gradients. Dropout on the probabilities is drawn in the kernel from `seed` and redrawn in the
backward. Triton on CUDA (and under TRITON_INTERPRET=1 with BERTFAST_BACKEND=triton); elsewhere the
torch reference (SDPA), through the same padding semantics, except packed attention on the CPU without
gradients or dropout, which is the C++ kernel (ops/cpu.py: each sequence read in place, no padding).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bertfast import _backend
from bertfast._validate import FLOAT_DTYPES, check_probability, check_same_device, check_tensor
from bertfast.ops import cpu
from bertfast.ops._custom import FusedOp
from bertfast.ops._seed import dropout_seed


MASK_VALUES_MESSAGE = "attention_mask must hold only 0 and 1 (1 = a real token, 0 = padding)"


def mask_values_ok(attention_mask: torch.Tensor) -> torch.Tensor:
    """A device-side bool: whether the mask holds only 0 and 1 (no host synchronisation)."""
    if attention_mask.dtype == torch.bool:
        return torch.ones((), dtype=torch.bool, device=attention_mask.device)
    if attention_mask.is_floating_point() or attention_mask.is_complex():
        return ((attention_mask == 0) | (attention_mask == 1)).all()
    return ((attention_mask >= 0) & (attention_mask <= 1)).all()


def check_attention_mask(attention_mask: torch.Tensor, batch: int, seq: int, values_checked: bool = False,
                         as_bool: bool = True) -> torch.Tensor:
    """The [B, S] key mask as bool (as_bool=False: as given, only checked); any other shape or a value other
    than 0/1 raises (reading the values is a host synchronisation, skipped under torch.compile
    and when the caller says it checked them)."""
    check_tensor("attention_mask", attention_mask)
    if tuple(attention_mask.shape) != (batch, seq):
        raise ValueError(f"attention_mask must have shape [batch, seq] = {[batch, seq]}, got {list(attention_mask.shape)}")
    if attention_mask.dtype != torch.bool:
        if not values_checked and not torch.compiler.is_compiling() and attention_mask.numel():
            if not bool(mask_values_ok(attention_mask)):
                raise ValueError(MASK_VALUES_MESSAGE)
        if as_bool:
            attention_mask = attention_mask != 0
    return attention_mask


# Custom ops ----------------------------------------------------------------------------------------
def _forward_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None,
                  cu_seqlens: torch.Tensor | None, max_seqlen: int, scale: float, p: float,
                  seed: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    from bertfast.kernels.attention import attention_forward

    return attention_forward(q, k, v, key_mask, cu_seqlens, max_seqlen, scale, p, seed)


def _forward_fake(q, k, v, key_mask, cu_seqlens, max_seqlen, scale, p, seed):
    # The log-sum-exp: [B * heads, S] padded, [heads, total tokens] packed (kernels.attention.lse_shape).
    if cu_seqlens is not None:
        shape = (q.shape[1], q.shape[0])
        out = q.new_empty(q.shape)
    else:
        shape = (q.shape[0] * q.shape[1], q.shape[2])
        b, h, s, d = q.shape
        out = q.new_empty((b, s, h, d)).transpose(1, 2)  # (canonical memory: kernels.attention._canonical_empty)
    return out, q.new_empty(shape, dtype=torch.float32)


def _backward_impl(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                   lse: torch.Tensor, key_mask: torch.Tensor | None, cu_seqlens: torch.Tensor | None,
                   max_seqlen: int, scale: float, p: float,
                   seed: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from bertfast.kernels.attention import attention_backward

    return attention_backward(_like(do, out), q, k, v, out, lse, key_mask, cu_seqlens, max_seqlen, scale, p, seed)


def _backward_fake(do, q, k, v, out, lse, key_mask, cu_seqlens, max_seqlen, scale, p, seed):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, key_mask, cu_seqlens, max_seqlen, scale, p, seed = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, key_mask, cu_seqlens, seed)
    ctx.args = (max_seqlen, scale, p)
    ctx.set_materialize_grads(False)  # the log-sum-exp gets no gradient: no zero tensor for it


def _backward(ctx, dout, _dlse):
    if dout is None:
        return (None,) * 9
    q, k, v, out, lse, key_mask, cu_seqlens, seed = ctx.saved_tensors
    dq, dk, dv = _attention_backward(dout, q, k, v, out, lse, key_mask, cu_seqlens, *ctx.args, seed)
    return dq, dk, dv, None, None, None, None, None, None


_attention_backward = FusedOp("bertfast::attention_backward", _backward_impl, _backward_fake)
_attention = FusedOp("bertfast::attention", _forward_impl, _forward_fake, _setup_context, _backward)


# q, k and v in one tensor (the three projections as one matmul): qkv [total, 3, heads, D] packed or
# [B, S, 3, heads, D] padded, contiguous. The kernels read q, k and v as views of it and the backward
# writes dq, dk and dv into one gradient of its shape: the projection's backward takes it as it is (no
# stack of three gradients, no sum of three input gradients).
def split_qkv(qkv: torch.Tensor, padded: bool):
    """q, k, v views of a packed qkv: [total, heads, D] each, or [B, heads, S, D] viewing [B, S, heads, D]."""
    q, k, v = qkv.unbind(-3)
    return tuple(t.transpose(1, 2) for t in (q, k, v)) if padded else (q, k, v)


def _qkv_forward_impl(qkv: torch.Tensor, key_mask: torch.Tensor | None, cu_seqlens: torch.Tensor | None,
                      max_seqlen: int, scale: float, p: float,
                      seed: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    return _forward_impl(*split_qkv(qkv, cu_seqlens is None), key_mask, cu_seqlens, max_seqlen, scale, p, seed)


def _qkv_forward_fake(qkv, key_mask, cu_seqlens, max_seqlen, scale, p, seed):
    return _forward_fake(*split_qkv(qkv, cu_seqlens is None), key_mask, cu_seqlens, max_seqlen, scale, p, seed)


def _qkv_backward_impl(do: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                       key_mask: torch.Tensor | None, cu_seqlens: torch.Tensor | None, max_seqlen: int, scale: float,
                       p: float, seed: torch.Tensor | None) -> torch.Tensor:
    from bertfast.kernels.attention import attention_backward

    padded = cu_seqlens is None
    dqkv = torch.empty_like(qkv)
    attention_backward(_like(do, out), *split_qkv(qkv, padded), out, lse, key_mask, cu_seqlens, max_seqlen, scale, p,
                       seed, grads=split_qkv(dqkv, padded))
    return dqkv


def _qkv_setup_context(ctx, inputs, output):
    qkv, key_mask, cu_seqlens, max_seqlen, scale, p, seed = inputs
    out, lse = output
    ctx.save_for_backward(qkv, out, lse, key_mask, cu_seqlens, seed)
    ctx.args = (max_seqlen, scale, p)
    ctx.set_materialize_grads(False)


def _qkv_backward(ctx, dout, _dlse):
    if dout is None:
        return (None,) * 7
    qkv, out, lse, key_mask, cu_seqlens, seed = ctx.saved_tensors
    return (_attention_qkv_backward(dout, qkv, out, lse, key_mask, cu_seqlens, *ctx.args, seed),
            None, None, None, None, None, None)


_attention_qkv_backward = FusedOp("bertfast::attention_qkv_backward", _qkv_backward_impl,
                                  lambda do, qkv, *rest: torch.empty_like(qkv))
_attention_qkv = FusedOp("bertfast::attention_qkv", _qkv_forward_impl, _qkv_forward_fake, _qkv_setup_context,
                         _qkv_backward)


def _kernel_mask(key_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The key mask as the padded kernels read it: int8, contiguous."""
    return key_mask.to(torch.int8).contiguous() if key_mask is not None else None


def _like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """t with ref's strides (the kernels address both through one set of strides)."""
    if t.stride() == ref.stride():
        return t
    return torch.empty_like(ref).copy_(t)


def _canonical_padded(t: torch.Tensor) -> torch.Tensor:
    """[B, H, S, D] viewing [B, S, H, D] memory: what the kernel reads. A view of the model's projections
    is already so; anything else is copied once."""
    b, h, s, d = t.shape
    if t.stride(3) == 1 and t.stride(1) == d and t.stride(2) == h * d and t.stride(0) == s * h * d:
        return t
    return t.transpose(1, 2).contiguous().transpose(1, 2)


# Public ops -----------------------------------------------------------------------------------------
def _check_qkv(q, k, v, dims):
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, dtypes=FLOAT_DTYPES, dim=dims)
    if k.shape != q.shape or v.shape != q.shape or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share shape and dtype: got {tuple(q.shape)} {q.dtype}, "
                         f"{tuple(k.shape)} {k.dtype}, {tuple(v.shape)} {v.dtype}")



def _softmax_scale(softmax_scale, head_dim: int) -> float:
    """The scale of the scores: 1/sqrt(head_dim) by default. The kernels fold it into one FMA per score
    after taking the row maximum of the unscaled scores, which needs it positive (and finite)."""
    if softmax_scale is None:
        return 1.0 / math.sqrt(head_dim)
    scale = float(softmax_scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"softmax_scale must be a positive finite number, got {softmax_scale!r}")
    return scale

def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    dropout_p: float = 0.0, softmax_scale: float | None = None, training: bool = False,
                    seed: int | torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q kᵀ · scale + key mask) v for q, k, v [B, heads, S, D]; attention_mask [B, S] (1 = real).
    seed: the dropout seed (None: drawn on q's device from torch's generator; see ops/_seed.py)."""
    _check_qkv(q, k, v, 4)
    check_probability("dropout_p", dropout_p)
    check_same_device(q=q, k=k, v=v, attention_mask=attention_mask)
    batch, heads, seq, head_dim = q.shape
    key_mask = None if attention_mask is None else check_attention_mask(attention_mask, batch, seq)
    scale = _softmax_scale(softmax_scale, head_dim)
    p = float(dropout_p) if training else 0.0
    if not _backend.use_triton(q):
        return _attention_reference(q, k, v, key_mask, scale, p)
    q, k, v = (_canonical_padded(t) for t in (q, k, v))
    out, _ = _attention(q, k, v, _kernel_mask(key_mask), None, seq, scale, p, dropout_seed(p, seed, q.device))
    return out


def check_cu_seqlens(cu_seqlens: torch.Tensor, total: int) -> None:
    check_tensor("cu_seqlens", cu_seqlens, dtypes=(torch.int32,), dim=1)
    if cu_seqlens.numel() < 1:
        raise ValueError("cu_seqlens must hold at least one offset (0)")
    values = cu_seqlens.tolist()
    if values[0] != 0 or values[-1] != total or any(b < a for a, b in zip(values, values[1:])):
        raise ValueError(f"cu_seqlens must start at 0, never decrease and end at the token count {total}; got "
                         f"{values if len(values) <= 12 else values[:6] + ['...'] + values[-6:]}")


def _check_sequences(cu_seqlens: torch.Tensor, total: int, max_seqlen: int) -> None:
    """cu_seqlens valid for `total` tokens, and no sequence longer than max_seqlen (host reads)."""
    check_cu_seqlens(cu_seqlens, total)
    lengths = cu_seqlens.diff()
    if lengths.numel() and int(lengths.max()) > max_seqlen:
        raise ValueError(f"max_seqlen={max_seqlen} is shorter than the longest sequence ({int(lengths.max())})")


def fused_attention_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                           max_seqlen: int, dropout_p: float = 0.0, softmax_scale: float | None = None,
                           training: bool = False, seed: int | torch.Tensor | None = None,
                           validate: bool = True) -> torch.Tensor:
    """Attention within each packed sequence: q, k, v [total, heads, D]; sequence b is the tokens
    cu_seqlens[b]:cu_seqlens[b + 1]; max_seqlen >= the longest. validate=False skips the host-side check
    of cu_seqlens (for callers that built it with unpad())."""
    _check_qkv(q, k, v, 3)
    check_probability("dropout_p", dropout_p)
    check_same_device(q=q, k=k, v=v, cu_seqlens=cu_seqlens)
    if validate:
        _check_sequences(cu_seqlens, q.shape[0], max_seqlen)
    scale = _softmax_scale(softmax_scale, q.shape[-1])
    p = float(dropout_p) if training else 0.0
    if not _backend.use_triton(q):
        if p == 0 and cpu.applies(q, k, v):
            return cpu.varlen_attention(q, k, v, cu_seqlens, scale)  # packed, in place: no gather, no padding
        return _attention_varlen_reference(q, k, v, cu_seqlens, max_seqlen, scale, p)
    q, k, v = (t.contiguous() for t in (q, k, v))
    out, _ = _attention(q, k, v, None, cu_seqlens, int(max_seqlen), scale, p, dropout_seed(p, seed, q.device))
    return out


def fused_attention_qkv(qkv: torch.Tensor, attention_mask: torch.Tensor | None = None, dropout_p: float = 0.0,
                        softmax_scale: float | None = None, training: bool = False,
                        seed: int | torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None,
                        max_seqlen: int | None = None, validate: bool = True) -> torch.Tensor:
    """fused_attention (qkv [B, S, 3, heads, D], attention_mask [B, S]; returns [B, heads, S, D]) or, with
    cu_seqlens and max_seqlen, fused_attention_varlen (qkv [total, 3, heads, D]; returns [total, heads, D])
    of q, k, v = qkv.unbind(-3): the three projections computed as one matmul. On the Triton path the
    gradient is one tensor of qkv's shape (no stack, no sum of three input gradients); elsewhere the
    same as calling those ops on the views."""
    varlen = cu_seqlens is not None
    check_tensor("qkv", qkv, dtypes=FLOAT_DTYPES, dim=4 if varlen else 5)
    if qkv.shape[-3] != 3:
        raise ValueError(f"qkv must hold q, k and v in its dimension -3 (size 3), got shape {tuple(qkv.shape)}")
    if varlen and max_seqlen is None:
        raise ValueError("fused_attention_qkv: max_seqlen is required with cu_seqlens")
    if not _backend.use_triton(qkv):
        if varlen:
            return fused_attention_varlen(*split_qkv(qkv, False), cu_seqlens, max_seqlen, dropout_p, softmax_scale,
                                          training, seed, validate)
        return fused_attention(*split_qkv(qkv, True), attention_mask, dropout_p, softmax_scale, training, seed)
    check_probability("dropout_p", dropout_p)
    scale = _softmax_scale(softmax_scale, qkv.shape[-1])
    p = float(dropout_p) if training else 0.0
    qkv = qkv.contiguous()
    if varlen:
        check_same_device(qkv=qkv, cu_seqlens=cu_seqlens)
        if validate:
            _check_sequences(cu_seqlens, qkv.shape[0], max_seqlen)
        out, _ = _attention_qkv(qkv, None, cu_seqlens, int(max_seqlen), scale, p, dropout_seed(p, seed, qkv.device))
        return out
    check_same_device(qkv=qkv, attention_mask=attention_mask)
    batch, seq = qkv.shape[:2]
    key_mask = None if attention_mask is None else check_attention_mask(attention_mask, batch, seq)
    out, _ = _attention_qkv(qkv, _kernel_mask(key_mask), None, seq, scale, p, dropout_seed(p, seed, qkv.device))
    return out


# Reference paths (CPU, BERTFAST_BACKEND=torch) --------------------------------------------------------
def _attention_reference(q, k, v, key_mask, scale, p):
    additive = None
    if key_mask is not None:
        additive = torch.zeros(key_mask.shape, dtype=q.dtype, device=q.device)
        additive = additive.masked_fill(~key_mask, torch.finfo(q.dtype).min)[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=additive, dropout_p=p, scale=scale)
    if key_mask is not None:
        # Rows with no key at all: zeros, not the average the additive mask would give.
        out = out.masked_fill(~key_mask.any(-1)[:, None, None, None], 0.0)
    return out


# Groups of packed sequences padded to their longest may cost at most this much more attention work than
# the sequences alone: one SDPA call per group instead of one per sequence (each call's fixed cost on a CPU
# is that of a whole short sequence's attention).
GROUP_WASTE = 1.25


def _length_groups(lengths: list[int]) -> list[list[int]]:
    """The non-empty sequences in groups of similar length (shortest first): each group's padded work
    (members x longest**2) within GROUP_WASTE of its members' own (sum of length**2)."""
    order = sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: lengths[i])
    groups, work = [], 0
    for i in order:
        n = lengths[i]
        if groups and (len(groups[-1]) + 1) * n * n <= GROUP_WASTE * (work + n * n):
            groups[-1].append(i)
            work += n * n
        else:
            groups.append([i])
            work = n * n
    return groups


def _attention_varlen_reference(q, k, v, cu_seqlens, max_seqlen, scale, p):
    """SDPA over groups of packed sequences of similar length (_length_groups), each group gathered into a
    padded [members, heads, longest, D] batch with a key mask (none when its lengths are equal), the
    output written back to the packed rows."""
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    starts, lengths = bounds[:-1], [b - a for a, b in zip(bounds, bounds[1:])]
    for group in _length_groups(lengths):
        longest = lengths[group[-1]]
        if len(group) == 1:
            # [1, heads, len, D] views: SDPA's fused CPU kernel takes these strides (3-D inputs fall back to
            # its slow math path)
            start = starts[group[0]]
            q_, k_, v_ = (t[start:start + longest].transpose(0, 1)[None] for t in (q, k, v))
            out[start:start + longest] = F.scaled_dot_product_attention(q_, k_, v_, dropout_p=p, scale=scale)[0].transpose(0, 1)
            continue
        member_starts = torch.tensor([starts[i] for i in group], device=q.device)
        member_lengths = torch.tensor([lengths[i] for i in group], device=q.device)
        positions = torch.arange(longest, device=q.device)
        valid = positions[None, :] < member_lengths[:, None]  # [members, longest]
        rows = torch.where(valid, member_starts[:, None] + positions[None, :], member_starts[:, None])
        flat = rows.flatten()
        # [members, heads, longest, D]
        q_, k_, v_ = (t.index_select(0, flat).view(*rows.shape, *t.shape[1:]).transpose(1, 2) for t in (q, k, v))
        mask = None if bool(valid.all()) else valid[:, None, None, :]
        context = F.scaled_dot_product_attention(q_, k_, v_, attn_mask=mask, dropout_p=p, scale=scale)
        keep = valid.flatten().nonzero().squeeze(1)
        out.index_copy_(0, flat.index_select(0, keep),
                        context.transpose(1, 2).reshape(-1, *q.shape[1:]).index_select(0, keep))
    return out


# Padding-free execution -------------------------------------------------------------------------------
class Unpadded:
    """Packed tokens of a padded batch: hidden [total, ...], where they came from, and the sequences."""

    def __init__(self, hidden, indices, cu_seqlens, max_seqlen, batch, seqlen):
        self.hidden, self.indices, self.cu_seqlens = hidden, indices, cu_seqlens
        self.max_seqlen, self.batch, self.seqlen = max_seqlen, batch, seqlen

    def __iter__(self):
        return iter((self.hidden, self.indices, self.cu_seqlens, self.max_seqlen))


def unpad(hidden: torch.Tensor | None, attention_mask: torch.Tensor, sizes: tuple[int, int] | None = None) -> Unpadded:
    """hidden [B, S, ...] and the [B, S] 0/1 mask -> packed [total, ...] of the real tokens (in order),
    their flat indices into B*S, cu_seqlens (int32 [B + 1]) and max_seqlen (a host int).
    Real tokens need not be contiguous within a row; each row's real tokens form one sequence.
    hidden=None computes only the indices and sequences (Unpadded.hidden is then None).
    Without `sizes` this reads the mask's values, its longest row and its token count on the host (host
    synchronisations); a caller that has them already (BertModel reads everything it needs in one) passes
    sizes = (longest row, token count) and the mask as checked: then nothing waits for the device."""
    check_tensor("attention_mask", attention_mask, dim=2)
    batch, seq = attention_mask.shape
    if hidden is not None:
        check_tensor("hidden", hidden)
        if tuple(hidden.shape[:2]) != (batch, seq):
            raise ValueError(f"hidden must be [batch, seq, ...] = [{batch}, {seq}, ...], got shape {tuple(hidden.shape)}")
    key_mask = check_attention_mask(attention_mask, batch, seq, values_checked=sizes is not None)
    lengths = key_mask.sum(1, dtype=torch.int32)
    cu_seqlens = F.pad(torch.cumsum(lengths, 0, dtype=torch.int32), (1, 0))
    if sizes is None:
        indices = key_mask.flatten().nonzero().squeeze(1)
        max_seqlen = int(lengths.max()) if batch else 0
    else:
        max_seqlen, total = sizes
        indices = torch.nonzero_static(key_mask.flatten(), size=total).squeeze(1)
    packed = unpad_with(hidden.flatten(0, 1), indices) if hidden is not None else None
    return Unpadded(packed, indices, cu_seqlens, max_seqlen, batch, seq)


def unpad_with(flat: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    return flat.index_select(0, indices)


def pad(packed: torch.Tensor, indices: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """The inverse of unpad: [total, ...] -> [B, S, ...] with zeros at the padded positions."""
    out = packed.new_zeros((batch * seqlen, *packed.shape[1:]))
    out = out.index_copy(0, indices, packed)
    return out.view(batch, seqlen, *packed.shape[1:])
