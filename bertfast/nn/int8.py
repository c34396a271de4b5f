"""int8 linear layers for CPU inference: `bertfast.optimize(model, quantize="int8")`.

Each nn.Linear of the encoder becomes an Int8Linear in place (its class changed, as optimize changes
forwards in place: hooks, parameters and state_dict stay; the int8 weights are non-persistent buffers
next to the fp32 ones, so save_pretrained writes the model as before and `restore` undoes it):

- weights: int8 per output channel, symmetric (scale = max |w| / 127 per row), once;
- activations: int8 per token, dynamically at each call (scale = max |x| / 127 per row: a C++ kernel,
  one pass), shared by the query, key and value projections of the same input;
- the product: `torch._int_mm` (int8 x int8 -> int32, oneDNN on the CPU's int8 dot-product units: VNNI,
  AMX-INT8);
- the int32 result dequantised with both scales, the bias and (for the intermediate layer) GELU in one
  C++ pass, in the activations' dtype.

Per-token scales keep the error of a token independent of the batch's other tokens (a per-tensor scale, as
torch's dynamic quantisation uses, lets one outlier token coarsen them all).
"""
from __future__ import annotations

import torch
import torch.nn as nn

ACTIVATIONS = ("none", "gelu", "gelu_tanh")


class _SharedInput:
    """The last input quantised by a group of layers reading the same tensor (query, key, value)."""

    __slots__ = ("x", "q", "scale")

    def __init__(self) -> None:
        self.x = self.q = self.scale = None


class Int8Linear(nn.Linear):
    """An nn.Linear (same parameters, state_dict and hooks) computing x W^T + b through int8 on the CPU.
    Made by `quantize_linear`, not constructed directly."""

    weight_int8: torch.Tensor

    def _quantize_weight(self) -> None:
        w = self.weight.detach().float()
        scale = (w.abs().amax(1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.register_buffer("weight_int8", q.t().contiguous(), persistent=False)  # [in, out] for _int_mm
        # The scales and the bias in fp32, as plain attributes: a later .to(torch.bfloat16) of the model
        # (optimize(dtype=) casts after quantising, from the fp32 weights) leaves them exact.
        self._weight_scale = scale.contiguous()
        self._bias32 = None if self.bias is None else self.bias.detach().float().contiguous()
        self._shared = _SharedInput()

    def _quantized_input(self, x: torch.Tensor):
        """x quantised per row, once for the layers sharing this one's input (the same tensor object: the
        cache holds it, so it cannot be another tensor at a reused address)."""
        shared = self._shared
        if shared.x is not x:
            shared.q, shared.scale = torch.ops.bertfast_C.quantize_rows_cpu(x.reshape(-1, self.in_features).contiguous())
            shared.x = x
        return shared.q, shared.scale

    def forward(self, x: torch.Tensor, activation: str = "none") -> torch.Tensor:
        if x.device.type != "cpu" or (torch.is_grad_enabled() and x.requires_grad):
            raise RuntimeError("an int8 layer (bertfast.optimize(quantize='int8')) runs CPU inference only: "
                               f"got an input on {x.device}{' that needs a gradient' if x.requires_grad else ''}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        q, scale = self._quantized_input(x)
        acc = torch._int_mm(q, self.weight_int8)
        out = torch.ops.bertfast_C.dequantize_cpu(acc, scale, self._weight_scale, self._bias32, activation, x.dtype)
        return out.view(*x.shape[:-1], self.out_features)


def quantize_linear(linear: nn.Linear, shared: Int8Linear | None = None) -> Int8Linear:
    """Make `linear` an Int8Linear in place; `shared`: a layer reading the same input (its quantised copy
    is reused)."""
    if type(linear) is not nn.Linear:
        raise TypeError(f"only a plain nn.Linear is quantised, got {type(linear).__name__}")
    linear.__class__ = Int8Linear
    linear._quantize_weight()
    if shared is not None:
        linear._shared = shared._shared
    return linear


def dequantize_linear(linear: nn.Module) -> None:
    """Undo quantize_linear: an nn.Linear again (its fp32 weights were kept)."""
    if isinstance(linear, Int8Linear):
        linear._buffers.pop("weight_int8", None)
        for name in ("_weight_scale", "_bias32", "_shared"):
            linear.__dict__.pop(name, None)
        linear.__class__ = nn.Linear
