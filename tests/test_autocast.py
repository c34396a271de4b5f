"""torch.autocast through bertfast: the same output dtypes as transformers under the same autocast (matmuls
in bf16, LayerNorm statistics and outputs in fp32 as PyTorch's autocast runs layer_norm), parameters
stay fp32, gradients flow; values within bf16 precision of transformers (2e-2: every matmul rounds its
inputs to bf16, 8 bits of mantissa, in both)."""
import pytest
import torch

import bertfast

transformers = pytest.importorskip("transformers")


def check_model_matches_transformers(device, attn_implementation, mask, max_position_embeddings):
    """bertfast against transformers under bf16 autocast on `device`, on a padded batch (mask [B, S])."""
    torch.manual_seed(0)
    cfg = bertfast.BertConfig.tiny(vocab_size=100, max_position_embeddings=max_position_embeddings,
                                   hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    hf_cfg = cfg.to_hf()
    hf_cfg._attn_implementation = attn_implementation
    hf = transformers.BertModel(hf_cfg).to(device)
    bf = bertfast.BertModel(cfg).to(device)
    bf.load_state_dict(hf.state_dict())
    ids = torch.randint(1, 100, mask.shape).to(device)
    mask = mask.to(device)
    with torch.autocast(device, dtype=torch.bfloat16):
        want = hf(input_ids=ids, attention_mask=mask)
        got = bf(input_ids=ids, attention_mask=mask)
    assert got.last_hidden_state.dtype == want.last_hidden_state.dtype
    assert got.pooler_output.dtype == want.pooler_output.dtype
    real = mask.bool()
    torch.testing.assert_close(got.last_hidden_state[real].float(), want.last_hidden_state[real].float(),
                               atol=2e-2, rtol=2e-2)
    got.last_hidden_state[real].float().sum().backward()
    assert all(p.dtype == torch.float32 for p in bf.parameters())
    assert all(torch.isfinite(p.grad).all() for p in bf.parameters() if p.grad is not None)


@pytest.mark.parametrize("backend_name", ["auto", "triton"])
def test_cpu_bf16_autocast_matches_transformers(backend, backend_name):
    backend(backend_name)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 4:] = 0
    check_model_matches_transformers("cpu", "eager", mask, max_position_embeddings=32)


def layer_norm_dtypes(device, dtype):
    """(bertfast, PyTorch) output dtypes of a LayerNorm of x alone and of x + an fp32 residual, under autocast."""
    from bertfast.nn import FusedLayerNorm

    ours, theirs = FusedLayerNorm(64).to(device), torch.nn.LayerNorm(64).to(device)
    x = torch.randn(5, 64, device=device, dtype=dtype)
    r = torch.randn(5, 64, device=device)
    with torch.autocast(device, dtype=dtype):
        return ([ours(x).dtype, ours(x, r).dtype, ours(x.float()).dtype],
                [theirs(x).dtype, theirs(x + r).dtype, theirs(x.float()).dtype])


@pytest.mark.parametrize("backend_name", ["auto", "triton"])
def test_cpu_autocast_layer_norm_dtype_is_pytorchs(backend, backend_name):
    backend(backend_name)
    got, want = layer_norm_dtypes("cpu", torch.bfloat16)
    assert got == want == [torch.bfloat16, torch.float32, torch.float32]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_autocast_layer_norm_dtype_is_pytorchs(dtype):
    got, want = layer_norm_dtypes("cuda", dtype)
    assert got == want == [torch.float32] * 3


@pytest.mark.gpu
def test_cuda_bf16_autocast_matches_transformers():
    """The whole model on the Triton kernels under CUDA bf16 autocast, as bertfast's trainer runs it."""
    mask = torch.ones(5, 37, dtype=torch.long)
    mask[1, 20:] = 0
    mask[3, 1:] = 0
    check_model_matches_transformers("cuda", "sdpa", mask, max_position_embeddings=64)
