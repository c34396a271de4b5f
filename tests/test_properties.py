"""Property-based tests (hypothesis): every op against its reference over random shapes, dtypes and masks,
through the Triton kernels under the interpreter. Bounded (few, small examples) to keep CI fast.
Tolerances as in each op's own tests: fp32 1e-5; bf16/fp16 one rounding of the output dtype."""
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from bertfast import ops  # noqa: E402
from bertfast.reference import attention_ref, bias_gelu_ref, embedding_sum_ref, residual_layer_norm_ref  # noqa: E402

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)
DTYPES = st.sampled_from([torch.float32, torch.bfloat16, torch.float16])
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2**-7),
       torch.float16: dict(atol=2e-3, rtol=2**-10)}


@pytest.fixture(autouse=True)
def triton_backend(monkeypatch):
    monkeypatch.setenv("BERTFAST_BACKEND", "triton")


@SETTINGS
@given(rows=st.integers(1, 40), n=st.integers(1, 300), dtype=DTYPES, seed=st.integers(0, 2**16),
       approximate=st.sampled_from(["none", "tanh"]))
def test_bias_gelu_property(rows, n, dtype, seed, approximate):
    g = torch.Generator().manual_seed(seed)
    x, b = torch.randn(rows, n, generator=g).to(dtype), torch.randn(n, generator=g).to(dtype)
    torch.testing.assert_close(ops.fused_bias_gelu(x, b, approximate).float(),
                               bias_gelu_ref(x.float(), b.float(), approximate), **TOL[dtype])


@SETTINGS
@given(rows=st.integers(1, 40), n=st.integers(2, 300), dtype=DTYPES, seed=st.integers(0, 2**16),
       residual=st.booleans())
def test_layer_norm_property(rows, n, dtype, seed, residual):
    """Forward and every gradient (dweight/dbias sum `rows` terms: the tolerance grows like sqrt(rows))."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, n, generator=g).to(dtype).requires_grad_()
    r = torch.randn(rows, n, generator=g).to(dtype).requires_grad_() if residual else None
    w, b = torch.randn(n, generator=g).requires_grad_(), torch.randn(n, generator=g).requires_grad_()
    got = ops.fused_residual_layer_norm(x, r, w, b, 1e-5)
    leaves = [t for t in (x, r, w, b) if t is not None]
    ref_leaves = [t.detach().float().requires_grad_() for t in leaves]
    xr, rr = ref_leaves[0], ref_leaves[1] if residual else None
    want = residual_layer_norm_ref(xr, rr, ref_leaves[-2], ref_leaves[-1], 1e-5)
    tol = {k: 4 * v for k, v in TOL[dtype].items()}
    torch.testing.assert_close(got.float(), want, **tol)
    dy = torch.randn(rows, n, generator=g)
    for a, b_ in zip(torch.autograd.grad(got, leaves, dy.to(dtype)), torch.autograd.grad(want, ref_leaves, dy.to(dtype).float())):
        torch.testing.assert_close(a.float(), b_, atol=tol["atol"] * rows ** 0.5 * 4, rtol=tol["rtol"] * 4)


@SETTINGS
@given(batch=st.integers(1, 4), seq=st.integers(1, 40), heads=st.integers(1, 3), dim=st.sampled_from([16, 32]),
       seed=st.integers(0, 2**16), data=st.data())
def test_attention_property(batch, seq, heads, dim, seed, data):
    """Forward and the gradients of q, k, v, any 0/1 mask (fp32)."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, seq, dim, generator=g).requires_grad_() for _ in range(3))
    mask = torch.tensor(data.draw(st.lists(st.lists(st.integers(0, 1), min_size=seq, max_size=seq),
                                           min_size=batch, max_size=batch)))
    got, want = ops.fused_attention(q, k, v, mask), attention_ref(q, k, v, mask)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    dout = torch.randn(batch, heads, seq, dim, generator=g)
    for a, b_ in zip(torch.autograd.grad(got, (q, k, v), dout), torch.autograd.grad(want, (q, k, v), dout)):
        torch.testing.assert_close(a, b_, atol=1e-5, rtol=1e-5)


@SETTINGS
@given(batch=st.integers(1, 4), seq=st.integers(1, 20), hidden=st.integers(1, 200), seed=st.integers(0, 2**16))
def test_embedding_sum_property(batch, seq, hidden, seed):
    g = torch.Generator().manual_seed(seed)
    tables = [torch.randn(n, hidden, generator=g) for n in (30, 3, 25)]
    ids = [torch.randint(0, n, (batch, seq), generator=g) for n in (30, 3, 25)]
    torch.testing.assert_close(ops.embedding_sum(*ids, *tables), embedding_sum_ref(*ids, *tables), atol=1e-6, rtol=0)
