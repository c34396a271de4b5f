"""A pre-training step as `python -m bertfast pretrain` runs it: BertForPreTraining on a batch drawn by
its own data path (BERT pairs, 15% masked 80/10/10), MLM + NSP loss, backward, clip, LAMB step, under
bf16 autocast. GPU: BERT-base and BERT-large (1024 positions) at S = 128, 512 and 1024, with tokens/s and
MFU (6·N + 12·L·S·H FLOPs a real token against the device's measured matmul peak); transformers'
BertForPreTraining (sdpa) with the same optimiser at S = 128 as the baseline. CPU and dry mode: a tiny
model at S = 64 (a plumbing check).
"""
from __future__ import annotations

import pytest
import torch

from benchmarks.harness import MODE
import bertfast
from bertfast.training.common import parameter_groups
from bertfast.training.lamb import Lamb

GPU = torch.cuda.is_available()
if GPU and MODE != "dry":
    CASES = [("base", 128, 128), ("base", 512, 32), ("base", 1024, 16),
             ("large", 128, 64), ("large", 512, 16), ("large", 1024, 8)]
else:
    CASES = [("tiny", 64, 8)]


def config(name: str) -> bertfast.BertConfig:
    make = {"tiny": bertfast.BertConfig.tiny, "base": bertfast.BertConfig.base, "large": bertfast.BertConfig.large}[name]
    return make(max_position_embeddings=1024)


def pretraining_batch(cfg, batch: int, seq: int, dev):
    """Pairs of lengths between seq/2 and seq (as BERT's chunking gives), segment B from the middle on,
    masks as the data path draws them."""
    from bertfast.training.data import mask_tokens

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(seq // 2, seq + 1, (batch,), generator=g)
    attention = torch.arange(seq)[None] < lengths[:, None]
    ids = torch.randint(5, cfg.vocab_size, (batch, seq), generator=g) * attention
    ids[:, 0] = 2
    ids[torch.arange(batch), lengths - 1] = 3
    special = (ids == 0) | (ids == 2) | (ids == 3)
    masked, labels = mask_tokens(ids, special, cfg.vocab_size, 4, g, low_token_id=5)
    types = ((torch.arange(seq)[None] >= (lengths[:, None] // 2)) & attention).long()
    nsp = torch.randint(0, 2, (batch,), generator=g)
    out = dict(input_ids=masked, attention_mask=attention.long(), token_type_ids=types, labels=labels,
               next_sentence_label=nsp)
    return {k: v.to(dev) for k, v in out.items()}, int(attention.sum())


def flops_per_token(cfg, seq: int) -> float:
    n = cfg.num_hidden_layers * (4 * cfg.hidden_size**2 + 2 * cfg.hidden_size * cfg.intermediate_size)
    return 6 * n + 12 * cfg.num_hidden_layers * seq * cfg.hidden_size


@pytest.mark.parametrize("variant", ["transformers sdpa", "bertfast"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-S{c[1]}-B{c[2]}")
def test_pretraining_step(benchmark, recorder, dev, case, variant):
    name, seq, batch = case
    if variant != "bertfast" and seq != min(c[1] for c in CASES):
        pytest.skip("the transformers baseline runs at the shortest length only (time)")
    transformers = pytest.importorskip("transformers") if variant != "bertfast" else None
    cfg = config(name)
    torch.manual_seed(0)
    if variant == "bertfast":
        model = bertfast.BertForPreTraining(cfg)
    else:
        hf_cfg = cfg.to_hf()
        hf_cfg._attn_implementation = "sdpa"
        model = transformers.BertForPreTraining(hf_cfg)
    model.to(dev).train()
    opt = Lamb(parameter_groups(model, 0.01), lr=1e-4)
    inputs, real_tokens = pretraining_batch(cfg, batch, seq, dev)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)

    def run():
        opt.zero_grad(set_to_none=True)
        with autocast:
            out = model(**inputs)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    flops = flops_per_token(cfg, seq) * real_tokens
    res = recorder.measure(benchmark, "BertForPreTraining step (LAMB)", f"{name} B={batch} S={seq}", variant, run,
                           flops=flops, baseline="transformers sdpa", graph=False)
    res.extra["tokens_per_s"] = round(real_tokens / (res.time_ms / 1e3))
    res.extra["MFU"] = round(res.flops_fraction, 3) if res.flops_fraction else None
