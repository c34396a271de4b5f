"""fused_residual_layer_norm (Triton, under TRITON_INTERPRET=1 on CPU) against the torch reference.

Tolerances: fp32 within 1e-5 (statistics and all math in fp32 in both; dweight/dbias are fp32 sums over
rows, whose rounding grows like sqrt(rows)·ε). fp16/bf16 activations with fp32 weights: one rounding of
the output dtype against an fp32 reference on the same inputs: rtol 2⁻¹⁰ (fp16) / 2⁻⁷ (bf16).
"""
import pytest
import torch

from bertfast import ops
from bertfast.kernels.dropout import keep_scale
from bertfast.kernels.layer_norm import dropout_keep_mask
from bertfast.reference import residual_layer_norm_ref

LOW_TOL = {torch.float16: dict(rtol=2**-10, atol=2e-3), torch.bfloat16: dict(rtol=2**-7, atol=2e-2)}


@pytest.fixture(autouse=True)
def triton_backend(backend):
    backend("triton")


def inputs(rows, n, dtype, device="cpu", residual=True, affine=True, seed=0, x_bias=False):
    """x, residual, weight, bias (and x_bias when asked: fp32, as a linear layer's bias under autocast)."""
    g = torch.Generator().manual_seed(seed + rows * 31 + n)
    x = (torch.randn(rows, n, generator=g) * 3 + 1).to(device=device, dtype=dtype).requires_grad_()
    r = torch.randn(rows, n, generator=g).to(device=device, dtype=dtype).requires_grad_() if residual else None
    w = (torch.randn(n, generator=g) * 0.5 + 1).to(device).requires_grad_() if affine else None
    b = torch.randn(n, generator=g).to(device).requires_grad_() if affine else None
    if not x_bias:
        return x, r, w, b
    return x, r, w, b, (torch.randn(n, generator=g) - 2).to(device).requires_grad_()


def check(rows, n, dtype=torch.float32, device="cpu", residual=True, affine=True, p=0.0, seed=1234,
          ref_dtype=torch.float32, x_bias=False):
    """The op's output and every gradient against residual_layer_norm_ref given the kernels' own mask; with
    x_bias, the linear layer's bias folded in (x_bias's gradient is a sum over rows, as dweight's)."""
    x, r, w, b, *xb = inputs(rows, n, dtype, device, residual, affine, x_bias=x_bias)
    xb = xb[0] if xb else None
    leaves = [t for t in (x, r, w, b, xb) if t is not None]
    y = ops.fused_residual_layer_norm(x, r, w, b, 1e-12, dropout_p=p, training=p > 0, seed=seed, x_bias=xb)
    dy = torch.randn(rows, n, generator=torch.Generator().manual_seed(5)).to(device=device, dtype=dtype)
    grads = torch.autograd.grad(y, leaves, dy)
    mask = dropout_keep_mask(rows, n, p, seed, device) if p > 0 else None
    ref_leaves = [t.detach().to(ref_dtype).requires_grad_() for t in leaves]
    it = iter(ref_leaves)
    xr, rr, wr, br = next(it), next(it) if residual else None, next(it) if affine else None, next(it) if affine else None
    xbr = next(it) if x_bias else None
    yr = residual_layer_norm_ref(xr, rr, wr, br, 1e-12, dropout_mask=mask, dropout_scale=keep_scale(p), x_bias=xbr)
    ref_grads = [g.float() for g in torch.autograd.grad(yr, ref_leaves, dy.to(ref_dtype))]
    yr = yr.float()
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else LOW_TOL[dtype]
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), yr, **tol)
    names = ["x", "residual", "weight", "bias", "x_bias"] if residual else ["x", "weight", "bias", "x_bias"]
    names = [n_ for n_ in names if (affine or n_ not in ("weight", "bias")) and (x_bias or n_ != "x_bias")]
    assert len(names) == len(grads)
    for name, got, want in zip(names, grads, ref_grads):
        t = dict(tol)
        if name in ("weight", "bias", "x_bias"):
            t["atol"] = tol["atol"] * max(1.0, rows ** 0.5)  # sums over rows
        torch.testing.assert_close(got.float(), want, **t, msg=lambda m: f"d{name}: {m}")
    return y


