"""The GPU the static performance model (bertfast.kernels.sm90) predicts for, in one place: one H200.

Bandwidth and matmul rate are the ones measured on the card (benchmarks/results/nvidia-h200-2026-11-29.md:
copy 4249 GB/s, bf16 matmul 788 TFLOP/s), not the datasheet's; the rest is sm_90's architecture."""

NAME = "NVIDIA H200 (sm_90)"
SMS = 132
CLOCK_HZ = 1.98e9
COPY_BYTES_PER_S = 4.25e12           # a large device-to-device copy, bytes read + written
BF16_MATMUL_FLOPS = 790e12           # a large bf16 matmul (wgmma, HGMMA)
MMA_SYNC_FLOPS = BF16_MATMUL_FLOPS / 2   # mma.sync (HMMA) on sm_90: about half of wgmma's rate
TF32_MATMUL_FLOPS = BF16_MATMUL_FLOPS / 2
FP32_FMA_FLOPS = SMS * 128 * 2 * CLOCK_HZ   # 128 FP32 lanes per SM, 2 FLOPs per FMA: 67 TFLOP/s
ISSUE_PER_CLOCK_PER_SM = 4           # warp-instructions: four schedulers, one issue each per clock
ISSUE_PER_S = ISSUE_PER_CLOCK_PER_SM * SMS * CLOCK_HZ
REGISTERS_PER_SM = 64 * 1024
REGISTER_ALLOCATION_UNIT = 256       # registers are allocated per warp in units of 256
MAX_REGISTERS_PER_THREAD = 255
SHARED_BYTES_PER_SM = 228 * 1024
SHARED_BYTES_PER_BLOCK = 227 * 1024  # the most one block may opt into
SHARED_RESERVED_PER_BLOCK = 1024     # the driver keeps 1 KB of shared memory per resident block
MAX_WARPS_PER_SM = 64
MAX_BLOCKS_PER_SM = 32
# Little's law: at copy bandwidth an SM moves 4.25 TB/s / 132 = 32 GB/s; with ~1.1 us of loaded DRAM
# latency that is ~35 KB of loads in flight per SM (../shared/PERFORMANCE.md: 30-40 KB).
BYTES_IN_FLIGHT_PER_SM = 35 * 1024
