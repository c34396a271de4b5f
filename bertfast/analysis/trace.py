"""Run bertfast's GPU code path without a GPU, and record what it would do on one.

Inside `gpu_trace()`, tensors on the `meta` device stand for CUDA tensors: the ops pick their CUDA path
(Triton kernels, the CUDA extension) for them, every Triton launch is recorded instead of run (with its
grid, its arguments and the JIT's specialisation for sm_90), and a TorchDispatchMode records every
other thing a GPU would do: allocations (and whether they were zero-filled), torch kernels with the
bytes they read and write, calls into the compiled extension, copies between host and device, and host
synchronisations (`.item()`, `.tolist()`, `bool(tensor)`, `nonzero`).

The same record serves two proofs: bertfast.analysis.sm90 compiles exactly the launched variants for its
static roofline model, and bertfast.analysis.traffic checks each op's allocations, launches and syncs.
A value a host sync would read is not known on meta tensors: integer syncs (`.item()`) return
`host_int` (say, the sequence length, for the longest-sequence sync of padding-free execution), boolean
ones False, copies to the host zeros (or what `host_copy` makes of the meta tensor), and `nonzero`
assumes every element is non-zero.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from bertfast import _backend

aten = torch.ops.aten


@dataclass
class Launch:
    """One recorded event. kind: 'triton' (a Triton kernel), 'extension' (bertfast._C), 'torch' (a torch
    kernel: compute, fill or copy), 'alloc' (memory only), 'sync' (the host waits for the device)."""
    kind: str
    name: str
    nbytes_read: int = 0
    nbytes_written: int = 0
    nbytes_allocated: int = 0  # device memory this event allocates (allocations and fills)
    zero_filled: bool = False  # an allocation whose contents are set by a fill kernel (zeros, full, ...)
    grid: tuple = ()
    kernel: object = None  # the JITFunction, for triton launches
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    # triton launches: made under launch.device_guard of a tensor of the launch (its device current)
    device_guarded: bool = False
    flops: float = 0.0  # torch matmuls: 2 x multiply-adds

    def bound_args(self) -> dict:
        """Every parameter of a Triton kernel by name (positional and keyword, constexprs included)."""
        names = [p.name for p in self.kernel.params]
        out = dict(zip(names, self.args))
        out.update({k: v for k, v in self.kwargs.items() if k in names})
        return out


class _Pointer:
    """What Triton's specialisation reads from a tensor: its dtype and its address. CUDA allocations are
    256-byte aligned, so a meta tensor's address is its storage offset in bytes."""

    def __init__(self, t: torch.Tensor) -> None:
        self.dtype = t.dtype
        self._address = 256 * 1024 + t.storage_offset() * t.element_size()

    def data_ptr(self) -> int:
        return self._address


def specialisation(launch: Launch, target):
    """(signature, constexprs, attrs, options) exactly as triton's JIT derives them when it launches
    `launch` on `target` (a triton GPUTarget): tt.divisibility=16 on 16-byte-aligned pointers and on
    integers divisible by 16, integers equal to 1 made constants."""
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = launch.kernel
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    args = [_Pointer(a) if isinstance(a, torch.Tensor) else a for a in launch.args]
    kwargs = {k: (_Pointer(v) if isinstance(v, torch.Tensor) else v) for k, v in launch.kwargs.items()}
    kwargs.setdefault("debug", False)
    bound, spec, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, options)
    return signature, constexprs, attrs, options


def on_device(t: torch.Tensor) -> bool:
    """A tensor standing for device memory: a meta tensor, or a fake CUDA tensor (FakeTensorMode)."""
    return t.device.type == "meta" or type(t).__name__ == "FakeTensor"


def _nbytes(t) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


