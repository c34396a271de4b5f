"""What the interpreter cannot see, tested where it can be expressed on the CPU and GPU-marked where not:
grid limits, the device a launch runs on, dropout seeds under CUDA graphs and torch.compile, the GPU's
approximate arithmetic (GELU and LayerNorm tolerances on CUDA), the extension's scalar path and launch
errors. benchmarks/gpu_check.sh runs this file's GPU-marked tests first (with tests/test_dropout_exact.py).
"""
from __future__ import annotations


import pytest
import torch

from bertfast import ops
from bertfast.reference import attention_ref

# 1. Grid limits ----------------------------------------------------------------------------------------
GRID_CHECK = """
    import torch
    from bertfast import ops
    from bertfast.kernels.launch import MAX_GRID_X, MAX_GRID_YZ
    from bertfast.analysis.trace import gpu_trace, meta

    def check(events, what):
        launches = [e for e in events if e.kind == "triton"]
        assert launches, what
        for e in launches:
            x, y, z = e.grid
            assert x <= MAX_GRID_X and y <= MAX_GRID_YZ and z <= MAX_GRID_YZ, (what, e.name, e.grid)
        print(what, sorted({(e.name, e.grid) for e in launches}))

    batch, heads, seq = 5462, 12, 4  # batch x heads = 65,544: past axis 1's 65,535
    for p in (0.0, 0.1):
        q, k, v = (meta(batch * seq, heads, 64, requires_grad=True) for _ in range(3))
        cu = torch.empty(batch + 1, dtype=torch.int32, device="meta")
        with gpu_trace() as events:
            out = ops.fused_attention_varlen(q, k, v, cu, seq, p, None, training=p > 0, validate=False)
            torch.autograd.grad(out, [q, k, v], torch.empty_like(out))
        check(events, f"packed p={p}")
        q, k, v = (meta(batch, seq, heads, 64, requires_grad=True) for _ in range(3))
        mask = torch.empty(batch, seq, dtype=torch.bool, device="meta")
        with gpu_trace() as events:
            out = ops.fused_attention(*(t.transpose(1, 2) for t in (q, k, v)), mask, p, None, training=p > 0)
            torch.autograd.grad(out, [q, k, v], torch.empty_like(out))
        check(events, f"padded p={p}")
"""


def test_traced_attention_grids_stay_within_cuda_limits(run_compiled):
    """5,462 packed sequences x 12 heads (and the same batch padded), forward and backward, with and
    without dropout: every launch's grid axes within CUDA's limits (x < 2**31, y and z <= 65,535)."""
    stdout = run_compiled(GRID_CHECK)
    assert stdout.count("attention_fwd_kernel") == 4 and stdout.count("attention_bwd_dq_kernel") == 4


