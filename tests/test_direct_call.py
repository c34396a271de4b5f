"""Eager calls of the fused ops skip the custom op's dispatch (bertfast/ops/_custom.py): a direct call
when autograd has nothing to record, an autograd.Function otherwise; the custom op under torch.compile
and for tensor subclasses. Every path runs the same kernel on the same inputs, so outputs and gradients
are equal bit for bit. Under TRITON_INTERPRET=1 on CPU tensors (the embedding sum: the C++ extension)."""
import importlib

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from bertfast import ops
from bertfast.ops import _custom
from bertfast.ops import attention as attention_mod
from bertfast.ops import bias_gelu as bias_gelu_mod
from bertfast.ops import layer_norm as layer_norm_mod

embedding_mod = importlib.import_module("bertfast.ops.embedding_sum")  # (ops.embedding_sum is the function)


@pytest.fixture(autouse=True)
def triton_backend(backend):
    backend("triton")


def test_route_rules():
    x = torch.randn(3)
    w = torch.nn.Parameter(torch.randn(3))
    assert _custom.route((x, None, 1.0, "none")) == "impl"
    assert _custom.route((x, w)) == "function"  # autograd records w
    with torch.no_grad():
        assert _custom.route((x, w)) == "impl"
    with torch.inference_mode():
        assert _custom.route((torch.randn(3), w)) == "impl"
    with FakeTensorMode():
        fake = torch.empty(3)
    assert _custom.route((x, fake)) == "op"

    def traced(t):
        return t + len(_custom.route((t,)))

    torch._dynamo.reset()
    assert torch.equal(torch.compile(traced, fullgraph=True, backend="eager")(x), x + 2)  # compiling: "op"


class Paths:
    """Counts which path each call of a FusedOp took."""

    def __init__(self, monkeypatch, fused):
        self.calls = []
        for attr in ("impl", "op", "function"):
            inner = getattr(fused, attr)
            if inner is None:  # a backward op has no autograd of its own
                continue
            if attr == "function":
                monkeypatch.setattr(fused, attr, type("Counted", (), {"apply": self._counted("function", inner.apply)}))
            else:
                monkeypatch.setattr(fused, attr, self._counted(attr, inner))

    def _counted(self, name, fn):
        def call(*args):
            self.calls.append(name)
            return fn(*args)
        return call

    def take(self):
        calls, self.calls = self.calls, []
        return calls


def case(name):
    g = torch.Generator().manual_seed(0)
    x, b, r = torch.randn(2, 5, 32, generator=g), torch.randn(32, generator=g), torch.randn(2, 5, 32, generator=g)
    q = torch.randn(2, 2, 17, 32, generator=g)
    mask = (torch.arange(17)[None] < torch.tensor([[17], [9]])).long()
    cu = torch.tensor([0, 17, 26], dtype=torch.int32)
    packed = q.transpose(1, 2).reshape(34, 2, 32)[:26].contiguous()
    ids = torch.randint(0, 50, (2, 5), generator=g)
    tables = [torch.randn(50, 32, generator=g), torch.randn(2, 32, generator=g), torch.randn(8, 32, generator=g)]
    return {
        "bias_gelu": (bias_gelu_mod._bias_gelu, bias_gelu_mod._bias_gelu_backward, [x, b],
                      lambda t, b: ops.fused_bias_gelu(t, b)),
        "layer_norm": (layer_norm_mod._layer_norm, layer_norm_mod._layer_norm_backward, [x, r, b],
                       lambda t, r, b: ops.fused_residual_layer_norm(t, r, b, b)),
        "attention": (attention_mod._attention, attention_mod._attention_backward, [q, q * 0.5, q.flip(0)],
                      lambda q, k, v: ops.fused_attention(q, k, v, mask)),
        "attention_varlen": (attention_mod._attention, attention_mod._attention_backward,
                             [packed, packed * 0.5, packed.flip(0)],
                             lambda q, k, v: ops.fused_attention_varlen(q, k, v, cu, 17)),
        "attention_qkv": (attention_mod._attention_qkv, attention_mod._attention_qkv_backward,
                          [torch.stack([q, q * 0.5, q.flip(0)], 2).transpose(1, 3).contiguous()],  # [B, S, 3, H, D]
                          lambda qkv: ops.attention.fused_attention_qkv(qkv, mask)),
        "attention_qkv_varlen": (attention_mod._attention_qkv, attention_mod._attention_qkv_backward,
                                 [torch.stack([packed, packed * 0.5, packed.flip(0)], 1)],  # [total, 3, H, D]
                                 lambda qkv: ops.attention.fused_attention_qkv(qkv, cu_seqlens=cu, max_seqlen=17)),
        "embedding_sum": (embedding_mod._embedding_sum, embedding_mod._embedding_backward, tables,
                          lambda w, t, p: ops.embedding_sum(ids, None, None, w, t, p, padding_idx=0)),
    }[name]


@pytest.mark.parametrize("name", ["bias_gelu", "layer_norm", "attention", "attention_varlen", "attention_qkv",
                                  "attention_qkv_varlen", "embedding_sum"])
def test_every_path_gives_the_same_result(monkeypatch, name):
    fused, fused_backward, inputs, run = case(name)
    fwd, bwd = Paths(monkeypatch, fused), Paths(monkeypatch, fused_backward)

    with torch.no_grad():
        direct = run(*inputs)
    assert fwd.take() == ["impl"]

    leaves = [t.clone().requires_grad_() for t in inputs]
    eager = run(*leaves)
    assert fwd.take() == ["function"]
    dy = torch.randn_like(eager)
    eager_grads = torch.autograd.grad(eager, leaves, dy)
    assert set(bwd.take()) == {"impl"}  # the backward runs without grad mode: direct calls

    monkeypatch.setattr(_custom, "route", lambda args: "op")  # as under torch.compile
    leaves = [t.clone().requires_grad_() for t in inputs]
    through_op = run(*leaves)
    op_grads = torch.autograd.grad(through_op, leaves, dy)
    assert fwd.take() == ["op"] and set(bwd.take()) == {"op"}

    assert torch.equal(direct, eager.detach()) and torch.equal(direct, through_op.detach())
    for a, b in zip(eager_grads, op_grads):
        assert torch.equal(a, b)
