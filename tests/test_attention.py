"""fused_attention and fused_attention_varlen (Triton, under TRITON_INTERPRET=1 on CPU) against the fp32
reference softmax(q kᵀ · scale + mask) v (bertfast.reference.attention_ref).

Tolerance 1e-5 in fp32: the kernel's online softmax in fp32 differs from the reference only in the order
of its sums. On the GPU, fp16/bf16 are judged as flash-attention's tests do: the kernel's error against
the fp32 reference may be at most twice PyTorch's own error in that dtype (plus 1e-3), since both round
P and the products to the same precision.
"""
import math

import pytest
import torch

from bertfast import ops
from bertfast.kernels.attention import attention_dropout_keep_mask
from bertfast.kernels.dropout import keep_scale
from bertfast.reference import attention_ref


@pytest.fixture(autouse=True)
def triton_backend(backend):
    backend("triton")


def lengths_for(batch, seq):
    """Full, half, length-1 and length-0 rows (and again, for larger batches)."""
    pattern = [seq, max(seq // 2, 1), 1, 0]
    return torch.tensor([pattern[i % 4] for i in range(batch)])


def make(batch, heads, seq, dim, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    # [B, S, H, D] memory viewed as [B, H, S, D]: the layout the model hands over
    qkv = [torch.randn(batch, seq, heads, dim, generator=g).to(device=device, dtype=dtype).transpose(1, 2).requires_grad_()
           for _ in range(3)]
    lengths = lengths_for(batch, seq)
    mask = (torch.arange(seq)[None] < lengths[:, None]).long().to(device)
    return qkv, mask


def grads(out, inputs, dout):
    return torch.autograd.grad(out, inputs, dout)


@pytest.mark.parametrize("seq", [1, 17, 128, 200])
@pytest.mark.parametrize("dim", [32, 64])
def test_padded_matches_reference_fp32(seq, dim):
    (q, k, v), mask = make(4, 2, seq, dim)
    assert_matches_reference_fp32(q, k, v, mask)


def assert_matches_reference_fp32(q, k, v, mask):
    """Output and the three gradients against the reference within 1e-5; returns the output."""
    out = ops.fused_attention(q, k, v, mask)
    ref = attention_ref(q, k, v, mask)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    dout = torch.randn_like(out)
    for name, got, want in zip("qkv", grads(out, (q, k, v), dout), grads(ref, (q, k, v), dout)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=lambda m: f"d{name}: {m}")
    return out


def test_fully_padded_rows_give_zeros_never_nan():
    (q, k, v), mask = make(4, 2, 17, 32)
    out = ops.fused_attention(q, k, v, mask)
    assert torch.isfinite(out).all()
    assert torch.all(out[3] == 0), "a length-0 row attends to nothing: zeros"
    dq, dk, dv = grads(out, (q, k, v), torch.randn_like(out))
    for g in (dq, dk, dv):
        assert torch.isfinite(g).all() and torch.all(g[3] == 0)
    assert torch.all(dk[1][:, 8:] == 0) and torch.all(dv[1][:, 8:] == 0), "padded keys get no gradient"


def test_no_mask_and_explicit_scale():
    (q, k, v), _ = make(3, 2, 33, 32)
    out = ops.fused_attention(q, k, v, None, softmax_scale=0.3)
    torch.testing.assert_close(out, attention_ref(q, k, v, None, softmax_scale=0.3), atol=1e-5, rtol=1e-5)


def test_any_mask_pattern_left_padding():
    (q, k, v), _ = make(2, 2, 20, 32)
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[0, :7] = 0  # left padding
    mask[1, ::3] = 0  # holes
    torch.testing.assert_close(ops.fused_attention(q, k, v, mask), attention_ref(q, k, v, mask), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seq", [17, 130])
def test_varlen_equals_padded_on_real_tokens(seq):
    batch, heads, dim = 5, 2, 32
    (q, k, v), mask = make(batch, heads, seq, dim)
    out = ops.fused_attention(q, k, v, mask)
    dout = torch.randn_like(out)
    # pack [B, S, H, D] -> [total, H, D]
    packed = [ops.unpad(t.transpose(1, 2), mask) for t in (q, k, v)]
    pq, pk, pv = (p_.hidden for p_ in packed)
    u = packed[0]
    assert u.cu_seqlens.dtype == torch.int32 and u.max_seqlen == seq
    out_v = ops.fused_attention_varlen(pq, pk, pv, u.cu_seqlens, u.max_seqlen)
    back = ops.pad(out_v, u.indices, batch, seq).transpose(1, 2)
    real = mask.bool()[:, None, :, None].expand_as(out)
    torch.testing.assert_close(back[real], out[real], atol=1e-6, rtol=1e-6)
    got = grads(back, (q, k, v), dout * real)
    want_real = grads(out, (q, k, v), dout * real)
    for name, a, b in zip("qkv", got, want_real):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda m: f"d{name}: {m}")


def test_varlen_validates_cu_seqlens():
    q = torch.randn(10, 2, 32)
    with pytest.raises(TypeError, match="cu_seqlens must have dtype"):
        ops.fused_attention_varlen(q, q, q, torch.tensor([0, 10]), 10)
    for bad in ([1, 10], [0, 6, 4, 10], [0, 9]):
        with pytest.raises(ValueError, match="cu_seqlens must start at 0"):
            ops.fused_attention_varlen(q, q, q, torch.tensor(bad, dtype=torch.int32), 10)
    with pytest.raises(ValueError, match="max_seqlen=4"):
        ops.fused_attention_varlen(q, q, q, torch.tensor([0, 6, 10], dtype=torch.int32), 4)


def test_bad_arguments():
    (q, k, v), mask = make(2, 2, 8, 32)
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        ops.fused_attention(q, k, v, mask[:, :5])
    with pytest.raises(ValueError, match="only 0 and 1"):
        ops.fused_attention(q, k, v, mask * 2)
    with pytest.raises(ValueError, match="share shape and dtype"):
        ops.fused_attention(q, k[:, :1], v, mask)
    with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\)"):
        ops.fused_attention(q, k, v, mask, dropout_p=1.5, training=True)
    for scale in (0.0, -0.125, float("nan"), float("inf")):  # the kernels fold a positive scale into one FMA
        with pytest.raises(ValueError, match="softmax_scale must be a positive finite number"):
            ops.fused_attention(q, k, v, mask, softmax_scale=scale)
    with pytest.raises(ValueError, match="head dimension 48"):
        x = torch.randn(1, 1, 4, 48)
        ops.fused_attention(x, x, x)


def test_dropout_is_reproducible_and_matches_reference_with_its_mask():
    (q, k, v), mask = make(4, 2, 37, 32)
    p, seed = 0.2, 1234
    a = ops.fused_attention(q, k, v, mask, dropout_p=p, training=True, seed=seed)
    b = ops.fused_attention(q, k, v, mask, dropout_p=p, training=True, seed=seed)
    c = ops.fused_attention(q, k, v, mask, dropout_p=p, training=True, seed=seed + 1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    keep = attention_dropout_keep_mask(4 * 2, 37, p, seed, "cpu").view(4, 2, 37, 37)
    assert abs(keep.float().mean().item() - (1 - p)) < 0.02
    ref = attention_ref(q, k, v, mask, dropout_mask=keep, dropout_scale=keep_scale(p))
    torch.testing.assert_close(a, ref, atol=1e-5, rtol=1e-5)
    dout = torch.randn_like(a)
    for name, got, want in zip("qkv", grads(a, (q, k, v), dout), grads(ref, (q, k, v), dout)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=lambda m: f"d{name}: {m}")
    # eval mode is exactly no dropout
    assert torch.equal(ops.fused_attention(q, k, v, mask, dropout_p=p, training=False), ops.fused_attention(q, k, v, mask))


def _with_dropout(mode, q, k, v, mask, p, seed):
    """(output [B, H, S, D], the kernels' keep-mask [B, H, S, S] in the padded frame, the rows that exist)
    of attention with dropout, padded or packed ("varlen"). A mask's rows and columns are positions in the
    sequence as the kernel sees it: the padded layout's, or the packed sequence's (numbered from 0), so a
    packed run's mask is spread back over its sequence's real tokens. Its grouping is the one the
    configuration (BERTFAST_GPU_TILES, head dim, dtype) picks."""
    batch, heads, seq, dim = q.shape
    if mode == "padded":
        out = ops.fused_attention(q, k, v, mask, dropout_p=p, training=True, seed=seed)
        keep = attention_dropout_keep_mask(batch * heads, seq, p, seed, "cpu", dim, q.dtype)
        return out, keep.view(batch, heads, seq, seq), torch.ones_like(out, dtype=torch.bool)
    packed = [ops.unpad(t.transpose(1, 2), mask) for t in (q, k, v)]
    u = packed[0]
    out_v = ops.fused_attention_varlen(*(x.hidden for x in packed), u.cu_seqlens, u.max_seqlen, dropout_p=p,
                                       training=True, seed=seed)
    out = ops.pad(out_v, u.indices, batch, seq).transpose(1, 2)
    keep = attention_dropout_keep_mask(batch * heads, u.max_seqlen, p, seed, "cpu", dim, q.dtype)
    keep = keep.view(batch, heads, u.max_seqlen, u.max_seqlen)
    full = torch.zeros(batch, heads, seq, seq, dtype=torch.bool)
    for b_ in range(batch):
        where = mask[b_].bool().nonzero().squeeze(1)
        n = where.numel()
        full[b_][:, where[:, None], where[None, :]] = keep[b_, :, :n, :n]
    return out, full, mask.bool()[:, None, :, None].expand_as(out)


@pytest.mark.parametrize("mode", ["padded", "varlen"])
@pytest.mark.parametrize("seq,seed", [(9, 1), (40, 2), (70, 3)])
def test_dropout_backward_matches_reference_with_the_kernels_mask(mode, seq, seed):
    """Forward and all gradients with dropout, padded (left padding and a single-token row) and packed,
    lengths below, at and above the key block, several seeds, against the reference given the kernel's
    own mask. A mask's rows and columns are positions in the sequence as the kernel sees it: the padded
    layout's, or the packed sequence's (numbered from 0), so each mode is compared with its own."""
    p = 0.25
    batch, heads, dim = 3, 2, 32
    (q, k, v), mask = make(batch, heads, seq, dim, seed=seed)
    mask = mask.flip(1)  # left padding: lengths seq, seq // 2, 1
    dout = torch.randn(batch, heads, seq, dim, generator=torch.Generator().manual_seed(seed))
    out, keep, real = _with_dropout(mode, q, k, v, mask, p, seed)
    ref = attention_ref(q, k, v, mask, dropout_mask=keep, dropout_scale=keep_scale(p))
    torch.testing.assert_close(out[real], ref[real], atol=1e-5, rtol=1e-5)
    got = grads(out, (q, k, v), dout * real)
    want = grads(ref, (q, k, v), dout * real)
    for name, a, b_ in zip("qkv", got, want):
        torch.testing.assert_close(a, b_, atol=1e-5, rtol=1e-5, msg=lambda m: f"d{name}: {m}")


@pytest.mark.parametrize("mode", ["padded", "varlen"])
def test_qkv_packed_equals_separate_q_k_v(mode):
    """q, k, v as views of one [.., 3, heads, D] projection (fused_attention_qkv): the same output and the
    same gradients, bit for bit, as the three separate tensors, with dropout, left padding, a one-token
    and an empty row; the gradient is one tensor of qkv's shape."""
    batch, seq, heads, dim, p, seed = 4, 37, 2, 32, 0.2, 7
    g = torch.Generator().manual_seed(3)
    lengths = torch.tensor([seq, 20, 1, 0])
    mask = (torch.arange(seq)[None] >= (seq - lengths)[:, None]).long()  # left padding
    qkv = torch.randn(batch, seq, 3, heads, dim, generator=g, requires_grad=True)
    if mode == "padded":
        out = ops.attention.fused_attention_qkv(qkv, mask, p, None, True, seed)
        q, k, v = (t.detach().contiguous().transpose(1, 2).requires_grad_() for t in qkv.unbind(2))
        want = ops.fused_attention(q, k, v, mask, p, None, True, seed)
        dout = torch.randn(out.shape, generator=g)
    else:
        u = ops.unpad(qkv, mask)
        packed = u.hidden.detach().requires_grad_()  # [total, 3, heads, D]
        out = ops.attention.fused_attention_qkv(packed, None, p, None, True, seed, cu_seqlens=u.cu_seqlens,
                                                max_seqlen=u.max_seqlen)
        q, k, v = (t.detach().contiguous().requires_grad_() for t in packed.unbind(1))
        want = ops.fused_attention_varlen(q, k, v, u.cu_seqlens, u.max_seqlen, p, None, True, seed)
        dout = torch.randn(out.shape, generator=g)
        qkv = packed
    assert torch.equal(out, want)
    (dqkv,) = grads(out, (qkv,), dout)
    assert dqkv.shape == qkv.shape
    for i, (name, want_grad) in enumerate(zip("qkv", grads(want, (q, k, v), dout))):
        got = dqkv.select(-3, i)
        assert torch.equal(got.transpose(1, 2) if mode == "padded" else got, want_grad), name


def test_qkv_packed_bad_input():
    with pytest.raises(ValueError, match="size 3"):
        ops.attention.fused_attention_qkv(torch.randn(2, 5, 4, 2, 8))
    with pytest.raises(ValueError, match="max_seqlen"):
        ops.attention.fused_attention_qkv(torch.randn(5, 3, 2, 8), cu_seqlens=torch.tensor([0, 5], dtype=torch.int32))


def test_opcheck():
    (q, k, v), mask = make(2, 2, 9, 32)
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    torch.library.opcheck(torch.ops.bertfast.attention.default,
                          (q, k, v, mask.to(torch.int8), None, 9, 1 / math.sqrt(32), 0.0, None))
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    flat = [torch.randn(9, 2, 32, requires_grad=True) for _ in range(3)]
    torch.library.opcheck(torch.ops.bertfast.attention.default, (*flat, None, cu, 5, 0.2, 0.1, torch.tensor([7])))
    # q, k, v packed in one tensor
    qkv = torch.randn(2, 9, 3, 2, 32, requires_grad=True)
    torch.library.opcheck(torch.ops.bertfast.attention_qkv.default,
                          (qkv, mask.to(torch.int8), None, 9, 1 / math.sqrt(32), 0.0, None))
    torch.library.opcheck(torch.ops.bertfast.attention_qkv.default,
                          (torch.randn(9, 3, 2, 32, requires_grad=True), None, cu, 5, 0.2, 0.1, torch.tensor([7])))


def test_unpad_pad_round_trip_with_autograd():
    x = torch.randn(3, 6, 4, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]])
    u = ops.unpad(x, mask)
    assert u.hidden.shape == (9, 4) and u.cu_seqlens.tolist() == [0, 3, 9, 9] and u.max_seqlen == 6
    back = ops.pad(u.hidden, u.indices, 3, 6)
    torch.testing.assert_close(back, x * mask[..., None])
    (g,) = torch.autograd.grad(back.sum(), x)
    torch.testing.assert_close(g, mask[..., None].expand_as(x).float())


def test_reference_backend_has_the_same_semantics(backend):
    (q, k, v), mask = make(4, 2, 17, 32)
    triton_out = ops.fused_attention(q, k, v, mask)
    backend("torch")
    torch.testing.assert_close(ops.fused_attention(q, k, v, mask), triton_out, atol=1e-5, rtol=1e-5)
    u = ops.unpad(q.transpose(1, 2), mask)
    out_v = ops.fused_attention_varlen(u.hidden, u.hidden, u.hidden, u.cu_seqlens, u.max_seqlen)
    ref = ops.fused_attention(q, q, q, mask).transpose(1, 2)
    torch.testing.assert_close(ops.pad(out_v, u.indices, 4, 17), ref * mask[..., None, None], atol=1e-5, rtol=1e-5)


def low_precision_check(dtype, dim, seq=200, batch=5, heads=3):
    (q, k, v), mask = make(batch, heads, seq, dim, dtype=dtype, device="cuda")
    out = ops.fused_attention(q, k, v, mask)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref32 = attention_ref(q32, k32, v32, mask)
    ref_lp = attention_ref(q, k, v, mask)  # PyTorch in the same dtype
    dout = torch.randn_like(out)
    got = grads(out, (q, k, v), dout)
    want32 = grads(ref32, (q32, k32, v32), dout.float())
    want_lp = grads(ref_lp, (q, k, v), dout)
    err = lambda a, b: (a.float() - b.float()).abs().max().item()  # noqa: E731
    assert err(out, ref32) <= 2 * err(ref_lp, ref32) + 1e-3
    for name, a, b32, blp in zip("qkv", got, want32, want_lp):
        assert err(a, b32) <= 2 * err(blp, b32) + 1e-3, f"d{name}"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("dim", [64, 128])
def test_cuda_low_precision(dtype, dim):
    low_precision_check(dtype, dim)


@pytest.mark.gpu
@pytest.mark.parametrize("dim", [32, 64, 128])
def test_cuda_fp32(dim):
    (q, k, v), mask = make(5, 3, 200, dim, device="cuda")
    out = ops.fused_attention(q, k, v, mask)
    ref = attention_ref(q, k, v, mask)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    dout = torch.randn_like(out)
    for got, want in zip(grads(out, (q, k, v), dout), grads(ref, (q, k, v), dout)):
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)


