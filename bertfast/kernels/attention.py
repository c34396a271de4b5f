"""FlashAttention-style attention for BERT: a key-padding mask or packed (varlen) sequences, dropout on
the probabilities from a seed, any sequence length (blocks are masked, not padded).

Tensors are addressed through strides, so q/k/v may be views:
  padded  q[b, s, h, d] at Q + b*stride_b + s*stride_s + h*stride_h + d, keys masked by MASK[b, s] != 0
  varlen  q[t, h, d] for the tokens t in [cu_seqlens[b], cu_seqlens[b+1]) of sequence b (stride_b = 0)
The forward keeps an online softmax in fp32 (exp2, with log2(e) folded into the scale) and saves the
log-sum-exp (base 2) per query row, +inf for a row with no key (its output and gradients are zero):
padded at LSE[b, h, s], packed at LSE[h, t] (token t of the packed batch: no row outside a sequence).
The backward follows FlashAttention-2 in two launches: dQ over query blocks, each program also computing
delta = rowsum(dO * O) of its queries (FlashAttention-2's separate preprocess pass, fused: the program
holds those rows of dO already) and storing it, then dK/dV over key blocks, which reads delta; both
recompute P from q, k and the saved log-sum-exp (no atomics: deterministic). The
dK/dV kernel works transposed (Pᵀ = exp(K Qᵀ - lse)), so that all its matmuls have the program's keys
as their M dimension: 64 or more rows, which sm_90 runs on wgmma (Triton picks mma.sync below 64).
With dropout at head dim 128 the dQ kernel works in that frame too (_dq_keys_first: dQᵀ += Kᵀ dSᵀ), so
that every kernel's threads draw their own dropout bits (kernels/dropout.py).
Dropout keeps P[q, k] by bertfast.kernels.dropout with row = q (the query's position in its sequence),
column = k, stream = b * heads + h: the same mask in the forward and in both backward kernels.
"""
import triton
import triton.language as tl

from bertfast.kernels import dropout
from bertfast.kernels.launch import grid_1d, on_tensor_device

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _program_sequence(CU, H, S, BLOCK: tl.constexpr, VARLEN: tl.constexpr):
    """This program's block of BLOCK rows (queries or keys) in its sequence, its (batch*head, batch, head),
    and its sequence's first token and length (packed: from cu_seqlens; padded: 0 and S). The grid is
    one axis of cdiv(S, BLOCK) * batch * heads programs, a head's blocks consecutive (as axis 0 of a 2-D
    grid would be): CUDA caps grid axes 1 and 2 at 65,535, which batch * heads passes (5,462 packed
    sequences x 12 heads), and axis 0 at 2**31 - 1 (grid_1d checks it)."""
    blocks = tl.cdiv(S, BLOCK)
    pid = tl.program_id(0)
    block = pid % blocks
    bh = pid // blocks
    b = bh // H
    h = bh % H
    if VARLEN:
        start = tl.load(CU + b)
        seqlen = tl.load(CU + b + 1) - start
    else:
        start = 0
        seqlen = S
    return block, bh, b, h, start, seqlen


@triton.jit
def _dot(a, b, DOT_FP32: tl.constexpr, IEEE: tl.constexpr):
    # Under the interpreter low-precision operands are multiplied in fp32 (it mis-multiplies bf16);
    # fp32 operands use exact fp32 products on the GPU unless torch's fp32 matmul precision allows TF32
    # (IEEE=False then, as for fp16/bf16 operands: tl.dot's default, tensor cores).
    if DOT_FP32:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _head_base(b, start, h, stride_b, stride_s, stride_h):
    """Offset of token 0 of sequence b, head h."""
    return b.to(tl.int64) * stride_b + start.to(tl.int64) * stride_s + h * stride_h


@triton.jit
def _load_tile(PTR, base, idx, ok, stride_s, dims):
    """Rows idx (masked by ok) of one head: [len(idx), HEAD_DIM]."""
    return tl.load(PTR + base + idx[:, None] * stride_s + dims[None, :], mask=ok[:, None], other=0.0)


@triton.jit
def _store_tile(PTR, base, idx, ok, stride_s, dims, value):
    tl.store(PTR + base + idx[:, None] * stride_s + dims[None, :], value.to(PTR.dtype.element_ty), mask=ok[:, None])


