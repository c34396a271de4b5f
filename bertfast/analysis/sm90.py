"""A static roofline model of every kernel bertfast launches, for an H200 (sm_90), without a GPU.

What is compiled is what launches: the public ops run on meta tensors inside bertfast.analysis.trace,
which records each Triton launch with its grid, its arguments and the JIT's own specialisation (pointer
alignment, integers divisible by 16); each distinct variant is compiled for sm_90 exactly as the JIT
would. The CUDA extension's kernels are read from the built bertfast._C, with the launch configuration
its own C++ launcher computes (bertfast._C.launch_config).

For each launch at BERT's shapes (T = 16,384 tokens; S = 128/512/1024 for attention) the model reads the
cubin (cuobjdump -sass, -res-usage) and the TTGIR and reports: registers, spills, shared memory, blocks
and warps per SM, waves over the SMs, the share of global memory instructions that move 128 bits, how
each tl.dot lowered (wgmma = HGMMA, mma.sync = HMMA, FMA), SASS instructions per warp (in total and
per loop trip), the minimum HBM bytes and the FLOPs, and these floors:
  memory   minimum bytes / measured copy bandwidth
  latency  the same, scaled up when the loads in flight per SM are too few for Little's law
  issue    SASS instructions executed (per warp x warps launched) / 4 warp-instructions per clock per SM
  pipes    each pipe's instructions (MUFU, FP32, integer, conversions, load/store) at its lanes per clock
  tensor   FLOPs / the rate of the unit the matmuls lowered to (wgmma, mma.sync, FMA), slower for a wgmma
           shape whose shared-memory operands take longer to read than its FLOPs (hgmma_shape_factor)
  tensor+issue  for a loop that waits for each wgmma before using its result (attention): the tensor
           floor plus the largest of the issue and pipe floors, plus one DRAM latency
The per-SM floors (issue, pipes, tensor) are scaled by the last wave's tail (the busiest SM's programs
over the mean). The predicted time is the largest floor; the report prints it with the fraction of copy
bandwidth it achieves (memory-bound kernels) or of the tensor floor (attention), the memory-bound
launches under the constants calibrated on measured kernels (gpus.FIT), and each attention scenario in
TFLOP/s under them beside the published measurements at its shape (gpus.ATTENTION_PUBLISHED), none of
which it may exceed. Constants: bertfast.analysis.gpus.

`python -m bertfast.analysis [--json PATH]` prints the table and checks the goals (GOALS); it exits 1
when a goal is missed. tests/test_sm90_compile.py runs it in CI.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import torch

from bertfast.analysis.gpus import H200 as h200
from bertfast.analysis.trace import Launch, gpu_trace, meta, specialisation

TOKENS = 16384
SEQ_LENS = (128, 512, 1024)
# The goals (issue: static roofline): predicted fraction of the copy bandwidth, by kernel family.
GOALS = {"elementwise/LayerNorm forward": 0.85, "elementwise/LayerNorm backward": 0.75, "embedding": 0.70}
MODELS = {  # name: (hidden, intermediate, heads)
    "base": (768, 3072, 12),
    "large": (1024, 4096, 16),
    "large-d128": (1024, 4096, 8),
}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _target():
    from triton.backends.compiler import GPUTarget

    return GPUTarget("cuda", 90, 32)


def _bin(tool: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", tool)


# Scenarios: the ops of a BERT training step, run on meta tensors -----------------------------------------
@dataclass
class Scenario:
    """One op at one shape, forward and backward. `training` scenarios (bf16, dropout on) are the ones the
    goals are checked on."""
    label: str
    family: str  # "layer_norm", "bias_gelu", "attention", "embedding", "host" (the forward's host facts)
    run: Callable[[], None]
    training: bool = False


def _grad(out, inputs):
    torch.autograd.grad(out, [t for t in inputs if t.requires_grad], meta(*out.shape, dtype=out.dtype))


def _layer_norm(tokens, hidden, dtype, p, residual, residual_dtype=None, param_dtype=None, x_bias=True):
    """residual_dtype / param_dtype: the residual's and the weights' dtypes (default: the activations');
    under autocast BERT's residual stream and its LayerNorm weights are fp32, the sublayer output bf16.
    With a residual and x_bias, as BERT's layers call it: the projection's bias folded in."""
    from bertfast import ops

    def run():
        x = meta(tokens, hidden, dtype=dtype, requires_grad=True)
        r = meta(tokens, hidden, dtype=residual_dtype or dtype, requires_grad=True) if residual else None
        w, b = (meta(hidden, dtype=param_dtype or dtype, requires_grad=True) for _ in range(2))
        xb = meta(hidden, dtype=param_dtype or dtype, requires_grad=True) if residual and x_bias else None
        y = ops.fused_residual_layer_norm(x, r, w, b, 1e-12, p, training=p > 0, seed=1, x_bias=xb)
        _grad(y, [t for t in (x, r, w, b, xb) if t is not None])
    return run


def _bias_gelu(tokens, inter, dtype, bias_dtype=None):
    from bertfast import ops

    def run():
        x = meta(tokens, inter, dtype=dtype, requires_grad=True)
        b = meta(inter, dtype=bias_dtype or dtype, requires_grad=True)
        _grad(ops.fused_bias_gelu(x, b), [x, b])
    return run


def _attention(tokens, seq, heads, head_dim, dtype, p, varlen):
    from bertfast import ops

    def run():
        batch = tokens // seq
        if varlen:
            q, k, v = (meta(tokens, heads, head_dim, dtype=dtype, requires_grad=True) for _ in range(3))
            cu = torch.empty(batch + 1, dtype=torch.int32, device="meta")
            out = ops.fused_attention_varlen(q, k, v, cu, seq, p, None, training=p > 0, seed=1, validate=False)
        else:  # the model's layout: [B, S, heads, D] projections viewed as [B, heads, S, D]
            q, k, v = (meta(batch, seq, heads, head_dim, dtype=dtype, requires_grad=True) for _ in range(3))
            mask = torch.empty(batch, seq, dtype=torch.bool, device="meta")
            out = ops.fused_attention(*(t.transpose(1, 2) for t in (q, k, v)), mask, p, None, training=p > 0, seed=1)
        _grad(out, [q, k, v])
    return run


def _embedding(tokens, hidden, dtype, seq, per_token_ids=False, packed=False):
    """As BertModel calls it on a batch without padding: ids checked in its one host read, its segment and
    position defaults as buffers ([1, 1], [1, S]); packed: as on a padded batch it packs (positions one
    per token, the default segment); per_token_ids: every id tensor one per token (given segments)."""
    from bertfast import ops

    def run():
        batch = tokens // seq
        ids = torch.empty(batch, seq, dtype=torch.long, device="meta")
        segments = ids if per_token_ids else torch.empty(1, 1, dtype=torch.long, device="meta")
        positions = ids if per_token_ids or packed else torch.empty(1, seq, dtype=torch.long, device="meta")
        word = meta(30522, hidden, dtype=dtype, requires_grad=True)
        types = meta(2, hidden, dtype=dtype, requires_grad=True)
        pos = meta(512, hidden, dtype=dtype, requires_grad=True)
        out = ops.embedding_sum(ids, segments, positions, word, types, pos, padding_idx=0, ids_checked=True)
        _grad(out, [word, types, pos])
    return run


def _host_facts(tokens, seq, all_ids):
    """The forward's host facts as BertModel reads them (models.batch.read_host_facts): input_ids and the
    [B, S] int64 mask; all_ids: its segment and position ids given too."""
    from bertfast.kernels.host_facts import host_facts

    def run():
        batch = tokens // seq
        ids = torch.empty(batch, seq, dtype=torch.long, device="meta")
        mask = torch.empty(batch, seq, dtype=torch.long, device="meta")
        host_facts(mask, [ids, ids, torch.empty(1, seq, dtype=torch.long, device="meta")] if all_ids else [ids])
    return run


def scenarios() -> list[Scenario]:
    """Every op of BERT-base/large training and inference at T tokens: a model in bf16, fp16 or fp32, and
    bf16 autocast (fp32 weights and residual stream, bf16 matmul outputs); dropout on (p = 0.1,
    training) and off; attention packed (varlen) and padded with a key mask, head dim 64 and 128."""
    out = []
    for model, (hidden, inter, heads) in MODELS.items():
        for dname, dtype in DTYPES.items():
            train = dname == "bf16"
            if model != "large-d128":
                for p in (0.1, 0.0):
                    out.append(Scenario(f"residual_layer_norm {model} {dname} p={p}", "layer_norm",
                                        _layer_norm(TOKENS, hidden, dtype, p, True), train and p > 0))
                out.append(Scenario(f"layer_norm (embeddings) {model} {dname}", "layer_norm",
                                    _layer_norm(TOKENS, hidden, dtype, 0.0, False), train))
                out.append(Scenario(f"bias_gelu {model} {dname}", "bias_gelu", _bias_gelu(TOKENS, inter, dtype), train))
                out.append(Scenario(f"embedding_sum {model} {dname}", "embedding",
                                    _embedding(TOKENS, hidden, dtype, 512), train))
                out.append(Scenario(f"embedding_sum (packed) {model} {dname}", "embedding",
                                    _embedding(TOKENS, hidden, dtype, 512, packed=True), train))
            for varlen in (True, False):
                for p in (0.1, 0.0):
                    for seq in SEQ_LENS:
                        mode = "varlen" if varlen else "padded"
                        out.append(Scenario(f"attention {model} {dname} {mode} S={seq} p={p}", "attention",
                                            _attention(TOKENS, seq, heads, hidden // heads, dtype, p, varlen),
                                            train and p > 0 and varlen))
        if model != "large-d128":
            amp, fp32 = torch.bfloat16, torch.float32
            for p in (0.1, 0.0):
                out.append(Scenario(f"residual_layer_norm {model} bf16-autocast p={p}", "layer_norm",
                                    _layer_norm(TOKENS, hidden, amp, p, True, fp32, fp32), p > 0))
            out.append(Scenario(f"layer_norm (embeddings) {model} bf16-autocast", "layer_norm",
                                _layer_norm(TOKENS, hidden, fp32, 0.0, False, fp32, fp32), False))
            out.append(Scenario(f"bias_gelu {model} bf16-autocast", "bias_gelu",
                                _bias_gelu(TOKENS, inter, amp, fp32), True))
    # At the published measurements' own shape (16k tokens, hidden 2048: 32 heads of 64, 16 of 128; every
    # sequence full), for the comparison with them (attention_rates).
    for head_dim in (64, 128):
        for seq in (512, 1024, 2048):
            for p in (0.0, 0.1):
                out.append(Scenario(f"attention published-d{head_dim} bf16 padded S={seq} p={p}", "attention",
                                    _attention(TOKENS, seq, 2048 // head_dim, head_dim, torch.bfloat16, p, False)))
    for all_ids in (False, True):  # (its variants depend on the id tensors' count and dtypes only)
        out.append(Scenario(f"host facts {'input, segment and position ids' if all_ids else 'input ids'}, mask",
                            "host", _host_facts(TOKENS, 128, all_ids)))
    for hidden in (8192, 16384):  # the widest rows the LayerNorm takes (launch.MAX_ROW): held to no spills
        for dname in ("bf16", "fp32"):
            for p in (0.1, 0.0):
                out.append(Scenario(f"residual_layer_norm wide-{hidden} {dname} p={p}", "layer_norm",
                                    _layer_norm(TOKENS, hidden, DTYPES[dname], p, True, x_bias=False)))
    return out


def traced(scenario: Scenario) -> list[Launch]:
    with gpu_trace() as events:
        scenario.run()
    return events


# Variants: what the JIT compiles ---------------------------------------------------------------------
def variant_key(launch: Launch) -> str:
    """Everything that makes triton's JIT compile a different binary for this launch."""
    signature, constexprs, attrs, options = specialisation(launch, _target())
    return json.dumps([launch.name, signature, sorted((str(k), repr(v)) for k, v in constexprs.items()),
                       sorted((str(k), v) for k, v in attrs.items()), options.num_warps, options.num_stages],
                      sort_keys=True)


def variant_name(launch: Launch) -> str:
    """A readable name: kernel, activation dtype, the non-default constexprs, warps and stages."""
    signature, constexprs, _, options = specialisation(launch, _target())
    dtype = next((v[1:] for v in signature.values() if v.startswith("*") and v[1:] in ("bf16", "fp16", "fp32")), "")
    flags = []
    for (index,), value in sorted(constexprs.items()):
        name = launch.kernel.params[index].name
        if value is True:
            flags.append(name)
        elif value is not False and not name.startswith("HAS_") and isinstance(value, int):
            flags.append(f"{name}={value}")
    return f"{launch.name.removesuffix('_kernel')} {dtype} {' '.join(flags)} w{options.num_warps}s{options.num_stages}"


_COMPILED: dict[str, object] = {}


def compile_launch(launch: Launch):
    """triton's CompiledKernel for this launch, compiled for sm_90 exactly as the JIT would."""
    key = variant_key(launch)
    if key not in _COMPILED:
        import triton
        from triton.compiler import ASTSource

        signature, constexprs, attrs, options = specialisation(launch, _target())
        _COMPILED[key] = triton.compile(ASTSource(launch.kernel, signature, constexprs, attrs), target=_target(),
                                        options=options.__dict__)
    return _COMPILED[key]


def launched_variants(selected: list[Scenario] | None = None) -> dict[str, tuple[Launch, list[tuple[Scenario, Launch]]]]:
    """key -> (first launch, every (scenario, launch) using it), over the Triton launches of the scenarios."""
    out: dict[str, tuple[Launch, list]] = {}
    for scenario in selected if selected is not None else scenarios():
        for launch in traced(scenario):
            if launch.kind == "triton":
                key = variant_key(launch)
                out.setdefault(key, (launch, []))[1].append((scenario, launch))
    return out


def compiled_variants() -> Iterator[tuple[str, object]]:
    """(name, triton CompiledKernel) for every Triton variant bertfast launches for BERT-base/large
    (bf16/fp16/fp32, dropout on/off, packed and padded attention, head dims 64 and 128)."""
    for key, (launch, _) in launched_variants().items():
        yield variant_name(launch), compile_launch(launch)


# Reading the compiled code ---------------------------------------------------------------------------
_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P[0-9T]+\s+)?([A-Z][A-Za-z0-9_.]*)([^;]*);")


