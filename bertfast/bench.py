"""`python -m bertfast bench`: run the benchmark suite on this machine (or read a results JSON), print the
comparison table and write a PNG chart of the speedups over the eager baseline."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_suite(mode: str, out_json: str) -> int:
    bench_dir = os.path.join(REPO, "benchmarks")
    if not os.path.isdir(bench_dir):
        raise SystemExit("the benchmarks/ folder is not next to the bertfast package: run from a source checkout, "
                         "or pass --results FILE")
    env = dict(os.environ, BERTFAST_BENCH_MODE=mode, BERTFAST_BENCH_JSON=out_json)
    env.pop("TRITON_INTERPRET", None)
    return subprocess.call([sys.executable, "-m", "pytest", bench_dir, "--benchmark-only", "-q", "-p", "no:cacheprovider",
                            "--benchmark-disable-gc", "--benchmark-columns=median"], cwd=REPO, env=env)


def table(results: dict) -> str:
    dev = results["device"]
    lines = [f"{dev['device_name']} (copy {dev['copy_gbps']:.0f} GB/s, {dev['matmul_dtype']} matmul "
             f"{dev['matmul_tflops']:.1f} TFLOP/s), commit {results['commit'][:10]}, {results['date']}", ""]
    width = max(len(r["group"] + " " + r["case"]) for r in results["results"]) + 2
    for r in results["results"]:
        rate = f"{r['gbps']:.0f} GB/s" if r.get("gbps") else (f"{r['tflops']:.1f} TFLOP/s" if r.get("tflops") else "")
        speed = f"{r['speedup_vs_eager']:.2f}x" if r.get("speedup_vs_eager") else "baseline"
        lines.append(f"{(r['group'] + ' ' + r['case']):<{width}} {r['variant']:<34} {r['time_ms']:10.4f} ms "
                     f"{rate:>16} {speed:>9}")
    return "\n".join(lines)


def chart(results: dict, path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart written (pip install matplotlib)")
        return False
    speedups = defaultdict(dict)
    for r in results["results"]:
        if r.get("speedup_vs_eager"):
            speedups[f"{r['group']}\n{r['case']}"][r["variant"]] = r["speedup_vs_eager"]
    if not speedups:
        print("no speedups to chart")
        return False
    variants = sorted({v for d in speedups.values() for v in d})
    labels = list(speedups)
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(labels) * max(1, len(variants)) + 1.5))
    height = 0.8 / len(variants)
    for i, variant in enumerate(variants):
        ys = [j + i * height for j in range(len(labels))]
        ax.barh(ys, [speedups[label].get(variant, 0) for label in labels], height=height, label=variant)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(labels))])
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("speedup over the eager baseline (higher is better)")
    ax.set_title(f"bertfast on {results['device']['device_name']} (commit {results['commit'][:10]})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(mode: str, results_path: str | None, chart_path: str) -> int:
    if results_path is None:
        results_path = os.path.join(tempfile.mkdtemp(prefix="bertfast-bench-"), "results.json")
        code = run_suite(mode, results_path)
        if not os.path.exists(results_path):
            return code or 1
    with open(results_path) as f:
        results = json.load(f)
    print(table(results))
    if results.get("mode", mode) == "dry":
        print("\nNOTE: dry mode is a plumbing check (tiny shapes, one round): these timings and ratios mean nothing.")
    if chart(results, chart_path):
        print(f"chart written to {chart_path}")
    return 0
