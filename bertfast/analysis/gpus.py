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
    SHARED_BYTES_PER_BLOCK: int = 227 * 1024  # the most one block may opt into
    SHARED_RESERVED_PER_BLOCK: int = 1024     # the driver keeps 1 KB of shared memory per resident block
    MAX_WARPS_PER_SM: int = 64
    MAX_BLOCKS_PER_SM: int = 32
    ISSUE_PER_CLOCK_PER_SM: int = 4           # warp-instructions: four schedulers, one issue each per clock
    # Little's law: at copy bandwidth an SM moves ~32 GB/s (H200); with ~1.1 us of loaded DRAM latency that
    # is ~35 KB of loads in flight per SM (../shared/PERFORMANCE.md: 30-40 KB).
    BYTES_IN_FLIGHT_PER_SM: int = 35 * 1024
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
FIT = {"launch_us": 6.75, "stream_efficiency": 0.98, "worst_error": 0.262}


def get(gpu: str | GPU) -> GPU:
    if isinstance(gpu, GPU):
        return gpu
    if gpu.lower() not in GPUS:
        raise ValueError(f"gpu must be one of {sorted(GPUS)}, got {gpu!r}")
    return GPUS[gpu.lower()]


def with_fit(gpu: GPU, launch_us: float, stream_efficiency: float) -> GPU:
    return replace(gpu, LAUNCH_US=launch_us, STREAM_EFFICIENCY=stream_efficiency)
