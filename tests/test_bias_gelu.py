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
