"""Column sums of fp32 partial rows: the last, deterministic step of the backward kernels that reduce
over rows (LayerNorm's dweight/dbias and its x_bias's gradient, bias+GELU's dbias). Each program sums
its columns over the P partial rows in a fixed order and writes them once, in the parameter's dtype."""
import triton
import triton.language as tl

from bertfast.kernels.launch import on_tensor_device


@triton.jit(do_not_specialize=["P"])  # (P varies with the token count: one binary for all)
def column_sums_kernel(A, B, C, OUT_A, OUT_B, OUT_C, P, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       HAS_B: tl.constexpr, HAS_C: tl.constexpr):
    """OUT_A[c] = sum over the P rows of A[:, c] (A: [P, N] fp32); the same for B when HAS_B, C when HAS_C."""
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    acc_a = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    acc_b = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    acc_c = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for first in range(0, P, BLOCK_M):
        rows = first + tl.arange(0, BLOCK_M)
        mask = (rows[:, None] < P) & col_ok[None, :]
        offs = rows[:, None] * N + cols[None, :]
        acc_a += tl.load(A + offs, mask=mask, other=0.0)
        if HAS_B:
            acc_b += tl.load(B + offs, mask=mask, other=0.0)
        if HAS_C:
            acc_c += tl.load(C + offs, mask=mask, other=0.0)
    tl.store(OUT_A + cols, tl.sum(acc_a, 0).to(OUT_A.dtype.element_ty), mask=col_ok)
    if HAS_B:
        tl.store(OUT_B + cols, tl.sum(acc_b, 0).to(OUT_B.dtype.element_ty), mask=col_ok)
    if HAS_C:
        tl.store(OUT_C + cols, tl.sum(acc_c, 0).to(OUT_C.dtype.element_ty), mask=col_ok)


def column_sums(*pairs) -> None:
    """For each (partial, out) of one to three pairs: out = partial.sum(0), in a fixed order, cast to out's
    dtype; the partials all [P, N]."""
    if not 1 <= len(pairs) <= 3:
        raise ValueError(f"column_sums takes one to three (partial, out) pairs, got {len(pairs)}")
    (a, out_a), (b, out_b), (c, out_c) = (list(pairs) + [pairs[0]] * 2)[:3]
    _launch(a, b, c, out_a, out_b, out_c, len(pairs))


@on_tensor_device
def _launch(a, b, c, out_a, out_b, out_c, count: int) -> None:
    p, n = a.shape
    block_n = 64
    column_sums_kernel[(triton.cdiv(n, block_n),)](a, b, c, out_a, out_b, out_c, p, n, BLOCK_M=32, BLOCK_N=block_n,
                                                   HAS_B=count > 1, HAS_C=count > 2, num_warps=4)
