"""Attention at BERT-base (12 heads, head dim 64) and BERT-large (16 heads) shapes, bf16, no padding and
~50% padding (lengths uniform in [1, S]):
  eager            softmax(q kᵀ/√d + additive mask) v in three ops, as transformers' eager path
  sdpa             F.scaled_dot_product_attention with the additive mask (what transformers' sdpa runs)
  sdpa flash       SDPA forced to its flash backend; it takes no mask, so it computes the whole padded
                   batch (a speed reference: the same FLOPs as the padded problem)
  bertfast         fused_attention with the [B, S] key mask (computes the padded problem)
  bertfast varlen  fused_attention_varlen on the packed real tokens (work follows the real tokens)
TFLOP/s count the useful work 4·heads·D·Σ lenᵢ² forward (backward 2.5x that), so time spent on padding
shows up as a lower rate.
"""
import pytest
import torch
import torch.nn.functional as F

from benchmarks.harness import MODE
from bertfast import ops

pytestmark = pytest.mark.triton_kernel

if MODE == "dry":
    SHAPES = [(2, 2, 64, 32)]
elif MODE == "reduced":
    SHAPES = [(128, 12, 128, 64), (32, 12, 512, 64)]
else:
    SHAPES = [(128, 12, 128, 64), (32, 12, 512, 64), (32, 16, 512, 64), (16, 12, 1024, 64), (8, 16, 512, 128)]


def eager(q, k, v, additive):
    probs = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5 + additive, dim=-1)
    return probs @ v


@pytest.mark.parametrize("padding", ["none", "50%"])
@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{s[0]}H{s[1]}S{s[2]}D{s[3]}")
@pytest.mark.parametrize("variant", ["eager", "sdpa", "sdpa flash", "bertfast", "bertfast varlen"])
def test_attention(benchmark, recorder, dev, shape, pass_, padding, variant):
    batch, heads, seq, dim = shape
    gen = torch.Generator().manual_seed(0)
    lengths = torch.full((batch,), seq) if padding == "none" else torch.randint(1, seq + 1, (batch,), generator=gen)
    mask = (torch.arange(seq)[None] < lengths[:, None]).to(dev)
    grad = pass_ != "fwd"
    qkv = [torch.randn(batch, seq, heads, dim, device=dev, dtype=torch.bfloat16).transpose(1, 2).requires_grad_(grad)
           for _ in range(3)]
    additive = torch.zeros(batch, 1, 1, seq, device=dev, dtype=torch.bfloat16).masked_fill(~mask[:, None, None, :], -1e4)
    if variant == "eager":
        fn = lambda: eager(*qkv, additive)  # noqa: E731
    elif variant == "sdpa":
        fn = lambda: F.scaled_dot_product_attention(*qkv, attn_mask=additive)  # noqa: E731
    elif variant == "sdpa flash":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def fn():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(*qkv)
    elif variant == "bertfast":
        fn = lambda: ops.fused_attention(*qkv, mask)  # noqa: E731
    else:
        packed = [ops.unpad(t.detach().transpose(1, 2), mask) for t in qkv]
        cu, max_len = packed[0].cu_seqlens, packed[0].max_seqlen
        qkv = [p_.hidden.requires_grad_(grad) for p_ in packed]
        fn = lambda: ops.fused_attention_varlen(*qkv, cu, max_len, validate=False)  # noqa: E731
    run = fn
    if grad:
        def run():
            out = fn()
            torch.autograd.grad(out, qkv, torch.ones_like(out))
    flops = 4 * heads * dim * float((lengths.double() ** 2).sum()) * (3.5 if grad else 1.0)
    recorder.measure(benchmark, f"attention {pass_}", f"B={batch} H={heads} S={seq} D={dim} pad={padding} bf16",
                     variant, run, flops=flops)
