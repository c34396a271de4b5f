"""A linear layer whose input is also a residual branch: linear_keeping_input(x, weight, bias) returns
x Wᵀ + b and x again (a view of it), which the caller hands to the residual LayerNorm in x's place.

Why: in a BERT layer the layer input feeds both the q/k/v projection and the attention-output
LayerNorm's residual, and the attention output feeds both the intermediate projection and the output
LayerNorm's residual. Left to autograd, each such input's gradient is the input-gradient matmul's output
plus the LayerNorm's residual gradient: a separate add kernel, twice a layer (in BERT-base's bf16 training
step at 16k tokens, 25 µs each, reading two 25 MB gradients and writing a third). Through this op the two
meet in one backward, which adds the residual gradient inside the matmul: addmm_ with the residual
gradient as C (cuBLAS's beta = 1), no separate pass (in place: an out-of-place addmm first copies C into
its output, a pass of its own).

Where it applies: gradients being recorded for x; x, weight and bias of one dtype; no autocast (under
autocast the residual gradient is fp32 while the matmul runs in bf16: the sum is then left to autograd, in
fp32, as for transformers); not under torch.compile (functionalised, an in-place addmm_ becomes addmm
with its copy of C: inductor is left to fuse autograd's add) -- keeps_input -- and, the caller's part,
the view going straight into bertfast's Triton residual LayerNorm with its dropout on (training, p > 0;
models.batch.residual_fold). The backward adds in place into the residual gradient, which is then the
LayerNorm backward's own buffer that no one else holds: with dropout on, its gradient for the projection
before it is a separate tensor (with dropout off it may be the same tensor, which a user's hook could
hold: there autograd sums). It adds in place only into a gradient of x's dtype, shape and layout, and not
under create_graph; anything else (no residual gradient, a broadcast one, a double backward) is summed
as autograd would.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def keeps_input(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """Whether linear_keeping_input adds the residual gradient in the matmul (see the module docstring)."""
    return (torch.is_grad_enabled() and x.requires_grad and x.dtype == weight.dtype
            and (bias is None or bias.dtype == x.dtype) and not torch.compiler.is_compiling()
            and not any(torch.is_autocast_enabled(device) for device in ("cuda", "cpu")))


class _LinearKeepingInput(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None (no zeros to add)
        return F.linear(x, weight, bias), x  # x returned as itself: autograd makes it a view with this grad_fn

    @staticmethod
    def backward(ctx, dy, dresidual):
        x, weight = ctx.saved_tensors
        dx = dw = db = None
        dy2 = dy.reshape(-1, dy.shape[-1]) if dy is not None else None
        if ctx.needs_input_grad[0]:
            dx = _input_grad(dy2, weight, dresidual, x.shape)
        if dy2 is not None and ctx.needs_input_grad[1]:
            dw = dy2.t().mm(x.reshape(-1, x.shape[-1]))
        if dy2 is not None and ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy2.sum(0)
        return dx, dw, db


def _input_grad(dy2, weight, dresidual, shape):
    if dy2 is None:
        return dresidual
    if dresidual is None:
        return dy2.mm(weight).view(shape)
    if (torch.is_grad_enabled() or dresidual.dtype != dy2.dtype or dresidual.shape != shape
            or not dresidual.is_contiguous()):
        return dy2.mm(weight).view(shape) + dresidual  # as autograd would sum them
    return dresidual.view(-1, shape[-1]).addmm_(dy2, weight).view(shape)  # the residual gradient as C


def linear_keeping_input(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
    """(F.linear(x, weight, bias), x or a view of it): pass the second to the residual LayerNorm in x's
    place. Where keeps_input(x, weight, bias) is false, x itself (autograd sums the two gradients)."""
    if not keeps_input(x, weight, bias):
        return F.linear(x, weight, bias), x
    return _LinearKeepingInput.apply(x, weight, bias)
