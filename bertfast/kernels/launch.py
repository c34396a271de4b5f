"""Launch settings for every kernel, in one place."""
from __future__ import annotations

import os
from dataclasses import dataclass

import triton

MAX_ROW = 16384  # largest hidden size a row kernel holds in registers in one block


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def row_config(n: int, elem_bytes: int = 4) -> tuple[int, int]:
    """(BLOCK_N, num_warps) for kernels that keep one whole row of n elements in registers."""
    if n > MAX_ROW:
        raise ValueError(f"hidden size {n} is larger than the {MAX_ROW} a row kernel supports")
    block = triton.next_power_of_2(n)
    warps = max(1, min(32, block // 256))
    return block, warps


def partials_in_memory(block_n: int) -> bool:
    """Whether the LayerNorm backward keeps its dweight/dbias partial sums in memory rather than in
    registers: above 4096 columns holding them spills (see python -m bertfast.kernels.sm90)."""
    return block_n > 4096


def elementwise_config(n: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) for 2-D elementwise kernels over [rows, n]."""
    block_n = min(1024, triton.next_power_of_2(n))
    block_m = max(1, 2048 // block_n)  # 16 elements a thread: no spills, enough loads in flight
    return block_m, block_n, 4


def column_reduction_config(n: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) for 2-D kernels that also sum their tile over rows (fp32 partials):
    tall tiles keep the number of partial rows small."""
    return 32, min(64, triton.next_power_of_2(n)), 4


def persistent_programs(rows: int, device) -> int:
    """How many programs a persistent reduction launches (each writes one partial-sum row)."""
    if device.type != "cuda" or interpreted():
        return max(1, min(rows, 4))
    import torch

    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(rows, 4 * sms))


@dataclass(frozen=True)
class AttentionConfig:
    fwd_m: int
    fwd_n: int
    fwd_warps: int
    fwd_stages: int
    bwd_m: int  # query rows per step in the dK/dV kernel (keys per step in the dQ kernel)
    bwd_n: int  # keys per program in the dK/dV kernel (query rows per program in the dQ kernel)
    bwd_warps: int
    bwd_stages: int


def attention_config(head_dim: int, dtype) -> AttentionConfig:
    """Block sizes for the attention kernels (checked spill-free by python -m bertfast.kernels.sm90)."""
    import torch

    if head_dim not in (16, 32, 64, 128):
        raise ValueError(f"head dimension {head_dim} is not supported by the fused attention (16, 32, 64 or 128)")
    if interpreted():
        return AttentionConfig(16, 16, 1, 1, 16, 16, 1, 1)
    if dtype == torch.float32:  # exact fp32 products: smaller tiles
        return AttentionConfig(32, 32, 4, 2, 16, 32, 4, 1)
    if head_dim <= 64:
        return AttentionConfig(128, 64, 4, 3, 32, 64, 4, 2)
    return AttentionConfig(128, 64, 8, 2, 32, 64, 8, 1)
