"""fused_bias_gelu (Triton, under TRITON_INTERPRET=1 on CPU) against bertfast.reference.bias_gelu_ref.

Tolerances: fp32 within 1e-5 (the kernel computes in fp32 like the reference; erf/exp differ by a few
ulp). fp16/bf16: the kernel computes in fp32 from the low-precision inputs and rounds once, so against
the fp32 reference on those same inputs it is within one rounding of the output dtype: rtol 2⁻¹⁰
(fp16) / 2⁻⁷ (bf16), atol 1e-3 / 1e-2 near zero; dbias is an fp32 sum rounded once.
"""
import pytest
import torch

from bertfast import ops
from bertfast.reference import bias_gelu_ref

LOW_TOL = {torch.float16: dict(rtol=2**-10, atol=1e-3), torch.bfloat16: dict(rtol=2**-7, atol=1e-2)}


@pytest.fixture(autouse=True)
def triton_backend(backend):
    backend("triton")


def check(rows, n, dtype, approximate, device="cpu"):
    g = torch.Generator().manual_seed(rows * 7919 + n)
    x = (torch.randn(rows, n, generator=g) * 2).to(device=device, dtype=dtype).requires_grad_()
    b = torch.randn(n, generator=g).to(device=device, dtype=dtype).requires_grad_()
    dy = torch.randn(rows, n, generator=g).to(device=device, dtype=dtype)
    y = ops.fused_bias_gelu(x, b, approximate)
    dx, db = torch.autograd.grad(y, (x, b), dy)
    xr, br = x.detach().float().requires_grad_(), b.detach().float().requires_grad_()
    yr = bias_gelu_ref(xr, br, approximate)
    dxr, dbr = torch.autograd.grad(yr, (xr, br), dy.float())
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else LOW_TOL[dtype]
    assert y.dtype == dx.dtype == db.dtype == dtype
    torch.testing.assert_close(y.float(), yr, **tol)
    torch.testing.assert_close(dx.float(), dxr, **tol)
    # dbias sums `rows` terms: fp32 accumulation error grows with the row count.
    db_tol = dict(tol, atol=tol["atol"] * max(1, rows ** 0.5))
    torch.testing.assert_close(db.float(), dbr, **db_tol)


@pytest.mark.parametrize("rows", [1, 7, 1023])
@pytest.mark.parametrize("n", [384, 768, 1000, 1024, 1536, 3072])
def test_fp32_erf(rows, n):
    check(rows, n, torch.float32, "none")


@pytest.mark.parametrize("rows", [1, 7])
@pytest.mark.parametrize("n", [1000, 4096])
def test_fp32_tanh(rows, n):
    check(rows, n, torch.float32, "tanh")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_low_precision(dtype, approximate):
    check(7, 1000, dtype, approximate)


def _every_finite(dtype):
    x = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    return x[torch.isfinite(x)]


def _ulps(got, exact, dtype):
    """|got - exact| in units of the dtype's spacing at the exact value."""
    mantissa = {torch.float16: 10, torch.bfloat16: 7}[dtype]
    spacing = torch.exp2(torch.floor(torch.log2(exact.abs().clamp_min(torch.finfo(dtype).tiny))) - mantissa)
    return (got.double() - exact).abs() / spacing


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fast_erf_over_every_input(dtype):
    """fp16/bf16 erf GELU uses a shorter erf (kernels/bias_gelu.py). Every finite input, forward and
    derivative, against float64: within 1.5 ulp of the output dtype at the exact value, or no further
    from it than torch's own fp32 erf GELU (which is off by up to 5.8 ulp in fp16 and returns 0 in bf16's
    far negative tail, below 1e-20, where ours is within a few percent); results below 1e-30 (bf16's
    tail, where fp32 intermediates are subnormal) within 1e-30; the derivative also within 2**-22
    absolute near its zero at x = -0.75, where Φ and x·φ cancel (0.23 - 0.23): the erf approximation's
    own error."""
    check_every_input(dtype, "cpu")


def check_every_input(dtype, device):
    """test_fast_erf_over_every_input's check on `device` (tests/test_gpu_risks.py runs it on CUDA)."""
    import math

    x = _every_finite(dtype).to(device).requires_grad_()
    y = ops.fused_bias_gelu(x[None], torch.zeros(x.shape[0], dtype=dtype, device=device))[0]
    (dx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    x32 = x.detach().float().requires_grad_()
    torch_y = torch.nn.functional.gelu(x32)
    (torch_dx,) = torch.autograd.grad(torch_y, x32, torch.ones_like(torch_y))
    xd = x.detach().double()
    cdf = 0.5 * torch.special.erfc(-xd / math.sqrt(2))
    exact_y = xd * cdf
    exact_grad = cdf + xd * torch.exp(-0.5 * xd * xd) / math.sqrt(2 * math.pi)
    for name, got, theirs, exact, floor in (("gelu", y.cpu(), torch_y.cpu(), exact_y.cpu(), 1e-30),
                                            ("gelu'", dx.cpu(), torch_dx.cpu(), exact_grad.cpu(), 2**-22)):
        err = _ulps(got, exact, dtype)
        abs_err = (got.double() - exact).abs()
        ok = (err <= 1.5) | (abs_err <= (theirs.to(dtype).double() - exact).abs()) | (abs_err <= floor)
        worst = int(torch.argmax(torch.where(ok, 0.0, err)))
        assert bool(ok.all()), (f"{name}({x[worst].item()}) = {got[worst].item()}, exact {exact[worst].item()} "
                                f"({err[worst].item():.2f} ulp); {int((~ok).sum())} inputs off")


def test_leading_dims_and_large_inputs():
    x = torch.randn(2, 3, 64) * 30  # |x| large: tanh must saturate, not overflow to NaN
    b = torch.randn(64)
    for approximate in ("none", "tanh"):
        y = ops.fused_bias_gelu(x, b, approximate)
        assert y.shape == x.shape and torch.isfinite(y).all()
        torch.testing.assert_close(y, bias_gelu_ref(x, b, approximate), atol=1e-4, rtol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="bias has shape"):
        ops.fused_bias_gelu(torch.randn(3, 8), torch.randn(7))
    with pytest.raises(ValueError, match="approximate must be one of"):
        ops.fused_bias_gelu(torch.randn(3, 8), torch.randn(8), "sigmoid")
    with pytest.raises(TypeError, match="x must have dtype"):
        ops.fused_bias_gelu(torch.ones(3, 8, dtype=torch.long), torch.randn(8))


def test_opcheck():
    x, b = torch.randn(5, 40, requires_grad=True), torch.randn(40, requires_grad=True)
    torch.library.opcheck(torch.ops.bertfast.bias_gelu.default, (x, b, "none"))
    torch.library.opcheck(torch.ops.bertfast.bias_gelu_backward.default, (torch.randn(5, 40), x.detach(), b.detach(), "tanh"))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n", [1000, 3072, 4096])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_cuda(dtype, n, approximate):
    check(1023, n, dtype, approximate, device="cuda")
