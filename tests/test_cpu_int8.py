"""int8 CPU inference (bertfast.optimize(model, quantize="int8"), bertfast/nn/int8.py): the quantisation and
dequantisation kernels against torch references, Int8Linear against nn.Linear, and the model against stock
fp32 on real text shapes (left padding, a hole, a one-token row).

Tolerances. quantize_rows multiplies by 1/scale where the reference divides: a value within an ulp of a
rounding boundary may round the other way, so codes differ by at most 1, and rarely (< 0.5% of them).
dequantize computes in fp32 like its reference, to fp32 rounding (1e-6 relative; GELU's erf to 1.5e-7
absolute); a 16-bit output within one ulp plus that. The model: mean cosine >= 0.995 against fp32 (the
issue's bar); per-token int8 measures ~0.999 here.
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bertfast.ops import cpu

pytestmark = pytest.mark.skipif(not cpu.applies(torch.zeros(1)) or not hasattr(torch, "_int_mm"),
                                reason="bertfast._C without the CPU kernels, or torch without _int_mm")


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,n", [(1, 384), (37, 768), (5, 1), (3, 7), (4, 1023)])
def test_quantize_rows(dtype, rows, n):
    x = (torch.randn(rows, n, generator=gen(n)) * torch.rand(rows, 1, generator=gen(1)) * 10).to(dtype)
    x[0, 0] = -x.abs().max() * 2  # the largest magnitude negative: code -127
    q, scale = torch.ops.bertfast_C.quantize_rows_cpu(x)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and q.shape == x.shape
    xf = x.float()
    want_scale = xf.abs().amax(1) / 127
    torch.testing.assert_close(scale, want_scale, rtol=1e-7, atol=0)
    want = torch.round(xf / want_scale[:, None]).clamp(-127, 127)
    diff = (q.float() - want).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 5e-3
    assert q[0, 0] == -127 and q.abs().max() == 127


def test_quantize_zero_rows():
    q, scale = torch.ops.bertfast_C.quantize_rows_cpu(torch.zeros(2, 5))
    assert (q == 0).all() and (scale == 1).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("activation", ["none", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("rows,n", [(3, 1536), (7, 33), (1, 1)])
def test_dequantize(dtype, activation, rows, n):
    g = gen(rows + n)
    acc = torch.randint(-2 ** 20, 2 ** 20, (rows, n), generator=g, dtype=torch.int32)
    rs, cs, b = torch.rand(rows, generator=g) * 1e-3, torch.rand(n, generator=g) * 1e-3, torch.randn(n, generator=g)
    got = torch.ops.bertfast_C.dequantize_cpu(acc, rs, cs, b, activation, dtype)
    v = acc.double() * rs.double()[:, None] * cs.double() + b.double()
    want = v if activation == "none" else F.gelu(v, approximate="tanh" if activation == "gelu_tanh" else "none")
    assert got.dtype == dtype
    err = (got.double() - want).abs()
    tol = 1e-6 * want.abs() + 4e-6
    if dtype != torch.float32:
        tol = tol + want.abs() * 2 ** -7
    assert (err <= tol).all()


def test_int8_linear_against_linear():
    """Per-channel weights and per-token activations: each output row within ~1% of fp32 (cosine per token),
    and a token's result does not depend on its batch (a per-tensor scale would let one loud token
    coarsen the others)."""
    from bertfast.nn.int8 import Int8Linear, dequantize_linear, quantize_linear

    lin = nn.Linear(384, 1536).eval()
    x = torch.randn(20, 384, generator=gen(2))
    x[3] *= 100  # a loud token
    with torch.no_grad():
        want = lin(x)
        q = quantize_linear(lin)
        assert isinstance(q, Int8Linear) and q is lin
        got = lin(x)
        alone = lin(x[5:6].clone())
    cos = F.cosine_similarity(got, want, dim=-1)
    assert cos.min() > 0.999, cos.min()
    assert torch.equal(alone[0], got[5])
    assert set(lin.state_dict()) == {"weight", "bias"}
    dequantize_linear(lin)
    assert type(lin) is nn.Linear and torch.equal(lin(x), want)


def test_int8_linear_refuses_gradients_and_other_devices():
    from bertfast.nn.int8 import quantize_linear

    lin = quantize_linear(nn.Linear(8, 4))
    with pytest.raises(RuntimeError, match="CPU inference only"):
        lin(torch.randn(2, 8, requires_grad=True))
    with pytest.raises(RuntimeError, match="CPU inference only"):
        lin(torch.randn(2, 8, device="meta"))
    with pytest.raises(ValueError, match="activation must be one of"):
        lin(torch.randn(2, 8), activation="relu")
    with pytest.raises(TypeError, match="plain nn.Linear"):
        quantize_linear(lin)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_minilm_in_int8(minilm_dir, dtype, monkeypatch):
    """optimize(quantize="int8") on the bundled MiniLM against stock fp32, sentence embeddings (mean pooling,
    as sentence-transformers): on 96 of the benchmark's real texts, mean cosine >= 0.995 (the issue's bar;
    ~0.998 measured); on random ids in a batch with left padding, a hole and a one-token row, each row's
    cosine > 0.98 (random ids are harder than text). The QKV projections share one quantised input; the
    state_dict is unchanged; restore() gives fp32 back. With dtype=torch.bfloat16 (bf16 between the int8
    matmuls; forced here on a CPU without native bf16, where it is only slower) the weights are quantised
    from their fp32 values before the cast, and their scales stay fp32."""
    import bertfast
    import bertfast.integrations.transformers as integration
    from transformers import BertModel

    from benchmarks.bench_cpu_runtimes import batches, load_model, pool, texts

    monkeypatch.setattr(integration, "cpu_supports_bf16", lambda: True)
    tokenizer, stock = load_model("MiniLM")
    model = BertModel.from_pretrained(minilm_dir, add_pooling_layer=False).eval()
    keys = set(model.state_dict())
    w32 = model.encoder.layer[0].intermediate.dense.weight.detach().clone()
    bertfast.optimize(model, dtype=dtype, quantize="int8")
    dense = model.encoder.layer[0].intermediate.dense
    assert dense.weight.dtype == dtype and dense._weight_scale.dtype == torch.float32
    scale = w32.abs().amax(1) / 127
    torch.testing.assert_close(dense._weight_scale, scale, rtol=0, atol=0)
    assert torch.equal(dense.weight_int8, torch.round(w32 / scale[:, None]).clamp(-127, 127).to(torch.int8).t())
    sa = model.encoder.layer[0].attention.self
    assert sa.query._shared is sa.key._shared is sa.value._shared
    assert set(model.state_dict()) == keys and not any(p.requires_grad for p in model.parameters())

    def embed(m, batch):
        with torch.inference_mode():
            return pool(m(**batch).last_hidden_state, batch["attention_mask"])

    with torch.inference_mode(), torch.profiler.profile() as prof:
        model(input_ids=torch.tensor([[101, 2023, 102]]))
    calls = {e.key: e.count for e in prof.key_averages()}
    assert calls["bertfast_C::quantize_rows_cpu"] == 4 * 6  # a layer: Q/K/V's shared input, then 3 more

    work, _ = batches(tokenizer, texts(96))
    for batch in work:
        batch = {k: torch.from_numpy(v) for k, v in batch.items()}
        cos = (embed(model, batch) * embed(stock, batch)).sum(-1)
        assert cos.mean() >= 0.995, cos

    ids = torch.randint(1000, 20000, (4, 16), generator=gen(3))
    mask = torch.ones(4, 16, dtype=torch.long)
    mask[0, :5] = 0   # left padding
    mask[1, 6:9] = 0  # a hole
    mask[2, 1:] = 0   # one token
    batch = {"input_ids": ids, "attention_mask": mask}
    want = embed(stock, batch)
    cos = (embed(model, batch) * want).sum(-1)
    assert cos.min() > 0.98, cos
    bertfast.restore(model)
    assert all(type(m) is not bertfast.nn.int8.Int8Linear for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    if dtype == torch.float32:  # (restore keeps the dtype optimize cast to)
        torch.testing.assert_close(embed(model, batch), want, atol=1e-5, rtol=1e-5)


def test_optimize_quantize_refuses_what_it_cannot_do():
    import bertfast
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                 vocab_size=100))
    with pytest.raises(ValueError, match="quantize must be one of"):
        bertfast.optimize(model, quantize="int4")
    with pytest.raises(ValueError, match="is CPU inference"):
        bertfast.optimize(model.to("meta"), quantize="int8")
