"""Dropout masks from a counter-based generator, cheap enough for every training step (p = 0.1 in BERT).

One Philox4x32 call of 7 rounds (flash-attention's Triton LayerNorm uses 7; Triton's tl.rand runs 10 and
keeps 32 of its 128 bits) gives four 32-bit words w0..w3, and they feed LANES = 8 elements with 16 bits
each: the low half (w & 0xFFFF) or the high half (w >> 16) of one word. The call for element (row, col)
of stream `stream` is

    philox(seed, c0 = group, c1 = row, c2 = stream, c3 = 0), key = (seed & 0xFFFFFFFF, seed >> 32)

so every element has its own 16 bits for any row, column and stream below 2**32 (no counter overflow),
and forward and backward kernels that name the same (seed, row, col, stream) draw the same mask. Which
16 bits an element takes (the two groupings; tests/philox_reference.py computes both independently):

  row tiles (random_bits: LayerNorm)      group = col // 8, and l = col % 8 takes
                                          word 2 (l % 2) + (l // 2) % 2, half l // 4:
                                          l = 0..7 -> w0 lo, w2 lo, w1 lo, w3 lo, w0 hi, w2 hi, w1 hi, w3 hi
  accumulator fragments (fragment_keep:   col = 32 a + 8 j + 2 c + e takes group 4 a + c, word j, half e
  attention's P, the interpreter's and
  the fp32 tiles)
  query-key tiles (tile_keep: attention's query q = 128 A + 64 x + 16 B + 8 y + z and key
  P in 16-bit, on the GPU's tiles)        k = 16 C + 8 u + v take the call c0 = 64 A + 8 B + z, c1 = 8 C + v,
                                          c3 = 1, word 2 x + y, half u

The query-key grouping is for the backward: a thread of the dK/dV kernel, which holds Pᵀ (keys as the
accumulator's rows), holds keys {k, k + 8} and queries of one residue mod 8; a thread of the forward or
dQ kernel (128 queries over one warpgroup) holds queries {q, q + 8, q + 64, q + 72} and keys of two
residues mod 8 (at head dim 128, where a dQ kernel of 128 queries over one warpgroup spills, the dQ
kernel works in the dK/dV kernel's frame: attention._dq_keys_first). Each call's 8 elements, queries {q, q+8, q+64, q+72} x keys {k, k+8}, lie in one thread
in all three kernels: no thread exchanges mask bits (the fragment grouping's 8 keys of one query cross
threads in the transposed frame). c3 = 1 keeps its calls apart from the other groupings'. The query
group is c0 because a forward thread's calls share their queries: Philox's first round multiplies c0
(and c2), so its product is computed once for the thread's 8 calls (1205 SASS instructions a forward
trip, against 1254 with the key group as c0).

An element is kept when its 16 bits are >= threshold(p) = round(p * 65536): the kept probability is
exactly 1 - threshold / 65536, and kept values are scaled by keep_scale(p), its inverse, so the
expectation of the output equals the input's (the dropout rate differs from p by at most 2**-17).

The seed is read by the kernels from device memory (load_seed: one int64), never passed as a launch
argument: the ops draw it on the tensors' device from torch's generator (bertfast.ops._seed), so a
CUDA graph replays the draw and each replay gets a new seed, as torch's own dropout does.
"""
import triton
import triton.language as tl

from bertfast.kernels.launch import device_guard

ROUNDS = tl.constexpr(7)
LANES = tl.constexpr(8)
BITS = 16


def threshold(p: float) -> int:
    """The 16-bit threshold below which an element is dropped."""
    return min(max(int(round(p * (1 << BITS))), 0), (1 << BITS) - 1)


def keep_scale(p: float) -> float:
    """1 / (the exact probability of keeping an element): kept values are multiplied by it."""
    return 1.0 / (1.0 - threshold(p) / (1 << BITS))


@triton.jit
def load_seed(SEED, HAS_DROPOUT: tl.constexpr):
    """The dropout seed (int64) the op wrote to SEED on the device; 0 without dropout (SEED unread)."""
    seed = tl.zeros((), tl.int64)
    if HAS_DROPOUT:
        seed = tl.load(SEED)
    return seed


