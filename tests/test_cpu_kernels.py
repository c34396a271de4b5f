"""The C++ CPU inference kernels (csrc/cpu_kernels.cpp, bertfast/ops/cpu.py): bias+GELU, residual+LayerNorm and
padding-free attention against fp64 references of the same inputs.

Tolerances. fp32: each kernel computes in fp32, so its error is fp32 rounding plus its approximations: erf
by Abramowitz-Stegun 7.1.26 (absolute error < 1.5e-7) and the fast exp (exp_u20, ~20 ulp, 2.4e-6
relative): 4e-6 absolute on GELU and attention outputs of size ~1 (a dropped term or a wrong constant is
off by far more), 2e-5 on LayerNorm outputs (normalised values up to ~4, times weights up to ~3).
bf16 / fp16: the fp32 result is rounded once, so it is within one unit in the last place of the fp64
reference plus the fp32 error bound; rounding twice, or computing in 16 bits, breaks that bound.
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from bertfast import ops
from bertfast.ops import cpu

pytestmark = pytest.mark.skipif(not cpu.applies(torch.zeros(1)), reason="bertfast._C built without the CPU kernels")

LOW = (torch.bfloat16, torch.float16)
DTYPES = (torch.float32, *LOW)


MANTISSA = {torch.bfloat16: (7, -133), torch.float16: (10, -24)}  # stored bits, log2 of the smallest subnormal


def spacing(want64: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The distance between neighbouring values of `dtype` around each value of want64 (one ulp)."""
    bits, smallest = MANTISSA[dtype]
    exponent = torch.floor(torch.log2(want64.abs().clamp(min=2.0 ** -149)))
    return torch.exp2(exponent - bits).clamp(min=2.0 ** smallest)


def check(got: torch.Tensor, want64: torch.Tensor, atol32: float) -> None:
    """fp32: within atol32 (the kernel's fp32 error bound). bf16 / fp16: the fp32 result rounded once, so
    within one ulp of the exact value plus that fp32 error (two roundings, or arithmetic in 16 bits, are
    off by more for values of any size)."""
    assert not got.isnan().any()
    err = (got.double() - want64).abs()
    if got.dtype == torch.float32:
        assert err.max().item() <= atol32 if got.numel() else True, f"fp32 error {err.max().item():.3g} > {atol32}"
    else:
        bound = spacing(want64, got.dtype) + atol32
        assert (err <= bound).all(), f"{int((err > bound).sum())} elements off by more than an ulp + {atol32}"


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# bias + GELU ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,n", [(1, 384), (37, 768), (3, 1024), (5, 1), (2, 7), (11, 33), (4, 1023)])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_bias_gelu(dtype, rows, n, approximate):
    g = gen(rows * n)
    x = (torch.randn(rows, n, generator=g) * 3).to(dtype)
    bias = torch.randn(n, generator=g).to(dtype)
    got = ops.fused_bias_gelu(x, bias, approximate)
    assert got.dtype == dtype and got.shape == x.shape
    check(got, F.gelu(x.double() + bias.double(), approximate=approximate), 4e-6)


def test_bias_gelu_over_the_whole_range():
    """Every bf16 value through erf and tanh GELU: within one bf16 spacing of the fp64 value plus 1e-7 |x|
    (erf's own absolute error, 1.5e-7, times x / 2), so the left tail, where 1 + erf(x) is tiny, keeps its
    relative accuracy (1 + erf is computed as erfc there, not by cancellation); subnormals; inf and NaN
    as torch's own GELU gives them (NaN for erf GELU at +-inf, inf times 0)."""
    x = torch.arange(-(2 ** 15), 2 ** 15, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).reshape(256, 256)
    finite = x.isfinite()
    for approximate in ("none", "tanh"):
        got = ops.fused_bias_gelu(x, torch.zeros(256), approximate)
        want = F.gelu(x.double(), approximate=approximate)
        err = (got.double() - want).abs()
        bound = spacing(want, torch.bfloat16) + 1e-7 * x.double().abs()
        assert (err[finite] <= bound[finite]).all(), approximate
        torch.testing.assert_close(got[~finite].float(), F.gelu(x[~finite].float(), approximate=approximate),
                                   equal_nan=True, rtol=0, atol=0)


