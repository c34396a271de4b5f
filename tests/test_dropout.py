"""The dropout masks of the fused kernels (bertfast.kernels.dropout): one 7-round Philox call feeds 8
elements with 16-bit thresholds; LayerNorm groups 8 consecutive columns of a row, attention groups the
columns its tensor-core fragments hold (fragment_keep) or, at head dim 64 in 16 bits, 4 queries x 2 keys
that one thread holds in the forward, dK/dV and dQ kernels (tile_keep). Under the interpreter, on the CPU.

Bounds: over n draws the kept fraction lies within 5 standard deviations sqrt(q(1-q)/n) of the exact
keep probability q = 1 - threshold(p) / 65536 (a false alarm once in ~3.5 million runs), and the
correlation of neighbouring elements within 5/sqrt(n) of zero."""
import math

import pytest
import torch

from bertfast import ops
from bertfast.kernels import dropout


@pytest.fixture(autouse=True)
def triton_backend(backend):
    backend("triton")


def keep_probability(p):
    return 1 - dropout.threshold(p) / 65536


@pytest.mark.parametrize("grouping", dropout.GROUPINGS)
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keep_rate_within_binomial_bounds(grouping, p):
    keep = dropout.keep_mask(1024, 1024, p, seed=12345, stream=3, grouping=grouping)  # 2**20 draws
    n, q = keep.numel(), keep_probability(p)
    assert abs(keep.float().mean().item() - q) <= 5 * math.sqrt(q * (1 - q) / n)
    assert abs(q - (1 - p)) <= 2**-17, "the threshold's rounding moves the rate by at most 2**-17"
    # kept values scaled by the exact inverse: the expectation of the output is the input's
    assert abs(keep.float().mean().item() * dropout.keep_scale(p) - 1) <= 5 * math.sqrt((1 - q) / (q * n))


def correlation(a, b):
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    return (a @ b / (a.norm() * b.norm())).item()


@pytest.mark.parametrize("grouping", dropout.GROUPINGS)
def test_no_correlation_between_neighbours(grouping):
    p = 0.5  # the largest variance: the most sensitive to dependence
    keep = dropout.keep_mask(1024, 1024, p, seed=7, stream=0, grouping=grouping)
    other_stream = dropout.keep_mask(1024, 1024, p, seed=7, stream=1, grouping=grouping)
    other_seed = dropout.keep_mask(1024, 1024, p, seed=8, stream=0, grouping=grouping)
    bound = 5 / math.sqrt(keep.numel() // 2)
    pairs = {
        "next head / stream": (keep, other_stream),
        "next seed": (keep, other_seed),
    }
    for d in (1, 8, 64, 72):  # (the query-key grouping's lanes: queries 8, 64 and 72 apart)
        pairs[f"rows {d} apart"] = (keep[:-d], keep[d:])
    # every distance within a Philox call's lanes (which columns share a call depends on the grouping)
    for d in range(1, 33):
        pairs[f"columns {d} apart"] = (keep[:, :-d], keep[:, d:])
    for name, (a, b) in pairs.items():
        assert abs(correlation(a, b)) <= bound, name


@pytest.mark.parametrize("grouping", ["fragment", "tiles"])
def test_masks_depend_only_on_seed_stream_row_and_column(grouping):
    a = dropout.keep_mask(140, 200, 0.3, seed=99, stream=5, grouping=grouping)
    b = dropout.keep_mask(140, 200, 0.3, seed=99, stream=5, grouping=grouping)
    wider = dropout.keep_mask(150, 264, 0.3, seed=99, stream=5, grouping=grouping)
    assert torch.equal(a, b) and torch.equal(wider[:140, :200], a), "deterministic, whatever the tile"
    assert not torch.equal(a, dropout.keep_mask(140, 200, 0.3, seed=100, stream=5, grouping=grouping))


def test_layer_norm_forward_and_backward_draw_the_same_mask():
    """The backward recomputes the mask: dx must be exactly zero where the forward dropped x, and dh
    scaled by keep_scale(p) where it kept it (dx = dh * scale * keep)."""
    rows, n, p, seed = 64, 768, 0.1, 2024
    x = (torch.rand(rows, n) + 1.0).requires_grad_()
    r = torch.randn(rows, n).requires_grad_()
    y = ops.fused_residual_layer_norm(x, r, None, None, 1e-5, dropout_p=p, training=True, seed=seed)
    dx, dr = torch.autograd.grad(y, (x, r), torch.randn(rows, n))
    keep = dropout.keep_mask(rows, n, p, seed)
    assert torch.all(dx[~keep] == 0) and torch.all(dx[keep] != 0)
    torch.testing.assert_close(dx[keep], dr[keep] * dropout.keep_scale(p), rtol=1e-6, atol=0)
    # the forward used the same mask: x dropped where keep is False (h = dropout(x) + r, undone from y)
    h = torch.where(keep, x.detach() * dropout.keep_scale(p), 0.0) + r.detach()
    ref = torch.nn.functional.layer_norm(h, (n,), eps=1e-5)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)


def test_attention_forward_and_backward_draw_the_same_mask():
    """A value tensor that is one-hot per key reads the probabilities P (after dropout) straight off the
    output; dV then holds Pᵀ dO: both must carry the mask of fragment_keep."""
    seq, p, seed = 64, 0.2, 31
    q = torch.randn(1, 1, seq, 32)
    k = torch.randn(1, 1, seq, 32)
    v = torch.eye(seq)[None, None, :, :32].contiguous().requires_grad_()  # keys 0..31 one-hot
    out = ops.fused_attention(q, k, v, None, dropout_p=p, training=True, seed=seed)
    keep = dropout.keep_mask(seq, seq, p, seed, stream=0, grouping="fragment")
    dropped = ~keep[:, :32]
    assert torch.all(out[0, 0][dropped] == 0) and torch.all(out[0, 0][~dropped] > 0)
    (dv,) = torch.autograd.grad(out, v, torch.ones_like(out))
    probs = torch.softmax(q[0, 0] @ k[0, 0].T / math.sqrt(32), -1) * keep * dropout.keep_scale(p)
    torch.testing.assert_close(dv[0, 0], probs.T @ torch.ones(seq, 32), atol=1e-5, rtol=1e-5)