@pytest.mark.gpu
def test_cuda_fp32_follows_torch_matmul_precision():
    """After torch.set_float32_matmul_precision("high") the fp32 kernels use TF32 tensor cores, as torch's
    own fp32 matmuls then do. Tolerance: TF32 keeps 10 mantissa bits, so 2⁻¹⁰ relative per product;
    5e-3 over sums of 200 terms of a softmax-weighted average."""
    (q, k, v), mask = make(5, 3, 200, 64, device="cuda")
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        out = ops.fused_attention(q, k, v, mask)
        dout = torch.randn_like(out)
        got_grads = grads(out, (q, k, v), dout)
    finally:
        torch.set_float32_matmul_precision(previous)
    ref = attention_ref(q, k, v, mask)
    torch.testing.assert_close(out, ref, atol=5e-3, rtol=5e-3)
    for got, want in zip(got_grads, grads(ref, (q, k, v), dout)):
        torch.testing.assert_close(got, want, atol=5e-3, rtol=5e-3)


@pytest.mark.gpu
def test_cuda_varlen_and_dropout():
    (q, k, v), mask = make(6, 4, 300, 64, dtype=torch.bfloat16, device="cuda")
    out = ops.fused_attention(q, k, v, mask)
    u = [ops.unpad(t.transpose(1, 2), mask) for t in (q, k, v)]
    out_v = ops.fused_attention_varlen(u[0].hidden, u[1].hidden, u[2].hidden, u[0].cu_seqlens, u[0].max_seqlen)
    back = ops.pad(out_v, u[0].indices, 6, 300).transpose(1, 2)
    real = mask.bool()[:, None, :, None].expand_as(out)
    torch.testing.assert_close(back[real], out[real], atol=0, rtol=0)
    p, seed = 0.1, 99
    a = ops.fused_attention(q, k, v, mask, dropout_p=p, training=True, seed=seed)
    assert torch.equal(a, ops.fused_attention(q, k, v, mask, dropout_p=p, training=True, seed=seed))
    keep = attention_dropout_keep_mask(6 * 4, 300, p, seed, "cuda", 64, torch.bfloat16).view(6, 4, 300, 300)
    q32, k32, v32 = (t.detach().float() for t in (q, k, v))
    ref = attention_ref(q32, k32, v32, mask, dropout_mask=keep, dropout_scale=keep_scale(p))
    assert (a.float() - ref).abs().max().item() < 3e-2