def test_bias_gelu_fp32_bias_with_bf16_x():
    """autocast's case: a bf16 activation and the layer's fp32 bias, added in fp32 (not rounded first)."""
    g = gen(3)
    x, bias = torch.randn(9, 384, generator=g).bfloat16(), torch.randn(384, generator=g)
    got = ops.fused_bias_gelu(x, bias)
    assert got.dtype == torch.bfloat16
    check(got, F.gelu(x.double() + bias.double()), 4e-6)


# residual + LayerNorm -------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,n", [(1, 384), (37, 768), (3, 1024), (2, 1), (5, 7), (3, 1023), (2, 8192)])
@pytest.mark.parametrize("residual", ["none", "same", "fp32"])
def test_residual_layer_norm(dtype, rows, n, residual):
    g = gen(rows + n)
    x = (torch.randn(rows, n, generator=g) * 2 + 0.5).to(dtype)
    res = None if residual == "none" else torch.randn(rows, n, generator=g).to(dtype if residual == "same" else torch.float32)
    w, b = torch.rand(n, generator=g) * 3, torch.randn(n, generator=g)
    got = ops.fused_residual_layer_norm(x, res, w.to(dtype), b.to(dtype), 1e-5)
    h = x.double() + (res.double() if res is not None else 0)
    want = F.layer_norm(h, (n,), w.to(dtype).double(), b.to(dtype).double(), 1e-5)
    assert got.dtype == (dtype if residual != "fp32" else torch.float32)
    check(got, want, 2e-5)


def test_layer_norm_without_parameters_and_constant_rows():
    """weight / bias None (1 and 0), a constant row (variance 0: bias, not NaN), and a large offset (the
    two-pass variance: one pass of sum and sum of squares in fp32 would lose it)."""
    x = torch.full((3, 768), 7.0)
    x[1] = torch.randn(768, generator=gen(1)) + 1000.0
    x[2, ::2] = -1.0
    got = ops.fused_residual_layer_norm(x, None, None, None, 1e-12)
    assert (got[0] == 0).all()
    want = F.layer_norm(x.double(), (768,), eps=1e-12)
    check(got[[0, 2]], want[[0, 2]], 2e-5)
    # values near 1000 are 6e-5 apart in fp32, so their mean is only that exact: the row's outputs are off
    # by ~3e-5 (torch's fp32 LayerNorm too); a one-pass variance would be off by orders more
    check(got[1], want[1], 1e-4)
    bias = torch.randn(768, generator=gen(2))
    assert torch.equal(ops.fused_residual_layer_norm(x[:1], None, torch.ones(768), bias, 1e-12)[0], bias)


# embedding sum + LayerNorm ---------------------------------------------------------------------------------
def embedding_tables(hidden, dtype, seed=0, vocab=50):
    g = gen(seed)
    tables = [(torch.randn(rows, hidden, generator=g) * scale).to(dtype) for rows, scale in ((vocab, 1.0), (2, 0.3), (40, 0.5))]
    return tables, (torch.rand(hidden, generator=g) * 3).to(dtype), torch.randn(hidden, generator=g).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [384, 768, 1024, 13, 1])
def test_embedding_layer_norm(dtype, hidden):
    """LayerNorm(word[ids] + type[segment] + position[position]) in one pass, the sum in fp32 (not rounded
    to the tables' dtype before the statistics): against fp64, with HF's default ids (one segment for
    all, positions 0..S-1: read with their own periods) and with per-token segments and positions."""
    from bertfast.ops.embedding_layer_norm import embedding_layer_norm

    (word, type_, pos), w, b = embedding_tables(hidden, dtype, seed=hidden)
    ids = torch.randint(0, 50, (3, 11), generator=gen(1))
    for tt, positions in ((None, None), (torch.randint(0, 2, (3, 11), generator=gen(2)),
                                         torch.randint(0, 40, (3, 11), generator=gen(3)))):
        got = embedding_layer_norm(ids, tt, positions, word, type_, pos, w, b, 1e-12)
        assert got.dtype == dtype and got.shape == (3, 11, hidden)
        tt_ = torch.zeros_like(ids) if tt is None else tt
        pos_ = torch.arange(11).expand(3, 11) if positions is None else positions
        h = word.double()[ids] + type_.double()[tt_] + pos.double()[pos_]
        check(got, F.layer_norm(h, (hidden,), w.double(), b.double(), 1e-12), 2e-5)