def _kept(tree, memo: dict):
    """What a recorded event keeps of its arguments: each tensor as a meta tensor of the same shape,
    strides, storage offset and dtype (one per distinct tensor), never the tensor itself. A record that held
    the real tensors would keep them alive past their last use, and autograd copies a gradient that
    something else still references into .grad (AccumulateGrad clones instead of taking it): the trace
    would show copies a real step does not make."""
    if isinstance(tree, torch.Tensor):
        if id(tree) not in memo:
            extent = tree.storage_offset() + sum((n - 1) * st for n, st in zip(tree.shape, tree.stride())) + 1
            with _disable_current_modes():  # (not an allocation of the traced code)
                base = torch.empty(extent if tree.numel() else tree.storage_offset(), dtype=tree.dtype, device="meta")
                memo[id(tree)] = base.as_strided(tree.shape, tree.stride(), tree.storage_offset())
        return memo[id(tree)]
    if isinstance(tree, (list, tuple)):
        return type(tree)(_kept(x, memo) for x in tree)
    if isinstance(tree, dict):
        return {k: _kept(v, memo) for k, v in tree.items()}
    return tree


def _tensors(tree) -> list[torch.Tensor]:
    out = []
    if isinstance(tree, torch.Tensor):
        out.append(tree)
    elif isinstance(tree, (list, tuple)):
        for x in tree:
            out.extend(_tensors(x))
    elif isinstance(tree, dict):
        for x in tree.values():
            out.extend(_tensors(x))
    return out


def _flops_of(name: str, args: tuple) -> float:
    """FLOPs of a torch matmul from its arguments' shapes (2 per multiply-add), or of torch's fused
    attention (SDPA_FORWARDS, SDPA_BACKWARDS)."""
    shapes = [a.shape for a in args if isinstance(a, torch.Tensor)]
    if name in ("mm", "matmul") and len(shapes) >= 2:
        (m, k), (_, n) = shapes[0][-2:], shapes[1][-2:]
        return 2.0 * m * k * n
    if name in ("addmm", "addmm_") and len(shapes) >= 3:
        (m, k), (_, n) = shapes[1], shapes[2]
        return 2.0 * m * k * n
    if name in ("bmm", "baddbmm") and len(shapes) >= 2:
        a, b = shapes[-2], shapes[-1]
        return 2.0 * math.prod(a[:-1]) * a[-1] * b[-1]
    if name in SDPA_FORWARDS and len(shapes) >= 2:  # q, k [B, heads, S, D]: Q K^T and P V
        q, k = shapes[0], shapes[1]
        return 4.0 * math.prod(q[:-1]) * k[-2] * q[-1]
    if name in SDPA_BACKWARDS and len(shapes) >= 3:  # grad_out, q, k: 2.5x the forward (FlashAttention's count)
        q, k = shapes[1], shapes[2]
        return 2.5 * 4.0 * math.prod(q[:-1]) * k[-2] * q[-1]
    return 0.0


ADDMMS = ("addmm", "addmm_")  # (their C's shape is kept: bertfast.analysis.predict charges a 2-D C's pass)

# torch's fused attention kernels (what F.scaled_dot_product_attention runs on a GPU) and their backwards
SDPA_FORWARDS = ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention")
SDPA_BACKWARDS = tuple(f"{n}_backward" for n in SDPA_FORWARDS)


_ALLOCATIONS = {aten.empty.memory_format, aten.empty_like.default, aten.empty_strided.default,
                aten.new_empty.default, aten.new_empty_strided.default}
_FILLS = {aten.zeros.default, aten.zeros_like.default, aten.new_zeros.default, aten.full.default,
          aten.full_like.default, aten.new_full.default, aten.ones.default, aten.ones_like.default,
          aten.new_ones.default, aten.scalar_tensor.default}
_FREE = {aten.detach.default, aten.lift_fresh.default, aten.alias.default, aten.sym_size.int,
         aten.sym_stride.int, aten.sym_numel.default, aten.sym_storage_offset.default, aten.is_same_size.default,
         aten._unsafe_view.default}
_SYNCS = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.equal.default}


