"""The GPUs the static model predicts for: one constant set each, every constant with its source.

Sources named below:
  [guide]  CUDA C++ Programming Guide, "Technical Specifications per Compute Capability" and "Arithmetic
           Instructions" (throughput per clock per SM), compute capability 9.0.
  [hopper] NVIDIA H100 Tensor Core GPU Architecture whitepaper (GH100: 132 SMs on the SXM5 part, 1,980 MHz
           boost clock; the H200 is the same GH100 with HBM3e).
  [ours]   benchmarks/results/nvidia-h200-2026-11-29.md: measured on one H200 by benchmarks/gpu_check.sh
           (a large device-to-device copy, a large bf16 matmul).
  [liger]  ../shared/calibration/liger-kernel-measured.csv: Liger-Kernel's committed H100 SXM measurements;
           their forward series fit t = 6-7 us + bytes / 3.05 TB/s.
  [fit]    fitted by bertfast.analysis.calibrate to [liger] (the fitted value is printed by
           `python -m bertfast.analysis.calibrate`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class GPU:
    NAME: str
    SMS: int                      # [hopper]
    CLOCK_HZ: float               # [hopper] boost clock
    COPY_BYTES_PER_S: float       # a large device copy, bytes read + written
    BF16_MATMUL_FLOPS: float      # a large bf16 matmul (wgmma, HGMMA)
    # sm_90's architecture, the same on every Hopper part [guide]
    REGISTERS_PER_SM: int = 64 * 1024
    REGISTER_ALLOCATION_UNIT: int = 256       # registers are allocated per warp in units of 256
    MAX_REGISTERS_PER_THREAD: int = 255
    SHARED_BYTES_PER_SM: int = 228 * 1024
    SHARED_BYTES_PER_CLOCK_PER_SM: int = 128  # 32 banks of 4 bytes each clock
    SHARED_BYTES_PER_BLOCK: int = 227 * 1024  # the most one block may opt into
    SHARED_RESERVED_PER_BLOCK: int = 1024     # the driver keeps 1 KB of shared memory per resident block
    MAX_WARPS_PER_SM: int = 64
    MAX_BLOCKS_PER_SM: int = 32
    ISSUE_PER_CLOCK_PER_SM: int = 4           # warp-instructions: four schedulers, one issue each per clock
    # Little's law: at copy bandwidth an SM moves ~32 GB/s (H200); with ~1.1 us of loaded DRAM latency that
    # is ~35 KB of loads in flight per SM (../shared/PERFORMANCE.md: 30-40 KB).
    BYTES_IN_FLIGHT_PER_SM: int = 35 * 1024
    LOADED_DRAM_LATENCY_S: float = 1.1e-6     # the latency that figure assumes: a program's first loads wait it
    # Results per clock per SM of each pipe [guide, cc 9.0]: FP32 add/mul/FMA 128; 32-bit integer multiply
    # and multiply-add 64, integer add/logic/compare/shift 64; MUFU (ex2, rcp, rsqrt, lg2, sin, cos) 16;
    # type conversions 16; loads/stores 32 lanes (one warp-instruction per clock).
    FP32_LANES: int = 128
    INT_LANES: int = 64
    MUFU_LANES: int = 16
    CONVERT_LANES: int = 16
    LSU_LANES: int = 32
    # A launch's fixed cost on the device timeline as do_bench measures it (launch, ramp-up, the last
    # wave's drain), and the share of the copy bandwidth a streaming kernel sustains: 0 and 1 here (the
    # bounds of the roofline report); bertfast.analysis.calibrate fits both to [liger] for predict().
    LAUNCH_US: float = 0.0
    STREAM_EFFICIENCY: float = 1.0

    @property
    def ISSUE_PER_S(self) -> float:
        return self.ISSUE_PER_CLOCK_PER_SM * self.SMS * self.CLOCK_HZ

    @property
    def MMA_SYNC_FLOPS(self) -> float:  # mma.sync (HMMA) on sm_90: about half of wgmma's rate
        return self.BF16_MATMUL_FLOPS / 2

    @property
    def TF32_MATMUL_FLOPS(self) -> float:  # [hopper]: dense TF32 is half of dense bf16
        return self.BF16_MATMUL_FLOPS / 2

    @property
    def FP32_FMA_FLOPS(self) -> float:  # 2 FLOPs per FMA lane per clock
        return self.SMS * self.FP32_LANES * 2 * self.CLOCK_HZ


H200 = GPU(
    NAME="NVIDIA H200 (sm_90)", SMS=132, CLOCK_HZ=1.98e9,
    COPY_BYTES_PER_S=4.25e12,        # [ours] measured copy (datasheet: 4.8 TB/s)
    BF16_MATMUL_FLOPS=790e12,        # [ours] measured 788 TFLOP/s (datasheet: 989 dense)
)
H100 = GPU(
    NAME="NVIDIA H100 SXM (sm_90)", SMS=132, CLOCK_HZ=1.98e9,
    COPY_BYTES_PER_S=3.05e12,        # [liger] the slope of its forward series (datasheet: 3.35 TB/s)
    BF16_MATMUL_FLOPS=790e12,        # the H200's measured rate [ours]: the same GH100 die, SMs and clocks
    BYTES_IN_FLIGHT_PER_SM=26 * 1024,  # Little's law as above at 3.05 TB/s / 132 SMs x 1.1 us
)
GPUS = {"h200": H200, "h100": H100}

# The two constants fitted to measured kernels by `python -m bertfast.analysis.calibrate --fit` (least
# squares on log time over Liger-Kernel's H100 rows, a grid over both) [fit]: a launch's fixed cost on
# the device timeline, and the share of the copy bandwidth above a streaming kernel sustains. predict()
# applies them; the roofline report's floors are without them.
# worst_error: the largest |predicted / measured - 1| over those rows under these constants (what
# `python -m bertfast.analysis.calibrate` prints; it says so when this value is out of date), the error
# bar bertfast.analysis.step puts on the kernels it predicts from bytes.
# attention_error: the largest |predicted / measured - 1| of our dropout-free attention forward (16-bit, at
# the published shapes) against the Triton tutorial kernel's published H100 times (ATTENTION_PUBLISHED),
# the published kernel built most like ours (one program per 128 queries, 4-8 warps, no warp
# specialisation): what `python -m bertfast.analysis` prints and checks; bertfast.analysis.step's error bar
# on our attention kernels.
FIT = {"launch_us": 6.75, "stream_efficiency": 0.98, "worst_error": 0.262, "attention_error": 0.11}


# Published attention measurements on the H100 SXM (TFLOP/s, not causal, 16k tokens a batch, hidden 2048;
# backward counted as 2.5x the forward's 4 * B * heads * S^2 * D FLOPs), keyed (head dim, S, phase):
#   head dim 64: the FlashAttention-3 paper's figures (arXiv 2407.08608; FlashAttention-2, cuDNN and the
#     Triton tutorial as it measured them), as in ../shared/calibration/README.md;
#   head dim 128: pytorch/benchmark commit ff65cb6 (PR 2391), its run of the Triton tutorial kernel and
#     FlashAttention-3 at the FA3 paper's sizes on Hopper (FA3 runs only there).
# The static model's attention predictions are held below the best of them at the same shape, and the
# dropout-free forward at head dim 64 is compared with the band of kernels built like ours (the
# FlashAttention-2 to Triton tutorial figures): bertfast.analysis.sm90.attention_rates.
ATTENTION_PUBLISHED = {
    (64, 512, "fwd"): {"FlashAttention-3": 333, "Triton tutorial": 340, "cuDNN": 335, "FlashAttention-2": 282},
    (64, 1024, "fwd"): {"FlashAttention-3": 392, "Triton tutorial": 382, "cuDNN": 373, "FlashAttention-2": 306},
    (64, 2048, "fwd"): {"FlashAttention-3": 460, "Triton tutorial": 396, "cuDNN": 395, "FlashAttention-2": 318},
    (64, 512, "bwd"): {"FlashAttention-3": 272, "cuDNN": 266, "FlashAttention-2": 198},
    (64, 1024, "bwd"): {"FlashAttention-3": 363, "cuDNN": 348, "FlashAttention-2": 238},
    (64, 2048, "bwd"): {"FlashAttention-3": 422, "cuDNN": 395, "FlashAttention-2": 264},
    (128, 512, "fwd"): {"FlashAttention-3": 430, "Triton tutorial": 329},
    (128, 1024, "fwd"): {"FlashAttention-3": 517, "Triton tutorial": 390},
    (128, 2048, "fwd"): {"FlashAttention-3": 566, "Triton tutorial": 434},
}
# torch's fused SDPA kernels, as transformers' attn_implementation="sdpa" runs them on a Hopper GPU: the flash
# backend (no mask) is FlashAttention-2, bundled in torch; the memory-efficient backend (an additive mask,
# HF's padding) is xformers' CUTLASS kernel, for which no H100 figure is published: it is charged at
# FlashAttention-2's rate too, an upper bound on its speed (it has no Hopper-specific kernel, and FA2's
# paper measured it slower than FA2 on the A100). Shorter sequences than the smallest published S (512)
# get that S's rate, again an upper bound (fewer keys a query: less work to hide the softmax behind).
SDPA_KERNELS = {"_scaled_dot_product_flash_attention": "FlashAttention-2",
                "_scaled_dot_product_efficient_attention": "FlashAttention-2"}


def sdpa_tflops(op: str, seq: int, backward: bool) -> float:
    """TFLOP/s the bound above gives torch's SDPA kernel `op` (a forward's name; its backward with
    backward=True) at keys per sequence `seq`: the published head-dim-64 H100 figure at the smallest
    published S >= seq (the largest S past the table)."""
    phase = "bwd" if backward else "fwd"
    published = sorted(s for d, s, ph in ATTENTION_PUBLISHED if d == 64 and ph == phase)
    at = next((s for s in published if s >= seq), published[-1])
    return ATTENTION_PUBLISHED[(64, at, phase)][SDPA_KERNELS[op]]


# The band a dropout-free forward built like ours (one Triton program per 128 queries, one wgmma each for
# Q K^T and P V a trip, no warp specialisation) should fall in: FlashAttention-2 to the Triton tutorial.
ATTENTION_BAND = ("FlashAttention-2", "Triton tutorial")


def get(gpu: str | GPU) -> GPU:
    if isinstance(gpu, GPU):
        return gpu
    if gpu.lower() not in GPUS:
        raise ValueError(f"gpu must be one of {sorted(GPUS)}, got {gpu!r}")
    return GPUS[gpu.lower()]


def with_fit(gpu: GPU, launch_us: float, stream_efficiency: float) -> GPU:
    return replace(gpu, LAUNCH_US=launch_us, STREAM_EFFICIENCY=stream_efficiency)
