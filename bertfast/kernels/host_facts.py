"""What a forward reads on the host, in one launch: each id tensor's range and the 2-D attention mask's
facts (its values 0/1, its longest row, its token count, a real token at position 0 of every non-empty
row), as per-program partial rows that the host combines after its one read (models.batch.read_host_facts,
_combine).

Replaces the 15-20 small torch launches those checks took (min and max of each id tensor; the mask's
comparisons, row sums and their reductions; the casts and the stack), each a fixed cost of several
microseconds on a GPU. Programs split the rows: no atomics, no zero-filled output, and the combination
(min, max, sum, all) is exact in any order. Integer and bool masks are checked for values in [0, 1],
floating ones for exactly 0 or 1 (so NaN and 0.5 are caught), as ops.attention.mask_values_ok does.
"""
import triton
import triton.language as tl

from bertfast.kernels.launch import device_guard

FACTS_PER_ID = 2  # min, max
MASK_FACTS = 4  # values ok, longest row, token count, every non-empty row real at position 0
MAX_IDS = 3  # input_ids, token_type_ids, position_ids
ROWS, COLS = 16, 128  # the tile a program loads at a time (rows of a mask or id tensor, columns in chunks)
MAX_PROGRAMS = 264  # two waves of an H100's/H200's 132 SMs at most: the host combines this many rows
_BIG = tl.constexpr(9223372036854775807)  # int64's largest: the minimum of no ids
_SMALL = tl.constexpr(-9223372036854775807 - 1)  # int64's smallest: their maximum


@triton.jit
def _id_range(IDS, R, C, SR, SC, first_row, rows_per, COLS: tl.constexpr, ROWS: tl.constexpr):
    """(min, max) as int64 of rows [first_row, first_row + rows_per) of the [R, C] id tensor."""
    lo = tl.full((ROWS, COLS), _BIG, tl.int64)
    hi = tl.full((ROWS, COLS), _SMALL, tl.int64)
    last = tl.minimum(first_row + rows_per, R)
    for r0 in range(first_row, last, ROWS):
        rows = r0 + tl.arange(0, ROWS)
        for c0 in range(0, C, COLS):
            cols = c0 + tl.arange(0, COLS)
            ok = (rows[:, None] < last) & (cols[None, :] < C)
            v = tl.load(IDS + rows[:, None].to(tl.int64) * SR + cols[None, :] * SC, mask=ok, other=0).to(tl.int64)
            lo = tl.minimum(lo, tl.where(ok, v, _BIG))
            hi = tl.maximum(hi, tl.where(ok, v, _SMALL))
    return tl.min(tl.min(lo, 1), 0), tl.max(tl.max(hi, 1), 0)


@triton.jit(do_not_specialize=["B", "S", "SMB", "SMS", "MASK_ROWS_PER", "R0", "C0", "SR0", "SC0", "ROWS0",
                               "R1", "C1", "SR1", "SC1", "ROWS1", "R2", "C2", "SR2", "SC2", "ROWS2"])
