"""Input checks shared by the public ops: each names the argument, what it got and what it expected."""
from __future__ import annotations

from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int64, torch.int32)


def check_tensor(name: str, t, *, dtypes: Sequence[torch.dtype] | None = None, dim: int | Sequence[int] | None = None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if dim is not None:
        dims = (dim,) if isinstance(dim, int) else tuple(dim)
        if t.dim() not in dims:
            raise ValueError(f"{name} must have {' or '.join(map(str, dims))} dimensions, got shape {tuple(t.shape)}")
    return t


def check_same_device(**tensors):
    named = [(n, t) for n, t in tensors.items() if t is not None]
    if not named:
        return
    first_name, first = named[0]
    for name, t in named[1:]:
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}: all inputs must be on one device")


def id_range_stats(named_ids: Sequence[tuple[str, torch.Tensor, int]]) -> list[torch.Tensor]:
    """The device-side min and max of each non-empty id tensor (for raise_if_ids_out_of_range)."""
    return [s.to(torch.int64) for _, t, _ in named_ids if t.numel() > 0 for s in (t.min(), t.max())]


def raise_if_ids_out_of_range(named_ids: Sequence[tuple[str, torch.Tensor, int]], stats: Sequence[int]):
    """Raise IndexError naming the tensor and the value if any id lies outside [0, rows); stats: the host
    values of id_range_stats(named_ids)."""
    live = [(n, t, r) for n, t, r in named_ids if t.numel() > 0]
    for i, (name, t, rows) in enumerate(live):
        lo, hi = stats[2 * i], stats[2 * i + 1]
        if lo < 0 or hi >= rows:
            bad = lo if lo < 0 else hi
            raise IndexError(f"{name} holds {bad}, outside the valid range [0, {rows - 1}] of its embedding table ({rows} rows)")


def check_ids_in_range(named_ids: Sequence[tuple[str, torch.Tensor, int]]):
    """Raise IndexError if any id lies outside [0, rows). One host sync for all tensors together."""
    stats = id_range_stats(named_ids)
    if stats:
        raise_if_ids_out_of_range(named_ids, torch.stack(stats).tolist())


def check_probability(name: str, p: float):
    if not (0.0 <= float(p) < 1.0):
        raise ValueError(f"{name} must be in [0, 1), got {p}")
