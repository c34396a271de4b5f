"""LayerNorm(word[id] + type[type_id] + position[pos_id]) in one pass: the three rows are gathered, summed
in fp32 and normalised in registers; only the normalised row is written. ROWS tokens a program (the
LayerNorm forward's tile, bertfast.kernels.launch.layer_norm_config)."""
import triton
import triton.language as tl

from bertfast.kernels.launch import layer_norm_config, on_tensor_device
from bertfast.kernels.layer_norm import normalise_rows


@triton.jit(do_not_specialize=["M"])
def embedding_layer_norm_fwd_kernel(IDS, TYPE_IDS, POS_IDS, WORD, TYPE, POS, W, B, Y, M, N, eps,
                                     BLOCK_N: tl.constexpr, ROWS: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                                     HAS_BIAS: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < M
    cols = tl.arange(0, BLOCK_N)
    mask = row_ok[:, None] & (cols[None, :] < N)
    word_row = tl.load(IDS + rows, mask=row_ok, other=0).to(tl.int64)
    type_row = tl.load(TYPE_IDS + rows, mask=row_ok, other=0).to(tl.int64)
    pos_row = tl.load(POS_IDS + rows, mask=row_ok, other=0).to(tl.int64)
    x = tl.load(WORD + word_row[:, None] * N + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    x += tl.load(TYPE + type_row[:, None] * N + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    x += tl.load(POS + pos_row[:, None] * N + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    y, _, _ = normalise_rows(x, W, B, cols, mask, N, eps, HAS_WEIGHT, HAS_BIAS)
    tl.store(Y + rows[:, None].to(tl.int64) * N + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


@on_tensor_device
def embedding_layer_norm_forward(ids, type_ids, pos_ids, word, type_, pos, weight, bias, eps: float):
    import torch

    tokens, n = ids.shape[0], word.shape[1]
    y = torch.empty((tokens, n), dtype=word.dtype, device=word.device)
    cfg = layer_norm_config(n, word.element_size(), backward=False)
    if tokens:
        embedding_layer_norm_fwd_kernel[(triton.cdiv(tokens, cfg.rows),)](
            ids, type_ids, pos_ids, word, type_, pos, weight if weight is not None else word,
            bias if bias is not None else word, y, tokens, n, eps, BLOCK_N=cfg.block_n, ROWS=cfg.rows,
            HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, **cfg.options())
    return y