def host_facts_kernel(OUT, MASK, B, S, SMB, SMS, MASK_ROWS_PER,
                      IDS0, R0, C0, SR0, SC0, ROWS0, IDS1, R1, C1, SR1, SC1, ROWS1,
                      IDS2, R2, C2, SR2, SC2, ROWS2,
                      K: tl.constexpr, NUM_IDS: tl.constexpr, HAS_MASK: tl.constexpr, MASK_FLOAT: tl.constexpr,
                      ROWS: tl.constexpr, COLS: tl.constexpr):
    """Program p writes row p of OUT [programs, K] (int64): (min, max) of its rows of each id tensor, then,
    with a mask, (values ok, longest row, tokens, rows real at position 0 or empty: 1 if all) of its rows
    of MASK [B, S]."""
    pid = tl.program_id(0)
    out = OUT + pid * K
    if NUM_IDS > 0:
        lo, hi = _id_range(IDS0, R0, C0, SR0, SC0, pid * ROWS0, ROWS0, COLS, ROWS)
        tl.store(out + 0, lo)
        tl.store(out + 1, hi)
    if NUM_IDS > 1:
        lo, hi = _id_range(IDS1, R1, C1, SR1, SC1, pid * ROWS1, ROWS1, COLS, ROWS)
        tl.store(out + 2, lo)
        tl.store(out + 3, hi)
    if NUM_IDS > 2:
        lo, hi = _id_range(IDS2, R2, C2, SR2, SC2, pid * ROWS2, ROWS2, COLS, ROWS)
        tl.store(out + 4, lo)
        tl.store(out + 5, hi)
    if HAS_MASK:
        bad = tl.zeros((ROWS,), tl.int32)
        longest = tl.zeros((ROWS,), tl.int64)
        tokens = tl.zeros((ROWS,), tl.int64)
        first_bad = tl.zeros((ROWS,), tl.int32)
        first_row = pid * MASK_ROWS_PER
        last = tl.minimum(first_row + MASK_ROWS_PER, B)
        for r0 in range(first_row, last, ROWS):
            rows = r0 + tl.arange(0, ROWS)
            row_ok = rows < last
            length = tl.zeros((ROWS,), tl.int64)
            at_zero = tl.zeros((ROWS,), tl.int32)
            for c0 in range(0, S, COLS):
                cols = c0 + tl.arange(0, COLS)
                ok = row_ok[:, None] & (cols[None, :] < S)
                m = tl.load(MASK + rows[:, None].to(tl.int64) * SMB + cols[None, :] * SMS, mask=ok, other=0)
                if MASK_FLOAT:
                    good = (m == 0) | (m == 1)
                else:
                    good = (m >= 0) & (m <= 1)
                bad += tl.sum((ok & ~good).to(tl.int32), 1)
                real = ok & (m != 0)
                length += tl.sum(real.to(tl.int64), 1)
                at_zero += tl.sum((real & (cols[None, :] == 0)).to(tl.int32), 1)
            longest = tl.maximum(longest, length)
            tokens += length
            first_bad += (row_ok & (at_zero == 0) & (length > 0)).to(tl.int32)
        base = 2 * NUM_IDS  # (FACTS_PER_ID)
        tl.store(out + base, (tl.sum(bad, 0) == 0).to(tl.int64))
        tl.store(out + base + 1, tl.max(longest, 0))
        tl.store(out + base + 2, tl.sum(tokens, 0))
        tl.store(out + base + 3, (tl.sum(first_bad, 0) == 0).to(tl.int64))


def applies(attention_mask, ids: list) -> bool:
    """Whether host_facts reads these: at most MAX_IDS non-empty integer id tensors of 1 or 2 dimensions, and
    a [B, S] mask (bool, integer or floating) or None, all on one device."""
    tensors = ids + ([attention_mask] if attention_mask is not None else [])
    return bool(tensors) and len(ids) <= MAX_IDS and all(t.dim() in (1, 2) and t.numel() > 0 for t in ids) \
        and not any(t.is_floating_point() or t.is_complex() for t in ids) \
        and (attention_mask is None or not attention_mask.is_complex()) \
        and len({t.device for t in tensors}) == 1


def host_facts(attention_mask, ids: list):
    """OUT [programs, K] int64, the per-program partial rows (module docstring); ids: the non-empty id
    tensors (1-D or 2-D), attention_mask: [B, S] or None."""
    import torch

    some = attention_mask if attention_mask is not None else ids[0]
    ids2 = [t[None] if t.dim() == 1 else t for t in ids]
    elements = max([t.numel() for t in ids2] + ([attention_mask.numel()] if attention_mask is not None else []))
    programs = max(1, min(MAX_PROGRAMS, triton.cdiv(elements, ROWS * COLS)))  # about a tile a program
    k = FACTS_PER_ID * len(ids2) + (MASK_FACTS if attention_mask is not None else 0)
    out = torch.empty(programs, k, dtype=torch.int64, device=some.device)
    slots = []
    for i in range(MAX_IDS):
        if i < len(ids2):
            t = ids2[i]
            slots += [t, t.shape[0], t.shape[1], t.stride(0), t.stride(1), triton.cdiv(t.shape[0], programs)]
        else:
            slots += [out, 0, 0, 0, 0, 0]
    if attention_mask is not None:
        mask = attention_mask.view(torch.uint8) if attention_mask.dtype == torch.bool else attention_mask
        b, s = mask.shape
        mask_args = (mask, b, s, mask.stride(0), mask.stride(1), triton.cdiv(b, programs))
    else:
        mask_args = (out, 0, 0, 0, 0, 0)
    with device_guard(some):
        host_facts_kernel[(programs,)](out, *mask_args, *slots, K=k, NUM_IDS=len(ids2),
                                       HAS_MASK=attention_mask is not None,
                                       MASK_FLOAT=attention_mask is not None and attention_mask.is_floating_point(),
                                       ROWS=ROWS, COLS=COLS, num_warps=8)
    return out
