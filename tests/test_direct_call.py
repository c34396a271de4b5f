"""The fused ops call their Triton kernel directly (skipping the custom op's dispatch) only when nothing
needs the custom op: eager mode, plain tensors, no autograd to record. The result is the same either way,
bit for bit (the same kernel runs on the same inputs). Under TRITON_INTERPRET=1 on CPU tensors."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from bertfast import _backend, ops
from bertfast.ops import attention as attention_mod
from bertfast.ops import bias_gelu as bias_gelu_mod
from bertfast.ops import layer_norm as layer_norm_mod


@pytest.fixture(autouse=True)
def triton_backend(backend):
    backend("triton")


def counting(monkeypatch, module, name):
    """Wrap module.name (a custom op) so that its calls are counted."""
    calls = []
    op = getattr(module, name)

    def wrapper(*args):
        calls.append(1)
        return op(*args)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 32, generator=g)
    return x, torch.randn(32, generator=g), torch.randn(2, 5, 32, generator=g)


def test_direct_call_rules():
    x = torch.randn(3)
    w = torch.nn.Parameter(torch.randn(3))
    assert _backend.direct_call(x, None)
    assert not _backend.direct_call(x, w)  # autograd records w
    with torch.no_grad():
        assert _backend.direct_call(x, w)
    with torch.inference_mode():
        assert _backend.direct_call(torch.randn(3), w)
    with FakeTensorMode():
        fake = torch.empty(3)
    assert not _backend.direct_call(fake)

    def traced(t):
        return t + int(_backend.direct_call(t))

    torch._dynamo.reset()
    assert torch.equal(torch.compile(traced, fullgraph=True, backend="eager")(x), x)  # compiling: the custom op


@pytest.mark.parametrize("op", ["bias_gelu", "layer_norm", "attention", "attention_varlen"])
def test_no_grad_skips_the_custom_op_and_matches_it(monkeypatch, op):
    x, b, r = inputs()
    q = torch.randn(2, 2, 17, 32, generator=torch.Generator().manual_seed(1))
    mask = (torch.arange(17)[None] < torch.tensor([[17], [9]])).long()
    cu = torch.tensor([0, 17, 26], dtype=torch.int32)
    packed = q.transpose(1, 2).reshape(34, 2, 32)[:26]
    module, name, run = {
        "bias_gelu": (bias_gelu_mod, "_bias_gelu_op", lambda t: ops.fused_bias_gelu(t, b)),
        "layer_norm": (layer_norm_mod, "_layer_norm_op", lambda t: ops.fused_residual_layer_norm(t, r, b, b)),
        "attention": (attention_mod, "_attention_op", lambda t: ops.fused_attention(t, t, t, mask)),
        "attention_varlen": (attention_mod, "_attention_op",
                             lambda t: ops.fused_attention_varlen(t, t, t, cu, 17)),
    }[op]
    t = {"bias_gelu": x, "layer_norm": x, "attention": q, "attention_varlen": packed}[op]
    calls = counting(monkeypatch, module, name)
    with torch.no_grad():
        direct = run(t)
    assert calls == []
    through_op = run(t.clone().requires_grad_())
    assert calls == [1]
    assert torch.equal(direct, through_op.detach())
