"""Training loops behind `python -m bertfast pretrain` and `python -m bertfast finetune`.

Defaults follow BERT's recommendations for fine-tuning: batch 32, learning rate 5e-5/3e-5/2e-5 (5e-5 by
default), 10% linear warm-up then linear decay, 3 epochs, AdamW (weight decay 0.01, none on biases and
LayerNorm); bf16 autocast on GPU; gradient accumulation. Checkpoints are config.json + model.safetensors
(+ vocab.txt and trainer_state.json), which transformers loads too; `--resume DIR` continues from one.
"""
from __future__ import annotations

import inspect
import json
import math
import os
import random
import time
from contextlib import nullcontext

import torch

import bertfast
from bertfast.training import data


def pick_device(name: str | None) -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, total_steps: int, warmup: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "LayerNorm" in name else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr)
    warm = max(1, int(total_steps * warmup))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total_steps - s) / max(1, total_steps - warm))))
    return opt, sched


def autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def save_checkpoint(model, tokenizer: data.WordPiece | None, directory: str, state: dict) -> None:
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_vocab(directory)
    with open(os.path.join(directory, "trainer_state.json"), "w") as f:
        json.dump(state, f, indent=1)


def progress(iterable, total, desc):
    try:
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, dynamic_ncols=True, mininterval=1.0)
    except ImportError:
        return iterable


# Pre-training -----------------------------------------------------------------------------------------
STDLIB_MODULES = ["json", "os", "re", "collections", "functools", "itertools", "argparse", "logging", "pathlib",
                  "typing", "unittest", "textwrap", "string", "random", "statistics", "datetime", "decimal",
                  "fractions", "heapq", "bisect", "csv", "subprocess", "threading", "shutil", "tempfile",
                  "urllib.parse", "http.client", "email.message", "inspect", "dataclasses", "enum", "contextlib",
                  "operator", "math", "socket", "sqlite3", "zipfile", "tarfile", "gzip", "pickle", "copy",
                  "pprint", "traceback", "warnings", "abc", "io", "time", "calendar", "locale", "difflib"]


def stdlib_documents() -> list[list[str]]:
    """The docstrings of Python's standard library, as documents of sentences: a corpus every machine has."""
    import importlib
    import re

    docs = []
    for name in STDLIB_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        objects = [module] + [v for _, v in inspect.getmembers(module) if inspect.isclass(v) or inspect.isfunction(v)]
        for obj in objects:
            doc = inspect.getdoc(obj)
            if not doc:
                continue
            for para in doc.split("\n\n"):
                sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", " ".join(para.split())) if len(s.strip()) > 10]
                if len(sentences) >= 2:
                    docs.append(sentences)
    return docs


@torch.no_grad()
def mlm_accuracy(model, batch) -> float:
    """Accuracy of the MLM head at the selected positions (the vocabulary projection of those rows only)."""
    sel = batch["labels"] != -100
    if not bool(sel.any()):
        return 0.0
    was_training = model.training
    model.eval()
    hidden = model.bert(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).last_hidden_state
    model.train(was_training)
    logits = model.cls.predictions(hidden[sel])
    return (logits.argmax(-1) == batch["labels"][sel]).float().mean().item()


def build_config(name: str, vocab_size: int, max_length: int) -> bertfast.BertConfig:
    if name.endswith(".json"):
        cfg = bertfast.BertConfig.from_json_file(name)
        if cfg.vocab_size < vocab_size:
            raise ValueError(f"{name}: vocab_size {cfg.vocab_size} is smaller than the tokenizer's {vocab_size}")
        return cfg
    presets = {"tiny": bertfast.BertConfig.tiny, "base": bertfast.BertConfig.base, "large": bertfast.BertConfig.large}
    if name not in presets:
        raise ValueError(f"--config must be tiny, base, large or a config.json path, got {name!r}")
    return presets[name](vocab_size=vocab_size, max_position_embeddings=max(512 if name != "tiny" else 128, max_length))