@triton.jit
def _lanes(word):
    """[..., G] uint32 -> [..., G, 2]: its low and high 16 bits."""
    return tl.join(word & 0xFFFF, word >> 16)


@triton.jit
def random_bits(seed, rows, col0, stream, BLOCK_N: tl.constexpr):
    """16 random bits (as uint32 in [0, 65536)) for each element of columns col0 .. col0 + BLOCK_N - 1
    of `rows` (a scalar: [BLOCK_N]; a [BLOCK_M] block: [BLOCK_M, BLOCK_N]). col0 must be a multiple of 8,
    BLOCK_N a multiple of 8 (at least one whole group: launch.layer_norm_config's block is)."""
    groups = col0 // LANES + tl.arange(0, BLOCK_N // LANES)
    if len(rows.shape) == 0:
        c0 = groups
        c1 = rows
    else:
        c0 = groups[None, :]
        c1 = rows[:, None]
    r0, r1, r2, r3 = tl.philox(seed, c0, c1, stream, 0, ROUNDS)
    # tl.join stacks on a new last axis: [..., G, half, w0/w1 or w2/w3, pair] -> [..., G * 8], whose
    # row-major order is column 8 g + 4 half + 2 (word % 2) + word // 2 (the table in the docstring).
    bits = tl.join(tl.join(_lanes(r0), _lanes(r1)), tl.join(_lanes(r2), _lanes(r3)))
    if len(rows.shape) == 0:  # (one return: the compiler visits code after a static if's return)
        out = tl.reshape(bits, (BLOCK_N,))
    else:
        out = tl.reshape(bits, (rows.shape[0], BLOCK_N))
    return out


@triton.jit
def _keep_lanes(word, threshold):
    """[..., G] uint32 -> [..., G, 2]: whether its low and high 16 bits are >= threshold."""
    return tl.join((word & 0xFFFF) >= threshold, word >= (threshold << 16))