def test_embedding_layer_norm_refuses_bad_ids_and_runs_only_where_it_applies():
    """Ids outside a table: IndexError naming the tensor (the public op) or RuntimeError (a direct
    torch.ops call, the last line: nothing reads out of bounds). With a gradient needed, the two unfused ops
    (their autograd); an empty batch gives an empty result."""
    from bertfast.ops.embedding_layer_norm import embedding_layer_norm

    (word, type_, pos), w, b = embedding_tables(16, torch.float32)
    ids = torch.randint(0, 50, (2, 5), generator=gen(4))
    with pytest.raises(IndexError, match="input_ids"):
        embedding_layer_norm(ids + 50, None, None, word, type_, pos, w, b)
    with pytest.raises(IndexError, match="position_ids"):
        embedding_layer_norm(ids, None, torch.full((1, 5), 40), word, type_, pos, w, b)
    one, zero = torch.zeros(1, dtype=torch.long), torch.arange(5)
    with pytest.raises(RuntimeError, match=r"token_type_ids must be in \[0, 2\), got 2"):
        torch.ops.bertfast_C.embedding_layer_norm_cpu(ids.reshape(-1), one + 2, zero, word, type_, pos, w, b, 1e-12)
    bad = ids.reshape(-1).clone()
    bad[3] = -1
    with pytest.raises(RuntimeError, match=r"input_ids must be in \[0, 50\), got -1 at 3"):
        torch.ops.bertfast_C.embedding_layer_norm_cpu(bad, one, zero, word, type_, pos, w, b, 1e-12)
    with pytest.raises(RuntimeError, match="do not repeat evenly over 10 tokens"):
        torch.ops.bertfast_C.embedding_layer_norm_cpu(ids.reshape(-1), one, torch.arange(3), word, type_, pos, w, b, 1e-12)
    with pytest.raises(RuntimeError, match="the tables must share dtype"):
        torch.ops.bertfast_C.embedding_layer_norm_cpu(ids.reshape(-1), one, zero, word, type_.bfloat16(), pos, w, b, 1e-12)
    direct = torch.ops.bertfast_C.embedding_layer_norm_cpu(ids.reshape(-1), one, zero, word, type_, pos, w, b, 1e-12)
    assert torch.equal(embedding_layer_norm(ids, None, None, word, type_, pos, w, b).reshape(10, 16), direct)
    word.requires_grad_()
    y = embedding_layer_norm(ids, None, None, word, type_, pos, w, b)
    y.square().sum().backward()
    assert word.grad is not None and word.grad.abs().sum() > 0
    assert embedding_layer_norm(ids[:0], None, None, word.detach(), type_, pos, w, b).shape == (0, 5, 16)


