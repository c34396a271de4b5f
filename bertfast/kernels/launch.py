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


@dataclass(frozen=True)
class LayerNormConfig:
    block_n: int  # columns held per row (the next power of two of the hidden size)
    rows: int  # rows per program (forward) or per step of a persistent program (backward)
    warps: int
    partials_in_memory: bool = False
    programs_per_sm: int = 1  # backward: persistent programs per SM (each writes one partial-sum row)
    max_registers: int | None = None  # ptxas' per-thread cap (maxnreg), so that programs_per_sm fit an SM

    def options(self) -> dict:
        """The launch options (num_warps, and maxnreg where set and compiled for a GPU)."""
        out = {"num_warps": self.warps}
        if self.max_registers is not None and not interpreted():
            out["maxnreg"] = self.max_registers
        return out


def layer_norm_config(n: int, elem_bytes: int, backward: bool) -> LayerNormConfig:
    """Tile of the LayerNorm kernels: several rows per program at BERT's sizes (H <= 1024), so the row
    reductions and address math are shared and ~35 KB of loads are in flight per SM (the static model,
    python -m bertfast.kernels.sm90, holds each choice to its bandwidth goal)."""
    block, _ = row_config(n)
    if interpreted():
        return LayerNormConfig(block, 2, 1, partials_in_memory(block), 1)
    if block <= 1024:
        if backward:  # 4 warps, 8 values a thread (128-bit loads); five programs an SM in 16-bit dtypes
            return LayerNormConfig(block, 1, 4, False, 5 if elem_bytes == 2 else 4)
        return LayerNormConfig(block, 2, 4)
    warps = max(4, min(16, block // 256))
    return LayerNormConfig(block, 1, warps, backward and partials_in_memory(block), 2 if backward else 1)


def elementwise_config(n: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) for 2-D elementwise kernels over [rows, n]."""
    block_n = min(1024, triton.next_power_of_2(n))
    block_m = max(1, 2048 // block_n)  # 16 elements a thread: no spills, enough loads in flight
    return block_m, block_n, 4


def column_reduction_config(n: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) for 2-D kernels that also sum their tile over rows (fp32 partials):
    tall tiles keep the number of partial rows small."""
    return 32, min(64, triton.next_power_of_2(n)), 4


def multiprocessor_count(device) -> int:
    """SMs of the GPU a tensor lives on; meta tensors (bertfast.kernels.trace) stand for the H200 the
    static model predicts for."""
    if device.type == "meta":
        from bertfast.kernels import h200

        return h200.SMS
    import torch

    return torch.cuda.get_device_properties(device).multi_processor_count


def persistent_programs(steps: int, device, per_sm: int = 4) -> int:
    """How many programs a persistent reduction over `steps` steps launches (each writes one partial row)."""
    if device.type not in ("cuda", "meta") or interpreted():
        return max(1, min(steps, 4))
    return max(1, min(steps, per_sm * multiprocessor_count(device)))


@dataclass(frozen=True)
class AttentionConfig:
    fwd_m: int  # query rows per program
    fwd_n: int  # keys per step
    fwd_warps: int
    fwd_stages: int
    dkdv_keys: int  # keys per program of the dK/dV kernel: its matmuls' M dimension (>= 64 for wgmma)
    dkdv_queries: int  # queries per step
    dkdv_warps: int
    dkdv_stages: int
    dq_queries: int  # query rows per program of the dQ kernel (its matmuls' M dimension)
    dq_keys: int  # keys per step
    dq_warps: int
    dq_stages: int
    # ptxas' register cap (maxnreg) of the forward, dK/dV and dQ kernels; None: ptxas' own choice
    max_registers: tuple[int | None, int | None, int | None] = (None, None, None)

    def options(self, kernel: str) -> dict:
        """Launch options of kernel 'fwd', 'dkdv' or 'dq'."""
        index = ("fwd", "dkdv", "dq").index(kernel)
        out = {"num_warps": (self.fwd_warps, self.dkdv_warps, self.dq_warps)[index],
               "num_stages": (self.fwd_stages, self.dkdv_stages, self.dq_stages)[index]}
        if self.max_registers[index] is not None and not interpreted():
            out["maxnreg"] = self.max_registers[index]
        return out


def attention_config(head_dim: int, dtype, seq: int = 512) -> AttentionConfig:
    """Tiles of the attention kernels, by head dim, dtype and sequence length. Chosen without a GPU by the
    static model (python -m bertfast.kernels.sm90: wgmma for every fp16/bf16 matmul, no spills, the
    largest floor smallest); not autotuned."""
    import torch

    if head_dim not in (16, 32, 64, 128):
        raise ValueError(f"head dimension {head_dim} is not supported by the fused attention (16, 32, 64 or 128)")
    if interpreted():
        return AttentionConfig(16, 32, 1, 1, 32, 16, 1, 1, 16, 32, 1, 1)  # keys in steps of 32: the dropout groups
    if dtype == torch.float32:  # exact fp32 products on CUDA cores: small tiles, eight warps at d = 128
        if head_dim <= 64:
            return AttentionConfig(32, 32, 4, 2, 32, 16, 4, 1, 32, 32, 4, 1)
        # (ptxas' own register choice spills a few bytes in the forward and dQ kernels: 128 there)
        return AttentionConfig(16, 32, 8, 2, 32, 16, 8, 1, 16, 32, 8, 1, max_registers=(128, None, 128))
    if head_dim <= 64:
        return AttentionConfig(128, 64, 4, 3, 64, 64, 4, 2, 64, 64, 4, 2)
    # d = 128: dK/dV accumulators of 128 keys x 128 over two warpgroups (64 keys each hold 128 registers a
    # thread and spill)
    return AttentionConfig(128, 64, 8, 2, 128, 32, 8, 1, 64, 64, 4, 1)
