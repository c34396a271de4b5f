"""The static model against real measurements: Liger-Kernel's committed H100 SXM benchmark rows.

`python -m bertfast.analysis.calibrate [--csv PATH] [--fit]` calls `bertfast.analysis.predict` on Liger's
own launchers (the installed `liger-kernel`, pinned in requirements-dev.txt) at each row's shapes with
gpu="h100", and prints predicted against measured for every usable row, with the median and worst
errors; `--fit` refits the model's two free constants (bertfast.analysis.gpus.FIT) to the rows.

The rows (benchmarks/calibration/liger-kernel-measured.csv: Liger's benchmark/data/all_benchmark_data.csv,
every committed version, for four kernel families; `source` names the commit of each row): triton's
do_bench medians, L2 flushed, of the module's forward as Liger's benchmark scripts build it:
  layer_norm           LigerLayerNorm(N) on x [4096, N] fp32 (rows of liger 0.6.0; compiled: 0.7.0, whose
                       kernel computes in fp32 and indexes rows in int64: the same memory traffic in fp32)
  fused_add_rms_norm   LigerFusedAddRMSNorm(H)(x, r) on [2048, H] fp32 (liger_fused_add_rms_norm), and
                       Liger's RMSNorm after a torch add and before a torch multiply (liger_rms_norm); 0.7.0
  megatron_rms_norm    Liger's RMSNorm on x [4096, 1, H] bf16 (rows of 0.8.0, whose rms_norm.py is 0.7.0's)
Not used: backward and full rows (do_bench times autograd's backward there, host overhead included: the
series stay flat at 120-300 us while the kernels' bytes grow 4x, so they measure the host, not the
kernels; and autograd's engine cannot run on fake CUDA tensors in a CPU build of torch); the
megatron_cross_entropy rows (liger 0.8.0's cross entropy differs from 0.7.0's, and the Megatron wrapper
measured is in no release installable here); other cards' rows; other providers' rows.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys

import torch

from bertfast.analysis import gpus

CSV = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks",
                   "calibration", "liger-kernel-measured.csv")
H100_NAME = "NVIDIA H100 80GB HBM3"
DTYPES = {"torch.float32": torch.float32, "torch.bfloat16": torch.bfloat16, "torch.float16": torch.float16}


def rows(path: str = CSV) -> list[dict]:
    """The usable rows (see the module docstring), each with its measured time in microseconds."""
    out = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if r["gpu_name"] != H100_NAME or r["kernel_operation_mode"] != "forward" or r["metric_unit"] != "ms":
                continue
            key = (r["kernel_name"], r["kernel_provider"])
            if key not in CASES:
                continue
            r = dict(r, config=json.loads(r["extra_benchmark_config_str"]), x=int(float(r["x_value"])),
                     measured_us=float(r["y_value_50"]) * 1e3)
            out.append(r)
    return out


def _layer_norm(row):
    from liger_kernel.transformers.layer_norm import LigerLayerNorm

    n, m = row["x"], row["config"]["M"]
    module = LigerLayerNorm(hidden_size=n, eps=row["config"]["eps"])
    return module, (torch.empty(m, n, dtype=DTYPES[row["config"]["dtype"]]),)


def _fused_add_rms_norm(row):
    from liger_kernel.transformers.fused_add_rms_norm import LigerFusedAddRMSNorm

    h, m = row["x"], row["config"]["M"]
    dtype = DTYPES[row["config"]["dtype"]]
    module = LigerFusedAddRMSNorm(hidden_size=h, eps=row["config"]["eps"])
    return module, (torch.empty(m, h, dtype=dtype), torch.empty(m, h, dtype=dtype))


class _AddThenRMSNorm(torch.nn.Module):
    """Liger's benchmark's AddLigerRMSNorm: a torch add, Liger's RMSNorm, a torch multiply by a weight."""

    def __init__(self, hidden: int, eps: float) -> None:
        from liger_kernel.transformers.rms_norm import LigerRMSNorm

        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(hidden))
        self.rms_norm = LigerRMSNorm(hidden, eps, in_place=False)

    def forward(self, x, r):
        s = x.to(torch.float32) + r.to(torch.float32)
        return self.weight * self.rms_norm(s).to(x.dtype), s.to(x.dtype)


def _add_then_rms_norm(row):
    h, m = row["x"], row["config"]["M"]
    dtype = DTYPES[row["config"]["dtype"]]
    return _AddThenRMSNorm(h, row["config"]["eps"]), (torch.empty(m, h, dtype=dtype), torch.empty(m, h, dtype=dtype))