# fp32 linear layers through oneDNN, the weight packed once -------------------------------------------------
def test_packed_linear():
    """Within fp32 rounding of fp64 (4e-5 on outputs of size ~3 over 384 products: oneDNN's summation order),
    GELU post-ops as torch's GELU; repacked when the weight changes (an in-place update, as an optimizer
    step, or a new tensor); with a gradient needed, hooks, or another dtype, the module runs as itself.
    The packed weight is kept beside the module, not in it: the module can still be copied and saved."""
    lin = torch.nn.Linear(384, 1536)
    x = torch.randn(37, 384, generator=gen(5))
    with torch.no_grad():
        want = F.linear(x.double(), lin.weight.double(), lin.bias.double())
        assert cpu.packed_linear_applies(lin, x)
        for activation, approximate in (("none", None), ("gelu", "none"), ("gelu_tanh", "tanh")):
            got = cpu.linear(lin, x, activation)
            ref = want if approximate is None else F.gelu(want, approximate=approximate)
            assert got.dtype == torch.float32 and (got.double() - ref).abs().max() < 4e-5, activation
        first = cpu.packed_weight(lin)
        lin.weight.mul_(-1)  # in place: the version counter moves
        assert (cpu.linear(lin, x).double() + want - 2 * lin.bias.double()).abs().max() < 4e-5
        assert cpu.packed_weight(lin) is not first
        lin.weight = torch.nn.Parameter(torch.zeros(1536, 384))
        assert torch.equal(cpu.linear(lin, x), lin.bias.expand(37, 1536))
        assert cpu.linear(lin, x[None]).shape == (1, 37, 1536)
    assert not cpu.packed_linear_applies(lin, x)  # the weight needs a gradient
    y = cpu.linear(lin, x)
    assert y.grad_fn is not None
    seen = []
    lin.register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        assert not cpu.packed_linear_applies(lin, x) and cpu.linear(lin, x) is seen[-1]
        assert not cpu.packed_linear_applies(torch.nn.Linear(8, 8).bfloat16(), x[:, :8].bfloat16())
    cpu.drop_packed(lin)
    assert cpu.packed_weight(lin) is None


def test_packed_linear_new_weight_at_the_old_address():
    """A new weight tensor where the packed one lived, same version, other values (the allocator reuses a
    freed block often: 2 in 30 tries gave stale outputs when only the address and version were compared):
    repacked, not served stale. Built here with two tensors over one numpy buffer, rewritten in between."""
    lin = torch.nn.Linear(384, 1536)
    x = torch.randn(37, 384, generator=gen(6))
    buffer = torch.randn(1536, 384, generator=gen(7)).numpy()
    with torch.no_grad():
        lin.weight = torch.nn.Parameter(torch.from_numpy(buffer))
        first = cpu.linear(lin, x)
        buffer *= -1  # (numpy: no version counter moves)
        lin.weight = torch.nn.Parameter(torch.from_numpy(buffer))
        assert lin.weight._version == 0
        torch.testing.assert_close(cpu.linear(lin, x), F.linear(x, lin.weight, lin.bias), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(cpu.linear(lin, x), first)


def test_packed_linear_module_copies_and_saves(tmp_path):
    """After fp32 CPU inference packed its weight, the module deep-copies and saves whole (torch.save), and
    the copy computes the same."""
    import copy

    lin = torch.nn.Linear(384, 1536)
    x = torch.randn(37, 384, generator=gen(8))
    with torch.no_grad():
        y = cpu.linear(lin, x)
        assert cpu.packed_weight(lin) is not None
        twin = copy.deepcopy(lin)
        torch.save(lin, tmp_path / "lin.pt")
        loaded = torch.load(tmp_path / "lin.pt", weights_only=False)
        for other in (twin, loaded):
            assert cpu.packed_weight(other) is None
            torch.testing.assert_close(cpu.linear(other, x), y, rtol=0, atol=0)


# padding-free attention -----------------------------------------------------------------------------------
def packed_qkv(lengths, heads, dim, dtype, seed=0):
    """q, k, v as the three views of a fused QKV projection's output [total, 3, heads, dim] (the strides
    the model hands over), and cu_seqlens."""
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    qkv = torch.randn(int(cu[-1]), 3, heads, dim, generator=gen(seed)).to(dtype)
    q, k, v = qkv.unbind(1)
    return q, k, v, cu


def attention64(q, k, v, cu, scale):
    out = torch.zeros(q.shape, dtype=torch.float64)
    for a, b in zip(cu.tolist(), cu.tolist()[1:]):
        if b > a:
            qq, kk, vv = (t[a:b].double().transpose(0, 1) for t in (q, k, v))
            out[a:b] = (torch.softmax(qq @ kk.transpose(-1, -2) * scale, -1) @ vv).transpose(0, 1)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [32, 64, 24, 128])