@pytest.mark.parametrize("rows", [1, 7, 1023])
@pytest.mark.parametrize("n", [384, 768, 1000, 1024])
def test_fp32_residual(rows, n):
    check(rows, n)


@pytest.mark.parametrize("rows", [1, 7, 130])
@pytest.mark.parametrize("n", [384, 768, 1000])
@pytest.mark.parametrize("p", [0.0, 0.3])
def test_x_bias(rows, n, p):
    """The linear layer's bias folded in (BERT's attention-output and output projections): added before the
    dropout, its gradient the column sums of dx (through the dropout) from the backward's partials."""
    check(rows, n, p=p, x_bias=True)


def test_x_bias_without_residual_or_affine():
    check(7, 1000, residual=False, affine=False, p=0.3, x_bias=True)


@pytest.mark.parametrize("n", [384, 1000, 8192])
def test_fp32_plain_layer_norm(n):
    check(7, n, residual=False)


@pytest.mark.parametrize("eps", [1e-5, 1e-6, 1e-12])
def test_realistic_eps_on_near_constant_rows(eps):
    """Rows whose variance is comparable to eps (1e-6: values 0.01 +- 1e-3): where eps enters the square
    root matters here, invisible with 1e-12 on N(0, 1) rows. Against LayerNorm in float64 on the same
    inputs: the fp32 statistics of such rows are good to ~1e-6 relative (an offset of 0.01 keeps the
    rounding of the inputs far below their spread), so 1e-5 on the O(1) normalised values and gradients
    (dweight/dbias sum 9 rows)."""
    check_near_constant_rows(eps, "cpu")


def check_near_constant_rows(eps, device):
    """test_realistic_eps_on_near_constant_rows on `device` (tests/test_gpu_risks.py runs it on CUDA)."""
    g = torch.Generator().manual_seed(11)
    x = (0.01 + 1e-3 * torch.randn(9, 768, generator=g)).to(device).requires_grad_()
    r = (1e-3 * torch.randn(9, 768, generator=g)).to(device).requires_grad_()
    w, b = (torch.randn(768, generator=g).to(device).requires_grad_() for _ in range(2))
    y = ops.fused_residual_layer_norm(x, r, w, b, eps)
    leaves64 = [t.detach().double().requires_grad_() for t in (x, r, w, b)]
    ref = torch.nn.functional.layer_norm(leaves64[0] + leaves64[1], (768,), leaves64[2], leaves64[3], eps)
    torch.testing.assert_close(y.double(), ref, atol=1e-5, rtol=1e-5)
    dy = torch.randn(9, 768, generator=g).to(device)
    got = torch.autograd.grad(y, (x, r, w, b), dy)
    want = torch.autograd.grad(ref, leaves64, dy.double())
    for name, a, b_ in zip("xrwb", got, want):
        scale = b_.abs().max().item()  # dx is large here: gradients scale like 1 / std
        torch.testing.assert_close(a.double(), b_, atol=1e-5 * max(scale, 1.0), rtol=1e-5, msg=lambda m: f"d{name}: {m}")


def test_fp32_no_affine():
    check(7, 1000, affine=False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_with_fp32_weights(dtype):
    check(7, 1000, dtype)


@pytest.mark.parametrize("residual", [True, False])
def test_dropout_matches_reference_with_the_kernels_mask(residual):
    check(7, 1000, residual=residual, p=0.3)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 8])
def test_hidden_below_one_dropout_group(n):
    """Hidden 1-8 with dropout: fewer columns than the 8 lanes of one Philox call (the block is one group).
    The reference in float64: at n = 1 the normalised value is exactly 0 and eps = 1e-12 makes rstd 1e6,
    so an fp32 reference's rounding of h - mean (~1e-8) shows as 1e-2 in dweight."""
    check(7, n, p=0.3, ref_dtype=torch.float64)
    check(3, n, residual=False, p=0.3, ref_dtype=torch.float64)
    check(5, n, p=0.3, ref_dtype=torch.float64, x_bias=True)


