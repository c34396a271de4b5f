"""LayerNorm(dropout(x) + residual) forward and backward, one program per row (forward) and a
persistent grid of programs each summing dweight/dbias partials over its rows in fp32 (backward).

Dropout keeps an element when tl.rand(seed, row * n + col) >= p; the backward draws the same numbers.
The backward recomputes h = dropout(x) + residual from the inputs instead of storing it.
"""
import triton
import triton.language as tl

from bertfast.kernels.launch import partials_in_memory, persistent_programs, row_config


@triton.jit
def _load_h(X, R, row, cols, mask, N, p, seed, HAS_RESIDUAL: tl.constexpr, HAS_DROPOUT: tl.constexpr):
    offs = tl.cast(row, tl.int64) * N + cols
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    keep = mask
    if HAS_DROPOUT:
        keep = mask & (tl.rand(seed, (row * N + cols).to(tl.int32)) >= p)
        x = tl.where(keep, x / (1.0 - p), 0.0)
    if HAS_RESIDUAL:
        x += tl.load(R + offs, mask=mask, other=0.0).to(tl.float32)
    return x, keep


@triton.jit
def normalise_row(h, W, B, cols, mask, N, eps, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr):
    """(LayerNorm of the fp32 row h with weight W and bias B, its mean, its rstd)."""
    mean = tl.sum(h, axis=0) / N
    centred = tl.where(mask, h - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=0) / N + eps)
    y = centred * rstd
    if HAS_WEIGHT:
        y = y * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y = y + tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    return y, mean, rstd


@triton.jit
def residual_layer_norm_fwd_kernel(X, R, W, B, Y, MEAN, RSTD, N, eps, p, seed, BLOCK_N: tl.constexpr,
                                   HAS_RESIDUAL: tl.constexpr, HAS_DROPOUT: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                                   HAS_BIAS: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    h, _ = _load_h(X, R, row, cols, mask, N, p, seed, HAS_RESIDUAL, HAS_DROPOUT)
    y, mean, rstd = normalise_row(h, W, B, cols, mask, N, eps, HAS_WEIGHT, HAS_BIAS)
    tl.store(Y + tl.cast(row, tl.int64) * N + cols, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)


@triton.jit
def residual_layer_norm_bwd_kernel(DY, X, R, W, MEAN, RSTD, DH, DX, DW_PARTIAL, DB_PARTIAL, M, N, p, seed,
                                   BLOCK_N: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_DROPOUT: tl.constexpr,
                                   HAS_WEIGHT: tl.constexpr, WRITE_DX: tl.constexpr, PARTIALS_IN_MEMORY: tl.constexpr):
    """DH = d loss / d(dropout(x) + residual) (= the residual's gradient, in the residual's dtype);
    DX = DH through the dropout, in x's dtype (written when WRITE_DX: with dropout, or when x's dtype
    differs from the residual's; otherwise dx is DH itself). Each program sums dy·x̂ and dy over its rows, in
    registers, or for the widest rows (PARTIALS_IN_MEMORY) in its own zeroed partial row in memory, so
    that the row's other values stay in registers without spilling."""
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    dw = tl.zeros((BLOCK_N,), dtype=tl.float32)
    db = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for row in range(pid, M, programs):
        # The weight is re-read per row (from L1/L2) rather than held: at n = 8192 holding it spills.
        if HAS_WEIGHT:
            w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        else:
            w = tl.where(mask, 1.0, 0.0)
        offs = tl.cast(row, tl.int64) * N + cols
        h, keep = _load_h(X, R, row, cols, mask, N, p, seed, HAS_RESIDUAL, HAS_DROPOUT)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + row)
        rstd = tl.load(RSTD + row)
        xhat = tl.where(mask, (h - mean) * rstd, 0.0)
        wdy = w * dy
        c1 = tl.sum(xhat * wdy, axis=0) / N
        c2 = tl.sum(wdy, axis=0) / N
        dh = (wdy - (xhat * c1 + c2)) * rstd
        tl.store(DH + offs, dh.to(DH.dtype.element_ty), mask=mask)
        if WRITE_DX:
            if HAS_DROPOUT:
                dx = tl.where(keep, dh / (1.0 - p), 0.0)
            else:
                dx = dh
            tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
        if PARTIALS_IN_MEMORY:
            tl.store(DW_PARTIAL + pid * N + cols, tl.load(DW_PARTIAL + pid * N + cols, mask=mask) + dy * xhat, mask=mask)
            tl.store(DB_PARTIAL + pid * N + cols, tl.load(DB_PARTIAL + pid * N + cols, mask=mask) + dy, mask=mask)
        else:
            dw += dy * xhat
            db += dy
    if not PARTIALS_IN_MEMORY:
        tl.store(DW_PARTIAL + pid * N + cols, dw, mask=mask)
        tl.store(DB_PARTIAL + pid * N + cols, db, mask=mask)