def test_varlen_attention(dtype, dim):
    """Sequences of 1, 0 (empty), 5, 17 (not a multiple of the vector width or the query block), 33 and 70
    tokens, read in place from the QKV projection's strided views."""
    lengths = [1, 0, 5, 17, 33, 70]
    q, k, v, cu = packed_qkv(lengths, 3, dim, dtype, seed=dim)
    assert not q.is_contiguous()
    got = ops.fused_attention_varlen(q, k, v, cu, max(lengths))
    assert got.dtype == dtype and got.shape == q.shape
    check(got, attention64(q, k, v, cu, dim ** -0.5), 4e-6)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_varlen_attention_head_groups_and_strides(threads):
    """A task takes a group of heads (as many as fit its buffers, fewer while the threads have under four
    tasks each): with 5 heads the groups are 3 + 2 on one thread, single heads on more; a 300-token
    sequence at dim 64 forces one head a task by the buffer budget. Heads that are not contiguous (a
    head stride of dim + 8, read a head at a time) and rows of a transposed layout give the same answer."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for lengths, heads, dim in (([7, 20], 5, 32), ([300], 3, 64), ([1, 13, 2], 5, 16)):
            cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
            wide = torch.randn(int(cu[-1]), 3, heads, dim + 8, generator=gen(dim + heads))
            q, k, v = (t[..., :dim] for t in wide.unbind(1))  # head stride dim + 8
            want = attention64(q, k, v, cu, dim ** -0.5)
            check(ops.fused_attention_varlen(q, k, v, cu, max(lengths)), want, 4e-6)
            # rows of stride dim (heads apart by a whole sequence's rows): the per-head read again
            q2, k2, v2 = (t.transpose(0, 1).contiguous().transpose(0, 1) for t in (q, k, v))
            check(ops.fused_attention_varlen(q2, k2, v2, cu, max(lengths)), want, 4e-6)
    finally:
        torch.set_num_threads(old)


def test_varlen_attention_peaked_scores():
    """Large scores (a softmax close to one-hot, exp's far range) and a custom scale."""
    q, k, v, cu = packed_qkv([9, 40], 2, 32, torch.float32, seed=4)
    q = q * 6
    got = ops.fused_attention_varlen(q, k, v, cu, 40, softmax_scale=0.5)
    # the fast exp's relative error (~2.4e-6) on each weight, summed over weights of up to 1: 1e-5
    check(got, attention64(q, k, v, cu, 0.5), 1e-5)


def test_the_kernels_run_where_they_apply_and_not_elsewhere(monkeypatch):
    """Without gradients the ops are the C++ kernels (bit-identical to a direct torch.ops call); with a
    gradient, dropout, fp64 or BERTFAST_BACKEND=torch, the reference (whose autograd is torch's)."""
    x = torch.randn(5, 384, generator=gen(0))
    w, b = torch.ones(384), torch.zeros(384)
    direct = torch.ops.bertfast_C.residual_layer_norm_cpu(x, None, w, b, 1e-12)
    assert torch.equal(ops.fused_residual_layer_norm(x, None, w, b), direct)
    with torch.no_grad():
        assert torch.equal(ops.fused_residual_layer_norm(x, None, w.requires_grad_(), b), direct)
    y = ops.fused_residual_layer_norm(x, None, w, b)
    assert y.requires_grad and y.grad_fn is not None
    y.sum().backward()
    assert w.grad is not None
    assert not cpu.applies(x.double()) and not cpu.applies(x, w)
    monkeypatch.setenv("BERTFAST_BACKEND", "torch")
    assert not cpu.applies(x)


def test_dropout_without_gradients_is_not_skipped():
    """Dropout in training mode under torch.no_grad (the kernels have none): the reference runs, and drops."""
    x = torch.randn(64, 384, generator=gen(9))
    with torch.no_grad():
        torch.manual_seed(0)
        y = ops.fused_residual_layer_norm(x, x, None, None, 1e-12, dropout_p=0.5, training=True)
        assert not torch.allclose(y, ops.fused_residual_layer_norm(x, x, None, None, 1e-12))
        q, k, v, cu = packed_qkv([30, 34], 2, 32, torch.float32)
        a = ops.fused_attention_varlen(q, k, v, cu, 34, dropout_p=0.5, training=True)
        assert not torch.allclose(a, ops.fused_attention_varlen(q, k, v, cu, 34))


def test_bertfast_bf16_model_runs_the_kernels(minilm_dir):
    """optimize(dtype=bf16) MiniLM on a left-padded batch with a one-token row: the attention, the LayerNorms
    and the embeddings' sum+LayerNorm are the C++ kernels (the profile names them), and the token
    embeddings match stock fp32."""
    import bertfast
    from transformers import BertModel

    stock = BertModel.from_pretrained(minilm_dir, add_pooling_layer=False).eval()
    fast = bertfast.optimize(BertModel.from_pretrained(minilm_dir, add_pooling_layer=False).eval(),
                             dtype=torch.bfloat16)
    ids = torch.randint(1000, 20000, (3, 12), generator=gen(7))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[0, :4] = 0  # left padding
    mask[1, 1:] = 0  # one token
    with torch.inference_mode(), torch.profiler.profile() as prof:
        got = fast(input_ids=ids, attention_mask=mask).last_hidden_state
    names = {e.key for e in prof.key_averages()}
    assert {"bertfast_C::varlen_attention_cpu", "bertfast_C::residual_layer_norm_cpu",
            "bertfast_C::embedding_layer_norm_cpu"} <= names
    with torch.inference_mode():
        want = stock(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    cos = F.cosine_similarity(got[real].float(), want[real], dim=-1)
    assert cos.min() > 0.995, cos.min()


def test_fp32_model_runs_packed_linears(minilm_dir):
    """optimize(model) in fp32 CPU inference: every encoder matmul is oneDNN's with a packed weight (no
    addmm left), the intermediate's GELU its post-op; left padding, a hole and a one-token row match stock
    transformers to fp32 rounding; restore() drops the packed weights."""
    import bertfast
    from transformers import BertModel

    stock = BertModel.from_pretrained(minilm_dir, add_pooling_layer=False).eval()
    fast = bertfast.optimize(BertModel.from_pretrained(minilm_dir, add_pooling_layer=False).eval())
    ids = torch.randint(1000, 20000, (3, 12), generator=gen(8))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[0, :4] = 0  # left padding
    mask[1, 5:7] = 0  # a hole
    mask[2, 1:] = 0  # one token
    with torch.inference_mode(), torch.profiler.profile() as prof:
        got = fast(input_ids=ids, attention_mask=mask).last_hidden_state
    calls = {e.key: e.count for e in prof.key_averages()}
    assert calls.get("mkldnn::_linear_pointwise") == 6 * 6 and "aten::addmm" not in calls and "aten::gelu" not in calls
    with torch.inference_mode():
        want = stock(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    assert (got[real] - want[real]).abs().max() < 1e-4
    bertfast.restore(fast)
    assert not any("_bertfast_packed" in m.__dict__ for m in fast.modules())


def test_under_torch_compile():
    """The ops are opaque nodes of a compiled graph (their fakes give the shapes), with the same values."""
    x, r = torch.randn(6, 384, generator=gen(1)).bfloat16(), torch.randn(6, 384, generator=gen(2))
    w, b = torch.rand(384, generator=gen(3)), torch.randn(384, generator=gen(4))
    q, k, v, cu = packed_qkv([3, 7], 2, 32, torch.bfloat16)

    def f(x, r, q, k, v):
        h = ops.fused_residual_layer_norm(ops.fused_bias_gelu(x, b), r, w, b)
        return h, ops.fused_attention_varlen(q, k, v, cu, 7, validate=False)

    with torch.no_grad():
        want = f(x, r, q, k, v)
        got = torch.compile(f, backend="aot_eager", fullgraph=True)(x, r, q, k, v)
    for a, e in zip(got, want):
        assert torch.equal(a, e)


def test_bad_input_is_refused_by_the_ops():
    """A direct torch.ops call is checked too: nothing reaches a kernel that would read out of bounds."""
    q, k, v, cu = packed_qkv([3, 4], 2, 32, torch.float32)
    with pytest.raises(RuntimeError, match="cu_seqlens must run from 0 to the 7"):
        torch.ops.bertfast_C.varlen_attention_cpu(q, k, v, torch.tensor([0, 3, 9]), 1.0)
    with pytest.raises(RuntimeError, match="must not decrease"):
        torch.ops.bertfast_C.varlen_attention_cpu(q, k, v, torch.tensor([0, 5, 3, 7]), 1.0)
    with pytest.raises(RuntimeError, match="k must be float32, bfloat16 or float16 like q"):
        torch.ops.bertfast_C.varlen_attention_cpu(q, k.double(), v, cu, 1.0)
    with pytest.raises(RuntimeError, match=r"v must be \[total, heads, dim\] like q"):
        torch.ops.bertfast_C.varlen_attention_cpu(q, k, v[:5], cu, 1.0)
    x = torch.randn(4, 8)
    with pytest.raises(RuntimeError, match=r"bias must have shape \[8\]"):
        torch.ops.bertfast_C.bias_gelu_cpu(x, torch.zeros(7), "none")
    with pytest.raises(RuntimeError, match="approximate must be 'none' or 'tanh'"):
        torch.ops.bertfast_C.bias_gelu_cpu(x, torch.zeros(8), "fast")
    with pytest.raises(RuntimeError, match="x must be float32, bfloat16 or float16, got Long"):
        torch.ops.bertfast_C.bias_gelu_cpu(x.long(), torch.zeros(8), "none")
    with pytest.raises(RuntimeError, match="must be a contiguous 2-D"):
        torch.ops.bertfast_C.residual_layer_norm_cpu(x.t(), None, None, None, 1e-5)
    with pytest.raises(RuntimeError, match="residual has shape"):
        torch.ops.bertfast_C.residual_layer_norm_cpu(x, torch.randn(4, 9), None, None, 1e-5)
    with pytest.raises(RuntimeError, match="eps must be > 0"):
        torch.ops.bertfast_C.residual_layer_norm_cpu(x, None, None, None, 0.0)
    # and through the public ops, the usual ValueErrors first
    with pytest.raises(ValueError, match="cu_seqlens must start at 0"):
        ops.fused_attention_varlen(q, k, v, torch.tensor([0, 3, 9], dtype=torch.int32), 6)
    with pytest.raises(ValueError, match="bias has shape"):
        ops.fused_bias_gelu(x, torch.zeros(7))


@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_every_compiled_copy(capability):
    """Each CPU capability's copy (ATEN_CPU_CAPABILITY caps the one that runs) gives the results of the copy
    this machine runs by default, within the fp32 tolerances (its vector width, and so its summation order,
    differs)."""
    from bertfast.info import cpu_flags

    if capability == "avx2" and "avx2" not in cpu_flags():
        pytest.skip("this CPU has no AVX2")
    code = textwrap.dedent("""
        import torch, bertfast._C as C
        from bertfast import ops
        g = torch.Generator().manual_seed(0)
        x = torch.randn(7, 1023, generator=g) * 3
        qkv = torch.randn(40, 3, 2, 24, generator=g)
        cu = torch.tensor([0, 1, 17, 17, 40], dtype=torch.int32)
        out = [ops.fused_bias_gelu(x, x[0]), ops.fused_bias_gelu(x, x[0], "tanh"),
               ops.fused_residual_layer_norm(x, x.flip(0), x[1], x[2]),
               ops.fused_attention_varlen(*qkv.unbind(1), cu, 23),
               ops.embedding_layer_norm(torch.tensor([[3, 1, 4, 1, 5]]), None, None, x, x[:2], x, x[3], x[4])]
        torch.save((C.cpu_kernels_capability(), out), OUT)
    """)
    results = {}
    for cap in (capability, None):
        path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"bertfast-cap-{os.getpid()}-{cap}.pt")
        env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
        if cap:
            env["ATEN_CPU_CAPABILITY"] = cap
        subprocess.run([sys.executable, "-c", code.replace("OUT", repr(path))], env=env, check=True)
        results[cap] = torch.load(path)
        os.remove(path)
    name, got = results[capability]
    assert name == capability.upper()
    for a, e, tol in zip(got, results[None][1], (4e-6, 4e-6, 2e-5, 4e-6, 2e-5)):
        assert (a - e).abs().max() <= 2 * tol
