"""ops.linear.linear_keeping_input: a linear layer that also returns its input, for the residual branch, and
adds that branch's gradient inside its input-gradient matmul (addmm_ into the residual gradient, no add).
Against F.linear with x used directly as the residual (autograd summing the two gradients): fp32 on the
CPU, 1e-6 (the same products; only where the residual gradient is added differs: once inside the matmul's
accumulation or after it). Shapes: hidden 384 and odd ones, batch 1 and a prime number of rows, 3-D and
2-D inputs."""
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from dispatch_counts import CountOps

from bertfast.ops.linear import keeps_input, linear_keeping_input


def residual_block(linear, x, weight, bias, ln_weight):
    """A residual LayerNorm over a projection of x: what a BERT layer does with its input; the residual is
    the second value linear returns (x itself for the plain path)."""
    y, residual = linear(x, weight, bias)
    z = torch.tanh(y)[..., :x.shape[-1]] * 0.5  # a nonlinear consumer of y
    return F.layer_norm(z + residual, (x.shape[-1],), ln_weight)


def plain(x, weight, bias):
    return F.linear(x, weight, bias), x


def grads(linear, shape, out_features, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(*shape, generator=g)
    h = x0.shape[-1]
    weight = torch.randn(out_features, h, generator=g, requires_grad=True)
    b = torch.randn(out_features, generator=g, requires_grad=True) if bias else None
    ln_weight = torch.randn(h, generator=g, requires_grad=True)
    x = x0.clone().requires_grad_()
    inner = x * 2.0  # not a leaf, as inside a model
    out = residual_block(linear, inner, weight, b, ln_weight)
    dout = torch.randn(out.shape, generator=g)
    with CountOps() as ops:
        out.backward(dout)
    return [t.grad for t in (x, weight, b, ln_weight) if t is not None], out.detach(), ops.calls


@pytest.mark.parametrize("shape,out_features", [((2, 5, 384), 3 * 384), ((1, 7, 33), 50), ((13, 48), 96),
                                                 ((3, 1, 16), 16)])
@pytest.mark.parametrize("bias", [True, False])
def test_gradients_match_autograds_sum_and_no_add_runs(shape, out_features, bias):
    want, y_want, plain_calls = grads(plain, shape, out_features, bias)
    got, y_got, calls = grads(linear_keeping_input, shape, out_features, bias)
    torch.testing.assert_close(y_got, y_want, atol=0, rtol=0)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    # the residual gradient added in the matmul: one addmm_ where autograd ran mm and add
    assert calls["addmm_"] == 1 and calls["add"] == plain_calls["add"] - 1, (calls, plain_calls)


def test_the_residual_is_a_view_of_the_input_with_this_ops_gradient():
    x = torch.randn(4, 8, requires_grad=True) * 1.0
    weight = torch.randn(6, 8, requires_grad=True)
    y, kept = linear_keeping_input(x, weight)
    assert kept.data_ptr() == x.data_ptr() and kept._base is x
    assert kept.grad_fn is y.grad_fn  # both outputs of the one backward: the two gradients meet there
    torch.testing.assert_close(y, F.linear(x, weight), atol=0, rtol=0)


def test_where_it_does_not_apply_the_input_itself_is_returned():
    weight = torch.randn(6, 8)
    x = torch.randn(4, 8)
    assert linear_keeping_input(x, weight)[1] is x  # nothing to differentiate
    x = torch.randn(4, 8, requires_grad=True)
    with torch.no_grad():
        assert linear_keeping_input(x, weight)[1] is x
    assert not keeps_input(x, weight.to(torch.bfloat16))  # mixed dtypes: autograd sums, in the wider dtype
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # autocast: the residual gradient in fp32, the matmul in bf16; autograd sums them in fp32
        assert not keeps_input(x, weight)
        assert linear_keeping_input(x, weight)[1] is x
    assert keeps_input(x, weight)
    with mock.patch.object(torch.compiler, "is_compiling", lambda: True):
        assert not keeps_input(x, weight)  # traced by torch.compile: autograd's add, for inductor to fuse


def test_unused_outputs_and_foreign_residual_gradients_are_summed_as_autograd_would():
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(5, 8, generator=g)
    weight = torch.randn(6, 8, generator=g, requires_grad=True)
    cases = {
        "residual unused": lambda y, kept: y.sin().sum(),
        "output unused": lambda y, kept: kept.cos().sum(),
        "broadcast residual gradient": lambda y, kept: y.sin().sum() + kept.sum(),
        "non-contiguous residual gradient": lambda y, kept: y.sin().sum() + (kept.t() * torch.arange(5.)).square().sum(),
    }
    for name, loss in cases.items():
        want_x = x0.clone().requires_grad_()
        want_w = torch.autograd.grad(loss(*plain(want_x * 1.0, weight, None)), [want_x, weight], allow_unused=True)
        got_x = x0.clone().requires_grad_()
        got_w = torch.autograd.grad(loss(*linear_keeping_input(got_x * 1.0, weight)), [got_x, weight],
                                    allow_unused=True)
        for a, b in zip(got_w, want_w):
            assert (a is None) == (b is None), name
            if a is not None:
                torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6, msg=lambda m: f"{name}: {m}")


def test_double_backward_adds_out_of_place():
    """create_graph: the residual gradient is not written in place (it is part of the graph being built),
    and second derivatives match autograd's."""
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(3, 4, generator=g, dtype=torch.float64)
    weight = torch.randn(4, 4, generator=g, dtype=torch.float64, requires_grad=True)

    def f(linear, x):
        y, kept = linear(x * 1.0, weight, None)
        return (y.sin() + kept.square()).sum()

    for linear in (plain, linear_keeping_input):
        x = x0.clone().requires_grad_()
        (dx,) = torch.autograd.grad(f(linear, x), [x], create_graph=True)
        second = torch.autograd.grad(dx.square().sum(), [x, weight])
        if linear is plain:
            want = (dx.detach(), second)
        else:
            torch.testing.assert_close(dx.detach(), want[0])
            for a, b in zip(second, want[1]):
                torch.testing.assert_close(a, b)
    torch.autograd.gradcheck(lambda x, w: linear_keeping_input(x * 1.0, w), (x0.clone().requires_grad_(), weight))


@pytest.mark.parametrize("create_graph", [False, True])
def test_the_residual_gradient_is_written_in_place_only_without_create_graph(create_graph):
    """The contract the callers keep (ops/linear.py): the residual gradient is this op's to write into, so
    nothing else may hold it; under create_graph it is part of the graph being built and is left as it is."""
    x = torch.randn(5, 8, requires_grad=True)
    weight = torch.randn(6, 8, requires_grad=True)
    y, kept = linear_keeping_input(x * 1.0, weight)
    held = []
    kept.register_hook(lambda g: held.append((g, g.detach().clone())))
    (dx,) = torch.autograd.grad(y.sin().sum() + (kept * torch.arange(8.)).sum(), [x], create_graph=create_graph)
    (g, before), = held
    assert torch.equal(g, before) == create_graph
    assert torch.equal(g, dx) != create_graph  # without create_graph the buffer holds x's whole gradient
