"""embedding_sum against the torch reference (bertfast.reference.embedding_sum_ref).

Tolerances: fp32 1e-6 (the kernel adds three fp32 numbers, as the reference does, in one rounding);
fp16/bf16 outputs are compared with the fp32 reference at half an ulp of the output dtype plus the
reference's own two roundings (atol 2e-3 fp16, 1.6e-2 bf16 for N(0,1) entries). Gradients are fp32
sums of up to 390 N(0,1) terms (the type table's rows), compared with a float64 reference: the
fp32 summation error is at most about n·2⁻²⁴·Σ|g| ≈ 390 · 6e-8 · 2 ≈ 5e-5; in fp16/bf16 they are
rounded once more to the table dtype (rtol 1e-2 fp16, 2e-2 bf16).
"""
import pytest
import torch

from bertfast import _backend, ops
from bertfast.reference import embedding_sum_ref

TOL = {torch.float32: dict(atol=1e-6, rtol=0), torch.float16: dict(atol=2e-3, rtol=1e-3),
       torch.bfloat16: dict(atol=1.6e-2, rtol=8e-3)}
GRAD_TOL = {torch.float32: dict(atol=5e-5, rtol=1e-6), torch.float16: dict(atol=1e-2, rtol=1e-2),
            torch.bfloat16: dict(atol=5e-2, rtol=2e-2)}


