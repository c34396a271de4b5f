"""Shared benchmark machinery: the device ceilings, one timing method, and the results table.

Every result records the time per call, the achieved GB/s or TFLOP/s and its fraction of the ceilings
measured in the same run (a large device copy; a large bf16 matmul on GPU, fp32 on CPU), the peak
memory, and the speedup over the eager baseline of the same case.

Timing: each pytest-benchmark round runs the function `k` times and then synchronises the device once;
warm-up calls keep compilation and autotuning out; time per call = the median round / k.
On the GPU, kernel benchmarks (graph=True) capture the k calls in a CUDA graph and time its replays:
that is the device time, free of Python launch overhead, which at these sizes (10-100 us kernels) would
otherwise be what is measured. Whole-model benchmarks (graph=False) time the eager loop, host overhead
included, as a user's training loop runs. Each result says which ("timing").
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field

import torch

MODE = os.environ.get("BERTFAST_BENCH_MODE", "full")  # full | reduced (the GPU check) | dry (plumbing only)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _median_seconds(fn, dev, k: int, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        sync(dev)
        start = time.perf_counter()
        for _ in range(k):
            fn()
        sync(dev)
        times.append((time.perf_counter() - start) / k)
    times.sort()
    return times[len(times) // 2]


def _capture(fn, k: int):
    """fn called k times, captured in a CUDA graph; None when fn cannot be captured (it syncs, say)."""
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(k):
                fn()
        graph.replay()
        torch.cuda.synchronize()
        return graph
    except Exception:  # noqa: BLE001 - any capture failure means: time the eager loop instead
        torch.cuda.synchronize()
        return None


@dataclass
class Ceilings:
    device_name: str
    copy_gbps: float
    matmul_tflops: float
    matmul_dtype: str

    @classmethod
    def measure(cls, dev: torch.device) -> "Ceilings":
        if dev.type == "cuda":
            n_bytes, mm, dtype = 2 << 30, 8192, torch.bfloat16
            name = torch.cuda.get_device_name(dev)
        else:
            n_bytes, mm, dtype = 256 << 20, 1024, torch.float32
            name = platform.processor() or platform.machine()
        if MODE == "dry":
            n_bytes, mm = 16 << 20, 256
        src = torch.randn(n_bytes // 4, device=dev)
        dst = torch.empty_like(src)
        t_copy = _median_seconds(lambda: dst.copy_(src), dev, k=5, rounds=5)
        a = torch.randn(mm, mm, device=dev, dtype=dtype)
        b = torch.randn(mm, mm, device=dev, dtype=dtype)
        t_mm = _median_seconds(lambda: a @ b, dev, k=5, rounds=5)
        del src, dst, a, b
        return cls(name, 2 * n_bytes / t_copy / 1e9, 2 * mm**3 / t_mm / 1e12, str(dtype).replace("torch.", ""))


@dataclass
class Result:
    group: str          # e.g. "fused_residual_layer_norm fwd" or "BertModel train step"
    case: str           # shape / configuration
    variant: str        # bertfast | eager | torch.compile | transformers eager | ...
    time_ms: float
    gbps: float | None = None
    tflops: float | None = None
    bandwidth_fraction: float | None = None
    flops_fraction: float | None = None
    peak_mem_mb: float | None = None
    speedup_vs_eager: float | None = None
    extra: dict = field(default_factory=dict)


class Recorder:
    def __init__(self, dev: torch.device, ceilings: Ceilings) -> None:
        self.dev = dev
        self.ceilings = ceilings
        self.results: list[Result] = []

    def measure(self, benchmark, group: str, case: str, variant: str, fn, *, bytes_moved: float | None = None,
                flops: float | None = None, baseline: str | None = "eager", extra: dict | None = None,
                graph: bool = True) -> Result:
        dev = self.dev
        fn()  # warm-up outside the timed rounds (compilation, autotuning, allocator)
        sync(dev)
        once = _median_seconds(fn, dev, k=1, rounds=3)
        k = max(1, min(100, int(2e-3 / max(once, 1e-6))))  # ~2 ms per round
        rounds = {"full": 15, "reduced": 7, "dry": 2}[MODE]
        extra = dict(extra or {})
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
            base_mem = torch.cuda.memory_allocated(dev)
        cuda_graph = _capture(fn, k) if graph and dev.type == "cuda" else None
        extra["timing"] = "cuda graph" if cuda_graph is not None else "host loop"

        def timed():
            if cuda_graph is not None:
                cuda_graph.replay()
            else:
                for _ in range(k):
                    fn()
            sync(dev)

        benchmark.group = group
        benchmark.extra_info.update(case=case, variant=variant)
        benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=1)
        seconds = benchmark.stats.stats.median / k
        peak = None
        if dev.type == "cuda":
            peak = (torch.cuda.max_memory_allocated(dev) - base_mem) / 2**20
        res = Result(group, case, variant, seconds * 1e3, peak_mem_mb=peak, extra=extra)
        if bytes_moved:
            res.gbps = bytes_moved / seconds / 1e9
            res.bandwidth_fraction = res.gbps / self.ceilings.copy_gbps
        if flops:
            res.tflops = flops / seconds / 1e12
            res.flops_fraction = res.tflops / self.ceilings.matmul_tflops
        if baseline is not None and variant != baseline:
            base = self.find(group, case, baseline)
            if base is not None:
                res.speedup_vs_eager = base.time_ms / res.time_ms
        self.results.append(res)
        benchmark.extra_info.update({k_: v for k_, v in asdict(res).items() if v is not None and k_ != "extra"})
        self.save()  # after every result, so a run cut short still leaves what it measured
        return res

    def save(self) -> None:
        out = os.environ.get("BERTFAST_BENCH_JSON")
        if out:
            with open(out, "w") as f:
                json.dump(self.to_json(), f, indent=1)
        md = os.environ.get("BERTFAST_BENCH_SUMMARY")
        if md:
            with open(md, "w") as f:
                f.write(self.table() + "\n")

    def find(self, group: str, case: str, variant: str) -> Result | None:
        for r in self.results:
            if (r.group, r.case, r.variant) == (group, case, variant):
                return r
        return None

    # Reports ---------------------------------------------------------------------------------------
    def table(self) -> str:
        c = self.ceilings
        lines = [f"device: {c.device_name}; ceilings measured in this run: copy {c.copy_gbps:.0f} GB/s, "
                 f"{c.matmul_dtype} matmul {c.matmul_tflops:.1f} TFLOP/s; mode {MODE}", "",
                 "| group | case | variant | ms | GB/s (% copy) | TFLOP/s (% matmul) | peak MB | vs eager |",
                 "|---|---|---|---:|---:|---:|---:|---:|"]
        for r in self.results:
            bw = f"{r.gbps:.0f} ({100 * r.bandwidth_fraction:.0f}%)" if r.gbps else ""
            fl = f"{r.tflops:.1f} ({100 * r.flops_fraction:.0f}%)" if r.tflops else ""
            mem = f"{r.peak_mem_mb:.0f}" if r.peak_mem_mb is not None else ""
            sp = f"{r.speedup_vs_eager:.2f}x" if r.speedup_vs_eager else ""
            extra = "".join(f" {k}={v}" for k, v in r.extra.items() if k != "timing")
            extra += " (host loop)" if r.extra.get("timing") == "host loop" and self.dev.type == "cuda" else ""
            lines.append(f"| {r.group} | {r.case} | {r.variant}{extra} | {r.time_ms:.4f} | {bw} | {fl} | {mem} | {sp} |")
        return "\n".join(lines)

    def to_json(self) -> dict:
        try:
            commit = os.environ.get("BERTFAST_COMMIT") or subprocess.run(
                ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            commit = "unknown"
        import importlib.metadata as md

        def version(name):
            try:
                return md.version(name)
            except md.PackageNotFoundError:
                return None

        return {
            "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
            "mode": MODE,
            "device": asdict(self.ceilings),
            "versions": {"torch": torch.__version__, "triton": version("triton"),
                         "transformers": version("transformers"), "python": platform.python_version()},
            "results": [asdict(r) for r in self.results],
        }


def sizes(full: list, reduced: list, dry: list) -> list:
    """Problem sizes for the mode; on a CPU the full mode uses the reduced sizes (minutes, not hours)."""
    mode = "reduced" if MODE == "full" and not torch.cuda.is_available() else MODE
    return {"full": full, "reduced": reduced, "dry": dry}[mode]


_COMPILED: dict = {}


def variant_fn(variant: str, eager, bertfast_fn):
    """The function a kernel benchmark times: the eager code, torch.compile of it (compiled once per
    eager function), or bertfast's op."""
    if variant == "eager":
        return eager
    if variant == "bertfast":
        return bertfast_fn
    if eager not in _COMPILED:
        _COMPILED[eager] = torch.compile(eager)
    return _COMPILED[eager]
