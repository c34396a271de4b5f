"""LayerNorm(word[id] + type[type_id] + position[pos_id]) in one pass: the three rows are gathered, summed
in fp32 and normalised in registers; only the normalised row is written (one program per token)."""
import triton
import triton.language as tl

from bertfast.kernels.launch import row_config
from bertfast.kernels.layer_norm import normalise_row


@triton.jit
def embedding_layer_norm_fwd_kernel(IDS, TYPE_IDS, POS_IDS, WORD, TYPE, POS, W, B, Y, N, eps,
                                     BLOCK_N: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    word_row = tl.load(IDS + row).to(tl.int64)
    type_row = tl.load(TYPE_IDS + row).to(tl.int64)
    pos_row = tl.load(POS_IDS + row).to(tl.int64)
    x = tl.load(WORD + word_row * N + cols, mask=mask, other=0.0).to(tl.float32)
    x += tl.load(TYPE + type_row * N + cols, mask=mask, other=0.0).to(tl.float32)
    x += tl.load(POS + pos_row * N + cols, mask=mask, other=0.0).to(tl.float32)
    y, _, _ = normalise_row(x, W, B, cols, mask, N, eps, HAS_WEIGHT, HAS_BIAS)
    tl.store(Y + tl.cast(row, tl.int64) * N + cols, y.to(Y.dtype.element_ty), mask=mask)


def embedding_layer_norm_forward(ids, type_ids, pos_ids, word, type_, pos, weight, bias, eps: float):
    import torch

    tokens, n = ids.shape[0], word.shape[1]
    y = torch.empty((tokens, n), dtype=word.dtype, device=word.device)
    block_n, warps = row_config(n)
    if tokens:
        embedding_layer_norm_fwd_kernel[(tokens,)](
            ids, type_ids, pos_ids, word, type_, pos, weight if weight is not None else word,
            bias if bias is not None else word, y, n, eps, BLOCK_N=block_n, HAS_WEIGHT=weight is not None,
            HAS_BIAS=bias is not None, num_warps=warps)
    return y
