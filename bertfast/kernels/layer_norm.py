"""LayerNorm(dropout(x + x_bias) + residual) forward and backward.

x_bias (optional, [N]; rows of up to launch.WIDE_ROW columns) is the bias of the linear layer that
produced x, folded in here so that its gradient (the column sums of dx) comes out of the backward's
partial sums with dweight and dbias, instead of a separate pass over dx (a [T, N] read and a launch).
Wider rows take none: their forward holds a whole row at the register limit already (an fp32 x_bias
spilled 8 bytes at 16,384), and the op adds such a bias to x beforehand (ops/layer_norm.py).

Forward: ROWS rows per program (a [ROWS, BLOCK_N] tile), so the per-row reductions and address math are
shared and enough bytes are in flight per SM. Backward: a persistent grid, each program walking ROWS rows
per step and summing dweight/dbias partials in fp32 registers (rows wider than launch.WIDE_ROW: one row at
a time in chunks, the partials in memory); one partial row per program (allocated empty: every program
writes its row), then one small kernel sums the partials (two or three sets) over programs in a fixed
order (bertfast.kernels.reduce; deterministic, no atomics) and writes dweight/dbias in the parameters'
dtype.

Dropout masks come from bertfast.kernels.dropout (one 7-round Philox call per 8 elements, row = token,
column = hidden index); the backward draws the same mask and recomputes h = dropout(x) + residual from
the inputs instead of storing it.
"""
import triton
import triton.language as tl

from bertfast.kernels import dropout
from bertfast.kernels.launch import WIDE_ROW, layer_norm_config, on_tensor_device, persistent_programs
from bertfast.kernels.reduce import column_sums


@triton.jit
def _load_rows(X, R, rows, cols, mask, N, HAS_RESIDUAL: tl.constexpr):
    """x and residual of the [ROWS, BLOCK_N] tile, in their own dtypes."""
    offs = rows[:, None].to(tl.int64) * N + cols[None, :]
    x = tl.load(X + offs, mask=mask, other=0.0)
    r = x
    if HAS_RESIDUAL:
        r = tl.load(R + offs, mask=mask, other=0.0)
    return x, r


@triton.jit
def _dropout_add(x, r, xb, rows, mask, threshold, scale, seed, HAS_RESIDUAL: tl.constexpr, HAS_DROPOUT: tl.constexpr,
                 HAS_XBIAS: tl.constexpr, BLOCK_N: tl.constexpr):
    """h = dropout(x + xb) + residual in fp32 (xb: the [BLOCK_N] x_bias, 0 past N), and the keep-mask."""
    x = x.to(tl.float32)
    if HAS_XBIAS:
        x += xb[None, :]
    keep = mask
    if HAS_DROPOUT:
        keep = mask & (dropout.random_bits(seed, rows, 0, 0, BLOCK_N) >= threshold)
        x = tl.where(keep, x * scale, 0.0)
    if HAS_RESIDUAL:
        x += r.to(tl.float32)
    return x, keep


@triton.jit
def _load_x_bias(XB, cols, N, HAS_XBIAS: tl.constexpr):
    """x_bias over the tile's columns in fp32, 0 past N (zeros without one: one return type for the
    compiler, unused then)."""
    xb = tl.zeros(cols.shape, tl.float32)
    if HAS_XBIAS:
        xb = tl.load(XB + cols, mask=cols < N, other=0.0).to(tl.float32)
    return xb