@dataclass
class Sass:
    """What the static model needs from one kernel's SASS."""
    instructions: list[tuple[int, str, str]]  # (address, opcode with modifiers, operands)
    loops: list[tuple[int, int]]  # (first, last) instruction index of each loop (a backward branch)

    @classmethod
    def parse(cls, text: str) -> Sass:
        instructions = []
        for match in _INSTRUCTION.finditer(text):
            address, _, opcode, operands = match.groups()
            instructions.append((int(address, 16), opcode, operands.strip()))
        # Drop the padding after the code: NOPs and the final branch-to-itself.
        while instructions and (instructions[-1][1] == "NOP" or (
                instructions[-1][1] == "BRA" and instructions[-1][2].startswith(f"0x{instructions[-1][0]:x}"))):
            instructions.pop()
        index = {address: i for i, (address, _, _) in enumerate(instructions)}
        loops = []
        for i, (address, opcode, operands) in enumerate(instructions):
            if opcode.startswith("BRA") and operands.startswith("0x"):
                target = int(operands.split()[0].rstrip(","), 16)
                if target <= address and target in index:
                    loops.append((index[target], i))
        return cls(instructions, loops)

    def outer_loops(self) -> list[tuple[int, int]]:
        return [lp for lp in self.loops if not any(o != lp and o[0] <= lp[0] and lp[1] <= o[1] for o in self.loops)]

    def inner_loops(self) -> list[tuple[int, int]]:
        """The loops that hold no other loop."""
        return [lp for lp in self.loops if not any(o != lp and lp[0] <= o[0] and o[1] <= lp[1] for o in self.loops)]

    def counts(self, trips) -> dict[int, float]:
        """Executed count of each instruction index. `trips` a number: every outer loop runs that many
        times (a loop nested in one is counted as running once per outer trip). `trips` a pair (inner,
        outer), for a kernel whose loop over its work runs inside another (attention's keys-first dQ: key
        blocks inside query trips): each outer loop runs `outer` times and each loop nested in it `inner`
        times per outer trip."""
        inner, outer = trips if isinstance(trips, tuple) else (trips, None)
        weight = {i: 1.0 for i in range(len(self.instructions))}
        for first, last in self.outer_loops():
            for i in range(first, last + 1):
                weight[i] = max(inner if outer is None else outer, 0.0)
        if outer is not None:
            outermost = set(self.outer_loops())
            for first, last in self.inner_loops():
                if (first, last) in outermost:
                    continue
                for i in range(first, last + 1):
                    weight[i] = max(outer * inner, 0.0)
        return weight

    def executed(self, trips: float) -> float:
        return sum(self.counts(trips).values())

    def per_trip(self) -> int:
        """Instructions of one trip of the kernel's innermost loops (its outer loops when none is nested)."""
        return sum(last - first + 1 for first, last in self.inner_loops())

    def opcode_count(self, prefix: str, trips: float | None = None) -> float:
        weights = self.counts(trips) if trips is not None else {i: 1.0 for i in range(len(self.instructions))}
        return sum(w for i, w in weights.items() if self.instructions[i][1].split(".")[0] == prefix)

    def memory_widths(self, trips: float) -> dict[str, float]:
        """Executed global loads/stores by width in bits (LDG, STG, LDGSTS = cp.async)."""
        out: dict[str, float] = {}
        for i, w in self.counts(trips).items():
            width = global_access_bits(self.instructions[i][1])
            if width:
                out[str(width)] = out.get(str(width), 0.0) + w
        return out


