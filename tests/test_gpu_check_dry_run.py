"""benchmarks/gpu_check.sh --dry-run: the GPU check's plumbing (environment, test collection, benchmark
suite in its tiny mode, results.json and summary.md, the static model's prediction next to each measured
kernel) works on a CPU machine."""
import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run(tmp_path):
    # (not this run's pytest-xdist worker variables either: pytest-benchmark then turns itself off)
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRITON_INTERPRET", "BERTFAST_BACKEND") and not k.startswith("PYTEST_XDIST")}
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(tmp_path), "--dry-run"],
                         capture_output=True, text=True, env=env, timeout=600)
    print(out.stdout[-5000:], out.stderr[-2000:])
    assert out.returncode == 0
    results = json.loads((tmp_path / "results.json").read_text())
    groups = {r["group"] for r in results["results"]}
    assert {"embedding_sum fwd", "BertModel forward", "BertModel train step"} <= groups
    assert results["device"]["copy_gbps"] > 0 and results["commit"]
    assert "| group |" in (tmp_path / "summary.md").read_text()
    compared = json.loads((tmp_path / "predicted_vs_measured.json").read_text())
    assert {r["group"].split()[0] for r in compared} >= {"fused_residual_layer_norm", "fused_bias_gelu",
                                                         "attention", "embedding_sum"}
    assert all(r["predicted_ms"] > 0 for r in compared)