@pytest.mark.parametrize("dtype,dim,seq", [(torch.float32, 64, 40), (torch.float32, 128, 40), (torch.bfloat16, 64, 137),
                                           (torch.float16, 64, 137), (torch.bfloat16, 128, 137),
                                           (torch.float16, 128, 137)], ids=lambda x: str(x).replace("torch.", ""))
def test_gpu_tile_configurations(monkeypatch, dtype, dim, seq):
    """The tiles a GPU launches (BERTFAST_GPU_TILES=1: 128 x 64 forward, 64 / 128-key dK/dV and 64-query dQ
    programs in fp16/bf16, 32 x 32 and 16 x 32 in fp32), run by the interpreter, padded (with full, half,
    one- and zero-token rows) and packed, against the reference. fp32 within 1e-5; fp16/bf16 judged as on the
    GPU (test_cuda_low_precision): at most twice PyTorch's own error in that dtype plus 1e-3, against fp32,
    plus one ulp of the dtype at each value: triton 3.6's interpreter converts fp32 to bf16 by truncation
    (seen: a dV of 13.3064 stored as 13.25, where round-to-nearest gives 13.3125), so a stored result can
    be a whole ulp off where the GPU's conversion is half an ulp off."""
    monkeypatch.setenv("BERTFAST_GPU_TILES", "1")
    (q, k, v), mask = make(4, 2, seq, dim, dtype=dtype)
    if dtype == torch.float32:
        out = assert_matches_reference_fp32(q, k, v, mask)
    else:
        out = ops.fused_attention(q, k, v, mask)
        q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
        ref32, ref_lp = attention_ref(q32, k32, v32, mask), attention_ref(q, k, v, mask)
        dout = torch.randn_like(out)
        ulp = torch.finfo(dtype).eps  # one ulp at 1, relative

        def within(got, exact, torch_lp):
            bound = 2 * (torch_lp.float() - exact).abs().max() + 1e-3 + ulp * exact.abs()
            return bool(((got.float() - exact).abs() <= bound).all())
        assert within(out, ref32.detach(), ref_lp.detach())
        for name, a, b32, blp in zip("qkv", grads(out, (q, k, v), dout), grads(ref32, (q32, k32, v32), dout.float()),
                                     grads(ref_lp, (q, k, v), dout)):
            assert within(a, b32, blp), f"d{name}"
    u = [ops.unpad(t.transpose(1, 2), mask) for t in (q, k, v)]
    packed = ops.fused_attention_varlen(u[0].hidden, u[1].hidden, u[2].hidden, u[0].cu_seqlens, u[0].max_seqlen)
    back = ops.pad(packed, u[0].indices, 4, seq).transpose(1, 2)
    real = mask.bool()[:, None, :, None].expand_as(out)
    torch.testing.assert_close(back[real], out[real], atol=1e-6, rtol=1e-6)


