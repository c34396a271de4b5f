"""Every Triton kernel compiles for sm_90 (no GPU needed) at the launch configurations used, ptxas
reports no register spills, no kernel asks for more shared memory than sm_90 gives a block, and the
fp16/bf16 (and TF32) attention matmuls run on tensor cores. Runs in a subprocess: under TRITON_INTERPRET=1
(set for the rest of the suite) @triton.jit gives interpreter functions, which cannot be compiled."""
import os
import subprocess
import sys


def test_compiles_for_sm90_without_spills():
    env = dict(os.environ, TRITON_INTERPRET="0")
    out = subprocess.run([sys.executable, "-m", "bertfast.kernels.sm90"], capture_output=True, text=True, env=env)
    print(out.stdout, out.stderr)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "spills in: none" in out.stdout
    assert "shared memory: none" in out.stdout
    attention = [line.split() for line in out.stdout.splitlines() if line.startswith("attention_")]
    expected = {"fp32": {"fma"}, "tf32": {"mma", "wgmma"}, "bf16": {"wgmma"}, "fp16": {"wgmma"}}
    assert attention and all(row[-1] in expected[row[1]] for row in attention), \
        "fp16/bf16 attention matmuls must lower to Hopper's wgmma, TF32 ones to tensor cores, exact fp32 to FMA"
    assert "residual_layer_norm_bwd" in out.stdout and "bias_gelu_fwd" in out.stdout