class _Recorder(TorchDispatchMode):
    def __init__(self, events: list[Launch], host_int: int, host_copy) -> None:
        super().__init__()
        self.events = events
        self.host_int = host_int
        self.host_copy = host_copy

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [t for t in _tensors((args, kwargs)) if on_device(t)]
        name = str(func.overloadpacket.__name__)
        if func in _SYNCS and inputs:  # (on CPU tensors, e.g. a dropout seed drawn on the host: no wait)
            self.events.append(Launch("sync", name, nbytes_read=sum(map(_nbytes, inputs))))
            if func is aten._local_scalar_dense.default:
                if args[0].dtype == torch.bool:
                    return False
                return float(self.host_int) if args[0].is_floating_point() else self.host_int
            return False
        if func is aten.nonzero.default and inputs:
            self.events.append(Launch("sync", "nonzero", nbytes_read=_nbytes(args[0])))
            x = args[0]
            return torch.empty((x.numel(), x.dim()), dtype=torch.long, device=x.device)
        if func is aten._to_copy.default and inputs and kwargs.get("device") is not None \
                and torch.device(kwargs["device"]).type == "cpu":
            self.events.append(Launch("sync", "copy to host", nbytes_read=_nbytes(args[0])))
            if self.host_copy is not None:
                return self.host_copy(args[0]).to(kwargs.get("dtype") or args[0].dtype)
            return torch.zeros(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype)
        if func in _FREE or func.is_view:
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        outputs = [t for t in _tensors(out) if on_device(t)]
        if not outputs and (not inputs or not func._schema.is_mutable):  # (nothing written: prim.device, ...)
            return out
        allocated = sum(map(_nbytes, outputs))
        if func in _ALLOCATIONS:
            self.events.append(Launch("alloc", name, nbytes_allocated=allocated))
        elif func in _FILLS:
            self.events.append(Launch("torch", name, nbytes_written=allocated, nbytes_allocated=allocated,
                                      zero_filled=True))
        elif func.namespace == "bertfast_C":
            self.events.append(Launch("extension", name, nbytes_read=sum(map(_nbytes, inputs)),
                                      nbytes_written=allocated, nbytes_allocated=allocated,
                                      args=_kept(tuple(args), {})))
        else:
            written = allocated
            if func._schema.is_mutable:  # in-place / out=: the mutated inputs are what it writes
                written = sum(_nbytes(a) for a, arg in zip(args, func._schema.arguments)
                              if isinstance(a, torch.Tensor) and arg.alias_info is not None and arg.alias_info.is_write)
            self.events.append(Launch("torch", name, nbytes_read=sum(map(_nbytes, inputs)), nbytes_written=written,
                                      nbytes_allocated=0 if func._schema.is_mutable else allocated,
                                      flops=_flops_of(name, args),
                                      args=_kept(tuple(args), {}) if name in SDPA_FORWARDS + SDPA_BACKWARDS + ADDMMS else ()))
        return out


@contextlib.contextmanager
def gpu_trace(host_int: int = 0, host_copy=None):
    """Yields the list of events (Launch) that the GPU code path run on meta tensors inside would cause.
    host_int: what an integer host sync reads; host_copy(meta tensor) -> CPU tensor: what a copy to the
    host reads (see the module's docstring)."""
    from triton.runtime.jit import JITFunction

    from bertfast.kernels import launch

    events: list[Launch] = []
    original_run = JITFunction.run
    guarded: list[torch.Tensor] = []  # the tensors whose device_guard is entered, innermost last

    @contextlib.contextmanager
    def guard(t):
        guarded.append(t)
        try:
            yield
        finally:
            guarded.pop()

    def record(self, *args, grid, warmup, **kwargs):
        if callable(grid):
            grid = grid(dict(zip([p.name for p in self.params], args)))
        grid = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
        devices = {a.device for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)}
        ok = bool(guarded) and guarded[-1].device in devices  # the device made current is the launch's
        memo = {}
        events.append(Launch("triton", self.fn.__name__, grid=grid, kernel=self, args=_kept(args, memo),
                             kwargs=_kept(kwargs, memo), device_guarded=ok))

    JITFunction.run = record
    previous = _backend.set_meta_is_gpu(True)
    previous_guard, launch._TRACE_GUARD = launch._TRACE_GUARD, guard
    try:
        with _Recorder(events, host_int, host_copy):
            yield events
    finally:
        _backend.set_meta_is_gpu(previous)
        launch._TRACE_GUARD = previous_guard
        JITFunction.run = original_run


def meta(*shape, dtype=torch.bfloat16, requires_grad: bool = False) -> torch.Tensor:
    """A meta tensor (a stand-in for a CUDA one inside gpu_trace)."""
    return torch.empty(shape, dtype=dtype, device="meta", requires_grad=requires_grad)
