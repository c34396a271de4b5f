"""The fused embedding sum + LayerNorm (Triton, interpreter on CPU) against the two reference ops.
Tolerance 1e-5 fp32 (same fp32 sum and statistics); bf16 one output rounding (2⁻⁷ relative)."""
import pytest
import torch

from bertfast import ops
from bertfast.reference import embedding_sum_ref


@pytest.mark.parametrize("hidden", [384, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_matches_unfused(backend, hidden, dtype):
    backend("triton")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (3, 7), generator=g)
    tt = torch.randint(0, 2, (3, 7), generator=g)
    pos = torch.arange(7)[None]
    tables = [torch.randn(n, hidden, generator=g).to(dtype) for n in (50, 2, 16)]
    w, b = torch.randn(hidden, generator=g), torch.randn(hidden, generator=g)
    with torch.no_grad():
        got = ops.embedding_layer_norm(ids, tt, pos, *tables, w, b, 1e-12)
    x = embedding_sum_ref(ids, tt, pos.expand(3, 7), *[t.float() for t in tables])
    want = torch.nn.functional.layer_norm(x, (hidden,), w, b, 1e-12)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2**-7)
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), want, **tol)
    with pytest.raises(IndexError, match="input_ids holds 50"):
        with torch.no_grad():
            ops.embedding_layer_norm(ids + 1, tt, pos, *tables, w, b, 1e-12)


@pytest.mark.parametrize("backend_name", ["auto", "triton"])
def test_gradients_match_the_unfused_pair(backend, backend_name):
    """With gradients the op is embedding_sum then the fused LayerNorm: every gradient (the three tables,
    weight, bias) against the reference pair in fp32 (sums of up to 10 rows: 1e-5)."""
    backend(backend_name)
    g = torch.Generator().manual_seed(3)
    tables = [torch.randn(n, 32, generator=g, requires_grad=True) for n in (10, 2, 8)]
    w = (torch.rand(32, generator=g) + 0.5).requires_grad_()
    b = torch.randn(32, generator=g, requires_grad=True)
    ids = torch.randint(1, 10, (2, 5), generator=g)
    tt = torch.randint(0, 2, (2, 5), generator=g)
    dy = torch.randn(2, 5, 32, generator=g)
    out = ops.embedding_layer_norm(ids, tt, None, *tables, w, b, padding_idx=0)
    got = torch.autograd.grad(out, [*tables, w, b], dy)
    x = embedding_sum_ref(ids, tt, torch.arange(5).expand(2, 5), *tables, padding_idx=0)
    ref = torch.nn.functional.layer_norm(x, (32,), w, b, 1e-12)
    want = torch.autograd.grad(ref, [*tables, w, b], dy)
    for name, a, b_ in zip(("word", "type", "position", "weight", "bias"), got, want):
        torch.testing.assert_close(a, b_, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")
