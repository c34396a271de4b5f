"""The whole model: BertModel forward and a full training step (forward, MLM loss over 15% of the real
tokens, backward, AdamW), bertfast against transformers eager, transformers sdpa and
torch.compile(transformers sdpa). GPU: BERT-base under bf16 autocast (fp32 weights), as users train.
CPU: BERT-base forward in fp32 at batch 16 x 128 with lengths uniform in [16, 128].

FLOPs count real tokens only (6·N + 12·L·S·H per token for training, a third of it for the forward),
so padding-free execution shows up as throughput and MFU.
"""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from benchmarks.harness import MODE
import bertfast

transformers = pytest.importorskip("transformers")

GPU = torch.cuda.is_available()
if MODE == "dry":
    CONFIG = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256)
    SHAPES = [(4, 32)]
elif GPU:
    CONFIG = {}
    SHAPES = [(128, 128), (32, 512)] if MODE == "full" else [(128, 128), (32, 512)]
else:
    CONFIG = {}
    SHAPES = [(16, 128)]
PADDINGS = ["none", "50%"] if GPU or MODE == "dry" else ["uniform[16,128]"]
VARIANTS = ["transformers eager", "transformers sdpa", "torch.compile(transformers sdpa)", "bertfast"]


def lengths_for(padding: str, batch: int, seq: int, gen: torch.Generator) -> torch.Tensor:
    if padding == "none":
        return torch.full((batch,), seq)
    if padding == "50%":
        return torch.randint(1, seq + 1, (batch,), generator=gen)
    return torch.randint(16, seq + 1, (batch,), generator=gen)


def make_batch(cfg, batch, seq, padding, dev):
    gen = torch.Generator().manual_seed(0)
    lengths = lengths_for(padding, batch, seq, gen)
    mask = torch.arange(seq)[None] < lengths[:, None]
    ids = torch.randint(1000, cfg.vocab_size, (batch, seq), generator=gen) * mask
    tt = ((torch.arange(seq)[None] >= (lengths[:, None] // 2)) & mask).long()
    selected = (torch.rand(batch, seq, generator=gen) < 0.15) & mask
    positions = selected.flatten().nonzero().squeeze(1)
    labels = ids.flatten()[positions]
    to = lambda t: t.to(dev)  # noqa: E731
    return dict(input_ids=to(ids), attention_mask=to(mask.long()), token_type_ids=to(tt)), to(positions), to(labels), int(mask.sum())


_MODELS: dict = {}


def build(variant: str, cfg, dev, seq: int):
    """One model per (variant, sequence length), reused across paddings and tasks: the compiled
    variants then compile each graph once (padding changes values, not shapes)."""
    key = (variant, seq)
    if key not in _MODELS:
        _MODELS.clear()  # keep one model alive at a time
        _MODELS[key] = _build(variant, cfg, dev)
    return _MODELS[key]


def _build(variant: str, cfg, dev):
    torch.manual_seed(0)
    if variant == "bertfast":
        return bertfast.BertModel(cfg, add_pooling_layer=False).to(dev)
    hf_cfg = cfg.to_hf()
    impl = "eager" if "eager" in variant else "sdpa"
    hf_cfg._attn_implementation = impl
    model = transformers.BertModel(hf_cfg, add_pooling_layer=False).to(dev)
    assert model.config._attn_implementation == impl
    if variant.startswith("torch.compile"):
        model = torch.compile(model)
    return model


def mlm_loss(hidden, word_weight, positions, labels):
    picked = hidden.flatten(0, 1).index_select(0, positions)
    return F.cross_entropy(F.linear(picked, word_weight).float(), labels)


def autocast(dev):
    return torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()


def flops_per_token(cfg, seq: int, train: bool) -> float:
    n = cfg.num_hidden_layers * (4 * cfg.hidden_size**2 + 2 * cfg.hidden_size * cfg.intermediate_size)
    per_token = 2 * n + 4 * cfg.num_hidden_layers * seq * cfg.hidden_size
    return 3 * per_token if train else per_token


# Order (slowest-varying last): variant, shape, task, padding, so each model is built once.
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("task", ["forward", "train step"] if GPU or MODE == "dry" else ["forward"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{s[0]}xS{s[1]}")
@pytest.mark.parametrize("variant", VARIANTS)
def test_model(benchmark, recorder, dev, shape, padding, task, variant):
    if variant.startswith("torch.compile") and not GPU:
        pytest.skip("torch.compile baselines run on the GPU (CPU compile time would dominate the CPU suite)")
    if variant.startswith("torch.compile") and MODE == "reduced" and shape[1] != 128:
        pytest.skip("reduced mode compiles transformers at S=128 only (compile time)")
    batch, seq = shape
    cfg = bertfast.BertConfig.base(**CONFIG)
    model = build(variant, cfg, dev, seq)
    inputs, positions, labels, real_tokens = make_batch(cfg, batch, seq, padding, dev)
    word_weight = (model._orig_mod if hasattr(model, "_orig_mod") else model).embeddings.word_embeddings.weight
    if task == "forward":
        model.eval()

        @torch.no_grad()
        def run():
            with autocast(dev):
                return model(**inputs).last_hidden_state
    else:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev.type == "cuda")

        def run():
            opt.zero_grad(set_to_none=True)
            with autocast(dev):
                loss = mlm_loss(model(**inputs).last_hidden_state, word_weight, positions, labels)
            loss.backward()
            opt.step()
    flops = flops_per_token(cfg, seq, task == "train step") * real_tokens
    res = recorder.measure(benchmark, f"BertModel {task}", f"B={batch} S={seq} pad={padding}", variant, run,
                           flops=flops, baseline="transformers eager", graph=False)
    res.extra["tokens_per_s"] = round(real_tokens / (res.time_ms / 1e3))
    if task == "train step":
        res.extra["MFU"] = round(res.flops_fraction, 3)
    if variant == "bertfast":
        for other in ("transformers sdpa", "torch.compile(transformers sdpa)"):
            base = recorder.find(res.group, res.case, other)
            if base is not None:
                res.extra[f"vs {other}"] = f"{base.time_ms / res.time_ms:.2f}x"
        recorder.save()