@pytest.mark.parametrize("tiles", ["interpreter", "gpu"])
@pytest.mark.parametrize("residual", [True, False])
def test_wide_rows_with_dropout(monkeypatch, tiles, residual):
    """Hidden 8,192: the backward works in chunks (launch.WIDE_ROW), 256 columns under the interpreter's tiles,
    2,048 under the GPU's; more rows than programs, so a program's partial row is accumulated over rows."""
    monkeypatch.setenv("BERTFAST_GPU_TILES", "1" if tiles == "gpu" else "0")
    check(9, 8192, residual=residual, p=0.1)
    check(9, 8192, residual=residual, p=0.1, x_bias=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n", [384, 768, 1000, 2048])
def test_gpu_tile_configurations(monkeypatch, dtype, n):
    """The tiles a GPU launches (BERTFAST_GPU_TILES=1: two rows a forward program, one a backward step, 4 or 5
    persistent programs an SM by dtype; one row of up to 16 warps past 1,024 columns) under the interpreter."""
    monkeypatch.setenv("BERTFAST_GPU_TILES", "1")
    check(13, n, dtype, p=0.1)
    check(13, n, dtype, p=0.1, x_bias=True)  # as BERT's projections launch it


def test_dropout_properties():
    x = torch.randn(64, 1024)
    a = ops.fused_residual_layer_norm(x, None, None, None, 1e-5, dropout_p=0.25, training=True, seed=7)
    b = ops.fused_residual_layer_norm(x, None, None, None, 1e-5, dropout_p=0.25, training=True, seed=7)
    c = ops.fused_residual_layer_norm(x, None, None, None, 1e-5, dropout_p=0.25, training=True, seed=8)
    assert torch.equal(a, b), "the same seed must give the same output"
    assert not torch.equal(a, c)
    # p = 0 (or eval mode) is exactly no dropout
    plain = ops.fused_residual_layer_norm(x, None, None, None, 1e-5)
    assert torch.equal(ops.fused_residual_layer_norm(x, None, None, None, 1e-5, dropout_p=0.0, training=True, seed=7), plain)
    assert torch.equal(ops.fused_residual_layer_norm(x, None, None, None, 1e-5, dropout_p=0.5, training=False, seed=7), plain)
    # kept fraction within 1% of 1 - p on 1M elements (std of the fraction ~ 4e-4)
    for p in (0.1, 0.5):
        keep = dropout_keep_mask(1024, 1024, p, 3, "cpu")
        assert abs(keep.float().mean().item() - (1 - p)) < 0.01


def test_dropout_scales_kept_values():
    # With LayerNorm undone by hand: h = y·std + mean; kept entries must be x times the exact inverse keep
    # probability (kernels.dropout.keep_scale: 1 / (1 - p) up to the 16-bit threshold's rounding), the rest 0.
    x = torch.rand(4, 256) + 1.0
    p, seed = 0.2, 11
    y = ops.fused_residual_layer_norm(x, None, None, None, 1e-12, dropout_p=p, training=True, seed=seed)
    keep = dropout_keep_mask(4, 256, p, seed, "cpu")
    h = torch.where(keep, x * keep_scale(p), torch.zeros_like(x))
    mean, std = h.mean(-1, keepdim=True), h.var(-1, unbiased=False, keepdim=True).add(1e-12).sqrt()
    torch.testing.assert_close(y * std + mean, h, atol=1e-5, rtol=1e-5)


def test_bad_arguments():
    x = torch.randn(3, 8)
    with pytest.raises(ValueError, match="eps must be > 0"):
        ops.fused_residual_layer_norm(x, None, None, None, 0.0)
    with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\)"):
        ops.fused_residual_layer_norm(x, None, None, None, 1e-5, dropout_p=1.0, training=True)
    with pytest.raises(ValueError, match="residual has shape"):
        ops.fused_residual_layer_norm(x, torch.randn(3, 9), None, None, 1e-5)
    with pytest.raises(ValueError, match=r"x_bias has shape \(9,\) but x's last dimension is 8"):
        ops.fused_residual_layer_norm(x, None, None, None, 1e-5, x_bias=torch.zeros(9))
    with pytest.raises(ValueError, match="weight has shape"):
        ops.fused_residual_layer_norm(x, None, torch.ones(9), None, 1e-5)
    for bad in (-1, 2**63, 1.5, True):
        with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\*\*63\)"):
            ops.fused_residual_layer_norm(x, None, None, None, 1e-5, dropout_p=0.1, training=True, seed=bad)
    with pytest.raises(ValueError, match="seed must be an int or an int64 tensor of one element, got torch.float32"):
        ops.fused_residual_layer_norm(x, None, None, None, 1e-5, dropout_p=0.1, training=True, seed=torch.ones(1))
    with pytest.raises(ValueError, match="seed is on meta but the inputs are on cpu"):
        ops.fused_residual_layer_norm(x, None, None, None, 1e-5, dropout_p=0.1, training=True,
                                      seed=torch.zeros(1, dtype=torch.int64, device="meta"))
    seed = torch.tensor([7])  # an int64 tensor seed is the same as the int
    torch.testing.assert_close(ops.fused_residual_layer_norm(x, None, None, None, 1e-5, 0.5, True, seed=seed),
                               ops.fused_residual_layer_norm(x, None, None, None, 1e-5, 0.5, True, seed=7), atol=0, rtol=0)


