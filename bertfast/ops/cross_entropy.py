"""linear_cross_entropy: mean cross-entropy of F.linear(h, weight, bias) against labels, computed in chunks
of rows whose logits are recomputed in the backward (activation checkpointing per chunk), so the
[rows x vocab] logits never exist all at once. Rows labelled ignore_index are dropped first."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from bertfast._validate import check_tensor


def _chunk_loss_sum(h, weight, bias, labels):
    logits = F.linear(h, weight, bias).float()
    return F.cross_entropy(logits, labels, reduction="sum")


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor,
                         ignore_index: int = -100, chunk_rows: int = 2048, transform=None) -> torch.Tensor:
    """hidden [..., H], labels [...] (int64, ignore_index to skip), weight [V, H]. Returns the mean over the
    kept rows (0 with a gradient path when no row is kept, where plain cross_entropy gives NaN).

    transform, if given, is applied to the kept rows before the projection (the MLM head's
    dense+GELU+LayerNorm), so it too runs only where a label is."""
    check_tensor("labels", labels, dtypes=(torch.int64, torch.int32))
    if labels.shape != hidden.shape[:-1]:
        raise ValueError(f"labels have shape {tuple(labels.shape)}, expected {tuple(hidden.shape[:-1])}")
    flat_labels = labels.reshape(-1).long()
    if torch.compiler.is_compiling():
        # Selecting the labelled rows has a data-dependent size: a compiled graph projects every row and
        # leaves the fusion to the compiler (no label range check either: it needs the host).
        h = hidden.reshape(-1, hidden.shape[-1])
        logits = F.linear(transform(h) if transform is not None else h, weight, bias).float()
        return F.cross_entropy(logits, flat_labels, ignore_index=ignore_index)
    keep = flat_labels != ignore_index
    rows = keep.nonzero().squeeze(1)
    h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows)
    y = flat_labels.index_select(0, rows)
    if y.numel():
        vocab = weight.shape[0]
        bad = (y < 0) | (y >= vocab)
        if bool(bad.any()):
            raise IndexError(f"labels hold {int(y[bad][0])}, outside [0, {vocab - 1}] (and not ignore_index={ignore_index})")
    if transform is not None:
        h = transform(h)
    if y.numel() == 0:
        return h.sum() * 0.0 + weight.sum() * 0.0
    total = h.new_zeros((), dtype=torch.float32)
    for start in range(0, y.numel(), chunk_rows):
        part = slice(start, start + chunk_rows)
        if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
            total = total + checkpoint(_chunk_loss_sum, h[part], weight, bias, y[part], use_reentrant=False)
        else:
            total = total + _chunk_loss_sum(h[part], weight, bias, y[part])
    return total / y.numel()
