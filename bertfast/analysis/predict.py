"""`bertfast.analysis.predict(fn, *args, gpu="h200", **kwargs)`: the predicted time of every kernel a
function launches on an H100 or H200, without a GPU.

`fn(*args, **kwargs)` runs inside `gpu_trace` with its tensor arguments standing for CUDA tensors: meta
tensors by default (bertfast's ops take their GPU path for them), or, with `cuda=True`, fake CUDA tensors
(FakeTensorMode) for code that checks `tensor.device.type == "cuda"` or asks torch.cuda for the device's
properties, as third-party launchers such as Liger-Kernel's do. Every Triton launch is compiled for sm_90
exactly as the JIT would (its specialisation included) and predicted from its SASS by the static model
(bertfast.analysis.sm90): floors for memory (bytes / the copy bandwidth a streaming kernel sustains),
loads in flight (Little's law), instruction issue, each pipe (MUFU, FP32, integer, conversions,
load/store), and the tensor cores; the kernel takes the largest, and every launch pays a fixed cost on
the device timeline. Torch kernels in the trace (copies, fills, reductions, elementwise, matmuls) and the
extension's are predicted from the bytes they read and write, matmuls also from their FLOPs at the bf16
matmul rate (the rate cuBLAS reaches on a large bf16 matmul; fp32 and small matmuls are slower), and
torch's fused attention (SDPA's flash and memory-efficient kernels) from its FLOPs at the published rate
of FlashAttention-2 (gpus.sdpa_tflops: an upper bound on their speed).

Minimum bytes: bertfast's kernels have a model of their own (sm90._work); any other kernel is charged
each tensor argument once (read or written), and its loops' trips are estimated as the bytes each program
moves over the bytes one trip of its loop loads.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from unittest import mock

import torch

from bertfast.analysis import gpus, sm90
from bertfast.analysis.trace import ADDMMS, SDPA_BACKWARDS, SDPA_FORWARDS, Launch, gpu_trace, on_device


@dataclass
class LaunchPrediction:
    name: str            # the Triton kernel's name, or the torch op's
    kind: str            # "triton", "torch" or "extension"
    us: float            # predicted microseconds, the launch's fixed cost included
    bound: str           # the largest floor
    floors: dict = field(default_factory=dict)  # floor name -> microseconds (the launch cost as "launch")
    bytes: float = 0.0   # the bytes the model charges
    flops: float = 0.0
    grid: tuple = ()
    detail: object = field(default=None, repr=False)  # sm90.Prediction, for Triton launches


def _stand_in(tree, cuda: bool):
    """Tensors of any device -> meta tensors (or fake CUDA ones) of the same shape, dtype, strides and
    requires_grad; other values unchanged."""
    if isinstance(tree, torch.Tensor):
        if on_device(tree):
            return tree
        t = torch.empty_strided(tree.shape, tree.stride(), dtype=tree.dtype, device="cuda" if cuda else "meta")
        return t.requires_grad_(tree.requires_grad) if tree.is_floating_point() else t
    if isinstance(tree, (list, tuple)):
        return type(tree)(_stand_in(x, cuda) for x in tree)
    if isinstance(tree, dict):
        return {k: _stand_in(v, cuda) for k, v in tree.items()}
    return tree


class _Properties:
    def __init__(self, gpu: gpus.GPU) -> None:
        self.name = gpu.NAME
        self.multi_processor_count = gpu.SMS
        self.major, self.minor = 9, 0
        self.total_memory = 80 << 30
        self.max_shared_memory_per_block_optin = gpu.SHARED_BYTES_PER_BLOCK
        self.regs_per_multiprocessor = gpu.REGISTERS_PER_SM
        self.warp_size = 32


@contextlib.contextmanager
def _fake_cuda(gpu: gpus.GPU):
    """FakeTensorMode for CUDA tensors on a machine without one, and torch.cuda answering for `gpu`."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    patches = [mock.patch("torch.cuda.get_device_properties", lambda *a, **k: _Properties(gpu)),
               mock.patch("torch.cuda.is_available", lambda: True),
               mock.patch("torch.cuda.device_count", lambda: 1),
               mock.patch("torch.cuda.current_device", lambda: 0),
               mock.patch("torch.cuda.get_device_capability", lambda *a, **k: (9, 0)),
               mock.patch("torch.cuda.device", lambda *a, **k: contextlib.nullcontext())]
    with contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
        yield


def _generic_work(launch: Launch, binary: sm90.Binary) -> sm90.Work:
    """Bytes and loop trips of a kernel sm90 has no model of: each tensor argument once; trips from the
    bytes a program moves over what one trip of its loop loads."""
    tensors = {id(t): t for t in (*launch.args, *launch.kwargs.values()) if isinstance(t, torch.Tensor)}
    moved = float(sum(t.numel() * t.element_size() for t in tensors.values()))
    programs = max(1, launch.grid[0] * launch.grid[1] * launch.grid[2])
    per_program = moved / programs
    sass = binary.sass
    loops = sass.outer_loops()
    trips = 0.0
    if loops:
        bits = (sm90.global_access_bits(opcode) for first, last in loops
                for _, opcode, _ in sass.instructions[first:last + 1])
        per_trip = sum(b / 8 * 32 * binary.warps for b in bits if b)
        trips = max(1.0, per_program / per_trip) if per_trip else 1.0
    in_flight = per_program if not loops else per_program / max(trips, 1.0)
    return sm90.Work(moved, trips=trips, in_flight_per_block=in_flight)