def _backward_as_flash_attention(q, k, v, mask, keep, scale, dout, dtype):
    """fp32 gradients of softmax(q kᵀ / sqrt(d)) with dropout (keep, scale), computed as FlashAttention's
    backward defines them: delta = rowsum(dO * O) from the output as stored (rounded to `dtype`). A row
    whose softmax has one key has dS = P (dP - delta) = 0 exactly, but delta from the rounded output is off
    by the rounding (with dropout, O = v * scale is not a bf16 number): an error every FlashAttention-style
    kernel has, which PyTorch's own bf16 autograd (softmax's backward) does not. Also returns, for dQ, dK
    and dV, the first-order bound of that error when O is off by up to one ulp of `dtype` per element (the
    fp32 output the kernel rounds differs from this one in its last bits, so the two can round apart):
    |delta error| <= sum_d |dO| eps |O|, through dS = P (dP - delta) into dQ = dS K and dK = dSᵀ Q."""
    d = q.shape[-1]
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)
    scores = scores.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
    prob = torch.softmax(scores, -1).nan_to_num(0.0)
    dropped = prob * keep * scale
    out = dropped @ v
    dv = dropped.transpose(-1, -2) @ dout
    dp = (dout @ v.transpose(-1, -2)) * keep * scale
    delta = (dout * out.to(dtype).float()).sum(-1, keepdim=True)
    ds = prob * (dp - delta)
    grads = (ds @ k / math.sqrt(d), ds.transpose(-1, -2) @ q / math.sqrt(d), dv)
    delta_error = (dout.abs() * out.abs()).sum(-1, keepdim=True) * torch.finfo(dtype).eps
    bounds = ((prob @ k.abs()) * delta_error / math.sqrt(d),
              prob.transpose(-1, -2) @ (delta_error * q.abs()) / math.sqrt(d), torch.zeros_like(dv))
    return grads, bounds


