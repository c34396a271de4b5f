"""Compile every kernel for sm_90 without a GPU and read ptxas' resource report (registers, spills),
the shared memory asked for, and how the matmuls were lowered (tensor-core wgmma/mma or CUDA-core FMA).

`python -m bertfast.kernels.sm90` prints the table; tests/test_sm90_compile.py asserts no spills, shared
memory within the limit, and tensor cores for the fp16/bf16 attention matmuls.
The configurations are the ones the launchers pick (bertfast.kernels.launch) at BERT's sizes.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from bertfast.kernels import launch

TARGET = GPUTarget("cuda", 90, 32)
_TRITON_TYPES = {"fp32": "*fp32", "tf32": "*fp32", "fp16": "*fp16", "bf16": "*bf16"}  # tf32: fp32 data, TF32 dots


SM90_MAX_SHARED_BYTES = 227 * 1024  # the most shared memory one block may opt into on sm_90 (H100/H200)


@dataclass
class Report:
    name: str
    registers: int
    spill_stores: int
    spill_loads: int
    shared_bytes: int
    matmul: str  # how tl.dot was lowered: "wgmma" / "mma" (tensor cores), "fma" (CUDA cores), "" (no dot)

    def row(self) -> str:
        return (f"{self.name:<58} regs {self.registers:>3}  spill stores {self.spill_stores:>4}B  "
                f"spill loads {self.spill_loads:>4}B  shared {self.shared_bytes:>6}B  {self.matmul}")


def matmul_kind(ptx: str, has_dot: bool) -> str:
    if "wgmma.mma_async" in ptx:
        return "wgmma"
    if re.search(r"\bmma\.sync", ptx):
        return "mma"
    return "fma" if has_dot else ""


def _ptxas() -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def compile_report(name: str, fn, signature: dict, constexprs: dict, num_warps: int, num_stages: int = 3) -> Report:
    sig = dict(signature)
    for key in constexprs:
        sig[key] = "constexpr"
    compiled = triton.compile(ASTSource(fn, sig, constexprs), target=TARGET,
                              options={"num_warps": num_warps, "num_stages": num_stages})
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "k.ptx")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        out = subprocess.run([_ptxas(), "-v", "--gpu-name", "sm_90a" if "sm_90a" in compiled.asm["ptx"] else "sm_90",
                              ptx, "-o", os.path.join(tmp, "k.cubin")], capture_output=True, text=True, check=True)
    text = out.stdout + out.stderr
    regs = int(re.search(r"Used (\d+) registers", text).group(1))
    stores, loads = (int(x) for x in re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text).groups())
    has_dot = name.startswith("attention")  # the only kernels with matmuls (tl.dot)
    return Report(name, regs, stores, loads, compiled.metadata.shared, matmul_kind(compiled.asm["ptx"], has_dot))


def _ptr(dtype: str) -> str:
    return _TRITON_TYPES[dtype]


def cases():
    """(name, fn, signature, constexprs, num_warps, num_stages) for each kernel at the launch configurations used."""
    from bertfast.kernels import attention, bias_gelu, embedding_layer_norm, layer_norm

    out = []
    for dtype in ("fp32", "bf16"):
        for n in (3072, 4096, 1000):
            bm, bn, w = launch.elementwise_config(n)
            out.append((f"bias_gelu_fwd {dtype} n={n}", bias_gelu.bias_gelu_fwd_kernel,
                        {"X": _ptr(dtype), "B": _ptr(dtype), "Y": _ptr(dtype), "M": "i32", "N": "i32"},
                        {"BLOCK_M": bm, "BLOCK_N": bn, "APPROX_TANH": False}, w, 3))
            bm, bn, w = launch.column_reduction_config(n)
            out.append((f"bias_gelu_bwd {dtype} n={n} tanh", bias_gelu.bias_gelu_bwd_kernel,
                        {"DY": _ptr(dtype), "X": _ptr(dtype), "B": _ptr(dtype), "DX": _ptr(dtype),
                         "DB_PARTIAL": "*fp32", "M": "i32", "N": "i32"},
                        {"BLOCK_M": bm, "BLOCK_N": bn, "APPROX_TANH": True}, w, 3))
        for n in (384, 768, 1024, 4096, 8192):
            bn, w = launch.row_config(n)
            act = _ptr(dtype)
            out.append((f"residual_layer_norm_fwd {dtype} n={n} dropout", layer_norm.residual_layer_norm_fwd_kernel,
                        {"X": act, "R": act, "W": "*fp32", "B": "*fp32", "Y": act, "MEAN": "*fp32", "RSTD": "*fp32",
                         "N": "i32", "eps": "fp32", "p": "fp32", "seed": "i32"},
                        {"BLOCK_N": bn, "HAS_RESIDUAL": True, "HAS_DROPOUT": True, "HAS_WEIGHT": True, "HAS_BIAS": True}, w, 3))
            out.append((f"residual_layer_norm_bwd {dtype} n={n} dropout", layer_norm.residual_layer_norm_bwd_kernel,
                        {"DY": act, "X": act, "R": act, "W": "*fp32", "MEAN": "*fp32", "RSTD": "*fp32", "DH": act,
                         "DX": act, "DW_PARTIAL": "*fp32", "DB_PARTIAL": "*fp32", "M": "i32", "N": "i32", "p": "fp32",
                         "seed": "i32"},
                        {"BLOCK_N": bn, "HAS_RESIDUAL": True, "HAS_DROPOUT": True, "HAS_WEIGHT": True,
                         "WRITE_DX": True, "PARTIALS_IN_MEMORY": launch.partials_in_memory(bn)}, w, 3))
    for dtype in ("fp32", "bf16"):
        for n in (768, 1024):
            bn, w = launch.row_config(n)
            act = _ptr(dtype)
            out.append((f"embedding_layer_norm_fwd {dtype} n={n}", embedding_layer_norm.embedding_layer_norm_fwd_kernel,
                        {"IDS": "*i64", "TYPE_IDS": "*i64", "POS_IDS": "*i64", "WORD": act, "TYPE": act, "POS": act,
                         "W": "*fp32", "B": "*fp32", "Y": act, "N": "i32", "eps": "fp32"},
                        {"BLOCK_N": bn, "HAS_WEIGHT": True, "HAS_BIAS": True}, w, 3))
    attention_cases = [(d, h, True) for d, h in (("bf16", 64), ("bf16", 128), ("fp16", 64), ("fp32", 64), ("fp32", 128),
                                                 ("tf32", 64))]
    attention_cases += [("bf16", 64, False), ("bf16", 128, False), ("fp32", 64, False)]  # padded, key mask
    for dtype, head_dim, varlen in attention_cases:
        import torch

        cfg = launch.attention_config(head_dim, {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
                                                 "tf32": torch.float32}[dtype])
        act = _ptr(dtype)
        strides = {n: "i32" for n in ("stride_b", "stride_s", "stride_h", "o_stride_b", "o_stride_s", "o_stride_h",
                                      "stride_mb", "H", "S")}
        flags = {"HEAD_DIM": head_dim, "VARLEN": varlen, "HAS_MASK": not varlen, "HAS_DROPOUT": True, "DOT_FP32": False,
                 "IEEE": dtype == "fp32"}
        mode = "varlen" if varlen else "padded+mask"
        base = {"MASK": "*i8", "CU": "*i32", "sm_scale": "fp32", "p": "fp32", "seed": "i32"}
        out.append((f"attention_fwd {dtype} d={head_dim} {mode} dropout", attention.attention_fwd_kernel,
                    {"Q": act, "K": act, "V": act, "O": act, "LSE": "*fp32", **base, **strides},
                    {"BLOCK_M": cfg.fwd_m, "BLOCK_N": cfg.fwd_n, **flags}, cfg.fwd_warps, cfg.fwd_stages))
        out.append((f"attention_bwd_dkdv {dtype} d={head_dim} {mode} dropout", attention.attention_bwd_dkdv_kernel,
                    {"Q": act, "K": act, "V": act, "DO": act, "DK": act, "DV": act, "LSE": "*fp32", "DELTA": "*fp32",
                     **base, **strides},
                    {"BLOCK_M": cfg.bwd_m, "BLOCK_N": cfg.bwd_n, **flags}, cfg.bwd_warps, cfg.bwd_stages))
        out.append((f"attention_bwd_dq {dtype} d={head_dim} {mode} dropout", attention.attention_bwd_dq_kernel,
                    {"Q": act, "K": act, "V": act, "DO": act, "DQ": act, "LSE": "*fp32", "DELTA": "*fp32",
                     **base, **strides},
                    {"BLOCK_M": cfg.bwd_n, "BLOCK_N": cfg.bwd_m, **flags}, cfg.bwd_warps, cfg.bwd_stages))
    return out


def all_reports() -> list[Report]:
    return [compile_report(*case) for case in cases()]


if __name__ == "__main__":
    reports = all_reports()
    for r in reports:
        print(r.row())
    spilled = [r.name for r in reports if r.spill_stores or r.spill_loads]
    # A kernel asking for more shared memory than a block may have fails at launch ("out of resources"),
    # which only a GPU would show: check it here against sm_90's limit.
    too_big = [r.name for r in reports if r.shared_bytes > SM90_MAX_SHARED_BYTES]
    print(f"{len(reports)} kernels compiled for sm_90; spills in: {spilled or 'none'}; "
          f"over {SM90_MAX_SHARED_BYTES} B of shared memory: {too_big or 'none'}")
    raise SystemExit(1 if spilled or too_big else 0)
