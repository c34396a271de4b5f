"""Launch settings for every kernel, in one place."""
from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

import triton

MAX_ROW = 16384  # largest hidden size a row kernel holds in registers in one block


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def gpu_tiles() -> bool:
    """Whether the GPU's tile configurations are used: always when compiled for a GPU; under the
    interpreter only with BERTFAST_GPU_TILES=1 (tests that run the GPU tiles on the CPU)."""
    return not interpreted() or os.environ.get("BERTFAST_GPU_TILES", "0") == "1"


# CUDA's grid limits: axis 0 up to 2**31 - 1 programs, axes 1 and 2 up to 65,535 (Triton checks neither).
MAX_GRID_X = 2**31 - 1
MAX_GRID_YZ = 65535


def grid_1d(programs: int, what: str) -> tuple[int]:
    """A one-axis grid of `programs` programs, refused with a clear error past CUDA's limit."""
    if programs > MAX_GRID_X:
        raise ValueError(f"{what} needs {programs} programs, more than the {MAX_GRID_X} a CUDA grid holds")
    return (programs,)


# Inside bertfast.analysis.trace.gpu_trace, meta tensors stand for CUDA tensors: this is then the guard
# the trace records (set by the trace; None otherwise).
_TRACE_GUARD = None


def device_guard(t):
    """The context a launch for tensor t runs in: t's CUDA device made current. Triton launches on the
    current device and its current stream, not on the tensors' device: without this, tensors on cuda:1
    while cuda:0 is current are read through the wrong device's addresses."""
    if t.device.type == "cuda":
        import torch

        return torch.cuda.device(t.device)
    if t.device.type == "meta" and _TRACE_GUARD is not None:
        return _TRACE_GUARD(t)
    return contextlib.nullcontext()


def on_tensor_device(launcher):
    """Decorator: run a kernel launcher under device_guard of its first tensor argument (all of a
    launcher's tensors share one device: the ops check it)."""
    import torch

    @functools.wraps(launcher)
    def run(*args, **kwargs):
        t = next(a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor))
        with device_guard(t):
            return launcher(*args, **kwargs)
    return run