def pretrain(corpus: list[str] | None, vocab: str | None, config: str, out: str, steps: int, batch_size: int,
             max_length: int, lr: float, warmup: float, accumulate: int, seed: int, device: str | None,
             resume: str | None, log_every: int = 25) -> dict:
    rng = random.Random(seed)
    torch.manual_seed(seed)
    dev = pick_device(device)
    if corpus:
        docs = data.read_documents(corpus)
        source = ", ".join(corpus)
    else:
        docs = stdlib_documents()
        source = f"the docstrings of {len(STDLIB_MODULES)} standard-library modules (no corpus given)"
    if resume:
        tokenizer = data.WordPiece.from_vocab(os.path.join(resume, "vocab.txt"))
    elif vocab:
        tokenizer = data.WordPiece.from_vocab(vocab)
    else:
        tokenizer = data.WordPiece.train_from_iterator((s for d in docs for s in d), vocab_size=8000 if not corpus else 30000)
    docs_ids = [[tokenizer.ids(s) for s in doc] for doc in docs]
    examples = data.make_pretraining_examples(docs_ids, max_length, tokenizer.cls_id, tokenizer.sep_id, rng)
    if not examples:
        raise ValueError(f"no pre-training examples could be made from {source}")
    print(f"pre-training on {source}: {len(docs)} documents, {len(examples)} examples, vocab {tokenizer.vocab_size}, "
          f"device {dev}")
    if resume:
        model = bertfast.BertForPreTraining.from_pretrained(resume)
        state = json.load(open(os.path.join(resume, "trainer_state.json")))
    else:
        model = bertfast.BertForPreTraining(build_config(config, tokenizer.vocab_size, max_length))
        state = {"step": 0, "history": []}
    model.to(dev).train()
    opt, sched = make_optimizer(model, lr, 0.01, steps, warmup)
    for _ in range(state["step"]):
        sched.step()
    collate = data.PretrainingCollator(tokenizer, seed=seed + state["step"])
    lengths = [len(e.input_ids) for e in examples]

    def batches():
        while True:
            for idx in data.length_bucketed_batches(lengths, batch_size, rng):
                yield collate([examples[i] for i in idx])

    stream = batches()
    window = {"mlm": 0.0, "nsp": 0.0, "nsp_acc": 0.0, "n": 0, "tokens": 0}
    start_time = time.perf_counter()
    bar = progress(range(state["step"], steps), steps - state["step"], "pretrain")
    for step in bar:
        for _ in range(accumulate):
            batch = {k: v.to(dev) for k, v in next(stream).items()}
            with autocast(dev):
                result = model(**batch)  # the MLM loss only at the selected positions, in chunks
            (result.loss / accumulate).backward()
            with torch.no_grad():
                nsp_logits = result.seq_relationship_logits.float()
                nsp_loss = torch.nn.functional.cross_entropy(nsp_logits, batch["next_sentence_label"]).item()
                window["mlm"] += result.loss.item() - nsp_loss
                window["nsp"] += nsp_loss
                window["nsp_acc"] += (nsp_logits.argmax(-1) == batch["next_sentence_label"]).float().mean().item()
                window["n"] += 1
                window["tokens"] += int(batch["attention_mask"].sum())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            n = window["n"]
            entry = {"step": step + 1, "mlm_loss": window["mlm"] / n, "nsp_loss": window["nsp"] / n,
                     "mlm_accuracy": mlm_accuracy(model, batch),  # on the window's last batch, in eval mode
                     "nsp_accuracy": window["nsp_acc"] / n,
                     "tokens_per_s": window["tokens"] / (time.perf_counter() - start_time)}
            state["history"].append(entry)
            msg = (f"step {entry['step']}: mlm loss {entry['mlm_loss']:.3f} acc {entry['mlm_accuracy']:.3f} | "
                   f"nsp loss {entry['nsp_loss']:.3f} acc {entry['nsp_accuracy']:.3f} | {entry['tokens_per_s']:.0f} tok/s")
            if hasattr(bar, "set_postfix_str"):
                bar.set_postfix_str(f"mlm {entry['mlm_loss']:.2f} nsp {entry['nsp_loss']:.2f}")
                bar.write(msg)
            else:
                print(msg)
            window = dict.fromkeys(window, 0.0)
            window["n"] = 0
            start_time = time.perf_counter()
        state["step"] = step + 1
    save_checkpoint(model, tokenizer, out, state)
    print(f"saved {out} (config.json, model.safetensors, vocab.txt)")
    return state
