"""The embedding sum's backward on the GPU: every table row written once, in the table's dtype.

The forward (word[id] + type[type_id] + position[pos_id]) runs in the compiled extension (csrc/); its
backward is here, in Triton, so that CI tests it under the interpreter and the static model reads it.

Sorted keys: the word ids (default), or all three tables' ids as one key space (word rows, then type rows,
then position rows) when torch's deterministic algorithms are on. The sorted list is cut into pieces of
PIECE consecutive entries; the pieces kernel gathers its entries' gradient rows (128-bit loads), sums
each run of equal keys in sorted order (deterministic), and writes
  - a run that starts and ends inside the piece: straight into its table row, in the table's dtype;
  - a run that crosses the piece's edge: its piece's share into slot 0 (continuing a run from the piece
    before) or slot 1 (a run going on into the next piece) of a small fp32 scratch;
  - where each run starts and ends (run_start / run_end per table row).
The rows kernel then writes every other row once: zeros for a row no token uses (and for padding_idx),
or, for a run spanning pieces, its slot-1 share plus the following pieces' slot-0 shares, in piece order.
Long runs (the segment table's rows hold half the tokens each) are so summed in parallel, in a fixed
order. By default (word ids sorted) the gradient is read once: each gathered row is also added into an
fp32 workspace of the small tables (type rows pre-summed per piece, position rows by fp32 atomics), which
the rows kernel rounds to the tables' dtype.
"""
import triton
import triton.language as tl

from bertfast.kernels.launch import on_tensor_device

PIECE = 16  # sorted entries per program of the pieces kernel
BLOCK_H = 256  # hidden columns per program (one warp, 8 values a thread: 128-bit loads)
ROWS = 32  # table rows per program of the rows kernel


@triton.jit
def _row_start(WORD, TYPE, POS, key, H, V, TYPE_ROWS):
    """Where row `key` of the key space (word rows, then type rows, then position rows) starts."""
    key = key.to(tl.int64)
    return tl.where(key < V, WORD + key * H, tl.where(key < V + TYPE_ROWS, TYPE + (key - V) * H,
                                                      POS + (key - V - TYPE_ROWS) * H))


@triton.jit
def _flush(WORD, TYPE, POS, SLOTS, piece, key, acc, started_here, ends_here, cols, col_ok, H, V, TYPE_ROWS,
           padding_idx, WORD_KEYS: tl.constexpr, OFFSET: tl.constexpr):
    """A run's share in this piece is done: a whole run goes to its table row (none for padding_idx); a
    share of a run crossing the piece's start goes to slot 0, of one going on past its end to slot 1."""
    if started_here & ends_here:
        if key != padding_idx:
            if WORD_KEYS:
                row = WORD + key.to(OFFSET) * H
            else:
                row = _row_start(WORD, TYPE, POS, key, H, V, TYPE_ROWS)
            tl.store(row + cols, acc.to(WORD.dtype.element_ty), mask=col_ok)
    else:
        slot = tl.where(started_here, 1, 0)
        tl.store(SLOTS + (piece * 2 + slot) * H + cols, acc, mask=col_ok)


@triton.jit
def _periodic(IDS, token, LEN, MAGIC, MODE: tl.constexpr):
    """Token `token`'s id in a periodic id tensor (see ops.embedding_sum): MODE 0 one id for all, 1 one
    per token, 2 one per position repeated: token % LEN, by a multiply with MAGIC = ceil(2**32 / LEN)
    (the quotient is exact or one too large, which one comparison mends) instead of a division."""
    if MODE == 0:
        return tl.load(IDS).to(tl.int32)
    if MODE == 1:
        return tl.load(IDS + token).to(tl.int32)
    quotient = tl.umulhi(token.to(tl.uint32), MAGIC.to(tl.uint32)).to(tl.int32)
    rest = token - quotient * LEN
    return tl.load(IDS + tl.where(rest < 0, rest + LEN, rest)).to(tl.int32)


