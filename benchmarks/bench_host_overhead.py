"""Host time of a BertModel step: what Python, op dispatch and input checks cost per call, with every
fused Triton kernel replaced by a stub that only allocates its outputs. On a GPU this host time is the
floor under an eager step whenever the device work per layer is shorter (small batches, inference):
kernels cannot start faster than the host issues them.

CPU only (no GPU needed: nothing is launched), on a 12-layer model with hidden size 64 and a 4 x 16
batch, so that the remaining aten ops (the linears) cost little beyond their own dispatch.
transformers (sdpa) on the same batch is the baseline: its ops at this size are host time too. Reported
as the bertfast / transformers ratio ("vs eager" column: transformers' time over bertfast's).
"""
from __future__ import annotations

import pytest
import torch

import bertfast
from bertfast import _backend

transformers = pytest.importorskip("transformers")

if torch.cuda.is_available():
    pytest.skip("a host-side measurement: the GPU check's model benchmark measures the real step there",
                allow_module_level=True)


def stub_kernels(monkeypatch):
    import bertfast.kernels.attention as attention
    import bertfast.kernels.bias_gelu as bias_gelu
    import bertfast.kernels.embedding_sum as embedding_sum
    import bertfast.kernels.host_facts as host_facts
    import bertfast.kernels.layer_norm as layer_norm

    def ln_forward(x, residual, w, b, eps, p, seed, x_bias=None):
        out = torch.empty_like(x if residual is None else residual)
        return out, x.new_empty(x.shape[0], dtype=torch.float32), x.new_empty(x.shape[0], dtype=torch.float32)

    def ln_backward(dy, x, residual, w, b, mean, rstd, p, seed, x_bias=None):
        return (torch.empty_like(x), x.new_empty(0), torch.empty_like(w), torch.empty_like(b),
                torch.empty_like(x_bias) if x_bias is not None else None)

    def attention_forward(q, k, v, mask, cu, max_seqlen, scale, p, seed):
        rows = (cu.shape[0] - 1) * q.shape[1] if cu is not None else q.shape[0] * q.shape[1]
        return attention._canonical_empty(q, cu is not None), q.new_empty((rows, max(max_seqlen, 1)), dtype=torch.float32)

    def attention_backward(do, q, k, v, *rest, grads=None):
        return grads if grads is not None else (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v))

    rows = {}

    def facts(mask, ids):  # the forward's host read needs the real facts: computed once a batch, then looked up
        key = (id(mask), *map(id, ids))
        if key not in rows:
            row = [v for t in ids for v in (int(t.min()), int(t.max()))]
            if mask is not None:
                real = mask != 0
                lengths = real.sum(1)
                row += [1, int(lengths.max()), int(lengths.sum()), int((real[:, 0] | (lengths == 0)).all())]
            rows[key] = torch.tensor([row])
        return torch.empty_like(rows[key]).copy_(rows[key])

    monkeypatch.setattr(_backend, "use_triton", lambda t: True)
    monkeypatch.setattr(host_facts, "host_facts", facts)
    monkeypatch.setattr(bias_gelu, "bias_gelu_forward", lambda x, b, a: torch.empty_like(x))
    monkeypatch.setattr(bias_gelu, "bias_gelu_backward", lambda dy, x, b, a: (torch.empty_like(x), torch.empty_like(b)))
    monkeypatch.setattr(layer_norm, "residual_layer_norm_forward", ln_forward)
    monkeypatch.setattr(layer_norm, "residual_layer_norm_backward", ln_backward)
    monkeypatch.setattr(attention, "attention_forward", attention_forward)
    monkeypatch.setattr(attention, "attention_backward", attention_backward)
    monkeypatch.setattr(embedding_sum, "embedding_backward",
                        lambda grad, ids, tt, pos, rows, pad, det: tuple(grad.new_empty(n, grad.shape[1]) for n in rows))


@pytest.mark.parametrize("task", ["forward", "fwd+bwd"])
@pytest.mark.parametrize("variant", ["transformers sdpa", "bertfast"])
def test_host_time(benchmark, recorder, monkeypatch, variant, task):
    torch.manual_seed(0)
    cfg = bertfast.BertConfig(hidden_size=64, num_hidden_layers=12, num_attention_heads=2, intermediate_size=256,
                              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if variant == "bertfast":
        stub_kernels(monkeypatch)
        model = bertfast.BertModel(cfg, add_pooling_layer=False)
    else:
        hf_cfg = cfg.to_hf()
        hf_cfg._attn_implementation = "sdpa"
        model = transformers.BertModel(hf_cfg, add_pooling_layer=False)
    ids = torch.randint(1, 1000, (4, 16))
    mask = torch.ones(4, 16, dtype=torch.long)
    mask[1, 8:] = 0  # padding: bertfast takes its padding-free path

    def forward():
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask).last_hidden_state

    def fwd_bwd():
        model(input_ids=ids, attention_mask=mask).last_hidden_state.sum().backward()

    res = recorder.measure(benchmark, f"host time BertModel {task}", "12 layers, kernels stubbed, B=4 S=16",
                           variant, forward if task == "forward" else fwd_bwd, baseline="transformers sdpa")
    res.extra["per_layer_us"] = round(res.time_ms * 1e3 / cfg.num_hidden_layers)