def make_inputs(batch, seq, hidden, dtype, device="cpu", vocab=97, types=2, positions=160, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    ids[:, -1] = 0  # some padding_idx tokens
    tt = torch.randint(0, types, (batch, seq), generator=g)
    pos = torch.randperm(positions, generator=g)[:seq][None].expand(batch, seq)
    tables = [torch.randn(n, hidden, generator=g) for n in (vocab, types, positions)]
    to = dict(device=device)
    return ([t.to(**to) for t in (ids, tt, pos)],
            [t.to(device=device, dtype=dtype).requires_grad_() for t in tables])


def run_case(batch, seq, hidden, dtype, device="cpu"):
    ids, tables = make_inputs(batch, seq, hidden, dtype, device)
    out = ops.embedding_sum(*ids, *tables, padding_idx=0)
    ref_tables = [t.detach().double().requires_grad_() for t in tables]
    ref = embedding_sum_ref(*ids, *ref_tables, padding_idx=0)
    assert out.dtype == dtype and out.shape == (batch, seq, hidden)
    torch.testing.assert_close(out.double(), ref, **TOL[dtype])
    grad = torch.randn(batch, seq, hidden, device=device)
    got = torch.autograd.grad(out, tables, grad.to(dtype))
    want = torch.autograd.grad(ref, ref_tables, grad.to(dtype).double())
    for name, g_got, g_want in zip(("word", "type", "position"), got, want):
        assert g_got.dtype == dtype, name
        torch.testing.assert_close(g_got.double(), g_want, **GRAD_TOL[dtype], msg=lambda m: f"{name}: {m}")
    assert torch.all(got[0][0] == 0), "the padding_idx row must get no gradient"


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("seq", [1, 7, 130])
@pytest.mark.parametrize("hidden", [384, 768, 1000])
def test_embedding_sum_fp32_matches_reference(batch, seq, hidden):
    run_case(batch, seq, hidden, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("hidden", [384, 1000])
def test_embedding_sum_half_matches_reference(dtype, hidden):
    run_case(3, 130, hidden, dtype)


def test_cpu_uses_the_extension():
    assert _backend.extension() is not None, "bertfast._C was not built"
    assert _backend.use_extension(torch.empty(0))


def test_torch_backend_matches_extension(backend):
    ids, tables = make_inputs(3, 17, 64, torch.float32)
    fast = ops.embedding_sum(*ids, *tables, padding_idx=0)
    backend("torch")
    assert not _backend.use_extension(tables[0])
    ref = ops.embedding_sum(*ids, *tables, padding_idx=0)
    torch.testing.assert_close(fast, ref, atol=1e-6, rtol=0)


def test_defaults_broadcast_like_hf():
    ids, tables = make_inputs(2, 5, 16, torch.float32)
    out = ops.embedding_sum(ids[0], None, None, *tables)
    ref = embedding_sum_ref(ids[0], torch.zeros_like(ids[0]), torch.arange(5).expand(2, 5), *tables)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("which,bad", [(0, 97), (0, -1), (1, 2), (2, 160), (2, -3)])
def test_out_of_range_ids_raise(which, bad):
    ids, tables = make_inputs(2, 5, 16, torch.float32)
    ids = [t.clone() for t in ids]
    ids[which][1, 3] = bad
    name = ("input_ids", "token_type_ids", "position_ids")[which]
    with pytest.raises(IndexError, match=rf"{name} holds {bad}"):
        ops.embedding_sum(*ids, *tables)


def test_bad_arguments_raise():
    ids, tables = make_inputs(2, 5, 16, torch.float32)
    with pytest.raises(TypeError, match="input_ids must have dtype"):
        ops.embedding_sum(ids[0].float(), ids[1], ids[2], *tables)
    with pytest.raises(ValueError, match="position_ids has shape"):
        ops.embedding_sum(ids[0], ids[1], torch.arange(6)[None], *tables)
    with pytest.raises(ValueError, match="type_weight is"):
        ops.embedding_sum(*ids, tables[0], tables[1].double().float()[:, :8], tables[2])
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        ops.embedding_sum(None, None, None, *tables)


def deterministic_grads(ids, tables, repeats=2):
    """The table gradients of `repeats` identical backward passes under torch's deterministic algorithms."""
    torch.use_deterministic_algorithms(True)
    try:
        return [torch.autograd.grad(ops.embedding_sum(*ids, *tables, padding_idx=0).sum(), tables)
                for _ in range(repeats)]
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("path", ["cpu extension", "triton"])
def test_deterministic_backward_is_bitwise_repeatable(backend, path):
    if path == "triton":
        backend("triton")
    ids, tables = make_inputs(2, 100, 64, torch.float32, vocab=3)  # long runs: crossing the Triton pieces
    first, second = deterministic_grads(ids, tables)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("vocab,batch,seq,hidden,dtype", [
    (97, 3, 130, 384, torch.float32),   # many short runs, hidden not a multiple of the column block
    (3, 2, 100, 64, torch.float32),     # runs far longer than a piece of the sorted list (32 entries)
    (5, 1, 7, 300, torch.bfloat16),     # a single short sequence, bf16 (rounded once, GRAD_TOL)
])
def test_triton_backward_matches_reference(backend, deterministic, vocab, batch, seq, hidden, dtype):
    """The GPU backward (Triton; here under the interpreter): each table row written once, runs crossing
    the pieces of the sorted ids combined in order; padding_idx gets nothing; broadcast positions
    (the periodic ids) as HF's default."""
    backend("triton")
    g = torch.Generator().manual_seed(vocab + seq)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    ids[:, -1] = 0
    tt = torch.randint(0, 2, (batch, seq), generator=g)
    tables = [torch.randn(n, hidden, generator=g).to(dtype).requires_grad_() for n in (vocab + 4, 2, 160)]
    out = ops.embedding_sum(ids, tt, None, *tables, padding_idx=0)
    grad = torch.randn(batch, seq, hidden, generator=g).to(dtype)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        got = torch.autograd.grad(out, tables, grad)
    finally:
        torch.use_deterministic_algorithms(previous)
    ref_tables = [t.detach().double().requires_grad_() for t in tables]
    ref = embedding_sum_ref(ids, tt, torch.arange(seq).expand(batch, seq), *ref_tables, padding_idx=0)
    want = torch.autograd.grad(ref, ref_tables, grad.double())
    for name, a, b in zip(("word", "type", "position"), got, want):
        assert a.dtype == dtype
        torch.testing.assert_close(a.double(), b, **GRAD_TOL[dtype], msg=lambda m: f"{name}: {m}")
    assert torch.all(got[0][0] == 0) and torch.all(got[0][vocab:] == 0), "padding_idx and unused rows: zeros"


def test_opcheck():
    ids, tables = make_inputs(2, 5, 16, torch.float32)
    flat = [t.reshape(-1).contiguous() for t in ids]
    torch.library.opcheck(torch.ops.bertfast.embedding_sum.default, (*flat, *tables, 0, True))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("hidden", [384, 768, 1000])
def test_embedding_sum_cuda(dtype, hidden):
    assert _backend.use_extension(torch.empty(0, device="cuda")), "the CUDA extension was not built"
    run_case(3, 130, hidden, dtype, device="cuda")


@pytest.mark.gpu
def test_embedding_sum_cuda_deterministic_and_range_check():
    ids, tables = make_inputs(3, 130, 768, torch.float32, device="cuda")
    for a, b in zip(*deterministic_grads(ids, tables)):
        assert torch.equal(a, b)
    bad = ids[0].clone()
    bad[0, 0] = 10**6
    with pytest.raises(IndexError, match="input_ids holds 1000000"):
        ops.embedding_sum(bad, ids[1], ids[2], *tables)
    torch.cuda.synchronize()  # no device assert was raised