@triton.jit(do_not_specialize=["N", "T", "TYPE_LEN", "TYPE_MAGIC", "POS_LEN", "POS_MAGIC"])  # (vary with the batch)
def embedding_pieces_kernel(GRAD, KEYS, ORDER, WORD, TYPE, POS, SLOTS, RUN_START, RUN_END, TYPE_IDS, POS_IDS,
                            SMALL, N, T, H, V, TYPE_LEN, TYPE_MAGIC, POS_LEN, POS_MAGIC, TYPE_ROWS, padding_idx,
                            PIECE: tl.constexpr, BLOCK_H: tl.constexpr, SMALL_ATOMIC: tl.constexpr,
                            TYPES_UNROLLED: tl.constexpr, TYPE_MODE: tl.constexpr, POS_MODE: tl.constexpr,
                            OFFSET: tl.constexpr):
    """KEYS: the N sorted keys, ORDER: the entry each came from (token = ORDER % T). WORD, TYPE, POS: the
    gradient tables, in the tables' dtype; the keys are word rows only (SMALL_ATOMIC) or the three
    tables' rows as one key space (word rows, then type rows, then position rows). SMALL: the fp32
    [TYPE_ROWS + positions, H] workspace of the small tables (SMALL_ATOMIC).
    The piece's entries are walked in order (unrolled: all their loads issued at once), one running sum
    of BLOCK_H columns: summation in sorted order, deterministic. The runs' bounds are recorded by one
    vector store each, from the piece's keys loaded as a vector."""
    piece = tl.program_id(0)
    first = piece * PIECE
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    col_ok = cols < H
    if tl.program_id(1) == 0:  # one column block records where runs start and end
        idx = first + tl.arange(0, PIECE)
        ok = idx < N
        keys = tl.load(KEYS + idx, mask=ok, other=-1).to(tl.int32)
        before = tl.load(KEYS + idx - 1, mask=ok & (idx > 0), other=-2).to(tl.int32)
        after = tl.load(KEYS + idx + 1, mask=idx + 1 < N, other=-3).to(tl.int32)
        tl.store(RUN_START + keys, idx, mask=ok & (keys != before))
        tl.store(RUN_END + keys, idx + 1, mask=ok & (keys != after))
    prev = tl.load(KEYS + first - 1, mask=first > 0, other=-1).to(tl.int32)
    key = prev
    started_here = False
    acc = tl.zeros((BLOCK_H,), tl.float32)
    t0 = tl.zeros((BLOCK_H,), tl.float32)
    t1 = tl.zeros((BLOCK_H,), tl.float32)
    t2 = tl.zeros((BLOCK_H,), tl.float32)
    t3 = tl.zeros((BLOCK_H,), tl.float32)
    for i in tl.static_range(PIECE):
        idx = first + i
        if idx < N:
            key = tl.load(KEYS + idx).to(tl.int32)
            token = tl.load(ORDER + idx).to(tl.int32)  # (32-bit offsets and remainders: T < 2**31)
            if not SMALL_ATOMIC:  # entries of the three key spaces: token = entry % T
                token = token % T
            g = tl.load(GRAD + token.to(OFFSET) * H + cols, mask=col_ok, other=0.0).to(tl.float32)
            if key != prev:
                if i > 0:  # the previous run ends here
                    _flush(WORD, TYPE, POS, SLOTS, piece, prev, acc, started_here, True, cols, col_ok, H, V,
                           TYPE_ROWS, padding_idx, SMALL_ATOMIC, OFFSET)
                started_here = True
                acc = g
            else:
                acc += g
            if SMALL_ATOMIC:  # the same gathered row, into its segment and position rows (fp32)
                pos_row = _periodic(POS_IDS, token, POS_LEN, POS_MAGIC, POS_MODE)
                tl.atomic_add(SMALL + (TYPE_ROWS + pos_row) * H + cols, g, mask=col_ok, sem="relaxed")
                type_row = _periodic(TYPE_IDS, token, TYPE_LEN, TYPE_MAGIC, TYPE_MODE)
                if TYPES_UNROLLED > 0:  # segment rows: few, summed here and added once a piece
                    t0 += g * (type_row == 0).to(tl.float32)
                    if TYPES_UNROLLED > 1:
                        t1 += g * (type_row == 1).to(tl.float32)
                    if TYPES_UNROLLED > 2:
                        t2 += g * (type_row == 2).to(tl.float32)
                    if TYPES_UNROLLED > 3:
                        t3 += g * (type_row == 3).to(tl.float32)
                else:
                    tl.atomic_add(SMALL + type_row * H + cols, g, mask=col_ok, sem="relaxed")
            prev = key
    last = tl.minimum(first + PIECE, N) - 1
    if last >= first:
        going_on = tl.load(KEYS + last + 1, mask=last + 1 < N, other=-2).to(tl.int32) == key
        _flush(WORD, TYPE, POS, SLOTS, piece, key, acc, started_here, ~going_on, cols, col_ok, H, V, TYPE_ROWS,
               padding_idx, SMALL_ATOMIC, OFFSET)
    if SMALL_ATOMIC and TYPES_UNROLLED > 0:
        tl.atomic_add(SMALL + cols, t0, mask=col_ok, sem="relaxed")
        if TYPES_UNROLLED > 1:
            tl.atomic_add(SMALL + H + cols, t1, mask=col_ok, sem="relaxed")
        if TYPES_UNROLLED > 2:
            tl.atomic_add(SMALL + 2 * H + cols, t2, mask=col_ok, sem="relaxed")
        if TYPES_UNROLLED > 3:
            tl.atomic_add(SMALL + 3 * H + cols, t3, mask=col_ok, sem="relaxed")