@triton.jit
def fragment_keep(seed, rows, col0, stream, threshold, BLOCK_N: tl.constexpr):
    """The keep-mask of a tile that lives in the tensor cores' accumulator layout (attention's P):
    [len(rows), BLOCK_N] bool, col0 a multiple of 32. Column k = 32a + 8j + 2c + e belongs to group
    4a + c and takes lane 2j + e (16 bits each; kept when >= threshold). On sm_90 a thread's wgmma
    accumulator fragment holds, per row, the columns 8j + 2c + e for one c and all j, e: so each thread
    of a forward or dQ kernel owns whole groups of its P tile. (The dK/dV kernel works in the transposed
    frame, where the mask is converted between layouts: its keys are the accumulator's rows.)"""
    A: tl.constexpr = BLOCK_N // 32
    groups = (col0 // 32 + tl.arange(0, A))[:, None] * 4 + tl.arange(0, 4)[None, :]  # [A, 4 (c)]
    r0, r1, r2, r3 = tl.philox(seed, groups[None, :, :], rows[:, None, None], stream, 0, ROUNDS)
    # [M, A, c, e, j % 2, j // 2] -> [M, A, j // 2, j % 2, c, e], whose row-major order is k.
    t = threshold.to(tl.uint32)
    keep = tl.join(tl.join(_keep_lanes(r0, t), _keep_lanes(r1, t)), tl.join(_keep_lanes(r2, t), _keep_lanes(r3, t)))
    keep = tl.permute(keep, (0, 1, 5, 4, 2, 3))
    return tl.reshape(keep, (rows.shape[0], BLOCK_N))


@triton.jit
def tile_rows(block, B0, NB: tl.constexpr):
    """The queries of a query-key tile (tile_keep), in tile order: [32 NB], index i = 16 NB x + 16 b + 8 y
    + z holds query 128 block + 64 x + 16 (B0 + b) + 8 y + z (NB = 4, B0 = 0: the 128 queries of the
    block in order)."""
    i = tl.arange(0, 32 * NB)
    x = i // (16 * NB)
    return block * 128 + 64 * x + 16 * B0 + (i - 16 * NB * x)


@triton.jit
def tile_keep(seed, block, B0, NB: tl.constexpr, col0, stream, threshold, BLOCK_N: tl.constexpr,
              KEYS_FIRST: tl.constexpr):
    """The keep-mask of the queries tile_rows(block, B0, NB) against keys col0 .. col0 + BLOCK_N - 1 (col0
    and BLOCK_N multiples of 16) in the query-key grouping: [32 NB, BLOCK_N] bool, or its transpose
    [BLOCK_N, 32 NB] when KEYS_FIRST (the dK/dV kernel's frame)."""
    C: tl.constexpr = BLOCK_N // 16
    key_groups = (col0 // 16 + tl.arange(0, C))[:, None] * 8 + tl.arange(0, 8)[None, :]  # [C, v]
    query_groups = block * 64 + (B0 + tl.arange(0, NB))[:, None] * 8 + tl.arange(0, 8)[None, :]  # [b, z]
    r0, r1, r2, r3 = tl.philox(seed, query_groups[:, :, None, None], key_groups[None, None, :, :], stream, 1,
                               ROUNDS)
    t = threshold.to(tl.uint32)
    # [b, z, C, v, u, y, x] (word 2 x + y, half u)
    keep = tl.join(tl.join(_keep_lanes(r0, t), _keep_lanes(r1, t)), tl.join(_keep_lanes(r2, t), _keep_lanes(r3, t)))
    if KEYS_FIRST:  # -> [C, u, v, x, b, y, z]
        keep = tl.reshape(tl.permute(keep, (2, 4, 3, 6, 0, 5, 1)), (BLOCK_N, 32 * NB))
    else:  # -> [x, b, y, z, C, u, v]
        keep = tl.reshape(tl.permute(keep, (6, 0, 5, 1, 2, 4, 3)), (32 * NB, BLOCK_N))
    return keep


GROUPINGS = ("rows", "fragment", "tiles")  # random_bits, fragment_keep, tile_keep


@triton.jit
def keep_mask_kernel(KEEP, M, N, threshold, seed, stream, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     GROUPING: tl.constexpr):
    """KEEP[row, col] = whether the kernels keep element (row, col) of `stream` (for tests), in grouping
    GROUPINGS[GROUPING] (tiles: BLOCK_M = 128)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    if GROUPING == 2:
        keep = tile_keep(seed, tl.program_id(0), 0, 4, tl.program_id(1) * BLOCK_N, stream, threshold, BLOCK_N, False)
    elif GROUPING == 1:
        keep = fragment_keep(seed, rows, tl.program_id(1) * BLOCK_N, stream, threshold, BLOCK_N)
    else:
        keep = random_bits(seed, rows, tl.program_id(1) * BLOCK_N, stream, BLOCK_N) >= threshold
    tl.store(KEEP + rows[:, None].to(tl.int64) * N + cols[None, :], keep.to(tl.int8),
             mask=(rows[:, None] < M) & (cols[None, :] < N))


def keep_mask(rows: int, n: int, p: float, seed: int, stream: int = 0, device="cpu", grouping: str = "rows"):
    """[rows, n] bool: the elements the kernels keep for (seed, stream) at dropout probability p, in
    `grouping` (GROUPINGS: random_bits' rows (LayerNorm), attention's fragment_keep or tile_keep)."""
    import torch

    if grouping not in GROUPINGS:
        raise ValueError(f"grouping must be one of {GROUPINGS}, got {grouping!r}")
    keep = torch.empty((rows, n), dtype=torch.int8, device=device)
    block_m, block_n = (128 if grouping == "tiles" else 16), 64
    if rows and n:
        with device_guard(keep):
            keep_mask_kernel[(triton.cdiv(rows, block_m), triton.cdiv(n, block_n))](
                keep, rows, n, threshold(p), seed, stream, BLOCK_M=block_m, BLOCK_N=block_n,
                GROUPING=GROUPINGS.index(grouping))
    return keep.bool()