def test_batch_heads_past_65535_matches_the_reference(backend, monkeypatch):
    """The same batch under the interpreter (rows of 1 to 3 tokens, head dim 16), forward and backward, against
    the reference. The interpreter runs a grid's programs one after another in Python (~10 ms each: 65,544 a
    kernel would take over ten minutes), so its grid loop is narrowed to the first 8 programs and the last 16
    (program ids 65,528 to 65,543, past the 65,535 of a grid's axis 1), and the sequences and heads those
    programs own are checked: output and the three gradients, fp32 within 1e-5."""
    import builtins

    import triton.runtime.interpreter as interpreter

    backend("triton")
    batch, heads, dim = 5462, 12, 16
    programs = batch * heads  # one block of queries (or keys) per sequence and head in every kernel here
    chosen = [*builtins.range(8), *builtins.range(programs - 16, programs)]
    monkeypatch.setattr(interpreter, "range", lambda *a: chosen if a == (programs,) else builtins.range(*a),
                        raising=False)
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 4, (batch,), generator=g)
    cu = torch.nn.functional.pad(torch.cumsum(lengths, 0), (1, 0)).to(torch.int32)
    total = int(lengths.sum())
    q, k, v = (torch.randn(total, heads, dim, generator=g, requires_grad=True) for _ in range(3))
    out = ops.fused_attention_varlen(q, k, v, cu, 3)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    monkeypatch.undo()
    owned = {(pid // heads, pid % heads) for pid in chosen}  # program pid: sequence pid // H, head pid % H
    assert max(b for b, _ in owned) == batch - 1
    for b, h in sorted(owned):
        rows = slice(int(cu[b]), int(cu[b + 1]))
        qb, kb, vb = (t.detach()[rows, h][None, None].requires_grad_() for t in (q, k, v))
        ref = attention_ref(qb, kb, vb)
        want = torch.autograd.grad(ref, (qb, kb, vb), dout[rows, h][None, None])
        torch.testing.assert_close(out[rows, h], ref[0, 0], atol=1e-5, rtol=1e-5)
        for name, got, w in zip("qkv", grads, want):
            torch.testing.assert_close(got[rows, h], w[0, 0], atol=1e-5, rtol=1e-5, msg=lambda m: f"d{name} {b} {h}: {m}")


def test_grid_past_cuda_x_limit_is_refused():
    from bertfast.kernels.launch import MAX_GRID_X, grid_1d

    assert grid_1d(MAX_GRID_X, "x") == (MAX_GRID_X,)
    with pytest.raises(ValueError, match="more than the 2147483647 a CUDA grid holds"):
        grid_1d(MAX_GRID_X + 1, "attention")


# A BERT-base-shaped training step on meta tensors (standing for CUDA ones), traced: forward, backward.
BERT_STEP = """
    import torch
    import bertfast
    from bertfast.analysis.trace import gpu_trace

    def traced_step(cls, layers):
        cfg = bertfast.BertConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                  num_hidden_layers=layers)
        with torch.device("meta"):
            model = getattr(bertfast, cls)(cfg).to(torch.bfloat16)
        model.train()
        ids = torch.empty(8, 128, dtype=torch.long, device="meta")
        mask = torch.empty(8, 128, dtype=torch.long, device="meta")
        # the forward's one host read: ids min/max, mask values ok, padding, longest, total, position 0 real
        from bertfast.models.batch import host_read_stand_in
        read = host_read_stand_in([1, 30000, 1, 0, 128, 8 * 100, 1])
        with gpu_trace(host_copy=read) as forward:
            out = model(input_ids=ids, attention_mask=mask)[0]
        with gpu_trace() as backward:
            torch.autograd.grad(out.float().sum(), [p for p in model.parameters() if p.requires_grad],
                                allow_unused=True)
        return forward, backward
"""


# 2. Device guard ---------------------------------------------------------------------------------------
GUARD_CHECK = BERT_STEP + """
    forward, backward = traced_step("BertForMaskedLM", 1)
    events = forward + backward
    launches = [e for e in events if e.kind == "triton"]
    unguarded = sorted({e.name for e in launches if not e.device_guarded})
    assert launches and not unguarded, unguarded
    print("guarded", len(launches), sorted({e.name for e in launches}))
"""


def test_every_traced_launch_runs_under_its_tensors_device(run_compiled):
    """A BERT masked-LM training step traced on meta tensors: every Triton launch is made inside
    launch.device_guard of its own tensors (Triton launches on the current device, not the tensors')."""
    stdout = run_compiled(GUARD_CHECK)
    assert "guarded" in stdout and "attention_bwd_dkdv_kernel" in stdout and "embedding_pieces_kernel" in stdout


@pytest.mark.gpu
def test_cuda_tensors_on_a_device_that_is_not_current():
    """Every op on cuda:1 while cuda:0 is current, against the same op on cuda:0 (two GPUs needed)."""
    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs two GPUs; this machine has {torch.cuda.device_count()}")
    torch.manual_seed(0)
    x = torch.randn(37, 768, requires_grad=True)
    b = torch.randn(768, requires_grad=True)
    q, k, v = (torch.randn(2, 12, 77, 64, requires_grad=True) for _ in range(3))
    ids = torch.randint(0, 100, (2, 77))
    tables = [torch.randn(n, 768, requires_grad=True) for n in (100, 2, 128)]

    def run(device):
        leaves = [t.detach().to(device).requires_grad_() for t in (x, b, q, k, v, *tables)]
        xd, bd, qd, kd, vd, *td = leaves
        outs = [ops.fused_bias_gelu(xd, bd), ops.fused_residual_layer_norm(xd, xd, bd, bd, 1e-12, 0.1, True, seed=3),
                ops.fused_attention(qd, kd, vd, None, 0.1, training=True, seed=5),
                ops.embedding_sum(ids.to(device), torch.zeros_like(ids).to(device),
                                  torch.arange(77, device=device)[None].expand(2, 77), *td)]
        grads = torch.autograd.grad(sum(o.float().sum() for o in outs), leaves)
        return [t.detach().cpu() for t in (*outs, *grads)]

    torch.cuda.set_device(0)
    want = run("cuda:0")
    got = run("cuda:1")
    assert torch.cuda.current_device() == 0, "a launch left another device current"
    for a, b_ in zip(got, want):
        torch.testing.assert_close(a, b_, atol=1e-5, rtol=1e-5)


# 3. Dropout seeds: on the device, new at every CUDA-graph replay and torch.compile call -----------------
SEED_CHECK = BERT_STEP + """
    forward, backward = traced_step("BertModel", 2)
    drawn = {}
    for e in forward:
        if e.kind == "torch" and e.name == "randint":
            drawn[len(drawn)] = e
    dropout_launches = [e for e in forward + backward if e.kind == "triton" and e.bound_args().get("HAS_DROPOUT")]
    assert len(dropout_launches) == 2 * 3 + 2 * 4, [e.name for e in dropout_launches]  # per layer: 3 forward, 4 backward
    for e in dropout_launches:
        seed = e.bound_args()["SEED"]
        assert isinstance(seed, torch.Tensor) and seed.device.type == "meta" and seed.dtype == torch.int64, e.name
    # one draw on the device a forward (models.batch.AttentionInputs.with_dropout_seeds): each dropout op of
    # the forward reads its own element of it, each backward kernel its forward's
    assert len(drawn) == 1, len(drawn)
    offsets = [e.bound_args()["SEED"].storage_offset() for e in dropout_launches]
    forward_offsets = [e.bound_args()["SEED"].storage_offset() for e in dropout_launches
                       if any(e is f for f in forward)]
    # (every other int64: each seed 16-byte aligned, as Triton specialises pointers: one variant a kernel)
    assert sorted(forward_offsets) == list(range(0, 2 * 3 * 2, 2)) and set(offsets) == set(forward_offsets), offsets
    # the forward's one host read (its mask facts) and nothing else: no seed comes from the host
    assert [e.name for e in forward if e.kind == "sync"] == ["copy to host"] and not [e for e in backward if e.kind == "sync"]
    print("seeds on the device:", len(drawn), "draws for", len(dropout_launches), "dropout launches,",
          len(set(offsets)), "seeds")
"""


def test_dropout_seeds_are_drawn_on_the_device(run_compiled):
    """A BertModel training step traced on meta tensors (which stand for CUDA ones): every dropout kernel
    reads its seed from an int64 in device memory, written by a torch.randint on the device (one draw a
    forward of every layer's seeds, an element a dropout op; the backward reuses the forward's), with no
    host value passed and no host sync added.
    Such a draw is a kernel of the CUDA generator's, which a CUDA graph replays with a new Philox offset:
    the GPU-marked test_cuda_graph_replays_draw_new_masks shows the consequence."""
    stdout = run_compiled(SEED_CHECK)
    assert "seeds on the device: 1 draws for 14 dropout launches, 6 seeds" in stdout


def test_dropout_under_torch_compile_trains_and_draws_new_masks(backend):
    """The Triton kernels (interpreter) under torch.compile(fullgraph=True) with dropout on and no seed
    given: each call draws new masks, forward and backward agree (dx exactly 0 where x was dropped), the
    same torch.manual_seed repeats a call exactly, and a few SGD steps move the loss."""
    backend("triton")
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(64, 64, generator=g) / 8)
    ln_w, ln_b = torch.nn.Parameter(torch.ones(64)), torch.nn.Parameter(torch.zeros(64))

    def step(x):
        h = x @ w
        y = ops.fused_residual_layer_norm(h, x, ln_w, ln_b, 1e-12, dropout_p=0.5, training=True)
        qkv = y.view(2, 8, 2, 32).transpose(1, 2)  # [B, heads, S, D]
        return ops.fused_attention(qkv, qkv, qkv, None, dropout_p=0.3, training=True)

    compiled = torch.compile(step, fullgraph=True)
    x = torch.randn(16, 64, generator=g, requires_grad=True)
    torch.manual_seed(1)
    a = compiled(x)
    b = compiled(x)
    assert not torch.equal(a, b), "two calls drew the same dropout masks"
    torch.manual_seed(1)
    assert torch.equal(compiled(x), a), "the same generator state must repeat the masks"
    # forward and backward agree on the LayerNorm's mask: x @ w dropped -> its gradient exactly zero
    h = (x @ w).detach().requires_grad_()
    y = torch.compile(lambda h: ops.fused_residual_layer_norm(h, None, None, None, 1e-5, 0.5, True), fullgraph=True)(h)
    (dh,) = torch.autograd.grad(y, h, torch.randn_like(y))
    zero = dh == 0
    assert 0.3 < zero.float().mean() < 0.7
    restored = torch.nn.functional.layer_norm(torch.where(zero, 0.0, h * 2), (64,), eps=1e-5)
    torch.testing.assert_close(y, restored, atol=1e-5, rtol=1e-5)
    opt = torch.optim.SGD([w, ln_w, ln_b], lr=0.5)
    losses = []
    for _ in range(4):
        loss = compiled(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert w.grad is not None and torch.isfinite(w.grad).all() and len(set(losses)) == 4


@pytest.mark.gpu
def test_cuda_graph_replays_draw_new_masks():
    """A captured training step of a BertModel (dropout 0.1, no seeds given): two replays draw different
    masks, and a replay equals the eager step run from the same generator state."""
    import bertfast

    torch.manual_seed(0)
    cfg = bertfast.BertConfig.tiny(vocab_size=100, max_position_embeddings=64, hidden_dropout_prob=0.1,
                                   attention_probs_dropout_prob=0.1)
    model = bertfast.BertModel(cfg).cuda().train()
    ids = torch.randint(1, 100, (4, 64), device="cuda")
    key_mask = torch.ones(4, 64, dtype=torch.bool, device="cuda")  # padded path: no host read inside the step
    from bertfast.models.batch import AttentionInputs

    def step():
        hidden = model.embeddings(input_ids=ids, ids_checked=True)  # (no range check: it reads the host)
        out, _, _ = model.encoder(hidden, AttentionInputs(key_mask=key_mask))
        loss = out.float().pow(2).mean()
        grads = torch.autograd.grad(loss, [p for p in model.encoder.parameters()])
        return loss.detach(), grads[0].detach()

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            step()  # warm-up outside the graph (compiles the kernels)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss, static_grad = step()
    state = torch.cuda.get_rng_state()
    graph.replay()
    first = (static_loss.clone(), static_grad.clone())
    graph.replay()
    assert not torch.equal(first[1], static_grad), "two replays drew the same dropout masks"
    torch.cuda.set_rng_state(state)
    eager = step()
    torch.testing.assert_close(eager[0], first[0], atol=0, rtol=0)
    torch.testing.assert_close(eager[1], first[1], atol=0, rtol=0)


# 4. The wide LayerNorm backward's read-modify-write --------------------------------------------------------
BARRIER_CHECK = """
    import torch
    from bertfast.analysis import sm90

    for dtype in (torch.bfloat16, torch.float32):
        scenario = sm90.Scenario("wide", "layer_norm", sm90._layer_norm(4096, 8192, dtype, 0.1, True))
        launch = next(e for e in sm90.traced(scenario) if e.name == "residual_layer_norm_bwd_wide_kernel")
        compiled = sm90.compile_launch(launch)
        barriers = compiled.asm["ttir"].count("gpu.barrier")
        binary = sm90.Binary.of_triton(launch)
        assert barriers == 2 and binary.spill_bytes == 0, (barriers, binary.spill_bytes)
        print(binary.name, "barriers", barriers, "registers", binary.registers, "spills", binary.spill_bytes)
"""


def test_wide_layer_norm_backward_orders_its_partial_rows(run_compiled):
    """Hidden 8,192, compiled for sm_90 as the JIT would: the two barriers of the design (after zeroing the
    partial row, after each row's read-modify-write) are in the kernel, and nothing spills. Its numbers
    are tested under the interpreter (test_layer_norm.py::test_wide_rows_with_dropout) and on CUDA."""
    stdout = run_compiled(BARRIER_CHECK)
    assert stdout.count("barriers 2") == 2


# 8. The GPU's approximate arithmetic -------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_gelu_over_every_input(dtype):
    """test_bias_gelu's exhaustive fp16/bf16 check, on the GPU (approximate ex2, rcp and sqrt there)."""
    import test_bias_gelu

    test_bias_gelu.check_every_input(dtype, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("eps", [1e-5, 1e-6, 1e-12])
def test_cuda_layer_norm_realistic_eps(eps):
    """test_layer_norm's near-constant rows on the GPU (approximate rsqrt and division there); its other
    tolerance tests run on CUDA as test_layer_norm.py::test_cuda."""
    import test_layer_norm

    test_layer_norm.check_near_constant_rows(eps, "cuda")


# 9. The embedding extension's scalar path ---------------------------------------------------------------
def _unaligned(rows, hidden, dtype, device):
    """A [rows, hidden] contiguous table whose data starts one element past a 16-byte boundary."""
    return torch.randn(rows * hidden + 1, device=device).to(dtype)[1:].view(rows, hidden)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("hidden,aligned", [(383, True), (1001, True), (768, False)])
def test_cuda_embedding_scalar_path(dtype, hidden, aligned):
    """Hidden not a multiple of 16 bytes' elements, or tables that do not start on a 16-byte boundary:
    the extension's one-element-a-thread path (bertfast._C.embedding_forward_launch reports vec = 1)."""
    from bertfast import _C
    from bertfast.reference import embedding_sum_ref

    size = torch.empty(0, dtype=dtype).element_size()
    assert _C.embedding_forward_launch(130, hidden, size, aligned)[0] == 1  # the path under test
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 97, (3, 130), generator=g).cuda()
    tt = torch.randint(0, 2, (3, 130), generator=g).cuda()
    pos = torch.arange(130, device="cuda")[None].expand(3, 130)
    if aligned:
        tables = [torch.randn(n, hidden, generator=g).to(device="cuda", dtype=dtype) for n in (97, 2, 160)]
    else:
        tables = [_unaligned(n, hidden, dtype, "cuda") for n in (97, 2, 160)]
        assert all(t.data_ptr() % 16 for t in tables)
    out = ops.embedding_sum(ids, tt, pos, *tables)
    want = embedding_sum_ref(ids, tt, pos, *[t.double() for t in tables])
    tol = {torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    torch.testing.assert_close(out.double(), want, atol=tol, rtol=tol)
    torch.cuda.synchronize()


@pytest.mark.gpu
def test_cuda_embedding_launch_error_is_its_own():
    """An error left pending by an earlier, unrelated launch is not reported as the embedding's: the
    extension reads its own launch's status (cudaLaunchKernelEx), so a good call succeeds after it (the
    raw op, with no torch kernel between them: torch's own launch checks would report it first)."""
    from bertfast import _C, _backend

    ids = torch.zeros(4 * 8, dtype=torch.long, device="cuda")
    pos = torch.arange(8, device="cuda").repeat(4)
    tables = [torch.randn(n, 64, device="cuda") for n in (5, 2, 8)]
    want = tables[0][0] + tables[1][0] + tables[2][pos]
    torch.cuda.synchronize()
    assert _C.take_last_error() == ""
    _C.leave_pending_launch_error()
    out = torch.ops.bertfast_C.embedding_sum_forward(ids, ids, pos, *tables, _backend.cuda_stream(ids))
    assert _C.take_last_error() != "", "the earlier error was pending (and is cleared now)"
    torch.testing.assert_close(out, want)
