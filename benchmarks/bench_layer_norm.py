"""fused_residual_layer_norm vs eager LayerNorm(x + residual) and torch.compile of it (no dropout, so
the eager baseline is exactly the same function). Minimum bytes: forward reads x and the residual and
writes y (3 tensors); the backward reads dy and the saved input and writes the gradient (3 more)."""
import pytest
import torch
import torch.nn.functional as F

from benchmarks.harness import MODE, sizes, variant_fn
from bertfast import ops

TOKENS = sizes(full=[4096, 16384, 65536], reduced=[16384], dry=[64])
HIDDEN = [768, 1024] if MODE != "dry" else [128]

pytestmark = pytest.mark.triton_kernel


def eager(x, r, w, b):
    return F.layer_norm(x + r, (x.shape[-1],), w, b, 1e-12)


def fused(x, r, w, b):
    return ops.fused_residual_layer_norm(x, r, w, b, 1e-12)


@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("variant", ["eager", "torch.compile", "bertfast"])
def test_residual_layer_norm(benchmark, recorder, dev, tokens, hidden, pass_, variant):
    dtype = torch.bfloat16
    grad = pass_ != "fwd"
    x = torch.randn(tokens, hidden, device=dev, dtype=dtype, requires_grad=grad)
    r = torch.randn(tokens, hidden, device=dev, dtype=dtype, requires_grad=grad)
    w = torch.randn(hidden, device=dev, dtype=dtype, requires_grad=grad)
    b = torch.randn(hidden, device=dev, dtype=dtype, requires_grad=grad)
    fn = variant_fn(variant, eager, fused)
    n_tensors = 3
    if pass_ == "fwd":
        run = lambda: fn(x, r, w, b)  # noqa: E731
    else:
        dy = torch.randn_like(x)
        n_tensors += 3

        def run():
            torch.autograd.grad(fn(x, r, w, b), (x, r, w, b), dy)
    recorder.measure(benchmark, f"fused_residual_layer_norm {pass_}", f"T={tokens} H={hidden} bf16", variant, run,
                     bytes_moved=n_tensors * tokens * hidden * x.element_size())


def eager_projection_bias(x, r, w, b, xb):
    return F.layer_norm(x + xb + r, (x.shape[-1],), w, b, 1e-12)


def fused_projection_bias(x, r, w, b, xb):
    return ops.fused_residual_layer_norm(x, r, w, b, 1e-12, x_bias=xb)


@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("variant", ["eager", "torch.compile", "bertfast"])
def test_residual_layer_norm_with_projection_bias(benchmark, recorder, dev, tokens, hidden, variant):
    """As BERT's layers run it: the projection's bias (x_bias) added before the LayerNorm, its gradient summed
    over tokens (eager: a separate add and, in the backward, a reduction over dx; bertfast: both inside the
    LayerNorm's kernels). Forward and backward; bytes as test_residual_layer_norm's fwd+bwd (the bias is
    [H])."""
    dtype = torch.bfloat16
    x, r = (torch.randn(tokens, hidden, device=dev, dtype=dtype, requires_grad=True) for _ in range(2))
    w, b, xb = (torch.randn(hidden, device=dev, dtype=dtype, requires_grad=True) for _ in range(3))
    fn = variant_fn(variant, eager_projection_bias, fused_projection_bias)
    dy = torch.randn_like(x)

    def run():
        torch.autograd.grad(fn(x, r, w, b, xb), (x, r, w, b, xb), dy)
    recorder.measure(benchmark, "fused_residual_layer_norm + projection bias fwd+bwd", f"T={tokens} H={hidden} bf16",
                     variant, run, bytes_moved=6 * tokens * hidden * x.element_size())
