"""How a fused op reaches its implementation: a torch custom op, with two eager shortcuts around it.

The custom op (bertfast::<name>, with a fake and an autograd formula) is what torch.compile, opcheck and
the dispatcher see. Its dispatch costs host time on every call, which on a GPU is time the kernels may
wait for: measured on the CI CPU with the kernel itself stubbed out, a custom op costs ~15 us more than a
direct call without autograd, and ~20 us more than a torch.autograd.Function with autograd. So, in eager
mode on plain tensors (torch.Tensor or nn.Parameter):

- nothing for autograd to record (inference, torch.no_grad): the implementation is called directly;
- otherwise: a torch.autograd.Function running the same implementation, setup_context and backward.

Under torch.compile, and for any other tensor type (fake, functional or other subclass tensors), the
custom op runs. Every path runs the same implementation on the same inputs, so the results are the same
bit for bit (tests/test_direct_call.py). benchmarks/bench_host_overhead.py measures the host time of a
whole model step.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def route(args) -> str:
    """'op' (the custom op), 'impl' (a direct call) or 'function' (the eager autograd.Function)."""
    if torch.compiler.is_compiling():
        return "op"
    grad = torch.is_grad_enabled()
    needs_grad = False
    for a in args:
        if isinstance(a, torch.Tensor):
            if type(a) not in _PLAIN_TENSORS:
                return "op"
            needs_grad = needs_grad or (grad and a.requires_grad)
    return "function" if needs_grad else "impl"


class FusedOp:
    """A custom op `name` implemented by `impl` (typed, as torch.library.custom_op requires), with its
    fake and, when given, its autograd formula (setup_context(ctx, inputs, output), backward(ctx, *grads))."""

    def __init__(self, name: str, impl: Callable, fake: Callable, setup_context: Callable | None = None,
                 backward: Callable | None = None) -> None:
        self.impl = impl
        self.op = torch.library.custom_op(name, impl, mutates_args=())
        self.op.register_fake(fake)
        self.function = None
        if backward is not None:
            self.op.register_autograd(backward, setup_context=setup_context)

            # forward(ctx, ...) style: a Function that defines setup_context binds every call's arguments
            # to forward's signature with inspect (measured: a third of a BertModel step's host time).
            def forward(ctx, *args):
                output = impl(*args)
                setup_context(ctx, args, output)
                return output

            self.function = type(name.replace("::", "_"), (torch.autograd.Function,),
                                 {"forward": staticmethod(forward), "backward": staticmethod(backward)})

    def __call__(self, *args):
        path = route(args)
        if path == "impl":
            return self.impl(*args)
        if path == "function" and self.function is not None:
            return self.function.apply(*args)
        return self.op(*args)
