"""The C++ CPU inference kernels of bertfast._C (csrc/cpu_kernels.cpp): bias+GELU, residual+LayerNorm, the
embedding sum+LayerNorm and padding-free attention, each one pass in fp32 over fp32, bf16 or fp16 rows,
rounded once.

The ops route CPU tensors here when nothing needs a gradient (inference, torch.no_grad, a frozen model),
dropout is off, and the extension is built (BERTFAST_BACKEND=torch keeps the pure-torch reference); with
gradients the reference runs, whose autograd is torch's. Under torch.compile the ops are opaque nodes
(Python custom ops with fakes, around the C++ ones). Which compiled copy runs (DEFAULT, AVX2 or AVX512)
follows ATen's choice for the CPU (`ATEN_CPU_CAPABILITY` caps it); `bertfast._C.cpu_kernels_capability()`
says.
"""
from __future__ import annotations

import weakref

import torch

from bertfast import _backend
from bertfast.ops._custom import FusedOp

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def built() -> bool:
    """Whether the built extension has the CPU kernels (an older build may not)."""
    return hasattr(_backend.extension(), "cpu_kernels_capability")


def _bias_gelu_impl(x: torch.Tensor, bias: torch.Tensor, approximate: str) -> torch.Tensor:
    return torch.ops.bertfast_C.bias_gelu_cpu(x, bias, approximate)


def _layer_norm_impl(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor | None,
                     bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    return torch.ops.bertfast_C.residual_layer_norm_cpu(x, residual, weight, bias, eps)


def _layer_norm_fake(x, residual, weight, bias, eps):
    dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    return x.new_empty(x.shape, dtype=dtype)


def _attention_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                    scale: float) -> torch.Tensor:
    return torch.ops.bertfast_C.varlen_attention_cpu(q, k, v, cu_seqlens, scale)


