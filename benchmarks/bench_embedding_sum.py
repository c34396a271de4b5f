"""embedding_sum: bertfast (C++ on CPU, CUDA on GPU) vs eager PyTorch (three F.embedding and two adds)
and torch.compile of that eager code. Bytes: three gathered rows read and one row written per token
(+ the ids); forward+backward adds the gradient read and the word-table gradient rows written."""
import pytest
import torch

from benchmarks.harness import MODE, sizes
from bertfast import ops
from bertfast.reference import embedding_sum_ref

TOKENS = sizes(full=[4096, 16384, 65536], reduced=[16384], dry=[256])
HIDDEN = [768, 1024] if MODE != "dry" else [64]


def make(tokens, hidden, dev, dtype, requires_grad):
    seq = 128 if tokens >= 128 else tokens
    batch = tokens // seq
    ids = torch.randint(1, 30522, (batch, seq), device=dev)
    tt = torch.randint(0, 2, (batch, seq), device=dev)
    pos = torch.arange(seq, device=dev)[None].expand(batch, seq)
    tables = [torch.randn(n, hidden, device=dev, dtype=dtype, requires_grad=requires_grad) for n in (30522, 2, 512)]
    return ids, tt, pos, tables


def kernel_only(ids, tt, pos, w, t, p):
    """The extension's kernels alone, without the public op's host-side id check (which syncs, so the
    public op cannot be timed in a CUDA graph)."""
    from bertfast._backend import cuda_stream

    flat = [x.reshape(-1) for x in (ids, tt, pos.contiguous())]
    return torch.ops.bertfast_C.embedding_sum_forward(*flat, w, t, p, cuda_stream(w))


def variants():
    eager = lambda ids, tt, pos, w, t, p: embedding_sum_ref(ids, tt, pos, w, t, p, 0)  # noqa: E731
    out = {"eager": eager, "bertfast": lambda ids, tt, pos, w, t, p: ops.embedding_sum(ids, tt, pos, w, t, p, padding_idx=0)}
    if torch.cuda.is_available():
        out["bertfast kernel"] = kernel_only
    if MODE != "dry" and torch.cuda.is_available():
        out["torch.compile"] = torch.compile(eager)
    return out


@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("variant", ["eager", "torch.compile", "bertfast", "bertfast kernel"])
def test_embedding_sum(benchmark, recorder, dev, tokens, hidden, pass_, variant):
    fns = variants()
    if variant not in fns:
        pytest.skip("GPU only: torch.compile baselines (CPU compile time would dominate the CPU suite) and the "
                    "kernel-only timing")
    if variant == "bertfast kernel" and pass_ != "fwd":
        pytest.skip("kernel-only timing is forward only")
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    ids, tt, pos, tables = make(tokens, hidden, dev, dtype, pass_ != "fwd")
    fn = fns[variant]
    elem = tables[0].element_size()
    bytes_moved = 4 * tokens * hidden * elem + 3 * tokens * 8
    if pass_ == "fwd":
        run = lambda: fn(ids, tt, pos, *tables)  # noqa: E731
    else:
        grad = torch.randn(ids.shape[0], ids.shape[1], hidden, device=dev, dtype=dtype)
        bytes_moved += tokens * hidden * (elem + 4)

        def run():
            torch.autograd.grad(fn(ids, tt, pos, *tables), tables, grad)
    recorder.measure(benchmark, f"embedding_sum {pass_}", f"T={tokens} H={hidden} {str(dtype)[6:]}", variant, run,
                     bytes_moved=bytes_moved)
