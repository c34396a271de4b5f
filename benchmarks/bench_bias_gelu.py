"""fused_bias_gelu vs eager gelu(x + b) and torch.compile of it, at BERT-base (I=3072) and BERT-large
(I=4096). Minimum bytes: forward reads x, writes y (2 tensors); the backward reads dy and x and writes
dx (3 more)."""
import pytest
import torch
import torch.nn.functional as F

from benchmarks.harness import MODE, sizes, variant_fn
from bertfast import ops

TOKENS = sizes(full=[4096, 16384, 65536], reduced=[16384], dry=[64])
INTERMEDIATE = [3072, 4096] if MODE != "dry" else [256]

pytestmark = pytest.mark.triton_kernel


def eager(x, b):
    return F.gelu(x + b)


@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("inter", INTERMEDIATE)
@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("variant", ["eager", "torch.compile", "bertfast"])
def test_bias_gelu(benchmark, recorder, dev, tokens, inter, pass_, variant):
    dtype = torch.bfloat16
    x = torch.randn(tokens, inter, device=dev, dtype=dtype, requires_grad=pass_ != "fwd")
    b = torch.randn(inter, device=dev, dtype=dtype, requires_grad=pass_ != "fwd")
    fn = variant_fn(variant, eager, ops.fused_bias_gelu)
    n_tensors = 2
    if pass_ == "fwd":
        run = lambda: fn(x, b)  # noqa: E731
    else:
        dy = torch.randn_like(x)
        n_tensors += 3

        def run():
            torch.autograd.grad(fn(x, b), (x, b), dy)
    recorder.measure(benchmark, f"fused_bias_gelu {pass_}", f"T={tokens} I={inter} bf16", variant, run,
                     bytes_moved=n_tensors * tokens * inter * x.element_size())