@triton.jit
def normalise_rows(h, W, B, cols, mask, N, eps, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr):
    """(LayerNorm of each row of the fp32 tile h with weight W and bias B, the rows' mean, their rstd)."""
    mean = tl.sum(h, axis=1) / N
    centred = tl.where(mask, h - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / N + eps)
    y = centred * rstd[:, None]
    if HAS_WEIGHT:
        y = y * tl.load(W + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        y = y + tl.load(B + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    return y, mean, rstd


@triton.jit(do_not_specialize=["M"])
def residual_layer_norm_fwd_kernel(X, XB, R, W, B, Y, MEAN, RSTD, M, N, eps, threshold, scale, SEED,
                                   BLOCK_N: tl.constexpr, ROWS: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                                   HAS_DROPOUT: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                                   HAS_XBIAS: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_N)
    row_ok = rows < M
    mask = row_ok[:, None] & (cols[None, :] < N)
    x, r = _load_rows(X, R, rows, cols, mask, N, HAS_RESIDUAL)
    seed = dropout.load_seed(SEED, HAS_DROPOUT)
    xb = _load_x_bias(XB, cols, N, HAS_XBIAS)
    h, _ = _dropout_add(x, r, xb, rows, mask, threshold, scale, seed, HAS_RESIDUAL, HAS_DROPOUT, HAS_XBIAS, BLOCK_N)
    y, mean, rstd = normalise_rows(h, W, B, cols, mask, N, eps, HAS_WEIGHT, HAS_BIAS)
    tl.store(Y + rows[:, None].to(tl.int64) * N + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    tl.store(MEAN + rows, mean, mask=row_ok)
    tl.store(RSTD + rows, rstd, mask=row_ok)


@triton.jit(do_not_specialize=["M"])
def residual_layer_norm_bwd_kernel(DY, X, XB, R, W, MEAN, RSTD, DH, DX, DW_PARTIAL, DB_PARTIAL, DXB_PARTIAL, M, N,
                                   threshold, scale, SEED, BLOCK_N: tl.constexpr, ROWS: tl.constexpr,
                                   HAS_RESIDUAL: tl.constexpr, HAS_DROPOUT: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                                   WRITE_DX: tl.constexpr, HAS_XBIAS: tl.constexpr):
    """DH = d loss / d(dropout(x + x_bias) + residual) (= the residual's gradient, in the residual's dtype);
    DX = DH through the dropout, in x's dtype (written when WRITE_DX: with dropout, or when x's dtype
    differs from the residual's; otherwise dx is DH itself). Program `pid` sums dy·x̂ and dy over its rows
    in registers and writes them to partial row `pid` of DW_PARTIAL / DB_PARTIAL (and, with HAS_XBIAS,
    the sum of dx, x_bias's gradient, to DXB_PARTIAL). Rows of up to launch.WIDE_ROW columns (wider
    ones: residual_layer_norm_bwd_wide_kernel)."""
    pid = tl.program_id(0)
    step = tl.num_programs(0) * ROWS
    seed = dropout.load_seed(SEED, HAS_DROPOUT)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < N
    dw = tl.zeros((ROWS, BLOCK_N), dtype=tl.float32)
    db = tl.zeros((ROWS, BLOCK_N), dtype=tl.float32)
    dxb = tl.zeros((ROWS, BLOCK_N), dtype=tl.float32)
    xb = _load_x_bias(XB, cols, N, HAS_XBIAS)
    # Software pipelined: each step loads the next step's rows before working on its own, so two steps'
    # loads are in flight per program (Little's law; see python -m bertfast.analysis).
    rows = pid * ROWS + tl.arange(0, ROWS)
    mask = (rows < M)[:, None] & col_ok[None, :]
    x, r = _load_rows(X, R, rows, cols, mask, N, HAS_RESIDUAL)
    dy = tl.load(DY + rows[:, None].to(tl.int64) * N + cols[None, :], mask=mask, other=0.0)
    for first in range(pid * ROWS, M, step):
        rows = first + tl.arange(0, ROWS)
        row_ok = rows < M
        mask = row_ok[:, None] & col_ok[None, :]
        next_rows = rows + step
        next_mask = (next_rows < M)[:, None] & col_ok[None, :]
        next_x, next_r = _load_rows(X, R, next_rows, cols, next_mask, N, HAS_RESIDUAL)
        next_dy = tl.load(DY + next_rows[:, None].to(tl.int64) * N + cols[None, :], mask=next_mask, other=0.0)
        # The weight is re-read per step (from L1/L2) rather than held in registers.
        if HAS_WEIGHT:
            w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        else:
            w = tl.where(col_ok, 1.0, 0.0)[None, :]
        offs = rows[:, None].to(tl.int64) * N + cols[None, :]
        h, keep = _dropout_add(x, r, xb, rows, mask, threshold, scale, seed, HAS_RESIDUAL, HAS_DROPOUT, HAS_XBIAS,
                               BLOCK_N)
        mean = tl.load(MEAN + rows, mask=row_ok, other=0.0)
        rstd = tl.load(RSTD + rows, mask=row_ok, other=0.0)
        xhat = tl.where(mask, (h - mean[:, None]) * rstd[:, None], 0.0)
        dyf = dy.to(tl.float32)
        wdy = w * dyf
        c1 = tl.sum(xhat * wdy, axis=1) / N
        c2 = tl.sum(wdy, axis=1) / N
        dh = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
        tl.store(DH + offs, dh.to(DH.dtype.element_ty), mask=mask)
        if HAS_DROPOUT:
            dx = tl.where(keep, dh * scale, 0.0)
        else:
            dx = dh
        if WRITE_DX:
            tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
        dw += dyf * xhat
        db += dyf
        if HAS_XBIAS:
            dxb += dx  # (0 on rows past M: their dy is 0, so is their dh)
        x, r, dy = next_x, next_r, next_dy
    tl.store(DW_PARTIAL + pid * N + cols, tl.sum(dw, 0), mask=col_ok)
    tl.store(DB_PARTIAL + pid * N + cols, tl.sum(db, 0), mask=col_ok)
    if HAS_XBIAS:
        tl.store(DXB_PARTIAL + pid * N + cols, tl.sum(dxb, 0), mask=col_ok)


@triton.jit
def _wide_chunk(DY, X, R, W, row, c0, cols, N, mean, rstd, threshold, scale, seed, HAS_RESIDUAL: tl.constexpr,
                HAS_DROPOUT: tl.constexpr, HAS_WEIGHT: tl.constexpr, CHUNK: tl.constexpr):
    """Columns c0 + cols of one row: (offsets, in range, dy in fp32, x̂, w·dy, keep-mask)."""
    row = tl.cast(row, tl.int32)  # (the interpreter's loop index is a Python int)
    ok = cols < N
    offs = row.to(tl.int64) * N + cols
    x = tl.load(X + offs, mask=ok, other=0.0).to(tl.float32)
    keep = ok
    if HAS_DROPOUT:
        keep = ok & (dropout.random_bits(seed, row, c0, 0, CHUNK) >= threshold)
        x = tl.where(keep, x * scale, 0.0)
    if HAS_RESIDUAL:
        x += tl.load(R + offs, mask=ok, other=0.0).to(tl.float32)
    xhat = tl.where(ok, (x - mean) * rstd, 0.0)
    dy = tl.load(DY + offs, mask=ok, other=0.0).to(tl.float32)
    wdy = dy
    if HAS_WEIGHT:
        wdy = dy * tl.load(W + cols, mask=ok, other=0.0).to(tl.float32)
    return offs, ok, dy, xhat, wdy, keep


@triton.jit(do_not_specialize=["M"])
def residual_layer_norm_bwd_wide_kernel(DY, X, R, W, MEAN, RSTD, DH, DX, DW_PARTIAL, DB_PARTIAL, M, N, threshold,
                                        scale, SEED, CHUNK: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                                        HAS_DROPOUT: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                                        WRITE_DX: tl.constexpr):
    """The backward of rows wider than registers hold (launch.WIDE_ROW), as residual_layer_norm_bwd_kernel
    computes it, one row at a time in chunks of CHUNK columns, twice: first the row sums of w·dy·x̂ and
    w·dy, then dh, dx and this program's dweight/dbias partial row, accumulated in memory. A partial row
    belongs to one program, whose threads read and write it in layouts of the compiler's choosing: a
    barrier after each row orders one row's writes before the next row's reads (and the zeroing before
    the first)."""
    pid = tl.program_id(0)
    seed = dropout.load_seed(SEED, HAS_DROPOUT)
    offs0 = tl.arange(0, CHUNK)
    for c0 in range(0, N, CHUNK):
        tl.store(DW_PARTIAL + pid * N + c0 + offs0, tl.zeros((CHUNK,), tl.float32), mask=c0 + offs0 < N)
        tl.store(DB_PARTIAL + pid * N + c0 + offs0, tl.zeros((CHUNK,), tl.float32), mask=c0 + offs0 < N)
    tl.debug_barrier()
    for row in range(pid, M, tl.num_programs(0)):
        mean = tl.load(MEAN + row)
        rstd = tl.load(RSTD + row)
        s1 = tl.zeros((CHUNK,), tl.float32)
        s2 = tl.zeros((CHUNK,), tl.float32)
        for c0 in range(0, N, CHUNK):
            _, _, _, xhat, wdy, _ = _wide_chunk(DY, X, R, W, row, c0, c0 + offs0, N, mean, rstd, threshold, scale,
                                                seed, HAS_RESIDUAL, HAS_DROPOUT, HAS_WEIGHT, CHUNK)
            s1 += xhat * wdy
            s2 += wdy
        c1 = tl.sum(s1, 0) / N
        c2 = tl.sum(s2, 0) / N
        for c0 in range(0, N, CHUNK):
            cols = c0 + offs0
            offs, ok, dy, xhat, wdy, keep = _wide_chunk(DY, X, R, W, row, c0, cols, N, mean, rstd, threshold,
                                                        scale, seed, HAS_RESIDUAL, HAS_DROPOUT, HAS_WEIGHT, CHUNK)
            dh = (wdy - (xhat * c1 + c2)) * rstd
            tl.store(DH + offs, dh.to(DH.dtype.element_ty), mask=ok)
            if WRITE_DX:
                dx = dh
                if HAS_DROPOUT:
                    dx = tl.where(keep, dh * scale, 0.0)
                tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=ok)
            part = pid * N + cols
            tl.store(DW_PARTIAL + part, tl.load(DW_PARTIAL + part, mask=ok, other=0.0) + dy * xhat, mask=ok)
            tl.store(DB_PARTIAL + part, tl.load(DB_PARTIAL + part, mask=ok, other=0.0) + dy, mask=ok)
        tl.debug_barrier()


@on_tensor_device
def residual_layer_norm_forward(x, residual, weight, bias, eps: float, p: float, seed, x_bias=None):
    """y has the promoted dtype of x and residual (as x + residual would); seed: int64 [1] on x's device
    (read with p > 0); x_bias: [N] added to x before the dropout, or None."""
    import torch

    m, n = x.shape
    y = torch.empty_like(x, dtype=x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype))
    mean = torch.empty(m, dtype=torch.float32, device=x.device)
    rstd = torch.empty(m, dtype=torch.float32, device=x.device)
    cfg = layer_norm_config(n, x.element_size(), backward=False)
    if m:
        residual_layer_norm_fwd_kernel[(triton.cdiv(m, cfg.rows),)](
            x, x_bias if x_bias is not None else x, residual if residual is not None else x,
            weight if weight is not None else x, bias if bias is not None else x, y, mean, rstd, m, n, eps,
            dropout.threshold(p), dropout.keep_scale(p), seed if seed is not None else x, BLOCK_N=cfg.block_n,
            ROWS=cfg.rows, HAS_RESIDUAL=residual is not None, HAS_DROPOUT=p > 0, HAS_WEIGHT=weight is not None,
            HAS_BIAS=bias is not None, HAS_XBIAS=x_bias is not None, **cfg.options())
    return y, mean, rstd


def needs_separate_dx(x, residual, p: float) -> bool:
    return p > 0 or (residual is not None and residual.dtype != x.dtype)


@on_tensor_device
def residual_layer_norm_backward(dy, x, residual, weight, bias, mean, rstd, p: float, seed, x_bias=None):
    """Returns (dh, dx, dweight, dbias, dx_bias): dx is dh itself when no separate dx is needed;
    dweight/dbias/dx_bias (the column sums of dx) are in the parameters' dtypes (None without the
    parameter)."""
    import torch

    m, n = x.shape
    dh = torch.empty_like(residual if residual is not None else x)
    write_dx = needs_separate_dx(x, residual, p)
    dx = torch.empty_like(x) if write_dx else dh
    cfg = layer_norm_config(n, x.element_size(), backward=True)
    programs = persistent_programs(triton.cdiv(m, cfg.rows), x.device, cfg.programs_per_sm)
    # Empty: every program writes its whole partial row (zeros when it has no rows).
    dw_partial = torch.empty((programs, n), dtype=torch.float32, device=x.device)
    db_partial = torch.empty((programs, n), dtype=torch.float32, device=x.device)
    dw = torch.empty_like(weight) if weight is not None else None
    db = torch.empty_like(bias) if bias is not None else None
    dxb_partial = torch.empty((programs, n), dtype=torch.float32, device=x.device) if x_bias is not None else None
    dxb = torch.empty_like(x_bias) if x_bias is not None else None
    scalars = (m, n, dropout.threshold(p), dropout.keep_scale(p), seed if seed is not None else x)
    tensors = (dy, x, residual if residual is not None else x, weight if weight is not None else x, mean, rstd, dh,
               dx, dw_partial, db_partial)
    flags = dict(HAS_RESIDUAL=residual is not None, HAS_DROPOUT=p > 0, HAS_WEIGHT=weight is not None,
                 WRITE_DX=write_dx, **cfg.options())
    if cfg.chunk:
        if x_bias is not None:
            raise ValueError(f"x_bias is folded into rows of up to {WIDE_ROW} columns, got {n}")
        residual_layer_norm_bwd_wide_kernel[(programs,)](*tensors, *scalars, CHUNK=cfg.chunk, **flags)
    else:
        residual_layer_norm_bwd_kernel[(programs,)](
            dy, x, x_bias if x_bias is not None else x, *tensors[2:], dxb_partial if x_bias is not None else dw_partial,
            *scalars, BLOCK_N=cfg.block_n, ROWS=cfg.rows, HAS_XBIAS=x_bias is not None, **flags)
    pairs = [(partial, out) for partial, out in ((dw_partial, dw), (db_partial, db), (dxb_partial, dxb))
             if out is not None]
    if pairs:
        column_sums(*pairs)
    return dh, dx, dw, db, dxb


def dropout_keep_mask(rows: int, n: int, p: float, seed: int, device):
    """The keep-mask the kernels above draw for a [rows, n] input (for tests and debugging)."""
    return dropout.keep_mask(rows, n, p, seed, 0, device)