def row_config(n: int, elem_bytes: int = 4) -> tuple[int, int]:
    """(BLOCK_N, num_warps) for kernels that keep one whole row of n elements in registers."""
    if n > MAX_ROW:
        raise ValueError(f"hidden size {n} is larger than the {MAX_ROW} a row kernel supports")
    block = triton.next_power_of_2(n)
    warps = max(1, min(32, block // 256))
    return block, warps


WIDE_ROW = 4096  # above this many columns the LayerNorm backward works on a row in chunks
WIDE_CHUNK = 2048  # columns per chunk of those rows


@dataclass(frozen=True)
class LayerNormConfig:
    block_n: int  # columns held per row (the next power of two of the hidden size)
    rows: int  # rows per program (forward) or per step of a persistent program (backward)
    warps: int
    chunk: int = 0  # backward of rows wider than WIDE_ROW: columns per chunk (0: the whole row at once)
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
    python -m bertfast.analysis, holds each choice to its bandwidth goal). The backward of rows wider
    than WIDE_ROW works in chunks of WIDE_CHUNK columns (a whole row of x, the residual, dy and their
    fp32 intermediates spilled registers: 96 to 1,984 bytes at 8,192 and 16,384)."""
    block, _ = row_config(n)
    block = max(block, 8)  # at least one group of 8 dropout lanes (bertfast.kernels.dropout)
    chunk = WIDE_CHUNK if backward and block > WIDE_ROW else 0
    if not gpu_tiles():
        return LayerNormConfig(block, 2, 1, min(chunk, 256), 1)
    if chunk:
        return LayerNormConfig(block, 1, 8, chunk, 4)
    if block <= 1024:
        if backward:  # 4 warps, 8 values a thread (128-bit loads); five programs an SM in 16-bit dtypes
            return LayerNormConfig(block, 1, 4, 0, 5 if elem_bytes == 2 else 4)
        return LayerNormConfig(block, 2, 4)
    warps = max(4, min(16, block // 256))
    return LayerNormConfig(block, 1, warps, 0, 2 if backward else 1)


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
    """SMs of the GPU a tensor lives on; meta tensors (bertfast.analysis.trace) stand for the H200 the
    static model predicts for."""
    if device.type == "meta":
        from bertfast.analysis.gpus import H200

        return H200.SMS
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
    # dropout's grouping: the query-key tiles (dropout.tile_keep; forward and dQ at 128 queries over one
    # warpgroup, or dQ keys first; dK/dV trips of 32, 64 or 128 queries) or the fragment grouping
    # (dropout.fragment_keep)
    mask_tiles: bool = False
    # the dQ kernel's (queries, keys, stages) with dropout where they differ from (dq_queries, dq_keys,
    # dq_stages): the query-key grouping needs 128 queries per program; without dropout 64 x 64 is faster
    # (sm90 model)
    dq_dropout_tiles: tuple[int, int, int] | None = None
    # with dropout, the dQ kernel in the dK/dV kernel's frame (attention._dq_keys_first: programs of 128
    # queries in trips of dq_dropout_tiles' queries, its keys the matmuls' M dimension) on this many warps
    dq_keys_first: bool = False
    dq_dropout_warps: int | None = None
    # the forward's (queries, keys, warps, stages) with dropout where they differ from fwd_m, fwd_n,
    # fwd_warps, fwd_stages (head dim 128: the query-key grouping's 128 queries over one warpgroup)
    fwd_dropout_tiles: tuple[int, int, int, int] | None = None

    def fwd_tiles(self, dropout: bool) -> tuple[int, int]:
        """(query rows per program, keys per step) of the forward kernel."""
        if dropout and self.fwd_dropout_tiles is not None:
            return self.fwd_dropout_tiles[:2]
        return self.fwd_m, self.fwd_n

    def dq_tiles(self, dropout: bool) -> tuple[int, int]:
        """(query rows per program, keys per step) of the dQ kernel."""
        if dropout and self.dq_dropout_tiles is not None:
            return self.dq_dropout_tiles[:2]
        return self.dq_queries, self.dq_keys

    def options(self, kernel: str, dropout: bool = False) -> dict:
        """Launch options of kernel 'fwd', 'dkdv' or 'dq' (with or without dropout: fwd_dropout_tiles,
        dq_dropout_tiles, dq_dropout_warps)."""
        index = ("fwd", "dkdv", "dq").index(kernel)
        dq_stages = self.dq_dropout_tiles[2] if dropout and self.dq_dropout_tiles is not None else self.dq_stages
        dq_warps = self.dq_dropout_warps if dropout and self.dq_dropout_warps is not None else self.dq_warps
        fwd_warps, fwd_stages = (self.fwd_dropout_tiles[2:] if dropout and self.fwd_dropout_tiles is not None
                                 else (self.fwd_warps, self.fwd_stages))
        out = {"num_warps": (fwd_warps, self.dkdv_warps, dq_warps)[index],
               "num_stages": (fwd_stages, self.dkdv_stages, dq_stages)[index]}
        if self.max_registers[index] is not None and not interpreted():
            out["maxnreg"] = self.max_registers[index]
        return out


def attention_config(head_dim: int, dtype, seq: int = 512) -> AttentionConfig:
    """Tiles of the attention kernels, by head dim, dtype and sequence length. Chosen without a GPU by the
    static model (python -m bertfast.analysis: wgmma for every fp16/bf16 matmul, no spills, the
    largest floor smallest); not autotuned."""
    import torch

    if head_dim not in (16, 32, 64, 128):
        raise ValueError(f"head dimension {head_dim} is not supported by the fused attention (16, 32, 64 or 128)")
    if not gpu_tiles():
        return AttentionConfig(16, 32, 1, 1, 32, 16, 1, 1, 16, 32, 1, 1)  # keys in steps of 32: the dropout groups
    if dtype == torch.float32:  # exact fp32 products on CUDA cores: small tiles, eight warps in the forward
        # (each choice the smallest that compiles without spills: a 4-warp forward took 255 registers and
        # spilled 16 bytes once the 1-D grid's index arithmetic was added; the d = 128 forward spills under
        # ptxas' own register choice, 128 there, its dQ kernel under a cap of 128)
        if head_dim <= 64:
            return AttentionConfig(32, 32, 8, 2, 32, 16, 4, 1, 32, 32, 4, 1)
        return AttentionConfig(16, 32, 8, 2, 32, 16, 8, 1, 16, 32, 8, 1, max_registers=(128, None, None))
    if head_dim <= 64:
        # (with dropout, dQ at 128 queries over one warpgroup, as the forward: each thread then holds the
        # query-key grouping's queries q, q + 8, q + 64, q + 72 in all three kernels; 32 keys a step, as
        # 64 spill; the forward at 2 stages, as 3 spill with dropout and a key mask)
        return AttentionConfig(128, 64, 4, 2, 64, 64, 4, 2, 64, 64, 4, 2, mask_tiles=True, dq_dropout_tiles=(128, 32, 4))
    # d = 128: dK/dV accumulators of 128 keys x 128 over two warpgroups (64 keys each hold 128 registers a
    # thread and spill). With dropout the query-key grouping as at d = 64, so the dK/dV kernel draws its
    # own mask (1.85x the instructions a trip without dropout, against 2.29x with the fragment grouping's
    # exchange): the forward at 128 queries over one warpgroup, 32 keys a step, 1 stage (2 stages spill
    # 16 B); dQ in the dK/dV kernel's frame, 128 keys over 8 warps a step, trips of 64 queries (128
    # queries over one warpgroup in the usual frame spill 104-392 B: bertfast.analysis.sm90's note on
    # DROPOUT_OVERHEAD). Without dropout the forward stays at 128 x 64 over 8 warps (2-5% faster by the
    # sm90 model at S = 512-2048).
    return AttentionConfig(128, 64, 8, 2, 128, 32, 8, 1, 64, 64, 4, 1, mask_tiles=True, fwd_dropout_tiles=(128, 32, 4, 1),
                           dq_dropout_tiles=(64, 128, 1), dq_keys_first=True, dq_dropout_warps=8)