@pytest.mark.parametrize("mode", ["padded", "varlen"])
@pytest.mark.parametrize("dim", [64, 128])
def test_gpu_tiles_with_dropout_gradients(monkeypatch, mode, dim):
    """The 16-bit GPU tiles with dropout (BERTFAST_GPU_TILES=1, bf16, S = 137: two blocks of 128 queries,
    the second of 9): the query-key grouping in all three kernels, the dQ kernel at 128 queries a program
    at head dim 64 and, at head dim 128, in the dK/dV kernel's frame (keys first, trips of 64 queries, the
    last block's second trip skipped). Forward and every gradient against fp32 references given the
    kernels' own mask, padded (a full row, 40 tokens, one, none) and packed, judged as
    test_gpu_tile_configurations judges bf16 (twice PyTorch's own bf16 error plus 1e-3, plus an ulp); the
    gradients' fp32 reference takes delta from the bf16 output, as the kernels do, and the bound adds
    that rounding's own (_backward_as_flash_attention)."""
    monkeypatch.setenv("BERTFAST_GPU_TILES", "1")
    dtype, seq, batch, heads, p, seed = torch.bfloat16, 137, 4, 2, 0.25, 7
    (q, k, v), _ = make(batch, heads, seq, dim, dtype=dtype, seed=dim)
    # lengths: a last block of 9 queries (one trip of the keys-first dQ's two), of 40 (both: the second
    # holds queries 32..39), one token, none
    mask = (torch.arange(seq)[None] < torch.tensor([[137], [40], [1], [0]])).long()
    out, full, real = _with_dropout(mode, q, k, v, mask, p, seed)
    q32, k32, v32 = (t.detach().float() for t in (q, k, v))
    ref32 = attention_ref(q32, k32, v32, mask, dropout_mask=full, dropout_scale=keep_scale(p))
    ref_lp = attention_ref(q, k, v, mask, dropout_mask=full, dropout_scale=keep_scale(p))
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype) * real
    ulp = torch.finfo(dtype).eps

    def within(got, exact, torch_lp, extra=0.0):
        bound = 2 * (torch_lp.float() - exact).abs().max() + 1e-3 + ulp * exact.abs() + extra
        return bool(((got.float() - exact).abs() <= bound).all())
    assert within(out[real], ref32[real], ref_lp.detach()[real])
    exact, rounding = _backward_as_flash_attention(q32, k32, v32, mask, full.float(), keep_scale(p), dout.float(), dtype)
    for name, a, b32, blp, extra in zip("qkv", grads(out, (q, k, v), dout), exact, grads(ref_lp, (q, k, v), dout),
                                        rounding):
        assert within(a, b32, blp, extra), f"d{name}"


