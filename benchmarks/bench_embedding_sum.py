"""embedding_sum: bertfast (C++ on CPU, CUDA on GPU) vs eager PyTorch (three F.embedding and two adds)
and torch.compile of that eager code. Bytes: three gathered rows read and one row written per token
(+ the ids); forward+backward adds the gradient read and the word-table gradient rows written."""
import pytest
import torch

from benchmarks.harness import MODE, sizes, variant_fn
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
    """The kernels alone: the public op told the ids are checked (as BertModel does, in its one host read),
    so no host synchronisation, which a CUDA graph cannot capture."""
    return ops.embedding_sum(ids, tt, pos, w, t, p, padding_idx=0, ids_checked=True)


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


def _embedding_ln_eager(ids, tt, pos, w, t, p, lw, lb):
    x = embedding_sum_ref(ids, tt, pos, w, t, p, 0)
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), lw, lb, 1e-12)


@pytest.mark.triton_kernel
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("variant", ["eager", "torch.compile", "bertfast unfused", "bertfast fused"])
def test_embedding_layer_norm_forward(benchmark, recorder, dev, tokens, hidden, variant):
    """The embeddings' sum + LayerNorm, inference: two ops (embedding_sum, then the fused LayerNorm) or the
    fused embedding_layer_norm. Bytes: three gathered rows and one written row per token."""
    ids, tt, pos, tables = make(tokens, hidden, dev, torch.bfloat16, False)
    lw, lb = torch.randn(hidden, device=dev), torch.randn(hidden, device=dev)
    if variant == "eager":
        fn = _embedding_ln_eager
    elif variant == "torch.compile":
        fn = variant_fn("torch.compile", _embedding_ln_eager, None)
    elif variant == "bertfast unfused":
        def fn(*a):
            x = ops.embedding_sum(*a[:6], padding_idx=0)
            return ops.fused_residual_layer_norm(x, None, a[6], a[7], 1e-12)
    else:
        def fn(*a):
            return ops.embedding_layer_norm(*a, 1e-12, padding_idx=0)

    @torch.no_grad()
    def run():
        return fn(ids, tt, pos, *tables, lw, lb)
    recorder.measure(benchmark, "embedding+LayerNorm fwd", f"T={tokens} H={hidden} bf16", variant, run,
                     bytes_moved=4 * tokens * hidden * 2 + 3 * tokens * 8)
