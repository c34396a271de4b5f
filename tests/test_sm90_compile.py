"""Every Triton kernel compiles for sm_90 (no GPU needed) at the launch configurations used, ptxas
reports no register spills, and no kernel asks for more shared memory than sm_90 gives a block. Runs in
a subprocess: under TRITON_INTERPRET=1 (set for the rest of the suite) @triton.jit gives interpreter
functions, which cannot be compiled."""
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
    assert "residual_layer_norm_bwd" in out.stdout and "bias_gelu_fwd" in out.stdout