def test_sequence_1024_forward_and_backward_fp32():
    """BERT-large's 1024 positions (the seed's `large`): padded and packed, forward and gradients against
    the reference (fp32, 1e-5 as above)."""
    (q, k, v), _ = make(1, 1, 1024, 32)  # one row (the interpreter is slow at this length), its end padded
    mask = (torch.arange(1024)[None] < 1001).long()
    out = assert_matches_reference_fp32(q, k, v, mask)
    u = [ops.unpad(t.transpose(1, 2), mask) for t in (q, k, v)]
    packed = ops.fused_attention_varlen(u[0].hidden, u[1].hidden, u[2].hidden, u[0].cu_seqlens, u[0].max_seqlen)
    back = ops.pad(packed, u[0].indices, 1, 1024).transpose(1, 2)
    real = mask.bool()[:, None, :, None].expand_as(out)
    torch.testing.assert_close(back[real], out[real], atol=1e-6, rtol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_sequence_1024(dtype):
    """S = 1024 with BERT-large's heads (16 x 64) in fp16/bf16, judged as test_cuda_low_precision."""
    (q, k, v), _ = make(3, 16, 1024, 64, dtype=dtype, device="cuda")
    mask = (torch.arange(1024, device="cuda")[None] < torch.tensor([[1024], [700], [1]], device="cuda")).long()
    out = ops.fused_attention(q, k, v, mask)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref32 = attention_ref(q32, k32, v32, mask)
    ref_lp = attention_ref(q, k, v, mask)
    real = mask.bool()[:, None, :, None].expand_as(out)
    err = lambda a, b: (a.float() - b.float())[real].abs().max().item()  # noqa: E731
    assert err(out, ref32) <= 2 * err(ref_lp, ref32) + 1e-3


def test_cpu_varlen_groups_sequences_of_similar_length():
    """The CPU path runs packed sequences in groups padded to their longest (one SDPA call per group, a key
    mask where lengths differ): against each sequence's own softmax attention in fp64 (agreement to
    rounding: 1e-12), with an empty sequence, one-token ones, equal lengths and a long outlier."""
    from bertfast.ops.attention import GROUP_WASTE, _attention_varlen_reference, _length_groups

    lengths = [30, 31, 29, 5, 100, 1, 64, 64, 0, 7, 33, 1]
    groups = _length_groups(lengths)
    assert sorted(i for g in groups for i in g) == [i for i, n in enumerate(lengths) if n > 0]
    assert [6, 7] in groups and [4] in groups and len(groups) < len(lengths) - 1
    for g in groups:
        assert len(g) * max(lengths[i] for i in g) ** 2 <= GROUP_WASTE * sum(lengths[i] ** 2 for i in g)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(int(cu[-1]), 3, 16, generator=gen, dtype=torch.float64) for _ in range(3))
    got = _attention_varlen_reference(q, k, v, cu, max(lengths), 0.25, 0.0)
    for a, b in zip(cu.tolist(), cu.tolist()[1:]):
        if b > a:
            qq, kk, vv = (t[a:b].transpose(0, 1) for t in (q, k, v))
            want = torch.softmax(qq @ kk.transpose(-1, -2) * 0.25, -1) @ vv
            torch.testing.assert_close(got[a:b], want.transpose(0, 1), atol=1e-12, rtol=0)
