"""The dropout seed of a fused op, as its kernels read it: one int64 in device memory.

Drawn on the tensors' device from torch's generator for that device (torch.randint), not on the host:
the draw is then a kernel like any other, so a CUDA graph (torch.compile(mode="reduce-overhead"), a
user's torch.cuda.graph) replays it and each replay advances the generator's Philox offset on the
device and draws a new seed, as torch's own dropout does; torch.compile traces it as a random op (new
masks every call); eager runs repeat under torch.manual_seed. A seed the caller gives (an int, or an
int64 tensor of one element on the same device) is used as it is: the same seed, the same masks.
"""
from __future__ import annotations

import torch

SEED_BOUND = 2**62  # seeds are drawn in [0, 2**62): both 32-bit halves of Philox's key vary


def dropout_seeds(count: int, device: torch.device) -> torch.Tensor:
    """int64 [count] on `device`, drawn in one launch: seeds for several fused ops at once (BertModel draws
    each layer's three per forward: models.batch.AttentionInputs.with_dropout_seeds)."""
    return torch.randint(0, SEED_BOUND, (count,), dtype=torch.int64, device=device)


def dropout_seed(p: float, seed, device: torch.device) -> torch.Tensor | None:
    """int64 [1] on `device`, or None when p = 0 (no kernel reads it)."""
    if p <= 0:
        return None
    if seed is None:
        return dropout_seeds(1, device)
    if isinstance(seed, torch.Tensor):
        if seed.dtype != torch.int64 or seed.numel() != 1:
            raise ValueError(f"seed must be an int or an int64 tensor of one element, got {seed.dtype} shape "
                             f"{tuple(seed.shape)}")
        if seed.device != device:
            raise ValueError(f"seed is on {seed.device} but the inputs are on {device}: all inputs must be on one device")
        return seed.reshape(1)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an int in [0, 2**63) or an int64 tensor, got {seed!r}")
    return torch.full((1,), seed, dtype=torch.int64, device=device)