def _embedding_layer_norm_impl(input_ids: torch.Tensor, token_type_ids: torch.Tensor, position_ids: torch.Tensor,
                               word: torch.Tensor, type_: torch.Tensor, position: torch.Tensor,
                               weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    return torch.ops.bertfast_C.embedding_layer_norm_cpu(input_ids, token_type_ids, position_ids, word, type_, position,
                                                         weight, bias, eps)


# Python custom ops around the C++ ones (as ops/embedding_sum.py does): their fakes are registered here,
# without importing the extension, and eager calls go straight to the implementation (ops/_custom.py).
_bias_gelu = FusedOp("bertfast::cpu_bias_gelu", _bias_gelu_impl, lambda x, bias, approximate: torch.empty_like(x))
_layer_norm = FusedOp("bertfast::cpu_residual_layer_norm", _layer_norm_impl, _layer_norm_fake)
_attention = FusedOp("bertfast::cpu_varlen_attention", _attention_impl,
                     lambda q, k, v, cu_seqlens, scale: q.new_empty(q.shape))
_embedding_layer_norm = FusedOp("bertfast::cpu_embedding_layer_norm", _embedding_layer_norm_impl,
                                lambda ids, tt, pos, word, type_, position, weight, bias, eps:
                                word.new_empty((ids.shape[0], word.shape[1])))


def applies(*tensors: torch.Tensor | None) -> bool:
    """Whether the CPU kernels take these tensors: all on the CPU, in a kernel dtype, none needing a
    gradient, the extension built with them and not turned off."""
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is None:
            continue
        if t.device.type != "cpu" or t.dtype not in KERNEL_DTYPES or (grad and t.requires_grad):
            return False
    return _backend.backend_mode() != "torch" and built()


def bias_gelu(x: torch.Tensor, bias: torch.Tensor, approximate: str) -> torch.Tensor:
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    return _bias_gelu(flat, bias, approximate).view(x.shape)


def residual_layer_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor | None,
                        bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    hidden = x.shape[-1]
    flat = x.reshape(-1, hidden).contiguous()
    res = residual.reshape(-1, hidden).contiguous() if residual is not None else None
    y = _layer_norm(flat, res, weight, bias, float(eps))
    return y.view(x.shape)


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """q, k, v [total, heads, D] (any row and head strides: views of a fused QKV projection are read in
    place); the output is contiguous."""
    q, k, v = (t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    return _attention(q, k, v, cu_seqlens, float(scale))


def embedding_layer_norm(input_ids: torch.Tensor, token_type_ids: torch.Tensor, position_ids: torch.Tensor,
                         word: torch.Tensor, type_: torch.Tensor, position: torch.Tensor, weight: torch.Tensor | None,
                         bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """[tokens, H] = LayerNorm(word[ids] + type[type ids] + position[position ids]): the ids 1-D int64, each
    repeating with its own period over the tokens (ops.embedding_sum.periodic_ids), in range."""
    return _embedding_layer_norm(input_ids, token_type_ids, position_ids, word.contiguous(), type_.contiguous(),
                                 position.contiguous(), weight, bias, float(eps))


# Linear layers in fp32 CPU inference: oneDNN with the weight packed once ------------------------------------
# torch's fp32 F.linear on the CPU is MKL's sgemm; oneDNN's (what OpenVINO and inductor's CPU freezing run)
# with the weight reordered once into its blocked layout is faster. Measured on the 2-core AMD EPYC
# (AVX-512), 914 tokens, 2 threads: [384 -> 384] 2.46 -> 1.93 ms, [384 -> 1536] 9.99 -> 6.25 ms, [1536 -> 384]
# 8.52 -> 6.81 ms; its GELU post-op spares the intermediate's separate pass. Same fp32 arithmetic in another
# summation order: the error against fp64 is ~4e-6 where MKL's is ~2e-6 on outputs of size ~1.
# module -> (key, packed weight, weak reference to the weight packed), beside the module rather than in its
# __dict__: oneDNN's packed tensor has no storage that deepcopy or torch.save could copy, so a model that
# had run once could no longer be copied or saved whole.
_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def packed_linear_applies(linear, x: torch.Tensor) -> bool:
    """Whether linear(x) runs as oneDNN with a packed weight: a plain nn.Linear without hooks (anything
    else runs as itself), fp32 on the CPU, no gradient needed, the C++ kernels not turned off, not while
    torch.compile traces."""
    return (type(linear) is torch.nn.Linear and not (linear._forward_hooks or linear._forward_pre_hooks)
            and x.dtype == torch.float32 and linear.weight.dtype == torch.float32 and x.dim() >= 2
            and applies(x, linear.weight, linear.bias) and torch.backends.mkldnn.is_available()
            and not torch.compiler.is_compiling())


def linear(module, x: torch.Tensor, activation: str = "none") -> torch.Tensor:
    """module(x), then GELU for activation "gelu" (erf) or "gelu_tanh": through oneDNN with the weight
    packed once (kept for the module, repacked when the weight changes: another tensor, even one at the
    freed one's address, its storage, or its version counter, which an optimizer step or load_state_dict
    bumps) where packed_linear_applies, else the module itself."""
    if not packed_linear_applies(module, x):
        y = module(x)
        return y if activation == "none" else torch.nn.functional.gelu(y, approximate="tanh" if activation == "gelu_tanh" else "none")
    w = module.weight
    key = (w.data_ptr(), w._version, tuple(w.shape))
    cached = _PACKED.get(module)
    if cached is None or cached[0] != key or cached[2]() is not w:
        rows = max(1, x.numel() // max(x.shape[-1], 1))
        cached = _PACKED[module] = (key, torch.ops.mkldnn._reorder_linear_weight(w.detach(), rows), weakref.ref(w))
    attr, algorithm = ("none", "") if activation == "none" else ("gelu", "tanh" if activation == "gelu_tanh" else "none")
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    y = torch.ops.mkldnn._linear_pointwise(flat, cached[1], module.bias, attr, [], algorithm)
    return y.view(*x.shape[:-1], module.out_features)


def packed_weight(module) -> torch.Tensor | None:
    """The module's packed weight, if linear() has packed one."""
    cached = _PACKED.get(module)
    return None if cached is None else cached[1]


def drop_packed(module) -> None:
    """Forget a packed weight (restore)."""
    _PACKED.pop(module, None)