@triton.jit(do_not_specialize=["R"])
def embedding_rows_kernel(WORD, TYPE, POS, SLOTS, RUN_START, RUN_END, SMALL, R, H, V, TYPE_ROWS, padding_idx,
                          PIECE: tl.constexpr, BLOCK_H: tl.constexpr, ROWS: tl.constexpr, SMALL_ATOMIC: tl.constexpr):
    """Rows not written by the pieces kernel, ROWS rows of the key space a program (R rows: the three
    tables'): zeros for a row no token uses (and padding_idx), the small tables rounded from the fp32
    workspace SMALL (SMALL_ATOMIC), and, rarely, a run spanning pieces summed from its slots in order."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    col_ok = cols < H
    row_ok = rows < R
    if SMALL_ATOMIC:
        in_runs = rows < V
    else:
        in_runs = row_ok
    lo = tl.load(RUN_START + rows, mask=in_runs, other=-1)
    hi = tl.load(RUN_END + rows, mask=in_runs, other=0)
    out = _row_start(WORD, TYPE, POS, rows, H, V, TYPE_ROWS)[:, None] + cols[None, :]
    zero = in_runs & ((lo < 0) | (rows == padding_idx))
    tl.store(out, tl.zeros((ROWS, BLOCK_H), tl.float32).to(WORD.dtype.element_ty), mask=zero[:, None] & col_ok[None, :])
    if SMALL_ATOMIC:
        small = row_ok & (rows >= V)
        value = tl.load(SMALL + (rows - V).to(tl.int64)[:, None] * H + cols[None, :],
                        mask=small[:, None] & col_ok[None, :], other=0.0)
        tl.store(out, value.to(WORD.dtype.element_ty), mask=small[:, None] & col_ok[None, :])
    spanning = in_runs & ~zero & (lo // PIECE != (hi - 1) // PIECE)
    rank = tl.cumsum(spanning.to(tl.int32), 0) - 1
    for j in range(tl.sum(spanning.to(tl.int32), 0)):  # runs spanning pieces: few (frequent ids)
        this = spanning & (rank == j)
        row = tl.sum(tl.where(this, rows, 0), 0)
        first_piece = tl.sum(tl.where(this, lo, 0), 0) // PIECE
        last_piece = (tl.sum(tl.where(this, hi, 0), 0) - 1) // PIECE
        # (slot offsets fit int32: pieces * 2 * H < 2**31 for any batch a GPU holds)
        acc = tl.load(SLOTS + (first_piece * 2 + 1) * H + cols, mask=col_ok, other=0.0)
        for p in range(first_piece + 1, last_piece + 1):
            acc += tl.load(SLOTS + p * 2 * H + cols, mask=col_ok, other=0.0)
        tl.store(_row_start(WORD, TYPE, POS, row, H, V, TYPE_ROWS) + cols, acc.to(WORD.dtype.element_ty), mask=col_ok)


@on_tensor_device
def embedding_backward(grad, ids, type_ids, pos_ids, rows: tuple[int, int, int], padding_idx: int,
                       deterministic: bool):
    """(word, type, position) table gradients in grad's dtype. grad: [T, H] contiguous; ids, type_ids,
    pos_ids: int64, of length T, 1 or a divisor period of T (id of token t = ids[t % len]); rows: each
    table's row count; padding_idx: -1 for none."""
    import torch

    tokens, hidden = grad.shape
    words, types, positions = rows
    device = grad.device
    total = words + types + positions
    if deterministic:  # all three tables as one sorted key space: no atomics
        keys = torch.cat([_expand(ids, tokens), _expand(type_ids, tokens) + words,
                          _expand(pos_ids, tokens) + words + types])
        key_rows = total
    else:
        keys = _expand(ids, tokens)
        key_rows = words
    sorted_keys, order = torch.sort(keys, stable=True)
    n = keys.shape[0]
    pieces = triton.cdiv(n, PIECE)
    word, type_, pos = (torch.empty((r, hidden), dtype=grad.dtype, device=device) for r in rows)
    slots = torch.empty((max(pieces, 1) * 2, hidden), dtype=torch.float32, device=device)
    runs = torch.full((2, key_rows), -1, dtype=torch.int32, device=device)
    small = slots if deterministic else torch.zeros((types + positions, hidden), dtype=torch.float32, device=device)
    col_blocks = triton.cdiv(hidden, BLOCK_H)
    if n:
        embedding_pieces_kernel[(pieces, col_blocks)](
            grad, sorted_keys, order, word, type_, pos, slots, runs[0], runs[1], type_ids, pos_ids, small, n, tokens,
            hidden, words, type_ids.numel(), _magic(type_ids.numel()), pos_ids.numel(), _magic(pos_ids.numel()), types,
            padding_idx, PIECE=PIECE, BLOCK_H=BLOCK_H,
            SMALL_ATOMIC=not deterministic, TYPES_UNROLLED=types if types <= 4 else 0,
            TYPE_MODE=_mode(type_ids, tokens), POS_MODE=_mode(pos_ids, tokens),
            OFFSET=tl.int32 if max(grad.numel(), word.numel()) < 2**31 else tl.int64, num_warps=1)
    embedding_rows_kernel[(triton.cdiv(total, ROWS), col_blocks)](
        word, type_, pos, slots, runs[0], runs[1], small, total, hidden, words, types, padding_idx, PIECE=PIECE,
        BLOCK_H=BLOCK_H, ROWS=ROWS, SMALL_ATOMIC=not deterministic, num_warps=4)
    return word, type_, pos


def _magic(length: int) -> int:
    """ceil(2**32 / length), as an int32 bit pattern (the kernels read it as uint32)."""
    magic = -(-(1 << 32) // max(length, 1))
    magic = min(magic, (1 << 32) - 1)
    return magic - (1 << 32) if magic >= (1 << 31) else magic


def _mode(ids, tokens: int) -> int:
    """How a periodic id tensor is read (_periodic): 0 one id, 1 one per token, 2 a remainder."""
    return 0 if ids.numel() == 1 else 1 if ids.numel() == tokens else 2


def _expand(ids, tokens: int):
    """Ids of all `tokens` tokens from a periodic id tensor (length dividing tokens)."""
    if ids.numel() == tokens:
        return ids
    return ids.repeat(tokens // ids.numel())
