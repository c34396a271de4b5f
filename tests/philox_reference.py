"""An independent reference of the dropout masks the kernels draw, in numpy (no Triton, no torch RNG).

Philox4x32 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011; the Random123
library's philox4x32 round and key schedule), checked against Random123's published known answers in
tests/test_dropout_exact.py. On top of it, the three documented groupings of bertfast.kernels.dropout:
which call and which 16 bits of it each element (row, col) of a stream takes.
"""
from __future__ import annotations

import numpy as np

M0, M1 = 0xD2511F53, 0xCD9E8D57  # the round multipliers
W0, W1 = 0x9E3779B9, 0xBB67AE85  # the key increments (golden ratio, sqrt(3) - 1)
MASK32 = np.uint64(0xFFFFFFFF)


def _mulhilo(m: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    product = np.uint64(m) * x.astype(np.uint64)
    return (product >> np.uint64(32)).astype(np.uint32), (product & MASK32).astype(np.uint32)


def philox4x32(counter, key, rounds: int = 10) -> tuple[np.ndarray, ...]:
    """The four output words of Philox4x32-`rounds` for counters (c0, c1, c2, c3) and key (k0, k1):
    arrays (broadcast together) of uint32."""
    c0, c1, c2, c3 = np.broadcast_arrays(*(np.asarray(c, dtype=np.uint64).astype(np.uint32) for c in counter))
    k0, k1 = (np.asarray(k, dtype=np.uint64).astype(np.uint32) for k in key)
    for _ in range(rounds):
        hi0, lo0 = _mulhilo(M0, c0)
        hi1, lo1 = _mulhilo(M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0.astype(np.uint64) + W0).astype(np.uint32)
        k1 = (k1.astype(np.uint64) + W1).astype(np.uint32)
    return c0, c1, c2, c3


ROUNDS = 7  # bertfast's dropout runs 7 rounds


def _key(seed: int):
    return seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF


def _half(words, word: np.ndarray, half: np.ndarray) -> np.ndarray:
    w = np.choose(word, words)
    return np.where(half == 0, w & 0xFFFF, w >> 16).astype(np.uint32)


def row_tile_bits(seed: int, rows: int, cols: int, stream: int) -> np.ndarray:
    """[rows, cols] 16-bit draws of the row-tile grouping (LayerNorm): group col // 8; lane l = col % 8
    takes word 2 (l % 2) + (l // 2) % 2, half l // 4."""
    r = np.arange(rows)[:, None]
    c = np.arange(cols)[None, :]
    words = philox4x32((c // 8, r, stream, 0), _key(seed), ROUNDS)
    lane = c % 8
    return _half(words, np.broadcast_to(2 * (lane % 2) + (lane // 2) % 2, (rows, cols)),
                 np.broadcast_to(lane // 4, (rows, cols)))


def fragment_bits(seed: int, rows: int, cols: int, stream: int) -> np.ndarray:
    """[rows, cols] 16-bit draws of the fragment grouping (attention's P): col = 32 a + 8 j + 2 c + e
    takes group 4 a + c, word j, half e."""
    r = np.arange(rows)[:, None]
    k = np.arange(cols)[None, :]
    a, j, c, e = k // 32, (k // 8) % 4, (k // 2) % 4, k % 2
    words = philox4x32((4 * a + c, r, stream, 0), _key(seed), ROUNDS)
    return _half(words, np.broadcast_to(j, (rows, cols)), np.broadcast_to(e, (rows, cols)))


def tile_bits(seed: int, rows: int, cols: int, stream: int) -> np.ndarray:
    """[rows, cols] 16-bit draws of the query-key grouping (attention's P in 16-bit on the GPU's tiles):
    query q = 128 A + 64 x + 16 B + 8 y + z and key k = 16 C + 8 u + v take the call (64 A + 8 B + z,
    8 C + v, stream, 1), word 2 x + y, half u."""
    q = np.arange(rows)[:, None]
    k = np.arange(cols)[None, :]
    a, x, b, y, z = q // 128, (q // 64) % 2, (q // 16) % 4, (q // 8) % 2, q % 8
    c, u, v = k // 16, (k // 8) % 2, k % 8
    words = philox4x32((64 * a + 8 * b + z, 8 * c + v, stream, 1), _key(seed), ROUNDS)
    return _half(words, np.broadcast_to(2 * x + y, (rows, cols)), np.broadcast_to(u, (rows, cols)))


def threshold(p: float) -> int:
    return min(max(int(round(p * 65536)), 0), 65535)


def keep(bits: np.ndarray, p: float) -> np.ndarray:
    return bits >= threshold(p)