def test_opcheck():
    x, r, w, b = inputs(5, 40, torch.float32)
    torch.library.opcheck(torch.ops.bertfast.residual_layer_norm.default, (x, r, w, b, 1e-5, 0.0, None, None))
    seed = torch.tensor([3])  # the kernels read it from memory (ops/_seed.py)
    torch.library.opcheck(torch.ops.bertfast.residual_layer_norm.default, (x, None, w, b, 1e-5, 0.2, seed, None))
    xb = torch.randn(40, requires_grad=True)
    torch.library.opcheck(torch.ops.bertfast.residual_layer_norm.default, (x, r, w, b, 1e-5, 0.2, seed, xb))


def test_nn_module_state_dict_is_layer_norms():
    from bertfast.nn import FusedLayerNorm

    assert FusedLayerNorm(16).state_dict().keys() == torch.nn.LayerNorm(16).state_dict().keys()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 5, 8, 384, 768, 1000, 1024, 4096, 8192, 16384])
def test_cuda(dtype, n):
    check(1023, n, dtype, device="cuda")
    check(1023, n, dtype, device="cuda", p=0.1)
    check(1023, n, dtype, device="cuda", p=0.1, x_bias=True)


def test_x_bias_in_fp32_with_bf16_activations():
    """As under autocast (a bf16 matmul output, the linear layer's fp32 bias): x_bias's gradient comes back
    in fp32. Against the reference in fp32 on the same inputs; the tolerance of bf16 outputs (LOW_TOL),
    the gradient sums over 7 rows."""
    check(7, 384, torch.bfloat16, p=0.1, x_bias=True)
    x, r, w, b, xb = inputs(7, 384, torch.bfloat16, x_bias=True)
    y = ops.fused_residual_layer_norm(x, r, w, b, 1e-12, 0.1, True, seed=3, x_bias=xb)
    grads = torch.autograd.grad(y.float().sum(), (x, r, w, b, xb))
    assert [g.dtype for g in grads] == [torch.bfloat16, torch.bfloat16] + [torch.float32] * 3


def test_mixed_activation_dtypes_like_autocast():
    """A bf16 x with an fp32 residual (as under autocast): output fp32 like x + residual; each gradient
    in its input's dtype. Tolerance: x is bf16, so its gradient carries one bf16 rounding (2⁻⁷)."""
    x = torch.randn(7, 384, dtype=torch.bfloat16, requires_grad=True)
    r = torch.randn(7, 384, requires_grad=True)
    w, b = torch.randn(384, requires_grad=True), torch.randn(384, requires_grad=True)
    y = ops.fused_residual_layer_norm(x, r, w, b, 1e-12)
    assert y.dtype == torch.float32
    dy = torch.randn(7, 384)
    grads = torch.autograd.grad(y, (x, r, w, b), dy)
    assert [g.dtype for g in grads] == [torch.bfloat16, torch.float32, torch.float32, torch.float32]
    xr = x.detach().float().requires_grad_()
    rr = r.detach().requires_grad_()
    yr = residual_layer_norm_ref(xr, rr, w, b, 1e-12)
    ref = torch.autograd.grad(yr, (xr, rr, w, b), dy)
    torch.testing.assert_close(y, yr, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[0].float(), ref[0], rtol=2**-7, atol=1e-2)
    for got, want in zip(grads[1:], ref[1:]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