@triton.jit
def _stats_base(b, h, start, lse_stride_b, lse_stride_h):
    """Offset of this sequence's first row in LSE/DELTA: [B, H, S] padded, [H, total] packed."""
    return b.to(tl.int64) * lse_stride_b + h.to(tl.int64) * lse_stride_h + start


@triton.jit
def _row_lse(LSE, stats_base, rows, row_ok):
    """The forward's log-sum-exp of these rows (+inf past the end: p = 0)."""
    return tl.load(LSE + stats_base + rows, mask=row_ok, other=float("inf"))


@triton.jit
def _keep_mask(seed, bh, rows, block, col0, threshold, BLOCK_N: tl.constexpr, MASK_TILES: tl.constexpr):
    """[len(rows), BLOCK_N]: whether P[rows, col0 + j] is kept (bertfast.kernels.dropout, stream = bh): in
    the query-key grouping when MASK_TILES, for the 128 queries of one block (rows = 128 block + 0..127),
    else in the fragment grouping, for any rows (block unused)."""
    if MASK_TILES:
        tl.static_assert(rows.shape[0] == 128, "the query-key grouping's forward and dQ tiles hold 128 queries")
        keep = dropout.tile_keep(seed, block, 0, 4, col0, bh, threshold, BLOCK_N, False)
    else:
        keep = dropout.fragment_keep(seed, rows, col0, bh, threshold, BLOCK_N)
    return keep