def residual_layer_norm_forward(x, residual, weight, bias, eps: float, p: float, seed: int):
    """y has the promoted dtype of x and residual (as x + residual would)."""
    import torch

    m, n = x.shape
    y = torch.empty_like(x, dtype=x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype))
    mean = torch.empty(m, dtype=torch.float32, device=x.device)
    rstd = torch.empty(m, dtype=torch.float32, device=x.device)
    block_n, warps = row_config(n)
    if m:
        residual_layer_norm_fwd_kernel[(m,)](
            x, residual if residual is not None else x, weight if weight is not None else x,
            bias if bias is not None else x, y, mean, rstd, n, eps, p, seed, BLOCK_N=block_n,
            HAS_RESIDUAL=residual is not None, HAS_DROPOUT=p > 0, HAS_WEIGHT=weight is not None,
            HAS_BIAS=bias is not None, num_warps=warps)
    return y, mean, rstd


def needs_separate_dx(x, residual, p: float) -> bool:
    return p > 0 or (residual is not None and residual.dtype != x.dtype)


def residual_layer_norm_backward(dy, x, residual, weight, mean, rstd, p: float, seed: int):
    """Returns (dh, dx, dweight_fp32, dbias_fp32); dx is dh itself when no separate dx is needed."""
    import torch

    m, n = x.shape
    dh = torch.empty_like(residual if residual is not None else x)
    write_dx = needs_separate_dx(x, residual, p)
    dx = torch.empty_like(x) if write_dx else dh
    programs = persistent_programs(m, x.device)
    dw_partial = torch.zeros((programs, n), dtype=torch.float32, device=x.device)
    db_partial = torch.zeros((programs, n), dtype=torch.float32, device=x.device)
    block_n, warps = row_config(n)
    if m:
        residual_layer_norm_bwd_kernel[(programs,)](
            dy, x, residual if residual is not None else x, weight if weight is not None else x, mean, rstd, dh, dx,
            dw_partial, db_partial, m, n, p, seed, BLOCK_N=block_n, HAS_RESIDUAL=residual is not None,
            HAS_DROPOUT=p > 0, HAS_WEIGHT=weight is not None, WRITE_DX=write_dx,
            PARTIALS_IN_MEMORY=partials_in_memory(block_n), num_warps=warps)
    return dh, dx, dw_partial.sum(0), db_partial.sum(0)


@triton.jit
def dropout_keep_kernel(KEEP, N, p, seed, BLOCK_N: tl.constexpr):
    """The keep-mask the kernels above draw for row `program_id` (for tests and debugging)."""
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    keep = tl.rand(seed, (row * N + cols).to(tl.int32)) >= p
    tl.store(KEEP + tl.cast(row, tl.int64) * N + cols, keep.to(tl.int8), mask=mask)


def dropout_keep_mask(rows: int, n: int, p: float, seed: int, device):
    import torch

    keep = torch.empty((rows, n), dtype=torch.int8, device=device)
    block_n, warps = row_config(n)
    dropout_keep_kernel[(rows,)](keep, n, p, seed, BLOCK_N=block_n, num_warps=warps)
    return keep.bool()