def _megatron_rms_norm(row):
    from liger_kernel.transformers.rms_norm import LigerRMSNorm

    h, s, b = row["x"], row["config"]["S"], row["config"]["B"]
    return LigerRMSNorm(h, 1e-6).to(torch.bfloat16), (torch.empty(s, b, h, dtype=torch.bfloat16),)


CASES = {("layer_norm", "liger"): _layer_norm,
         ("fused_add_rms_norm", "liger_fused_add_rms_norm"): _fused_add_rms_norm,
         ("fused_add_rms_norm", "liger_rms_norm"): _add_then_rms_norm,
         ("megatron_rms_norm", "liger"): _megatron_rms_norm}


def raw_predictions(selected: list[dict]) -> list[list]:
    """Each row's launches predicted with no launch cost and full streaming efficiency (the fit's inputs)."""
    from bertfast.analysis.predict import predict

    bare = gpus.with_fit(gpus.H100, 0.0, 1.0)
    out = []
    for row in selected:
        fn, args = CASES[(row["kernel_name"], row["kernel_provider"])](row)
        with torch.no_grad():
            out.append(predict(fn, *args, gpu=bare, cuda=True, calibrated=False))
    return out


def combine(launches: list, launch_us: float, stream_efficiency: float) -> float:
    """A row's predicted microseconds from its launches' bare floors under the two constants."""
    from bertfast.analysis.sm90 import calibrated_us

    return sum(calibrated_us(p.floors, launch_us, stream_efficiency) for p in launches)


def errors(selected: list[dict], raw: list[list], launch_us: float, stream_efficiency: float) -> list[float]:
    return [combine(r, launch_us, stream_efficiency) / row["measured_us"] - 1 for row, r in zip(selected, raw)]


def fit(selected: list[dict], raw: list[list]) -> dict:
    best = None
    for launch in [x / 4 for x in range(0, 49)]:             # 0 to 12 us
        for eff in [x / 100 for x in range(60, 101)]:        # 60% to 100%
            e = errors(selected, raw, launch, eff)
            loss = sum(math.log1p(x) ** 2 for x in e)
            if best is None or loss < best[0]:
                best = (loss, launch, eff)
    return {"launch_us": best[1], "stream_efficiency": best[2]}


def report(selected: list[dict], raw: list[list], constants: dict) -> tuple[str, float, float]:
    lines = [f"{'kernel':<20} {'provider':<26} {'x':>6} {'launches':>8} {'measured us':>11} {'predicted us':>12} "
             f"{'error':>7}  bound"]
    errs = errors(selected, raw, constants["launch_us"], constants["stream_efficiency"])
    for row, r, e in zip(selected, raw, errs):
        predicted = combine(r, constants["launch_us"], constants["stream_efficiency"])
        bounds = ",".join(p.bound for p in r)
        lines.append(f"{row['kernel_name']:<20} {row['kernel_provider']:<26} {row['x']:>6} {len(r):>8} "
                     f"{row['measured_us']:>11.1f} {predicted:>12.1f} {e:>+7.1%}  {bounds}")
    median = statistics.median(abs(e) for e in errs)
    worst = max(abs(e) for e in errs)
    lines.append(f"{len(errs)} rows (H100 SXM, forward): median |error| {median:.1%}, worst {worst:.1%}; constants "
                 f"launch {constants['launch_us']:g} us, streaming {constants['stream_efficiency']:.0%} of "
                 f"{gpus.H100.COPY_BYTES_PER_S / 1e12:.2f} TB/s")
    return "\n".join(lines), median, worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bertfast.analysis.calibrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", default=CSV, help="the measured rows (default: benchmarks/calibration's copy)")
    parser.add_argument("--fit", action="store_true", help="refit FIT's constants to the rows and report with them")
    args = parser.parse_args(argv)
    selected = rows(args.csv)
    raw = raw_predictions(selected)
    constants = fit(selected, raw) if args.fit else gpus.FIT
    text, median, worst = report(selected, raw, constants)
    print(text)
    if not args.fit and abs(worst - gpus.FIT["worst_error"]) > 0.005:
        print(f"note: gpus.FIT records a worst error of {gpus.FIT['worst_error']:.1%}: update it to {worst:.1%}")
    return 0 if median <= 0.15 and worst <= 0.35 else 1


if __name__ == "__main__":
    sys.exit(main())