@triton.jit
def _dkdv_trips(seqlen, BLOCK_M: tl.constexpr, PERMUTED: tl.constexpr):
    """How many trips of BLOCK_M queries the dK/dV kernel makes over a sequence: in order, or PERMUTED in
    the query-key grouping's tiles (dropout.tile_rows: a block of 128 queries in 128 / BLOCK_M trips,
    each trip holding queries q and q + 64; a trip is made while its first query is in the sequence)."""
    if PERMUTED:
        trips = (seqlen // 128) * (128 // BLOCK_M) + _block_trips(seqlen % 128, BLOCK_M)
    else:
        trips = seqlen  # (the loop's end: it steps by BLOCK_M queries)
    return trips


@triton.jit
def _block_trips(rows_left, BLOCK_M: tl.constexpr):
    """Trips of BLOCK_M queries of the query-key grouping's tiles (dropout.tile_rows) that a block of 128
    queries needs when rows_left of its queries are in the sequence: each trip holds queries q and q + 64,
    and is made while its first query is in the sequence (<= 0 for a block past the end)."""
    return tl.minimum(tl.cdiv(rows_left, BLOCK_M // 2), 128 // BLOCK_M)


@triton.jit
def _dkdv_step(BLOCK_M: tl.constexpr, PERMUTED: tl.constexpr):
    """The dK/dV loop's step: in order it runs over the first query of each trip (start_m), PERMUTED over
    the trip's number."""
    if PERMUTED:
        step: tl.constexpr = 1
    else:
        step: tl.constexpr = BLOCK_M
    return step


@triton.jit
def _dkdv_tile(trip, BLOCK_M: tl.constexpr):
    """A permuted dK/dV trip's query-key tile (dropout.tile_rows / tile_keep): its block of 128 queries and
    its first 16-query run B0 (each trip takes BLOCK_M // 32 runs)."""
    per_block: tl.constexpr = 128 // BLOCK_M
    return trip // per_block, (trip % per_block) * (BLOCK_M // 32)


@triton.jit
def _dkdv_rows(start_m, BLOCK_M: tl.constexpr, PERMUTED: tl.constexpr):
    """The queries of a dK/dV trip (see _dkdv_trips; start_m the loop's variable, the trip's number when
    PERMUTED): [BLOCK_M]."""
    if PERMUTED:
        block, B0 = _dkdv_tile(start_m, BLOCK_M)
        rows = dropout.tile_rows(block, B0, BLOCK_M // 32)
    else:
        rows = start_m + tl.arange(0, BLOCK_M)
    return rows


@triton.jit
def _key_valid(MASK, b, stride_mb, cols, seqlen, HAS_MASK: tl.constexpr):
    valid = cols < seqlen
    if HAS_MASK:
        valid = valid & (tl.load(MASK + b * stride_mb + cols, mask=valid, other=0) != 0)
    return valid


@triton.jit(do_not_specialize=["S", "lse_stride_h"])
def attention_fwd_kernel(Q, K, V, O, LSE, MASK, CU, sm_scale, threshold, drop_scale, SEED,
                         stride_b, stride_s, stride_h, o_stride_b, o_stride_s, o_stride_h, stride_mb,
                         lse_stride_b, lse_stride_h, H, S,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                         VARLEN: tl.constexpr, HAS_MASK: tl.constexpr, HAS_DROPOUT: tl.constexpr,
                         DOT_FP32: tl.constexpr, IEEE: tl.constexpr, MASK_TILES: tl.constexpr):
    pid_m, bh, b, h, start, seqlen = _program_sequence(CU, H, S, BLOCK_M, VARLEN)
    seed = dropout.load_seed(SEED, HAS_DROPOUT)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, HEAD_DIM)
    if pid_m * BLOCK_M < seqlen:
        base = _head_base(b, start, h, stride_b, stride_s, stride_h)
        row_ok = rows < seqlen
        q = _load_tile(Q, base, rows, row_ok, stride_s, dims)
        qk_scale = sm_scale * LOG2E
        m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_M,), tl.float32)
        acc = tl.zeros((BLOCK_M, HEAD_DIM), tl.float32)
        for start_n in range(0, seqlen, BLOCK_N):
            cols = start_n + tl.arange(0, BLOCK_N)
            col_ok = cols < seqlen
            k = _load_tile(K, base, cols, col_ok, stride_s, dims)
            v = _load_tile(V, base, cols, col_ok, stride_s, dims)
            # Scores stay unscaled (the scale is positive: the row maximum commutes with it), so that each
            # element's scale and shift are one FMA: exp2(qk * scale - max * scale).
            qk = _dot(q, tl.trans(k), DOT_FP32, IEEE)
            valid = _key_valid(MASK, b, stride_mb, cols, seqlen, HAS_MASK)
            qk = tl.where(valid[None, :], qk, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)  # (m_i: scaled)
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no key yet: no NaN
            prob = tl.math.exp2(qk * qk_scale - m_safe[:, None])
            alpha = tl.math.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(prob, 1)
            if HAS_DROPOUT:  # (the kept probabilities' scale is applied once, at the end)
                prob = tl.where(_keep_mask(seed, bh, rows, pid_m, start_n, threshold, BLOCK_N, MASK_TILES), prob, 0.0)
            acc = acc * alpha[:, None] + _dot(prob.to(v.dtype), v, DOT_FP32, IEEE)
            m_i = m_new
        has_key = l_i > 0.0
        lse = tl.where(has_key, m_i + tl.math.log2(tl.where(has_key, l_i, 1.0)), float("inf"))
        if HAS_DROPOUT:
            l_i = l_i / drop_scale
        out = acc / tl.where(has_key, l_i, 1.0)[:, None]
        out = tl.where(has_key[:, None], out, 0.0)
        o_base = _head_base(b, start, h, o_stride_b, o_stride_s, o_stride_h)
        _store_tile(O, o_base, rows, row_ok, o_stride_s, dims, out)
        tl.store(LSE + _stats_base(b, h, start, lse_stride_b, lse_stride_h) + rows, lse, mask=row_ok)


@triton.jit(do_not_specialize=["S", "lse_stride_h"])
def attention_bwd_dkdv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA, MASK, CU, sm_scale, threshold, drop_scale, SEED,
                              stride_b, stride_s, stride_h, o_stride_b, o_stride_s, o_stride_h, stride_mb,
                              lse_stride_b, lse_stride_h, H, S,
                              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                              VARLEN: tl.constexpr, HAS_MASK: tl.constexpr, HAS_DROPOUT: tl.constexpr,
                              DOT_FP32: tl.constexpr, IEEE: tl.constexpr, MASK_TILES: tl.constexpr):
    """One program per (block of BLOCK_N keys, batch*head), looping over trips of BLOCK_M queries, all in
    the transposed frame ([keys, queries] tiles). With dropout in the query-key grouping (MASK_TILES) the
    trips take the grouping's tiles (_dkdv_rows), whose mask each thread draws for the elements it holds.
    DK/DV share K's strides; DO shares O's."""
    PERMUTED: tl.constexpr = HAS_DROPOUT and MASK_TILES
    pid_n, bh, b, h, start, seqlen = _program_sequence(CU, H, S, BLOCK_N, VARLEN)
    seed = dropout.load_seed(SEED, HAS_DROPOUT)
    if pid_n * BLOCK_N < seqlen:
        key0 = pid_n * BLOCK_N
        cols = key0 + tl.arange(0, BLOCK_N)
        dims = tl.arange(0, HEAD_DIM)
        col_ok = cols < seqlen
        base = _head_base(b, start, h, stride_b, stride_s, stride_h)
        o_base = _head_base(b, start, h, o_stride_b, o_stride_s, o_stride_h)
        stats = _stats_base(b, h, start, lse_stride_b, lse_stride_h)
        k = _load_tile(K, base, cols, col_ok, stride_s, dims)
        v = _load_tile(V, base, cols, col_ok, stride_s, dims)
        valid = _key_valid(MASK, b, stride_mb, cols, seqlen, HAS_MASK)
        qk_scale = sm_scale * LOG2E
        dk = tl.zeros((BLOCK_N, HEAD_DIM), tl.float32)
        dv = tl.zeros((BLOCK_N, HEAD_DIM), tl.float32)
        for start_m in range(0, _dkdv_trips(seqlen, BLOCK_M, PERMUTED), _dkdv_step(BLOCK_M, PERMUTED)):
            rows = _dkdv_rows(start_m, BLOCK_M, PERMUTED)
            row_ok = rows < seqlen
            q, do, lse = _query_rows(Q, DO, LSE, base, o_base, stats, rows, row_ok, stride_s, o_stride_s, dims)
            delta = tl.load(DELTA + stats + rows, mask=row_ok, other=0.0)  # (stored by the dQ kernel)
            prob_t = _recompute_p_t(k, q, lse, qk_scale, valid, DOT_FP32, IEEE)      # [BLOCK_N, BLOCK_M]
            dp_t = _dot(v, tl.trans(do), DOT_FP32, IEEE)                           # (dO Vᵀ)ᵀ
            if HAS_DROPOUT:
                if MASK_TILES:  # (so PERMUTED: start_m is the trip's number)
                    block, B0 = _dkdv_tile(start_m, BLOCK_M)
                    keep_t = dropout.tile_keep(seed, block, B0, BLOCK_M // 32, key0, bh, threshold, BLOCK_N, True)
                else:
                    keep_t = tl.trans(_keep_mask(seed, bh, rows, 0, key0, threshold, BLOCK_N, False))
                prob_d = tl.where(keep_t, prob_t * drop_scale, 0.0)
                dp_t = tl.where(keep_t, dp_t * drop_scale, 0.0)
            else:
                prob_d = prob_t
            dv += _dot(prob_d.to(do.dtype), do, DOT_FP32, IEEE)
            ds_t = prob_t * (dp_t - delta[None, :])
            dk += _dot(ds_t.to(q.dtype), q, DOT_FP32, IEEE)
        dk = dk * sm_scale
        _store_tile(DK, base, cols, col_ok, stride_s, dims, dk)
        _store_tile(DV, base, cols, col_ok, stride_s, dims, dv)


@triton.jit(do_not_specialize=["S", "lse_stride_h"])
def attention_bwd_dq_kernel(Q, K, V, O, DO, DQ, LSE, DELTA, MASK, CU, sm_scale, threshold, drop_scale, SEED,
                            stride_b, stride_s, stride_h, o_stride_b, o_stride_s, o_stride_h, stride_mb,
                            lse_stride_b, lse_stride_h, H, S,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                            VARLEN: tl.constexpr, HAS_MASK: tl.constexpr, HAS_DROPOUT: tl.constexpr,
                            DOT_FP32: tl.constexpr, IEEE: tl.constexpr, MASK_TILES: tl.constexpr,
                            KEYS_FIRST: tl.constexpr = False):
    """One program per (query block, batch*head): delta = rowsum(dO * O) of its queries (stored in DELTA,
    laid out as the log-sum-exp, for the dK/dV kernel), then dQ over all key blocks. DQ shares Q's strides;
    O and DO share theirs. KEYS_FIRST (dropout in the query-key grouping at head dim 128): the transposed
    frame of the dK/dV kernel instead (_dq_keys_first)."""
    if KEYS_FIRST:
        _dq_keys_first(Q, K, V, O, DO, DQ, LSE, DELTA, MASK, CU, sm_scale, threshold, drop_scale, SEED,
                       stride_b, stride_s, stride_h, o_stride_b, o_stride_s, o_stride_h, stride_mb,
                       lse_stride_b, lse_stride_h, H, S, BLOCK_M, BLOCK_N, HEAD_DIM, VARLEN, HAS_MASK,
                       HAS_DROPOUT, DOT_FP32, IEEE)
    else:
        pid_m, bh, b, h, start, seqlen = _program_sequence(CU, H, S, BLOCK_M, VARLEN)
        seed = dropout.load_seed(SEED, HAS_DROPOUT)
        if pid_m * BLOCK_M < seqlen:
            rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
            dims = tl.arange(0, HEAD_DIM)
            row_ok = rows < seqlen
            base = _head_base(b, start, h, stride_b, stride_s, stride_h)
            o_base = _head_base(b, start, h, o_stride_b, o_stride_s, o_stride_h)
            stats = _stats_base(b, h, start, lse_stride_b, lse_stride_h)
            delta = _delta(O, DO, DELTA, o_base, stats, rows, row_ok, o_stride_s, dims)
            q, do, lse = _query_rows(Q, DO, LSE, base, o_base, stats, rows, row_ok, stride_s, o_stride_s, dims)
            qk_scale = sm_scale * LOG2E
            dq = tl.zeros((BLOCK_M, HEAD_DIM), tl.float32)
            for start_n in range(0, seqlen, BLOCK_N):
                k, v, valid = _key_block(K, V, MASK, base, b, stride_mb, start_n, seqlen, stride_s, dims, BLOCK_N,
                                         HAS_MASK)
                prob = _recompute_p(q, k, lse, qk_scale, valid, DOT_FP32, IEEE)
                dp = _dot(do, tl.trans(v), DOT_FP32, IEEE)
                if HAS_DROPOUT:
                    keep = _keep_mask(seed, bh, rows, pid_m, start_n, threshold, BLOCK_N, MASK_TILES)
                    dp = tl.where(keep, dp * drop_scale, 0.0)
                ds = prob * (dp - delta[:, None])
                dq += _dot(ds.to(k.dtype), k, DOT_FP32, IEEE)
            dq = dq * sm_scale
            _store_tile(DQ, base, rows, row_ok, stride_s, dims, dq)


@triton.jit
def _query_rows(Q, DO, LSE, base, o_base, stats, rows, row_ok, stride_s, o_stride_s, dims):
    """The backward's q and dO tiles of these rows and their log-sum-exp."""
    q = _load_tile(Q, base, rows, row_ok, stride_s, dims)
    do = _load_tile(DO, o_base, rows, row_ok, o_stride_s, dims)
    return q, do, _row_lse(LSE, stats, rows, row_ok)


@triton.jit
def _key_block(K, V, MASK, base, b, stride_mb, start_n, seqlen, stride_s, dims, BLOCK_N: tl.constexpr,
               HAS_MASK: tl.constexpr):
    """The k and v tiles of keys start_n .. start_n + BLOCK_N - 1 and which of them are valid."""
    cols = start_n + tl.arange(0, BLOCK_N)
    col_ok = cols < seqlen
    k = _load_tile(K, base, cols, col_ok, stride_s, dims)
    v = _load_tile(V, base, cols, col_ok, stride_s, dims)
    return k, v, _key_valid(MASK, b, stride_mb, cols, seqlen, HAS_MASK)


@triton.jit
def _delta(O, DO, DELTA, o_base, stats, rows, row_ok, o_stride_s, dims):
    """delta = rowsum(dO * O) of these rows, stored in DELTA (for the dK/dV kernel) and returned as read
    back after a barrier (the block's threads then see each other's stores), in the layout of the loop
    that uses it: the tiles of the sum carried into the loop made the fp32 tiles spill (464 B at 32 x 32
    over 4 warps; 209 registers and none this way). From L1/L2."""
    o = _load_tile(O, o_base, rows, row_ok, o_stride_s, dims)
    do = _load_tile(DO, o_base, rows, row_ok, o_stride_s, dims)
    tl.store(DELTA + stats + rows, tl.sum(o.to(tl.float32) * do.to(tl.float32), 1), mask=row_ok)
    tl.debug_barrier()
    return tl.load(DELTA + stats + rows, mask=row_ok, other=0.0)


@triton.jit
def _dq_keys_first(Q, K, V, O, DO, DQ, LSE, DELTA, MASK, CU, sm_scale, threshold, drop_scale, SEED,
                   stride_b, stride_s, stride_h, o_stride_b, o_stride_s, o_stride_h, stride_mb,
                   lse_stride_b, lse_stride_h, H, S, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   HEAD_DIM: tl.constexpr, VARLEN: tl.constexpr, HAS_MASK: tl.constexpr,
                   HAS_DROPOUT: tl.constexpr, DOT_FP32: tl.constexpr, IEEE: tl.constexpr):
    """dQ in the dK/dV kernel's frame: [keys, queries] tiles (Sᵀ = K Qᵀ, dPᵀ = V dOᵀ) and dQᵀ += Kᵀ dSᵀ,
    so that every matmul's M dimension is BLOCK_N keys or the head dim and each thread holds keys
    {k, k + 8} of the query-key grouping's tiles, as in the dK/dV kernel: it draws the mask of the elements
    it holds, with no exchange. A 64-query warpgroup in the usual frame holds only 2 of a call's 4 queries,
    and 128 queries over one warpgroup spill at head dim 128 (the accumulator alone is 128 registers a
    thread); here the accumulator is HEAD_DIM x BLOCK_M over all the program's warps. One program per
    block of 128 queries, in trips of BLOCK_M queries of the grouping's tiles (dropout.tile_rows; a trip is
    made while its first query is in the sequence), each trip its own delta and its own pass over the keys."""
    block, bh, b, h, start, seqlen = _program_sequence(CU, H, S, 128, VARLEN)
    seed = dropout.load_seed(SEED, HAS_DROPOUT)
    trips = _block_trips(seqlen - block * 128, BLOCK_M)
    dims = tl.arange(0, HEAD_DIM)
    base = _head_base(b, start, h, stride_b, stride_s, stride_h)
    o_base = _head_base(b, start, h, o_stride_b, o_stride_s, o_stride_h)
    stats = _stats_base(b, h, start, lse_stride_b, lse_stride_h)
    qk_scale = sm_scale * LOG2E
    for trip in range(0, trips):
        B0 = trip * (BLOCK_M // 32)
        rows = dropout.tile_rows(block, B0, BLOCK_M // 32)
        row_ok = rows < seqlen
        delta = _delta(O, DO, DELTA, o_base, stats, rows, row_ok, o_stride_s, dims)
        q, do, lse = _query_rows(Q, DO, LSE, base, o_base, stats, rows, row_ok, stride_s, o_stride_s, dims)
        dq_t = tl.zeros((HEAD_DIM, BLOCK_M), tl.float32)
        for start_n in range(0, seqlen, BLOCK_N):
            k, v, valid = _key_block(K, V, MASK, base, b, stride_mb, start_n, seqlen, stride_s, dims, BLOCK_N,
                                     HAS_MASK)
            prob_t = _recompute_p_t(k, q, lse, qk_scale, valid, DOT_FP32, IEEE)          # [BLOCK_N, BLOCK_M]
            dp_t = _dot(v, tl.trans(do), DOT_FP32, IEEE)
            if HAS_DROPOUT:
                keep_t = dropout.tile_keep(seed, block, B0, BLOCK_M // 32, start_n, bh, threshold, BLOCK_N, True)
                dp_t = tl.where(keep_t, dp_t * drop_scale, 0.0)
            ds_t = prob_t * (dp_t - delta[None, :])
            dq_t += _dot(tl.trans(k), ds_t.to(k.dtype), DOT_FP32, IEEE)             # [HEAD_DIM, BLOCK_M]
        _store_tile(DQ, base, rows, row_ok, stride_s, dims, tl.trans(dq_t * sm_scale))


@triton.jit
def _recompute_p(q, k, lse, qk_scale, valid, DOT_FP32: tl.constexpr, IEEE: tl.constexpr):
    qk = _dot(q, tl.trans(k), DOT_FP32, IEEE)
    # scale and shift in one FMA; lse = +inf on rows without keys: p = 0
    return tl.where(valid[None, :], tl.math.exp2(qk * qk_scale - lse[:, None]), 0.0)


@triton.jit
def _recompute_p_t(k, q, lse, qk_scale, valid, DOT_FP32: tl.constexpr, IEEE: tl.constexpr):
    """_recompute_p in the keys-first frame: Pᵀ [keys, queries] = exp2((K Qᵀ) · scale - lse)."""
    kq = _dot(k, tl.trans(q), DOT_FP32, IEEE)
    # scale and shift in one FMA; lse = +inf on rows without keys: p = 0
    return tl.where(valid[:, None], tl.math.exp2(kq * qk_scale - lse[None, :]), 0.0)


def _grid_args(q, varlen: bool):
    """(batch, heads, strides b/s/h) of a canonical tensor: padded [B, H, S, D] viewed from [B, S, H, D]
    memory, or varlen [total, H, D]."""
    if varlen:
        return q.stride(1), 0, q.stride(0)  # stride_h, stride_b, stride_s
    return q.stride(1), q.stride(0), q.stride(2)


def _common(q, mask, cu_seqlens, max_seqlen):
    import torch

    from bertfast.kernels.launch import attention_config, interpreted

    varlen = cu_seqlens is not None
    if varlen:
        batch, heads, seq = cu_seqlens.shape[0] - 1, q.shape[1], max_seqlen
        lse_strides = (0, q.shape[0])  # [H, total]
    else:
        batch, heads, seq = q.shape[0], q.shape[1], q.shape[2]
        lse_strides = (heads * seq, seq)  # [B, H, S]
    head_dim = q.shape[-1]
    # fp32 matmuls follow torch's setting: exact fp32 by default, TF32 tensor cores after
    # torch.set_float32_matmul_precision("high" or "medium"), as torch's own matmuls do.
    ieee = q.dtype == torch.float32 and not interpreted() and torch.get_float32_matmul_precision() == "highest"
    cfg = attention_config(head_dim, q.dtype, seq)
    flags = dict(VARLEN=varlen, HAS_MASK=mask is not None, DOT_FP32=interpreted(), IEEE=ieee,
                 MASK_TILES=cfg.mask_tiles)
    dummy = q.new_empty(1, dtype=torch.int32)
    return batch, heads, seq, head_dim, flags, cfg, dummy, lse_strides


def lse_shape(q, cu_seqlens) -> tuple[int, int]:
    """The log-sum-exp's shape: [B * H, S] padded, [H, total tokens] packed."""
    if cu_seqlens is not None:
        return q.shape[1], q.shape[0]
    return q.shape[0] * q.shape[1], q.shape[2]


def _grid(seq: int, block: int, batch_heads: int, what: str) -> tuple[int]:
    """The one-axis grid of _program_sequence: cdiv(seq, block) programs for each batch * head."""
    return grid_1d(triton.cdiv(seq, block) * batch_heads, what)


def _canonical_empty(q, varlen: bool):
    """An output of q's shape in canonical memory: [total, H, D] packed, [B, H, S, D] viewing [B, S, H, D]
    memory padded (q itself may be a view with wider rows: q, k, v of one packed projection)."""
    if varlen:
        return q.new_empty(q.shape)
    b, h, s, d = q.shape
    return q.new_empty((b, s, h, d)).transpose(1, 2)


def _seed_arg(seed, dummy):
    """The seed tensor the kernels read (int64 [1] on the device), or a placeholder without dropout."""
    return seed if seed is not None else dummy


@on_tensor_device
def attention_forward(q, k, v, mask, cu_seqlens, max_seqlen: int, scale: float, p: float, seed):
    """q, k, v sharing strides, unit stride on the head dim (canonical, see _grid_args, or views of one
    packed projection); seed: int64 [1] on q's device (with p > 0). Returns (out: q's shape in canonical
    memory, lse fp32 (lse_shape))."""
    import torch

    batch, heads, seq, head_dim, flags, cfg, dummy, lse_strides = _common(q, mask, cu_seqlens, max_seqlen)
    out = _canonical_empty(q, flags["VARLEN"])
    lse = torch.empty(lse_shape(q, cu_seqlens), dtype=torch.float32, device=q.device)
    stride_h, stride_b, stride_s = _grid_args(q, flags["VARLEN"])
    o_stride_h, o_stride_b, o_stride_s = _grid_args(out, flags["VARLEN"])
    if batch * heads == 0 or seq == 0:
        return out.zero_(), lse
    fwd_m, fwd_n = cfg.fwd_tiles(p > 0)
    attention_fwd_kernel[_grid(seq, fwd_m, batch * heads, "attention")](
        q, k, v, out, lse, mask if mask is not None else dummy, cu_seqlens if cu_seqlens is not None else dummy,
        scale, dropout.threshold(p), dropout.keep_scale(p), _seed_arg(seed, dummy), stride_b, stride_s, stride_h,
        o_stride_b, o_stride_s, o_stride_h, mask.stride(0) if mask is not None else 0, *lse_strides, heads, seq,
        BLOCK_M=fwd_m, BLOCK_N=fwd_n, HEAD_DIM=head_dim, HAS_DROPOUT=p > 0, **flags,
        **cfg.options("fwd", p > 0))
    return out, lse


@on_tensor_device
def attention_backward(do, q, k, v, out, lse, mask, cu_seqlens, max_seqlen: int, scale: float, p: float, seed,
                       grads=None):
    """do shares out's strides; seed as in attention_forward. Returns (dq, dk, dv): written into `grads`
    when given (three tensors with q's strides: views of one packed gradient), else new tensors like q."""
    import torch

    batch, heads, seq, head_dim, flags, cfg, dummy, lse_strides = _common(q, mask, cu_seqlens, max_seqlen)
    if grads is None:
        grads = tuple(torch.empty_strided(q.shape, q.stride(), dtype=q.dtype, device=q.device) for _ in range(3))
    dq, dk, dv = grads
    if not dq.stride() == dk.stride() == dv.stride() == q.stride():
        raise ValueError(f"attention_backward: gradients must share q's strides {q.stride()}, got "
                         f"{dq.stride()}, {dk.stride()}, {dv.stride()}")
    if batch * heads == 0 or seq == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    stride_h, stride_b, stride_s = _grid_args(q, flags["VARLEN"])
    o_stride_h, o_stride_b, o_stride_s = _grid_args(out, flags["VARLEN"])
    delta = torch.empty_like(lse)  # (every row a sequence has is written by the dQ kernel, read by dK/dV)
    cu = cu_seqlens if cu_seqlens is not None else dummy
    common = (mask if mask is not None else dummy, cu, scale, dropout.threshold(p), dropout.keep_scale(p),
              _seed_arg(seed, dummy), stride_b, stride_s, stride_h, o_stride_b, o_stride_s, o_stride_h,
              mask.stride(0) if mask is not None else 0, *lse_strides, heads, seq)
    dq_m, dq_n = cfg.dq_tiles(p > 0)
    keys_first = p > 0 and cfg.dq_keys_first  # (one program per 128 queries, in trips of dq_m)
    attention_bwd_dq_kernel[_grid(seq, 128 if keys_first else dq_m, batch * heads, "attention backward")](
        q, k, v, out, do, dq, lse, delta, *common, BLOCK_M=dq_m, BLOCK_N=dq_n, HEAD_DIM=head_dim,
        HAS_DROPOUT=p > 0, **flags, **({"KEYS_FIRST": True} if keys_first else {}), **cfg.options("dq", p > 0))
    # (the dQ kernel first: it writes delta)
    attention_bwd_dkdv_kernel[_grid(seq, cfg.dkdv_keys, batch * heads, "attention backward")](
        q, k, v, do, dk, dv, lse, delta, *common, BLOCK_M=cfg.dkdv_queries, BLOCK_N=cfg.dkdv_keys,
        HEAD_DIM=head_dim, HAS_DROPOUT=p > 0, **flags, **cfg.options("dkdv"))
    return dq, dk, dv


def attention_dropout_keep_mask(batch_heads: int, seq: int, p: float, seed: int, device, head_dim: int = 64,
                                dtype=None):
    """The keep-mask the attention kernels draw, [B*H, S, S], for q of this head dim and dtype (default
    fp32: they choose the grouping, launch.attention_config) on this device (for tests and debugging)."""
    import torch

    from bertfast.kernels.launch import attention_config

    tiles = attention_config(head_dim, dtype or torch.float32, seq).mask_tiles
    return torch.stack([dropout.keep_mask(seq, seq, p, seed, bh, device, grouping="tiles" if tiles else "fragment")
                        for bh in range(batch_heads)])