_MATMULS = {"mm", "addmm", "addmm_", "bmm", "baddbmm", "matmul", "_scaled_mm"}


def _c_pass_us(event: Launch, gpu: gpus.GPU) -> float:
    """What a matmul's 2-D C (addmm's self, added with beta = 1) costs beyond the tensor floor: its read in
    cuBLAS's epilogue, charged in series with the main loop (each output tile loads its C after its
    k-loop; an uncalibrated, conservative assumption), and for an out-of-place addmm also torch's copy of
    C into the output first (at::native::copy_ in addmm_out_cuda_impl: a pass of its own). A 1-D C, a bias,
    is cuBLASLt's bias epilogue: nothing here."""
    if event.name not in ADDMMS or not event.args or not isinstance(event.args[0], torch.Tensor) \
            or event.args[0].dim() != 2:
        return 0.0
    c = event.args[0].numel() * event.args[0].element_size()
    passes = 1 if event.name == "addmm_" else 3  # addmm: the copy's read and write, then the epilogue's read
    return passes * c / (gpu.COPY_BYTES_PER_S * gpu.STREAM_EFFICIENCY) * 1e6 \
        + (gpu.LAUNCH_US if event.name == "addmm" else 0.0)


def _torch_prediction(event: Launch, gpu: gpus.GPU) -> LaunchPrediction:
    moved = float(event.nbytes_read + event.nbytes_written)
    floors = {"memory": moved / (gpu.COPY_BYTES_PER_S * gpu.STREAM_EFFICIENCY) * 1e6}
    flops = 0.0
    if event.name in _MATMULS and event.flops:
        flops = event.flops
        floors["tensor"] = flops / gpu.BF16_MATMUL_FLOPS * 1e6 + _c_pass_us(event, gpu)
    elif event.name in SDPA_FORWARDS + SDPA_BACKWARDS and event.flops:  # at the published rate (gpus.sdpa_tflops)
        flops = event.flops
        backward = event.name in SDPA_BACKWARDS
        key = event.args[2 if backward else 1]  # [B, heads, S_k, D]
        forward = event.name[:-len("_backward")] if backward else event.name
        floors["attention"] = flops / (gpus.sdpa_tflops(forward, key.shape[-2], backward) * 1e12) * 1e6
    bound = max(floors, key=floors.get)
    floors["launch"] = gpu.LAUNCH_US
    return LaunchPrediction(event.name, event.kind, floors[bound] + gpu.LAUNCH_US, bound, floors, moved, flops)


def _triton_prediction(event: Launch, gpu: gpus.GPU, binaries: dict) -> LaunchPrediction:
    key = sm90.variant_key(event)
    if key not in binaries:
        binaries[key] = sm90.Binary.of_triton(event)
    binary = binaries[key]
    try:
        work = sm90._work(event, binary)
    except KeyError:
        work = _generic_work(event, binary)
    scenario = sm90.Scenario(event.name, "", lambda: None)
    p = sm90.predict(scenario, event, binary, gpu, work)
    floors = p.floors()
    bound = max(floors, key=floors.get)
    floors["launch"] = gpu.LAUNCH_US
    return LaunchPrediction(event.name, "triton", floors[bound] + gpu.LAUNCH_US, bound, floors, work.bytes,
                            work.flops, event.grid, p)


def predict(fn, *args, gpu: str | gpus.GPU = "h200", cuda: bool = False, calibrated: bool = True,
            host_int: int = 0, host_copy=None, **kwargs) -> list[LaunchPrediction]:
    """Runs fn(*args, **kwargs) with its tensors standing for CUDA tensors (see the module docstring) and
    returns the prediction of every kernel it launches, in launch order. gpu: "h200", "h100" or a
    gpus.GPU; calibrated: the launch cost and streaming efficiency fitted to measured kernels
    (bertfast.analysis.gpus.FIT, from bertfast.analysis.calibrate) rather than the bare roofline;
    host_int, host_copy: what a host sync reads (trace.gpu_trace)."""
    target = gpus.get(gpu)
    if calibrated:
        target = gpus.with_fit(target, gpus.FIT["launch_us"], gpus.FIT["stream_efficiency"])
    with contextlib.ExitStack() as stack:
        if cuda:
            stack.enter_context(_fake_cuda(target))
        if isinstance(fn, torch.nn.Module):  # its parameters and buffers stand in for CUDA ones too
            state = {**dict(fn.named_parameters()), **dict(fn.named_buffers())}
            state = {k: _stand_in(v, cuda) for k, v in state.items()}
            module, fn = fn, lambda *a, **k: torch.func.functional_call(module, state, a, k)
        events = stack.enter_context(gpu_trace(host_int=host_int, host_copy=host_copy))
        fn(*_stand_in(args, cuda), **_stand_in(kwargs, cuda))
    binaries: dict = {}
    out = []
    for event in events:
        if event.kind == "triton":
            out.append(_triton_prediction(event, target, binaries))
        elif event.kind in ("torch", "extension"):
            out.append(_torch_prediction(event, target))
    return out


def total_us(predictions: list[LaunchPrediction]) -> float:
    return sum(p.us for p in predictions)
