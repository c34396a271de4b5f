"""The launch and traffic check: what each public op's CUDA path allocates, launches and waits for.

Each op runs forward and backward on meta tensors inside bertfast.analysis.trace.gpu_trace (no GPU), at
BERT-base's shapes in bf16 with dropout on, and is held to its design:
- launches: at most the number the design needs (Triton kernels, extension kernels and torch kernels
  alike: each costs a launch and a pass over its bytes);
- no zero-filled buffer (zeros, full, ...) that a kernel overwrites anyway: buffers are allocated empty;
- bytes: everything allocated beyond the outputs (partial sums, statistics, scratch) within 5% of the
  op's minimum HBM traffic, and the outputs in their inputs' dtypes (no fp32 copies to cast);
- host synchronisations (.item(), .tolist(), bool(tensor), nonzero): none in the ops the model calls per
  layer; the model's forward as a whole has one, where it packs the batch (bertfast.ops.unpad);
- every Triton launch made under its tensors' device guard (launch.device_guard: Triton launches on the
  current device, not the tensors').
`python -m bertfast.analysis.traffic` prints the table; tests/test_traffic.py asserts it, and shows once
that a deliberately wasteful variant fails.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from bertfast.analysis.trace import Launch, gpu_trace, meta

TOKENS, HIDDEN, INTERMEDIATE, HEADS, SEQ = 16384, 768, 3072, 12, 128
SCRATCH_SHARE = 0.05  # allocations beyond the outputs, as a share of the minimum traffic


@dataclass
class Case:
    """One op: `prepare` makes its inputs (outside the trace) and returns a call of the op (forward) that
    returns (output, the inputs to differentiate)."""
    name: str
    prepare: Callable[[], Callable[[], tuple[torch.Tensor, list[torch.Tensor]]]]
    launches: tuple[int, int]  # the design's launches: forward, backward
    syncs: tuple[int, int] = (0, 0)
    fills: tuple[int, int] = (0, 0)  # zero-filled buffers the design needs (accumulated into, not overwritten)
    scratch_share: float = SCRATCH_SHARE
    why: str = ""


@dataclass
class Phase:
    op: str
    phase: str  # "forward" / "backward"
    launches: list[str]
    syncs: list[str]
    zero_filled: list[str]
    allocated: int
    outputs: int
    minimum_traffic: int
    dtypes_ok: bool
    design_launches: int
    design_syncs: int
    design_fills: int = 0
    scratch_share: float = SCRATCH_SHARE
    events: list[Launch] = field(default_factory=list, repr=False)

    def problems(self) -> list[str]:
        out = []
        if len(self.launches) > self.design_launches:
            out.append(f"{self.op} {self.phase}: {len(self.launches)} launches, the design needs "
                       f"{self.design_launches}: {self.launches}")
        if len(self.zero_filled) > self.design_fills:
            out.append(f"{self.op} {self.phase}: zero-filled buffers {self.zero_filled}, the design needs "
                       f"{self.design_fills} (allocate buffers that kernels overwrite empty)")
        if len(self.syncs) > self.design_syncs:
            out.append(f"{self.op} {self.phase}: {len(self.syncs)} host synchronisations ({self.syncs}), the design "
                       f"has {self.design_syncs}")
        extra = self.allocated - self.outputs
        if extra > self.scratch_share * self.minimum_traffic:
            out.append(f"{self.op} {self.phase}: allocates {extra / 1e6:.1f} MB beyond its outputs, over "
                       f"{self.scratch_share:.0%} of its minimum traffic ({self.minimum_traffic / 1e6:.1f} MB)")
        if not self.dtypes_ok:
            out.append(f"{self.op} {self.phase}: an output is not in its input's dtype")
        unguarded = [e.name for e in self.events if e.kind == "triton" and not e.device_guarded]
        if unguarded:
            out.append(f"{self.op} {self.phase}: launched outside its tensors' device guard: {unguarded}")
        return out


def _launches(events: list[Launch]) -> list[str]:
    return [e.name for e in events if e.kind in ("triton", "extension", "torch")]


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def measure(case: Case) -> list[Phase]:
    """Trace the op's forward and backward; the minimum traffic of a phase is its inputs read once and its
    outputs written once."""
    call = case.prepare()
    with gpu_trace(host_int=SEQ) as forward:
        out, inputs = call()
    grad_out = torch.empty_like(out)  # out's strides, as the autograd engine hands it over
    with gpu_trace(host_int=SEQ) as backward:
        grads = torch.autograd.grad(out, inputs, grad_out)
    phases = []
    for index, (name, events, produced, consumed, dtypes_ok) in enumerate((
            ("forward", forward, [out], inputs, True),
            ("backward", backward, list(grads), [grad_out, *inputs], all(g.dtype == i.dtype for g, i in zip(grads, inputs))))):
        phases.append(Phase(
            case.name, name, _launches(events), [e.name for e in events if e.kind == "sync"],
            [e.name for e in events if e.zero_filled], sum(e.nbytes_allocated for e in events), _bytes(produced),
            _bytes(consumed) + _bytes(produced), dtypes_ok, case.launches[index], case.syncs[index],
            case.fills[index], case.scratch_share, events))
    return phases


def _layer_norm(residual: bool, p: float):
    """With a residual, as BERT's layers call it: the projection's bias folded in (x_bias)."""
    from bertfast import ops

    def prepare():
        x = meta(TOKENS, HIDDEN, requires_grad=True)
        r = meta(TOKENS, HIDDEN, requires_grad=True) if residual else None
        w, b = (meta(HIDDEN, dtype=torch.float32, requires_grad=True) for _ in range(2))
        xb = meta(HIDDEN, dtype=torch.float32, requires_grad=True) if residual else None
        return lambda: (ops.fused_residual_layer_norm(x, r, w, b, 1e-12, p, training=p > 0, x_bias=xb),
                        [t for t in (x, r, w, b, xb) if t is not None])
    return prepare


def _bias_gelu():
    from bertfast import ops

    def prepare():
        x = meta(TOKENS, INTERMEDIATE, requires_grad=True)
        b = meta(INTERMEDIATE, requires_grad=True)
        return lambda: (ops.fused_bias_gelu(x, b), [x, b])
    return prepare


def _attention_varlen():
    from bertfast import ops

    def prepare():
        q, k, v = (meta(TOKENS, HEADS, HIDDEN // HEADS, requires_grad=True) for _ in range(3))
        cu = torch.empty(TOKENS // SEQ + 1, dtype=torch.int32, device="meta")
        return lambda: (ops.fused_attention_varlen(q, k, v, cu, SEQ, 0.1, None, training=True,
                                                   validate=False), [q, k, v])
    return prepare


def _attention_padded():
    from bertfast import ops

    def prepare():
        # the model's layout: [B, S, heads, D] projections viewed as [B, heads, S, D]
        q, k, v = (meta(TOKENS // SEQ, SEQ, HEADS, HIDDEN // HEADS, requires_grad=True) for _ in range(3))
        mask = torch.empty(TOKENS // SEQ, SEQ, dtype=torch.bool, device="meta")
        return lambda: (ops.fused_attention(*(t.transpose(1, 2) for t in (q, k, v)), mask, 0.1, None,
                                            training=True), [q, k, v])
    return prepare


def _embedding(checked: bool):
    from bertfast import ops

    def prepare():
        # as BertModel calls it: its segment and position defaults are buffers ([1, 1] and [1, S])
        ids = torch.empty(TOKENS // SEQ, SEQ, dtype=torch.long, device="meta")
        segments = torch.empty(1, 1, dtype=torch.long, device="meta")
        positions = torch.empty(1, SEQ, dtype=torch.long, device="meta")
        tables = [meta(rows, HIDDEN, requires_grad=True) for rows in (30522, 2, 512)]
        return lambda: (ops.embedding_sum(ids, segments, positions, *tables, padding_idx=0, ids_checked=checked),
                        tables)
    return prepare


def cases() -> list[Case]:
    return [
        Case("fused_residual_layer_norm (dropout 0.1, x_bias)", _layer_norm(True, 0.1), (2, 2),
             why="forward: the dropout seed drawn on the device (randint: CUDA-graph safe), then one kernel; "
                 "backward: the kernel, then the column sums of its dweight/dbias/dx_bias partials"),
        Case("fused_residual_layer_norm (no residual)", _layer_norm(False, 0.0), (1, 2), scratch_share=0.06,
             why="backward partials: one fp32 dweight/dbias row pair per persistent program (five an SM, for the "
                 "loads in flight), 4 MB, against only two [T, H] tensors read"),
        Case("fused_bias_gelu", _bias_gelu(), (1, 2),
             why="backward: the kernel, then the column sums of its dbias partials"),
        Case("fused_attention_varlen (dropout 0.1)", _attention_varlen(), (2, 2),
             why="forward: the dropout seed drawn on the device, then the kernel; backward: dQ (which also "
                 "writes delta = rowsum(dO * O) of its queries), then dK/dV"),
        Case("fused_attention padded + key mask (dropout 0.1)", _attention_padded(), (3, 2), syncs=(0, 0),
             why="forward: the bool key mask as int8, the dropout seed, then the kernel"),
        Case("embedding_sum (ids checked by the caller)", _embedding(True), (1, 5), fills=(0, 2), scratch_share=0.08,
             why="forward: one kernel; backward: sort the word ids, mark the run bounds unused (-1, a fill), zero "
                 "the fp32 workspace the small tables accumulate in (a fill), the pieces kernel, the rows kernel; "
                 "scratch: two fp32 rows a piece of 16 sorted ids for runs crossing pieces (6.3 MB, written only "
                 "where a run crosses), the sorted ids and the small tables' workspace"),
    ]


def check(phases: list[Phase]) -> list[str]:
    return [problem for phase in phases for problem in phase.problems()]


def main() -> int:
    phases = [phase for case in cases() for phase in measure(case)]
    print(f"{'op':<50} {'phase':<9} {'launches':>8} {'design':>6} {'syncs':>5} {'alloc MB':>9} {'out MB':>7} "
          f"{'min MB':>7}  launched")
    for p in phases:
        print(f"{p.op:<50} {p.phase:<9} {len(p.launches):>8} {p.design_launches:>6} {len(p.syncs):>5} "
              f"{p.allocated / 1e6:>9.1f} {p.outputs / 1e6:>7.1f} {p.minimum_traffic / 1e6:>7.1f}  "
              f"{', '.join(p.launches)}")
    problems = check(phases)
    for problem in problems:
        print("  PROBLEM", problem)
    print(f"{len(phases)} phases checked; problems: {len(problems)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
