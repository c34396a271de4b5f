"""Every kernel's dropout mask, read back exactly and compared bit for bit with an independent Philox
reference (tests/philox_reference.py, itself checked against Random123's published known answers).

How each mask is read (p = 0.5, the most informative; seeds above 2**32, so both key words matter):
- attention forward: q = 0 makes the probabilities uniform over the valid keys (P = 1/L); a value
  tensor one-hot over a chunk of keys (v[k, d] = 1 for k = c·D + d) puts keep[q, c·D + d]·scale/L in
  out[q, d]: non-zero exactly where kept.
- dK/dV kernel: with the same q = 0, a dO one-hot over a chunk of queries puts keep[c·D + d, k]·scale/L
  in dV[k, d].
- dQ kernel: v = dO = e0 makes dP = keep·scale and delta = scale·(kept count)/L, so dS = (keep·scale -
  delta)/L is positive exactly where kept; a key tensor one-hot over a chunk puts dS[q, c·D + d]·sm_scale
  in dQ[q, d].
- LayerNorm forward: x = 1 and no residual: y > 0 exactly where kept (a row kept or dropped whole has
  y = 0; its saved mean, scale or 0, says which).
- LayerNorm backward: dx = dh·scale where kept and exactly 0 where dropped (dh non-zero: random dy).

Under the interpreter with its own small tiles, and with every GPU tile configuration forced
(BERTFAST_GPU_TILES=1: bf16 / fp16 / fp32 x head dim 64 / 128, LayerNorm's rows per program); the
GPU-marked copies run the real kernels on CUDA.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import philox_reference as ref
from bertfast import ops
from bertfast.kernels import dropout
from bertfast.kernels.layer_norm import residual_layer_norm_backward, residual_layer_norm_forward

P = 0.5
SEED = 0x1234_5678_9ABC  # above 2**32: the key's high word is not zero


@pytest.fixture(autouse=True)
def triton_backend(backend):
    backend("triton")


@pytest.fixture(params=["interpreter tiles", "GPU tiles"])
def tiles(request, monkeypatch):
    monkeypatch.setenv("BERTFAST_GPU_TILES", "1" if request.param == "GPU tiles" else "0")
    return request.param


def test_gpu_tiles_are_forced(monkeypatch):
    """BERTFAST_GPU_TILES=1 gives the interpreter the tiles a GPU launches (the tests above rely on it)."""
    from bertfast.kernels.launch import attention_config, layer_norm_config

    monkeypatch.setenv("BERTFAST_GPU_TILES", "0")
    assert attention_config(64, torch.bfloat16).fwd_m == 16 and layer_norm_config(768, 2, False).warps == 1
    monkeypatch.setenv("BERTFAST_GPU_TILES", "1")
    bf16 = attention_config(64, torch.bfloat16)
    assert (bf16.fwd_m, bf16.fwd_n, bf16.dkdv_keys, bf16.dq_queries, bf16.mask_tiles) == (128, 64, 64, 64, True)
    assert bf16.dq_tiles(True) == (128, 32) and bf16.dq_tiles(False) == (64, 64)
    assert bf16.options("dq", True)["num_stages"] == 4 and bf16.options("dq")["num_stages"] == 2
    assert attention_config(128, torch.bfloat16).dkdv_keys == 128 and attention_config(64, torch.float32).fwd_m == 32
    d128 = attention_config(128, torch.bfloat16)  # with dropout: the query-key grouping, dQ keys first
    assert d128.mask_tiles and d128.dq_keys_first and d128.dq_tiles(True) == (64, 128)
    assert d128.fwd_tiles(True) == (128, 32) and d128.fwd_tiles(False) == (128, 64)
    assert d128.options("fwd", True) == {"num_warps": 4, "num_stages": 1} and d128.options("fwd")["num_warps"] == 8
    assert d128.options("dq", True)["num_warps"] == 8 and d128.options("dq")["num_warps"] == 4
    assert (layer_norm_config(768, 2, False).rows, layer_norm_config(768, 2, False).warps) == (2, 4)
    assert layer_norm_config(8192, 4, True).chunk == 2048


# The reference itself ----------------------------------------------------------------------------------
RANDOM123_KAT = [  # Random123's kat_vectors: rounds, counter, key, output
    (7, [0, 0, 0, 0], [0, 0], [0x5F6FB709, 0x0D893F64, 0x4F121F81, 0x4F730A48]),
    (7, [0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x5207DDC2, 0x45165E59, 0x4D8EE751, 0x8C52F662]),
    (7, [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
     [0x4DFCCABA, 0x190A87F0, 0xC47362BA, 0xB6B5242A]),
    (10, [0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    (10, [0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    (10, [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
     [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
]


@pytest.mark.parametrize("rounds,counter,key,want", RANDOM123_KAT)
def test_reference_philox_matches_random123(rounds, counter, key, want):
    got = [int(w) for w in ref.philox4x32(counter, key, rounds)]
    assert got == want


@pytest.mark.parametrize("grouping", dropout.GROUPINGS)
def test_keep_mask_kernel_equals_the_reference(grouping):
    rows, cols, stream = 300, 200, 5  # (the query-key tiles: two whole blocks of 128 queries and a part)
    got = dropout.keep_mask(rows, cols, 0.3, SEED, stream, grouping=grouping).numpy()
    bits = {"rows": ref.row_tile_bits, "fragment": ref.fragment_bits, "tiles": ref.tile_bits}[grouping]
    assert np.array_equal(got, ref.keep(bits(SEED, rows, cols, stream), 0.3))


# Attention --------------------------------------------------------------------------------------------
def _one_hot(seq, heads, dim, chunk, batch):
    """[B, S, H, D]: 1 at [b, c·D + d, h, d]."""
    t = torch.zeros(batch, seq, heads, dim)
    for d in range(dim):
        if chunk * dim + d < seq:
            t[:, chunk * dim + d, :, d] = 1.0
    return t


def _run_attention(mode, q, k, v, dout, lengths, dtype, device):
    """out, dq, dk, dv as [B, S, H, D] fp32 (zeros outside the sequences when packed)."""
    batch, seq = q.shape[:2]
    leaves = [t.to(device=device, dtype=dtype).requires_grad_() for t in (q, k, v)]
    dout = dout.to(device=device, dtype=dtype)
    if mode == "padded":
        mask = (torch.arange(seq)[None] < torch.tensor(lengths)[:, None]).long().to(device)
        out = ops.fused_attention(*(t.transpose(1, 2) for t in leaves), mask, dropout_p=P, training=True,
                                  seed=SEED).transpose(1, 2)
        grads = torch.autograd.grad(out, leaves, dout)
    else:
        packed = [torch.cat([t[b, :n] for b, n in enumerate(lengths)]) for t in leaves]
        cu = torch.tensor(np.cumsum([0, *lengths]), dtype=torch.int32, device=device)
        out_p = ops.fused_attention_varlen(*packed, cu, seq, dropout_p=P, training=True, seed=SEED)
        grads = torch.autograd.grad(out_p, leaves, torch.cat([dout[b, :n] for b, n in enumerate(lengths)]))
        out = torch.zeros(batch, seq, *out_p.shape[1:], dtype=out_p.dtype, device=device)
        for b, n in enumerate(lengths):
            out[b, :n] = out_p[cu[b]:cu[b] + n]
    return [t.detach().float().cpu() for t in (out, *grads)]


def attention_masks(mode, dtype, dim, seq, device="cpu", heads=2):
    """{'forward', 'dkdv', 'dq'} -> [B][H] bool [L_b, L_b]: each kernel's mask, read back as the module
    docstring says."""
    lengths = [seq, seq - 9]
    batch = len(lengths)
    got = {name: [[np.zeros((n, n), bool) for _ in range(heads)] for n in lengths] for name in ("forward", "dkdv", "dq")}
    g = torch.Generator().manual_seed(0)
    zeros = torch.zeros(batch, seq, heads, dim)
    e0 = torch.zeros(batch, seq, heads, dim)
    e0[..., 0] = 1.0
    for chunk in range(math.ceil(seq / dim)):
        hot = _one_hot(seq, heads, dim, chunk, batch)
        keys = torch.randn(batch, seq, heads, dim, generator=g)
        out, _, _, dv = _run_attention(mode, zeros, keys, hot, hot, lengths, dtype, device)
        _, dq, _, _ = _run_attention(mode, zeros, hot, e0, e0, lengths, dtype, device)
        cols = slice(chunk * dim, (chunk + 1) * dim)
        for b, n in enumerate(lengths):
            for h in range(heads):
                width = len(range(n)[cols])
                got["forward"][b][h][:, cols] = (out[b, :n, h, :width] != 0).numpy()
                got["dkdv"][b][h][cols, :] = (dv[b, :n, h, :width] != 0).numpy().T
                got["dq"][b][h][:, cols] = (dq[b, :n, h, :width] > 0).numpy()
    return got, lengths, heads


def assert_attention_masks_exact(mode, dtype, dim, seq, device="cpu"):
    from bertfast.kernels.launch import attention_config

    got, lengths, heads = attention_masks(mode, dtype, dim, seq, device)
    # the grouping the tiles draw in: query-key tiles (16-bit on the GPU's tiles), else fragments
    bits = ref.tile_bits if attention_config(dim, dtype, seq).mask_tiles else ref.fragment_bits
    for b, n in enumerate(lengths):
        for h in range(heads):
            want = ref.keep(bits(SEED, n, n, stream=b * heads + h), P)
            for kernel in ("forward", "dkdv", "dq"):
                wrong = int((got[kernel][b][h] != want).sum())
                assert wrong == 0, f"{kernel} kernel, sequence {b}, head {h}: {wrong} of {want.size} elements differ"


# (tiles, dtype, head dim, S): S spans more than one block of each tile and is a multiple of none (the
# interpreter's 16 x 32 and fp32's 32 x 32 at S = 40; the 16-bit tiles' 128 queries / 64 keys at 137; the
# dK/dV kernel's query-key trips, two to a block of 128 queries, at 168 and 159: a last block of 40
# queries takes both trips, one of 31 only the first)
ATTENTION_CASES = [("interpreter", torch.float32, 64, 40), ("gpu", torch.float32, 64, 40),
                   ("gpu", torch.float32, 128, 40), ("gpu", torch.bfloat16, 64, 137),
                   ("gpu", torch.float16, 64, 168), ("gpu", torch.bfloat16, 128, 137)]


# (fp16 takes bf16's tiles, which run in both modes at S = 137; fp16 runs packed only, at S = 168: CI's time)
ATTENTION_RUNS = [(*case, mode) for case in ATTENTION_CASES for mode in ("packed", "padded")
                  if not (case[1] == torch.float16 and mode == "padded")]


@pytest.mark.parametrize("tiles,dtype,dim,seq,mode", ATTENTION_RUNS, ids=lambda x: str(x).replace("torch.", ""))
def test_attention_masks_exact(monkeypatch, mode, tiles, dtype, dim, seq):
    monkeypatch.setenv("BERTFAST_GPU_TILES", "1" if tiles == "gpu" else "0")
    assert_attention_masks_exact(mode, dtype, dim, seq)


ATTENTION_TILES = [(torch.float32, 64), (torch.bfloat16, 64), (torch.float16, 64), (torch.float32, 128),
                   (torch.bfloat16, 128)]


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["packed", "padded"])
@pytest.mark.parametrize("dtype,dim", ATTENTION_TILES, ids=lambda x: str(x).replace("torch.", ""))
def test_cuda_attention_masks_exact(mode, dtype, dim):
    assert_attention_masks_exact(mode, dtype, dim, 300, device="cuda")


# LayerNorm --------------------------------------------------------------------------------------------
def layer_norm_masks(rows, n, dtype, device="cpu"):
    """(forward mask, backward mask) [rows, n] of the LayerNorm kernels, read as the docstring says."""
    seed = torch.tensor([SEED], device=device)
    x = torch.ones(rows, n, dtype=dtype, device=device)
    y, mean, _ = residual_layer_norm_forward(x, None, None, None, 1e-5, P, seed)
    y = y.float().cpu()
    forward = y > 0
    whole = (y == 0).all(1)  # rows kept or dropped whole: their mean says which
    forward[whole] = (mean.cpu()[whole] > 0)[:, None]
    g = torch.Generator().manual_seed(1)
    xr = torch.randn(rows, n, generator=g).to(device=device, dtype=dtype)
    dy = torch.randn(rows, n, generator=g).to(device=device, dtype=dtype)
    _, mean, rstd = residual_layer_norm_forward(xr, None, None, None, 1e-5, P, seed)
    dh, dx, _, _, _ = residual_layer_norm_backward(dy, xr, None, None, None, mean, rstd, P, seed)
    dh, dx = dh.float().cpu(), dx.float().cpu()
    assert n == 1 or (dh != 0).all(), "the read-back needs dh != 0 everywhere"
    return forward.numpy(), (dx != 0).numpy()


def assert_layer_norm_masks_exact(rows, n, dtype, device="cpu"):
    forward, backward = layer_norm_masks(rows, n, dtype, device)
    want = ref.keep(ref.row_tile_bits(SEED, rows, n, stream=0), P)
    assert int((forward != want).sum()) == 0, "forward"
    if n > 1:  # (a LayerNorm of one element has dh = 0: nothing to read)
        assert int((backward != want).sum()) == 0, "backward"


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 384, 1000, 8192])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layer_norm_masks_exact(tiles, n, dtype):
    assert_layer_norm_masks_exact(9, n, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("n", [1, 3, 8, 384, 768, 1000, 1024, 4096, 8192])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_layer_norm_masks_exact(n, dtype):
    assert_layer_norm_masks_exact(1031, n, dtype, device="cuda")