def global_access_bits(opcode: str) -> int | None:
    """Bits one lane moves in a global load or store (LDG, STG, LDGSTS = cp.async); None for other opcodes."""
    parts = opcode.split(".")
    if parts[0] not in ("LDG", "STG", "LDGSTS"):
        return None
    width = 32
    for part in parts[1:]:
        if part in ("128", "64"):
            width = int(part)
        elif part in ("U16", "S16"):
            width = 16
        elif part in ("U8", "S8"):
            width = 8
    return width


def _sass_text(cubin: bytes) -> tuple[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        sass = subprocess.run([_bin("cuobjdump"), "-sass", path], capture_output=True, text=True, check=True).stdout
        res = subprocess.run([_bin("cuobjdump"), "-res-usage", path], capture_output=True, text=True, check=True).stdout
    return sass, res


def dot_lowering(ttgir: str) -> list[str]:
    """How each tl.dot was lowered, in program order: 'wgmma' (Hopper warpgroup MMA, HGMMA), 'mma'
    (mma.sync, HMMA) or 'fma' (CUDA cores)."""
    versions = dict(re.findall(r"^#(mma\d*) = #ttg\.nvidia_mma<\{versionMajor = (\d)", ttgir, re.M))
    out = []
    for line in ttgir.splitlines():
        if "ttng.warp_group_dot " in line:
            out.append("wgmma")
        elif re.search(r"= tt\.dot ", line):
            enc = re.search(r"-> tensor<[^,>]*, #(\w+)>", line)
            version = versions.get(enc.group(1)) if enc else None
            out.append("wgmma" if version == "3" else "mma" if version == "2" else "fma")
    return out


@dataclass
class Binary:
    """Static facts of one compiled variant."""
    name: str
    registers: int
    spill_bytes: int
    local_bytes: int
    shared_bytes: int
    warps: int
    stages: int
    dots: list[str]
    sass: Sass = field(repr=False)

    @classmethod
    def of_triton(cls, launch: Launch) -> Binary:
        compiled = compile_launch(launch)
        sass_text, res = _sass_text(compiled.asm["cubin"])
        usage = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", res)
        regs, stack, _, local = (int(x) for x in usage.groups())
        _, _, _, options = specialisation(launch, _target())
        spills = _ptxas_spills(compiled.asm["ptx"])
        return cls(variant_name(launch), regs, spills, local + stack, compiled.metadata.shared, options.num_warps,
                   options.num_stages, dot_lowering(compiled.asm["ttgir"]), Sass.parse(sass_text))

    def blocks_per_sm(self, block_threads: int | None = None) -> int:
        warps = self.warps if block_threads is None else math.ceil(block_threads / 32)
        per_warp = math.ceil(max(self.registers, 1) * 32 / h200.REGISTER_ALLOCATION_UNIT) * h200.REGISTER_ALLOCATION_UNIT
        by_regs = (h200.REGISTERS_PER_SM // per_warp) // warps
        by_shared = h200.SHARED_BYTES_PER_SM // (self.shared_bytes + h200.SHARED_RESERVED_PER_BLOCK)
        by_warps = h200.MAX_WARPS_PER_SM // warps
        return max(0, min(by_regs, by_shared, by_warps, h200.MAX_BLOCKS_PER_SM))


    @classmethod
    def of_extension(cls, launch: Launch) -> Binary:
        """The CUDA extension's embedding forward, read from the built bertfast._C (its sm_90 cubin), with
        the configuration its launcher computes (bertfast._C.embedding_forward_launch)."""
        ids, _, _, word = launch.args[:4]
        vec, threads_x, threads_y, _ = extension_launch(launch)
        type_name = {torch.float32: "f", torch.float16: "6__half", torch.bfloat16: "13__nv_bfloat16"}[word.dtype]
        sass_text, res = _extension_cubin_text()
        marker = f"forward_kernelI{type_name}Li{vec}E"
        functions = re.split(r"\n\s+Function : ", sass_text)
        body = next(f for f in functions if f.split("\n", 1)[0].find(marker) >= 0)
        usage = re.search(re.escape(body.split("\n", 1)[0].strip()) + r":\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) "
                          r"LOCAL:(\d+)", res)
        regs, stack, shared, local = (int(x) for x in usage.groups())
        warps = threads_x * threads_y // 32
        name = f"embedding_sum_forward (CUDA) {word.dtype} vec={vec} block={threads_x}x{threads_y}"
        return cls(name, regs, local + stack, local + stack, shared, warps, 1, [], Sass.parse(body))


def extension_launch(launch: Launch) -> tuple[int, int, int, int]:
    """(vec, threads_x, threads_y, blocks) the extension's launcher computes for this call."""
    from bertfast import _C

    ids, _, _, word = launch.args[:4]
    return _C.embedding_forward_launch(ids.shape[0], word.shape[1], word.element_size(), True)


_EXTENSION_TEXT: list[tuple[str, str]] = []


def _extension_cubin_text() -> tuple[str, str]:
    """(SASS, resource usage) of the sm_90 cubin inside the built bertfast._C."""
    if not _EXTENSION_TEXT:
        from bertfast import _C

        with tempfile.TemporaryDirectory() as tmp:
            listing = subprocess.run([_bin("cuobjdump"), "-lelf", _C.__file__], capture_output=True, text=True,
                                     check=True).stdout
            name = re.search(r"(\S+\.sm_90\.cubin)", listing).group(1)
            subprocess.run([_bin("cuobjdump"), "-xelf", name, _C.__file__], cwd=tmp, capture_output=True, check=True)
            with open(os.path.join(tmp, name), "rb") as f:
                _EXTENSION_TEXT.append(_sass_text(f.read()))
    return _EXTENSION_TEXT[0]


def _ptxas_spills(ptx: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        arch = "sm_90a" if "sm_90a" in ptx else "sm_90"
        out = subprocess.run([_bin("ptxas"), "-v", "--gpu-name", arch, path, "-o", os.path.join(tmp, "k.cubin")],
                             capture_output=True, text=True, check=True)
    stores, loads = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", out.stdout + out.stderr).groups()
    return int(stores) + int(loads)


# The work each launch must do ------------------------------------------------------------------------
@dataclass
class Work:
    bytes: float  # minimum HBM traffic (each input read once, each output written once)
    flops: float = 0.0
    trips: float = 0.0  # iterations of the kernel's loop, per program (of its inner loop, per outer trip)
    outer_trips: float | None = None  # iterations of an outer loop around it, per program (Sass.counts)
    in_flight_per_block: float = 0.0  # bytes of global loads a block has outstanding at once
    op_bytes: float = 0.0  # the minimum bytes of the whole op (for ops of several launches)

    @property
    def loop_trips(self):
        """What Sass.counts takes: the trips, or (inner, outer) for nested loops."""
        return self.trips if self.outer_trips is None else (self.trips, self.outer_trips)


def _b(t) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


def _work(launch: Launch, binary: Binary) -> Work:
    """Minimum bytes, FLOPs, loop trips of one launch, from its arguments (meta tensors: shapes only)."""
    if launch.kind == "extension":  # the embedding forward: ids, the word rows gathered, the output written
        ids, type_ids, pos_ids, word, types, pos = launch.args[:6]
        vec, threads_x, threads_y, _ = extension_launch(launch)
        tokens, hidden = ids.shape[0], word.shape[1]
        row = hidden * word.element_size()
        moved = _b(ids) + _b(type_ids) + _b(pos_ids) + 2 * tokens * row + _b(types) + _b(pos)
        trips = math.ceil(hidden / vec / threads_x)
        return Work(moved, trips=trips, in_flight_per_block=threads_y * 3 * row, op_bytes=moved)
    a = launch.bound_args()
    name = launch.name
    programs = launch.grid[0] * launch.grid[1] * launch.grid[2]
    if name.startswith("residual_layer_norm_fwd"):
        rows = a["X"].shape[0]
        moved = _b(a["X"]) + _b(a["Y"]) + 8 * rows + (_b(a["R"]) if a["HAS_RESIDUAL"] else 0)
        return Work(moved, in_flight_per_block=(_b(a["X"]) + (_b(a["R"]) if a["HAS_RESIDUAL"] else 0)) / programs)
    if name.startswith("residual_layer_norm_bwd"):
        rows = a["X"].shape[0]
        reads = _b(a["DY"]) + _b(a["X"]) + (_b(a["R"]) if a["HAS_RESIDUAL"] else 0) + 8 * rows
        partial_sets = 2 + a.get("HAS_XBIAS", False)  # dweight, dbias (and x_bias's; the wide kernel has none)
        writes = _b(a["DH"]) + (_b(a["DX"]) if a["WRITE_DX"] else 0) + partial_sets * _b(a["DW_PARTIAL"])
        if name.startswith("residual_layer_norm_bwd_wide"):
            # rows one at a time in chunks, twice (the second pass re-reads the row, from L2 at best): the
            # row loop's body holds the chunk loops, counted as running once per trip (Sass.counts), so a
            # trip here is a row's chunks; the partial row's read-modify-write stays in L1/L2
            chunks = math.ceil(a["N"] / a["CHUNK"])
            trips = rows / programs * chunks
            return Work(reads + writes, trips=trips, in_flight_per_block=reads / rows / chunks)
        rows_per_trip = a["ROWS"]
        trips = rows / (programs * rows_per_trip)
        # The loop loads the next step's rows before working on the current ones: two steps in flight.
        return Work(reads + writes, trips=trips, in_flight_per_block=2 * reads / rows * rows_per_trip)
    if name == "host_facts_kernel":  # one pass over the mask and the id tensors, a partial row a program out
        tensors = ([a["MASK"]] if a["HAS_MASK"] else []) + [a[f"IDS{i}"] for i in range(a["NUM_IDS"])]
        tile = a["ROWS"] * a["COLS"]
        trips = max(1.0, sum(math.ceil(t.numel() / tile) for t in tensors) / programs)
        return Work(sum(map(_b, tensors)) + _b(a["OUT"]), trips=trips,
                    in_flight_per_block=tile * max(t.element_size() for t in tensors))
    if name.startswith("column_sums"):
        sums = 1 + a["HAS_B"] + a["HAS_C"]
        return Work(sums * (_b(a["A"]) + _b(a["OUT_A"])), trips=a["A"].shape[0] / a["BLOCK_M"])
    if name.startswith("bias_gelu_fwd"):
        return Work(_b(a["X"]) + _b(a["Y"]), in_flight_per_block=_b(a["X"]) / programs)
    if name.startswith("bias_gelu_bwd"):
        moved = _b(a["DY"]) + _b(a["X"]) + _b(a["DX"]) + _b(a["DB_PARTIAL"])
        return Work(moved, in_flight_per_block=(_b(a["DY"]) + _b(a["X"])) / programs)
    if name.startswith("attention"):
        return _attention_work(launch, a)
    if name == "embedding_pieces_kernel":  # the gradient gathered once, sorted keys and their order, slots
        tokens, hidden = a["GRAD"].shape
        n = a["KEYS"].shape[0]
        moved = _b(a["GRAD"]) + _b(a["KEYS"]) + _b(a["ORDER"]) + _b(a["SLOTS"]) + 2 * 4 * n
        return Work(moved, in_flight_per_block=a["PIECE"] * a["BLOCK_H"] * a["GRAD"].element_size(),
                    op_bytes=_b(a["GRAD"]) + _b(a["WORD"]) + _b(a["TYPE"]) + _b(a["POS"]))
    if name == "embedding_rows_kernel":  # every table row written once; slots and run bounds read
        moved = _b(a["WORD"]) + _b(a["TYPE"]) + _b(a["POS"]) + _b(a["SLOTS"]) + _b(a["RUN_START"]) * 2
        # loop trips: runs spanning pieces, about one a piece boundary, spread over the programs
        spanning = a["SLOTS"].shape[0] / 2 / max(1, launch.grid[0])
        # (it stores; loads in flight are only the run bounds: Little's law does not bound it)
        return Work(moved, trips=max(1.0, spanning), op_bytes=_b(a["WORD"]) + _b(a["TYPE"]) + _b(a["POS"]))
    raise KeyError(f"no work model for kernel {name}: add one to bertfast.analysis.sm90._work")


def _attention_work(launch: Launch, a: dict) -> Work:
    q = a["Q"] if "Q" in a else a["O"]
    seq = a["S"]
    heads = a["H"]
    head_dim = a["HEAD_DIM"]
    if a["VARLEN"]:
        batch = a["CU"].shape[0] - 1
    else:
        batch = q.shape[0]
    tokens = batch * seq
    act = tokens * heads * head_dim * q.element_size()
    pairs = batch * heads * seq * seq  # (query, key) pairs: every sequence full length
    lse = batch * heads * seq * 4  # (the log-sum-exp / delta rows)
    name = launch.name
    if name.startswith("attention_fwd"):
        return Work(4 * act + lse, flops=4 * pairs * head_dim, trips=math.ceil(seq / a["BLOCK_N"]),
                    in_flight_per_block=2 * a["BLOCK_N"] * head_dim * q.element_size() * (max(1, _stages(launch) - 1)))
    if name.startswith("attention_bwd_dkdv"):  # reads q, k, v, dO, the lse and delta; writes dK, dV
        return Work(6 * act + 2 * lse, flops=8 * pairs * head_dim, trips=math.ceil(seq / a["BLOCK_M"]),
                    in_flight_per_block=2 * a["BLOCK_M"] * head_dim * q.element_size() * (max(1, _stages(launch) - 1)))
    if name.startswith("attention_bwd_dq"):  # reads q, k, v, O, dO and the lse; writes dQ and delta
        # (keys first: a program's 128 queries in trips of BLOCK_M, each over all key blocks)
        outer = 128 // a["BLOCK_M"] if a.get("KEYS_FIRST") else None
        return Work(6 * act + 2 * lse, flops=6 * pairs * head_dim, trips=math.ceil(seq / a["BLOCK_N"]),
                    outer_trips=outer,
                    in_flight_per_block=2 * a["BLOCK_N"] * head_dim * q.element_size() * (max(1, _stages(launch) - 1)))
    raise KeyError(name)


def _stages(launch: Launch) -> int:
    return launch.kwargs.get("num_stages", 3)


# The prediction --------------------------------------------------------------------------------------
@dataclass
class Prediction:
    scenario: str
    family: str
    training: bool
    variant: str
    kernel: str
    grid: int
    registers: int
    spill_bytes: int
    shared_bytes: int
    blocks_per_sm: int
    warps_per_sm: int
    waves: float
    share_128bit: float  # of the bytes executed global loads/stores of activations move (all lanes counted)
    dots: list[str]
    instructions_per_warp: float
    instructions_per_trip: int
    trips: float
    hgmma: float
    hmma: float
    bytes: float
    flops: float
    bytes_in_flight_per_sm: float
    memory_us: float
    latency_us: float
    issue_us: float
    tensor_us: float
    predicted_us: float
    bound: str
    fraction_of_copy: float
    fraction_of_tensor: float
    op_bytes: float = 0.0  # the minimum bytes of the whole op this launch belongs to (embedding only)
    pipe_us: dict = field(default_factory=dict)  # each pipe's floor (MUFU, FP32, integer, conversions, LSU)
    serial_us: float = 0.0  # tensor cores and issue in series (loops that wait for each wgmma), else 0
    tail: float = 1.0  # the busiest SM's programs over the mean (the last wave), applied to per-SM floors

    def floors(self) -> dict[str, float]:
        """Every floor in microseconds, by name (the predicted time is the largest)."""
        out = {"memory": self.memory_us, "latency": self.latency_us, "issue": self.issue_us,
               "tensor": self.tensor_us, **{f"{pipe} pipe": t for pipe, t in self.pipe_us.items()}}
        if self.serial_us:
            out["tensor+issue"] = self.serial_us
        return out


def calibrated_us(floors: dict[str, float], launch_us: float, stream_efficiency: float) -> float:
    """A launch's time from its bare floors (full copy bandwidth, no launch cost) under the calibrated
    constants: the bandwidth floors divided by the streaming efficiency, the largest floor, plus the
    launch's fixed cost. What predict() computes with a calibrated GPU, for floors computed without."""
    scaled = {k: v / stream_efficiency if k in ("memory", "latency") else v for k, v in floors.items() if k != "launch"}
    return max(scaled.values()) + launch_us


# SASS opcodes by the pipe that executes them (sm_90; bertfast.analysis.gpus gives each pipe's lanes).
PIPES = {
    "mufu": ("MUFU",),
    "fp32": ("FADD", "FMUL", "FFMA", "FMNMX", "FSET", "FSETP", "FSEL", "FSWZADD", "FCHK"),
    "int": ("IMAD", "IMUL", "IADD3", "IADD", "LOP3", "LOP", "SHF", "SHL", "SHR", "LEA", "ISETP", "IMNMX", "SEL",
            "IABS", "PRMT", "POPC", "FLO", "BREV", "BMSK", "SGXT", "VIMNMX", "IDP"),
    "convert": ("F2F", "F2I", "I2F", "I2I", "F2FP", "FRND"),
    "lsu": ("LDG", "STG", "LDS", "STS", "LDSM", "LD", "ST", "ATOM", "ATOMS", "ATOMG", "RED", "LDGSTS", "SHFL",
            "LDL", "STL"),
}
_PIPE_OF = {op: pipe for pipe, ops in PIPES.items() for op in ops}


def pipe_counts(sass: Sass, trips: float) -> dict[str, float]:
    """Executed warp-instructions of each pipe (per warp)."""
    out = dict.fromkeys(PIPES, 0.0)
    for i, w in sass.counts(trips).items():
        pipe = _PIPE_OF.get(sass.instructions[i][1].split(".")[0])
        if pipe:
            out[pipe] += w
    return out


def pipe_floors(sass: Sass, trips: float, warps_launched: float, gpu=h200) -> dict[str, float]:
    """Seconds each pipe needs for the launch's warp-instructions: lanes of work / (lanes per clock per SM
    x SMs x clock)."""
    lanes = {"mufu": gpu.MUFU_LANES, "fp32": gpu.FP32_LANES, "int": gpu.INT_LANES, "convert": gpu.CONVERT_LANES,
             "lsu": gpu.LSU_LANES}
    return {pipe: n * warps_launched * 32 / (lanes[pipe] * gpu.SMS * gpu.CLOCK_HZ)
            for pipe, n in pipe_counts(sass, trips).items()}


def predict(scenario: Scenario, launch: Launch, binary: Binary, gpu=h200, work: Work | None = None) -> Prediction:
    """The launch's floors on `gpu` (default: the H200 the report is for); `work`: its minimum bytes and
    loop trips when _work has no model of the kernel (bertfast.analysis.predict estimates them)."""
    work = work if work is not None else _work(launch, binary)
    blocks = launch.grid[0] * launch.grid[1] * launch.grid[2] if launch.kind == "triton" else extension_launch(launch)[3]
    per_sm = binary.blocks_per_sm()
    if per_sm == 0:
        raise RuntimeError(f"{binary.name}: does not fit on an SM (registers {binary.registers}, "
                           f"shared {binary.shared_bytes} B)")
    resident = min(per_sm, math.ceil(blocks / gpu.SMS))
    waves = blocks / (per_sm * gpu.SMS)
    warps_launched = blocks * binary.warps
    sass = binary.sass
    executed = sass.executed(work.loop_trips)
    widths = sass.memory_widths(work.loop_trips)
    # Share of the bytes global memory instructions move (every lane counted) that 128-bit ones move, over
    # the activations' accesses: 64-bit ones are the int64 ids and indices these kernels read (often the
    # same address in every lane), never activations, whose elements are 16 or 32 bits.
    data = {w: n for w, n in widths.items() if w != "64"}
    share_128 = data.get("128", 0.0) * 128 / max(sum(float(w) * n for w, n in data.items()), 1e-9)
    memory = work.bytes / (gpu.COPY_BYTES_PER_S * gpu.STREAM_EFFICIENCY)
    in_flight = resident * work.in_flight_per_block
    latency = memory / min(1.0, in_flight / gpu.BYTES_IN_FLIGHT_PER_SM) if in_flight else memory
    resident_warps = resident * binary.warps
    issue_rate = gpu.ISSUE_PER_S * min(1.0, resident_warps / gpu.ISSUE_PER_CLOCK_PER_SM)
    issue = executed * warps_launched / issue_rate
    hgmma = sass.opcode_count("HGMMA", work.loop_trips)
    hmma = sass.opcode_count("HMMA", work.loop_trips)
    tensor = 0.0
    if work.flops:
        if "fma" in binary.dots:
            tensor = work.flops / gpu.FP32_FMA_FLOPS
        else:
            # HGMMA.64xNx16 is issued by each of a warpgroup's 4 warps; HMMA.16816 does 16x8x16 per warp.
            weights = sass.counts(work.loop_trips)
            hgmma_flops = sum(w * _hgmma_flops(sass.instructions[i][1]) for i, w in weights.items()
                              if sass.instructions[i][1].startswith("HGMMA"))
            hmma_flops = 4096.0 * hmma
            share_mma = hmma_flops / max(hgmma_flops + hmma_flops, 1e-9)
            tf32 = any(".TF32" in op for _, op, _ in sass.instructions if "MMA" in op)
            fast = gpu.TF32_MATMUL_FLOPS if tf32 else gpu.BF16_MATMUL_FLOPS
            tensor = work.flops * ((1 - share_mma) / fast + share_mma / gpu.MMA_SYNC_FLOPS)
            tensor *= hgmma_shape_factor(sass, work.loop_trips, fast, gpu)
    pipes = pipe_floors(sass, work.loop_trips, warps_launched, gpu)
    # The last wave's tail: the busiest SM runs ceil(blocks / SMs) programs, so the floors of what each SM
    # does on its own (issue, pipes, tensor cores) scale by its share over the mean; bandwidth is shared by
    # the whole GPU and does not.
    tail = math.ceil(blocks / gpu.SMS) / (blocks / gpu.SMS)
    issue, tensor = issue * tail, tensor * tail
    pipes = {k: v * tail for k, v in pipes.items()}
    # A loop that waits for each wgmma before the code that uses its result (a WARPGROUP.DEPBAR in the loop
    # after its HGMMAs: attention's softmax needs Q K^T, the next trip's rescale needs P V) keeps the
    # tensor cores and the instruction issue in series: the tensor floor plus the largest of the issue
    # and pipe floors, plus one loaded DRAM latency a wave for its programs' first loads (the tiles the
    # loop reuses and its first trips' prefetch), which nothing overlaps: programs of equal work start and
    # end together, so each wave begins waiting. (Resident programs could in principle fill each other's
    # gaps; the published Triton tutorial and FlashAttention-2/3 figures at head dim 64 say they do not:
    # bertfast.analysis.sm90.attention_rates.)
    serial = 0.0
    if tensor and waits_on_mma(sass):
        serial = tensor + max(issue, *pipes.values()) + math.ceil(waves) * gpu.LOADED_DRAM_LATENCY_S
    floors = {"memory": memory, "latency": latency, "issue": issue, "tensor": tensor,
              **{f"{pipe} pipe": t for pipe, t in pipes.items()}}
    if serial:
        floors["tensor+issue"] = serial
    bound = max(floors, key=floors.get)
    predicted = floors[bound]
    return Prediction(
        scenario.label, scenario.family, scenario.training, binary.name, launch.name, blocks, binary.registers,
        binary.spill_bytes, binary.shared_bytes, per_sm, per_sm * binary.warps, round(waves, 2), round(share_128, 3),
        binary.dots, round(executed, 1), sass.per_trip(), round(work.trips, 2), hgmma, hmma, work.bytes, work.flops,
        round(in_flight), memory * 1e6, latency * 1e6, issue * 1e6, tensor * 1e6, predicted * 1e6, bound,
        round(memory / predicted, 3) if predicted else 0.0, round(tensor / predicted, 3) if predicted else 0.0,
        work.op_bytes, {k: v * 1e6 for k, v in pipes.items()}, serial * 1e6, round(tail, 4))


def waits_on_mma(sass: Sass) -> bool:
    """Whether an outer loop issues HGMMAs and then waits for them (WARPGROUP.DEPBAR) inside the loop."""
    for first, last in sass.outer_loops():
        ops = [op for _, op, _ in sass.instructions[first:last + 1]]
        mma = [i for i, op in enumerate(ops) if op.startswith("HGMMA")]
        if mma and any(op.startswith("WARPGROUP.DEPBAR") for op in ops[mma[0]:]):
            return True
    return False


def hgmma_shape_factor(sass: Sass, trips: float, rate: float, gpu=h200) -> float:
    """How much slower than `rate` (a large matmul's) the kernel's HGMMAs run for their shapes: each
    instruction takes the longer of its FLOPs at that rate and reading its shared-memory operands at the
    SM's shared-memory bandwidth (both operands for an A from shared memory, B alone when A is in
    registers). At 64x64x16 in bf16 the operands need 32 clocks with A shared, under the 43 the measured
    rate takes: a narrow N (or a tf32/8-bit shape) is where it binds."""
    per_clock = rate / (gpu.SMS * gpu.CLOCK_HZ)
    compute = slowest = 0.0
    for i, w in sass.counts(trips).items():
        _, opcode, operands = sass.instructions[i]
        if not opcode.startswith("HGMMA"):
            continue
        m, n, k = (int(x) for x in re.search(r"HGMMA\.(\d+)x(\d+)x(\d+)", opcode).groups())
        size = 4 if ".TF32" in opcode else 1 if ".E4M3" in opcode or ".E5M2" in opcode or ".S8" in opcode else 2
        a_shared = operands.split(",")[1].strip().startswith("gdesc")
        smem = ((m * k if a_shared else 0) + k * n) * size / gpu.SHARED_BYTES_PER_CLOCK_PER_SM
        clocks = 2.0 * m * n * k / per_clock
        compute += w * clocks
        slowest += w * max(clocks, smem)
    return slowest / compute if compute else 1.0


def _hgmma_flops(opcode: str) -> float:
    m, n, k = (int(x) for x in re.search(r"HGMMA\.(\d+)x(\d+)x(\d+)", opcode).groups())
    return 2.0 * m * n * k / 4  # per warp: the warpgroup's four warps each issue the instruction


# The report ------------------------------------------------------------------------------------------
def _family_goal(p: Prediction) -> tuple[str, float] | None:
    if p.family in ("attention", "embedding", "host"):  # (the embedding is judged as a whole op: embedding_ops;
        return None  # the host facts, a few hundred KB once a forward, by the launches they replace)
    backward = "_bwd" in p.kernel or "grad" in p.kernel
    key = "elementwise/LayerNorm backward" if backward else "elementwise/LayerNorm forward"
    return key, GOALS[key]


# Dropout's cost in instructions, held to (issue: static roofline; issue: GPU predictions): the
# residual+LayerNorm forward with dropout at most 1.5x the instructions per warp of the same kernel
# without; each attention kernel (forward, dK/dV, dQ) at most 2x the instructions per loop trip. Held for
# 16-bit activations (bf16/fp16 models and bf16 autocast): fp32 rows hold 4 values per 128-bit load, so
# two threads share each 8-value Philox call (reported). The backward kernels are held where attention
# draws its mask in the query-key grouping (MASK_TILES: 16-bit, head dim 64 and 128). At head dim 128 a
# 64-query warpgroup holds 2 of a call's 4 queries, and 128 queries over one warpgroup spill in the dQ
# kernel (its 128-register accumulator beside the loop: 136 B at 32 keys a step, 392 B at 2-3 stages,
# 104 B at 16 keys), so there the dQ kernel runs with dropout in the dK/dV kernel's frame (keys first,
# attention._dq_keys_first), whose threads hold the grouping's calls whole. Its tiles differ from its
# twin's without dropout: the ratio is per (query, key) element a warp handles in a trip.
DROPOUT_OVERHEAD = {"residual_layer_norm_fwd_kernel": 1.5, "attention_fwd_kernel": 2.0,
                    "attention_bwd_dkdv_kernel": 2.0, "attention_bwd_dq_kernel": 2.0}


def _trip_elements_per_warp(variant: str) -> float:
    """(query, key) elements of one loop trip of an attention variant, per warp: BLOCK_M x BLOCK_N over its
    warps (from variant_name)."""
    fields = variant.split()
    value = {f.split("=")[0]: int(f.split("=")[1]) for f in fields if f.startswith(("BLOCK_M=", "BLOCK_N="))}
    warps = int(re.fullmatch(r"w(\d+)s\d+", fields[-1]).group(1))
    return value["BLOCK_M"] * value["BLOCK_N"] / warps


def dropout_overheads(predictions: list[Prediction]) -> list[tuple[str, str, float, float]]:
    """(scenario, kernel, ratio of instructions with / without dropout, the limit) for DROPOUT_OVERHEAD's
    kernels, pairing each p=0.1 scenario with its p=0.0 twin."""
    by_key = {(p.scenario, p.kernel): p for p in predictions}
    out = []
    for p in predictions:
        limit = DROPOUT_OVERHEAD.get(p.kernel)
        if limit is None or "p=0.1" not in p.scenario:
            continue
        if " fp32 " in f" {p.variant} ":
            limit = None
        if "_bwd_" in p.kernel and "MASK_TILES" not in p.variant.split():
            limit = None
        twin = by_key.get((p.scenario.replace("p=0.1", "p=0.0"), p.kernel))
        if twin is None:
            continue
        if p.kernel.startswith("attention"):
            # per (query, key) element a warp handles in a trip: the keys-first dQ with dropout (head dim
            # 128) runs other tiles and warps than its twin without
            ratio = (p.instructions_per_trip / _trip_elements_per_warp(p.variant)) / \
                (twin.instructions_per_trip / _trip_elements_per_warp(twin.variant))
        else:
            ratio = p.instructions_per_warp / twin.instructions_per_warp
        out.append((p.scenario, p.kernel, ratio, limit))
    return out


@dataclass
class OpPrediction:
    """An op made of several launches, judged as a whole: its minimum bytes against the sum of its
    launches' predicted times (the torch kernels it also runs, a sort and two small fills in the
    embedding's backward, are not in the sum: they are not bertfast's code)."""
    scenario: str
    phase: str
    kernels: list[str]
    bytes: float
    predicted_us: float
    fraction_of_copy: float


def embedding_ops(predictions: list[Prediction]) -> list[OpPrediction]:
    """The embedding sum forward (the extension's kernel) and backward (the pieces and rows kernels) of
    each embedding scenario. Minimum bytes: forward, the ids, the word rows gathered, the small tables and
    the output; backward, the gradient read once and each table written once."""
    out = []
    for scenario in dict.fromkeys(p.scenario for p in predictions if p.family == "embedding"):
        launches = [p for p in predictions if p.scenario == scenario]
        for phase, members in (("forward", [p for p in launches if p.kernel == "embedding_sum_forward"]),
                               ("backward", [p for p in launches if p.kernel.startswith("embedding_")
                                             and p.kernel != "embedding_sum_forward"])):
            if not members:
                continue
            minimum = members[0].op_bytes
            predicted = sum(p.predicted_us for p in members)
            out.append(OpPrediction(scenario, phase, [p.kernel for p in members], minimum, predicted,
                                    round(minimum / h200.COPY_BYTES_PER_S * 1e6 / predicted, 3)))
    return out


def check(predictions: list[Prediction]) -> list[str]:
    """The goals the model is held to (issue: static roofline, point 4); returns what is missed."""
    problems = [f"{scenario} / {kernel}: dropout costs {ratio:.2f}x the instructions of the same kernel without it "
                f"(limit {limit}x)" for scenario, kernel, ratio, limit in dropout_overheads(predictions)
                if limit is not None and ratio > limit]
    training = {p.scenario for p in predictions if p.training}
    for op in embedding_ops(predictions):
        if op.scenario in training and op.fraction_of_copy < GOALS["embedding"]:
            problems.append(f"{op.scenario} {op.phase} ({' + '.join(op.kernels)}): predicted {op.fraction_of_copy:.0%} of "
                            f"copy bandwidth over its minimum bytes, goal {GOALS['embedding']:.0%}")
    from bertfast.analysis.gpus import FIT

    against = attention_against_tutorial(attention_rates(predictions))
    if against and max(abs(e) for _, e in against) > FIT["attention_error"] + 0.005:
        problems.append(f"the attention model is {max(abs(e) for _, e in against):.1%} off the Triton tutorial's published "
                        f"times, over gpus.FIT['attention_error'] = {FIT['attention_error']}: update it")
    for rate in attention_rates(predictions):
        if rate.best and rate.tflops > rate.best[1]:
            problems.append(f"{rate.scenario} {rate.phase}: predicted {rate.tflops:.0f} TFLOP/s, above the best published "
                            f"measurement at head dim {rate.head_dim}, S = {rate.seq} ({rate.best[0]}, {rate.best[1]})")
    for p in predictions:
        if p.spill_bytes:
            problems.append(f"{p.variant}: {p.spill_bytes} B of register spills")
        if p.shared_bytes > h200.SHARED_BYTES_PER_BLOCK:
            problems.append(f"{p.variant}: {p.shared_bytes} B of shared memory, over sm_90's {h200.SHARED_BYTES_PER_BLOCK}")
        if p.family == "attention" and " fp32 " not in f" {p.variant} ":
            if any(d != "wgmma" for d in p.dots) or p.hmma:
                problems.append(f"{p.variant}: a tl.dot not on wgmma ({p.dots}, {p.hmma:.0f} HMMA)")
        goal = _family_goal(p)
        if goal and p.training:
            name, target = goal
            # Tiny launches (finalize steps of a few hundred KB) are bound by their launch, not their kind.
            if p.bytes >= 4e6 and p.fraction_of_copy < target:
                problems.append(f"{p.scenario} / {p.variant}: predicted {p.fraction_of_copy:.0%} of copy bandwidth, "
                                f"goal {target:.0%} ({name}; bound by {p.bound})")
            if p.bytes >= 4e6 and p.share_128bit < 0.85:
                problems.append(f"{p.scenario} / {p.variant}: only {p.share_128bit:.0%} of global memory "
                                "instructions move 128 bits")
    return problems


@dataclass
class AttentionRate:
    """One attention scenario's forward or backward (every launch of the phase, under the calibrated
    constants) in TFLOP/s by the published convention, beside the published measurements at its shape."""
    scenario: str
    phase: str  # "fwd" or "bwd"
    head_dim: int
    seq: int
    us: float
    tflops: float
    published: dict  # kernel -> TFLOP/s at the same head dim, S and phase (gpus.ATTENTION_PUBLISHED)
    in_band: bool | None  # the dropout-free forward at a published shape: inside gpus.ATTENTION_BAND

    @property
    def best(self) -> tuple[str, float] | None:
        return max(self.published.items(), key=lambda kv: kv[1]) if self.published else None


def attention_rates(predictions: list[Prediction]) -> list[AttentionRate]:
    """Forward and backward rates of every 16-bit attention scenario. FLOPs: the forward's two matmuls,
    4 * B * heads * S^2 * D, and 2.5x that for the backward, whatever the kernels really compute (ours
    recompute Q K^T and dP in both backward kernels); times: calibrated_us under gpus.FIT."""
    from bertfast.analysis.gpus import ATTENTION_BAND, ATTENTION_PUBLISHED, FIT

    out = []
    for scenario in dict.fromkeys(p.scenario for p in predictions if p.family == "attention"):
        launches = [p for p in predictions if p.scenario == scenario]
        if any(" fp32 " in f" {p.variant} " for p in launches):
            continue
        fwd = [p for p in launches if p.kernel.startswith("attention_fwd")]
        head_dim = int(re.search(r"HEAD_DIM=(\d+)", fwd[0].variant).group(1))
        seq = int(re.search(r"S=(\d+)", scenario).group(1))
        flops = sum(p.flops for p in fwd)
        for phase, members, phase_flops in (("fwd", fwd, flops),
                                            ("bwd", [p for p in launches if p not in fwd], 2.5 * flops)):
            us = sum(calibrated_us(p.floors(), FIT["launch_us"], FIT["stream_efficiency"]) for p in members)
            published = ATTENTION_PUBLISHED.get((head_dim, seq, phase), {})
            low, high = (published.get(k) for k in ATTENTION_BAND)
            tflops = phase_flops / us / 1e6
            in_band = (low <= tflops <= high) if phase == "fwd" and "p=0.0" in scenario and low and high else None
            out.append(AttentionRate(scenario, phase, head_dim, seq, round(us, 2), round(tflops, 1), published,
                                     in_band))
    return out


def attention_against_tutorial(rates: list[AttentionRate]) -> list[tuple[str, float]]:
    """(scenario, predicted / measured - 1) of each dropout-free forward at a published shape against the
    Triton tutorial kernel's published time there."""
    return [(r.scenario, r.tflops and (r.published["Triton tutorial"] / r.tflops - 1)) for r in rates
            if r.phase == "fwd" and "published" in r.scenario and "p=0.0" in r.scenario
            and "Triton tutorial" in r.published]


def calibrated(predictions: list[Prediction]) -> list[tuple[Prediction, float, float]]:
    """(prediction, microseconds, fraction of copy bandwidth) of the training step's memory-bound launches
    under the constants fitted to measured kernels (bertfast.analysis.gpus.FIT: a fixed cost per launch,
    the share of the copy bandwidth a streaming kernel sustains). The goals above are checked on the bare
    floors; these are what a GPU should show."""
    from bertfast.analysis.gpus import FIT

    out = []
    for p in predictions:
        if p.training and p.family != "attention" and p.bytes >= 4e6:
            us = calibrated_us(p.floors(), FIT["launch_us"], FIT["stream_efficiency"])
            out.append((p, us, p.memory_us / us))
    return out


def model(selected: list[Scenario] | None = None, workers: int | None = None) -> list[Prediction]:
    """Predictions for every launch of the scenarios (all by default)."""
    chosen = selected if selected is not None else scenarios()
    pairs = []
    for scenario in chosen:
        for launch in traced(scenario):
            if launch.kind == "triton" or (launch.kind == "extension" and launch.name == "embedding_sum_forward"):
                pairs.append((scenario, launch))
    keys = {}
    for scenario, launch in pairs:
        if launch.kind == "triton":
            keys.setdefault(variant_key(launch), launch)
    binaries = _binaries(list(keys.values()), workers)
    return [predict(s, launch, binaries[variant_key(launch)] if launch.kind == "triton" else Binary.of_extension(launch))
            for s, launch in pairs]


_PENDING: list[Launch] = []


def _read_binary(index: int) -> Binary:
    return Binary.of_triton(_PENDING[index])


def _binaries(launches: list[Launch], workers: int | None) -> dict[str, Binary]:
    """Compile and read each variant, in forked worker processes (one a core) where there are cores."""
    workers = workers if workers is not None else (os.cpu_count() or 1)
    if workers <= 1 or len(launches) <= 1:
        return {variant_key(launch): Binary.of_triton(launch) for launch in launches}
    import multiprocessing

    _PENDING[:] = launches
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        binaries = pool.map(_read_binary, range(len(launches)), chunksize=1)
    _PENDING.clear()
    return {variant_key(launch): binary for launch, binary in zip(launches, binaries)}


def _table(predictions: list[Prediction]) -> str:
    head = (f"{'scenario':<44} {'kernel':<28} {'regs':>4} {'blk/SM':>6} {'waves':>6} {'128b':>5} {'instr/warp':>10} "
            f"{'/trip':>5} {'MB':>7} {'mem us':>7} {'issue us':>8} {'tensor us':>9} {'pred us':>8} {'bound':>7} "
            f"{'%copy':>6} {'%tensor':>7}  dots")
    rows = [head]
    for p in predictions:
        rows.append(f"{p.scenario:<44} {p.kernel.removesuffix('_kernel'):<28} {p.registers:>4} {p.blocks_per_sm:>6} "
                    f"{p.waves:>6.2f} {p.share_128bit:>5.0%} {p.instructions_per_warp:>10.0f} {p.instructions_per_trip:>5} "
                    f"{p.bytes / 1e6:>7.1f} {p.memory_us:>7.1f} {p.issue_us:>8.1f} {p.tensor_us:>9.1f} "
                    f"{p.predicted_us:>8.1f} {p.bound:>7} {p.fraction_of_copy:>6.0%} {p.fraction_of_tensor:>7.0%}  "
                    f"{','.join(p.dots)}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bertfast.analysis", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="PATH", help="also write every prediction as JSON")
    parser.add_argument("--filter", default="", help="only scenarios whose label contains this")
    args = parser.parse_args(argv)
    chosen = [s for s in scenarios() if args.filter in s.label]
    predictions = model(chosen)
    print(f"Predicted from compiled code (no GPU) for {h200.NAME}: copy {h200.COPY_BYTES_PER_S / 1e12:.2f} TB/s, "
          f"bf16 matmul {h200.BF16_MATMUL_FLOPS / 1e12:.0f} TFLOP/s, {h200.SMS} SMs at {h200.CLOCK_HZ / 1e9:.2f} GHz")
    print(_table(predictions))
    problems = check(predictions)
    variants = sorted({p.variant for p in predictions})
    for scenario, kernel, ratio, limit in dropout_overheads(predictions):
        print(f"dropout overhead {scenario} {kernel}: {ratio:.2f}x instructions (limit {limit or 'none'})")
    for op in embedding_ops(predictions):
        print(f"embedding op {op.scenario} {op.phase}: {op.bytes / 1e6:.1f} MB minimum, predicted {op.predicted_us:.1f} us "
              f"({op.fraction_of_copy:.0%} of copy bandwidth; {' + '.join(op.kernels)})")
    for p, us, fraction in calibrated(predictions):
        print(f"calibrated {p.scenario} {p.kernel}: {us:.1f} us, {fraction:.0%} of copy bandwidth (bare floors: "
              f"{p.predicted_us:.1f} us, {p.fraction_of_copy:.0%})")
    for rate in attention_rates(predictions):
        published = ", ".join(f"{k} {v}" for k, v in rate.published.items()) or "none published"
        band = {True: "; inside the FlashAttention-2 to Triton tutorial band",
                False: "; OUTSIDE the FlashAttention-2 to Triton tutorial band", None: ""}[rate.in_band]
        print(f"{rate.scenario} {rate.phase}: calibrated {rate.us:.1f} us, {rate.tflops:.0f} TFLOP/s "
              f"(published, H100: {published}){band}")
    against = attention_against_tutorial(attention_rates(predictions))
    if against:
        print("attention forward against the Triton tutorial kernel's published H100 times (predicted / measured - 1): "
              + ", ".join(f"{s_.split()[1]} S={s_.split('S=')[1].split()[0]} {e:+.1%}" for s_, e in against)
              + f"; worst {max(abs(e) for _, e in against):.1%}")
    print(f"{len(predictions)} launches, {len(variants)} compiled variants; goals missed: {len(problems)}")
    for problem in problems:
        print("  MISSED", problem)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"target": {k: getattr(h200, k) for k in dir(h200) if k.isupper()},
                       "goals": GOALS, "dropout_overhead_limits": DROPOUT_OVERHEAD,
                       "dropout_overheads": [dict(scenario=s_, kernel=k, ratio=round(r, 3), limit=lim)
                                             for s_, k, r, lim in dropout_overheads(predictions)],
                       "embedding_ops": [asdict(op) for op in embedding_ops(predictions)],
                       "predictions": [asdict(p) for p in predictions], "missed": problems,
                       "attention_rates": [asdict(r) for r in attention_rates(predictions)],
                       "calibrated": [dict(scenario=p.scenario, kernel=p.kernel, us=round(us, 2),
                                           fraction_of_copy=round(f, 3)) for p, us, f in calibrated(predictions)]},
                      f, indent=1)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
