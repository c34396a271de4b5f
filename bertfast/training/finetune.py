"""Fine-tuning: sequence classification, extractive QA and NER from JSONL/CSV files (see docs/training.md).

  classify  {"text": ..., "text_b": optional, "label": ...}          accuracy and macro F1
  qa        {"question": ..., "context": ..., "answer_text": ..., "answer_start": char offset}
                                                                       exact match and F1 (SQuAD's)
  ner       {"tokens": [words], "tags": [BIO tags]}                   entity-level F1
"""
from __future__ import annotations

import collections
import contextlib
import os
import random
import re
import string
import time

import torch

import bertfast
from bertfast.training import data, distributed
from bertfast.training.common import autocast, make_optimizer, progress, save_checkpoint


class Example(dict):
    """input_ids, token_type_ids and the task's targets; `line` and `path` for messages."""


def _too_long(path, line, n, max_length):
    return data.DataError(path, line, f"{n} tokens, longer than --max-length {max_length} (pass --truncate to cut it)")


# Classification -------------------------------------------------------------------------------------------
def load_classification(path, tok, max_length, truncate, labels=None):
    records = data.read_records(path, ["text", "label"])
    if labels is None:
        labels = sorted({str(r["label"]) for _, r in records})
    index = {label: i for i, label in enumerate(labels)}
    out = []
    for line, r in records:
        label = str(r["label"])
        if label not in index:
            raise data.DataError(path, line, f"unknown label {label!r}; the training labels are {labels}")
        text_b = r.get("text_b") or None
        if not str(r["text"]).strip():
            raise data.DataError(path, line, "empty text")
        full = len(tok.ids(r["text"])) + (len(tok.ids(text_b)) + 1 if text_b else 0) + 2
        if full > max_length and not truncate:
            raise _too_long(path, line, full, max_length)
        ids, types = tok.encode(r["text"], text_b, max_length)
        out.append(Example(input_ids=ids, token_type_ids=types, labels=index[label]))
    return out, labels


def classification_metrics(model, batches, dev):
    preds, gold = [], []
    for batch in batches:
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        preds += logits.argmax(-1).tolist()
        gold += batch["labels"].tolist()
    accuracy = sum(p == g for p, g in zip(preds, gold)) / len(gold)
    f1s = []
    for c in set(gold):
        tp = sum(p == c and g == c for p, g in zip(preds, gold))
        fp = sum(p == c and g != c for p, g in zip(preds, gold))
        fn = sum(p != c and g == c for p, g in zip(preds, gold))
        f1s.append(2 * tp / max(1, 2 * tp + fp + fn))
    return {"accuracy": accuracy, "macro_f1": sum(f1s) / len(f1s)}


# NER ----------------------------------------------------------------------------------------------------
def load_ner(path, tok, max_length, truncate, tags=None):
    records = data.read_records(path, ["tokens", "tags"])
    if tags is None:
        tags = sorted({t for _, r in records for t in r["tags"]})
    index = {t: i for i, t in enumerate(tags)}
    out = []
    for line, r in records:
        words, word_tags = r["tokens"], r["tags"]
        if len(words) != len(word_tags) or not words:
            raise data.DataError(path, line, f"{len(words)} tokens but {len(word_tags)} tags (they must match, and not be empty)")
        ids, labels, first = [tok.cls_id], [-100], []
        for word, tag in zip(words, word_tags):
            if tag not in index:
                raise data.DataError(path, line, f"unknown tag {tag!r}; the training tags are {tags}")
            pieces = tok.ids(word) or [tok.unk_id]
            first.append(len(ids))
            ids += pieces
            labels += [index[tag]] + [-100] * (len(pieces) - 1)
        if len(ids) + 1 > max_length:
            if not truncate:
                raise _too_long(path, line, len(ids) + 1, max_length)
            ids, labels = ids[:max_length - 1], labels[:max_length - 1]
        ids.append(tok.sep_id)
        labels.append(-100)
        out.append(Example(input_ids=ids, token_type_ids=[0] * len(ids), labels=labels, word_tags=word_tags,
                           first=first))
    return out, tags


def entities(tags):
    """(type, start, end) spans from BIO tags."""
    spans, start, kind = set(), None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        if tag.startswith("B-") or tag == "O" or (tag.startswith("I-") and tag[2:] != kind):
            if kind is not None:
                spans.add((kind, start, i))
            start, kind = (i, tag[2:]) if tag != "O" else (None, None)
    return spans


def ner_metrics(model, batches, examples, tags, dev):
    tp = fp = fn = 0
    i = 0
    for batch in batches:
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        for row in logits.argmax(-1).tolist():
            ex = examples[i]
            i += 1
            pred = [tags[row[p]] if p < len(row) else "O" for p in ex["first"]]
            gold, guess = entities(ex["word_tags"]), entities(pred)
            tp += len(gold & guess)
            fp += len(guess - gold)
            fn += len(gold - guess)
    precision, recall = tp / max(1, tp + fp), tp / max(1, tp + fn)
    return {"entity_f1": 2 * precision * recall / max(1e-9, precision + recall), "precision": precision, "recall": recall}


# QA -----------------------------------------------------------------------------------------------------
def load_qa(path, tok, max_length, truncate):
    records = data.read_records(path, ["question", "context", "answer_text", "answer_start"])
    out = []
    for line, r in records:
        context, answer, start_char = r["context"], r["answer_text"], int(r["answer_start"])
        if context[start_char:start_char + len(answer)] != answer:
            raise data.DataError(path, line, f"answer_text {answer!r} is not at answer_start {start_char} of the context")
        enc = tok.tokenizer.encode(r["question"], context)
        if len(enc.ids) > max_length and not truncate:
            raise _too_long(path, line, len(enc.ids), max_length)
        ids, types, offsets = enc.ids[:max_length], enc.type_ids[:max_length], enc.offsets[:max_length]
        if ids[-1] != tok.sep_id:
            ids[-1], offsets[-1] = tok.sep_id, (0, 0)
        end_char = start_char + len(answer)
        in_context = [i for i, t in enumerate(types) if t == 1 and ids[i] != tok.sep_id]
        start = next((i for i in in_context if offsets[i][0] <= start_char < offsets[i][1]), 0)
        end = next((i for i in reversed(in_context) if offsets[i][0] < end_char <= offsets[i][1]), 0)
        if start == 0 or end == 0:
            start = end = 0  # the answer was cut off: point at [CLS], as transformers' examples do
        out.append(Example(input_ids=ids, token_type_ids=types, start_positions=start, end_positions=end,
                           context=context, answer=answer, offsets=offsets, context_tokens=in_context))
    return out


def normalise_answer(text):
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def qa_metrics(model, batches, examples, dev, max_answer_tokens=30):
    em = f1 = 0.0
    i = 0
    for batch in batches:
        out = model(**{k: v for k, v in batch.items() if k not in ("start_positions", "end_positions")})
        for s_row, e_row in zip(out.start_logits.tolist(), out.end_logits.tolist()):
            ex = examples[i]
            i += 1
            best, span = float("-inf"), (0, 0)
            ctx = ex["context_tokens"]
            for a in ctx:
                for b in ctx:
                    if a <= b < a + max_answer_tokens and s_row[a] + e_row[b] > best:
                        best, span = s_row[a] + e_row[b], (a, b)
            pred = ex["context"][ex["offsets"][span[0]][0]:ex["offsets"][span[1]][1]] if ctx else ""
            p, g = normalise_answer(pred).split(), normalise_answer(ex["answer"]).split()
            em += float(p == g)
            common = sum((collections.Counter(p) & collections.Counter(g)).values())
            f1 += 0.0 if common == 0 else 2 * common / (len(p) + len(g))
    return {"exact_match": em / len(examples), "f1": f1 / len(examples)}


# The loop -------------------------------------------------------------------------------------------------
def collate(examples, tok, keys, dev):
    batch = {"input_ids": data.pad_batch([e["input_ids"] for e in examples], tok.pad_id),
             "token_type_ids": data.pad_batch([e["token_type_ids"] for e in examples], 0),
             "attention_mask": data.pad_batch([[1] * len(e["input_ids"]) for e in examples], 0)}
    for key in keys:
        if isinstance(examples[0][key], list):
            batch[key] = data.pad_batch([e[key] for e in examples], -100)
        else:
            batch[key] = torch.tensor([e[key] for e in examples])
    return {k: v.to(dev) for k, v in batch.items()}


def _labelled(head, checkpoint, names):
    """A classification head from a checkpoint, with one output per label name and HF's label maps."""
    return head.from_pretrained(checkpoint, num_labels=len(names), id2label=dict(enumerate(names)),
                                label2id={v: i for i, v in enumerate(names)})


def finetune(task, train_path, eval_path, checkpoint, out, epochs, batch_size, lr, warmup, accumulate, max_length,
             truncate, seed, device):
    """Fine-tune on one process, or under torchrun (DDP, NCCL on GPUs / gloo on CPU): every rank draws the
    same shuffled batches and takes every world-th one (--batch-size is per rank); rank 0 evaluates, logs
    and saves."""
    d = distributed.setup(device)
    try:
        return _finetune(d, task, train_path, eval_path, checkpoint, out, epochs, batch_size, lr, warmup, accumulate,
                         max_length, truncate, seed)
    finally:
        distributed.teardown(d)


def _finetune(d, task, train_path, eval_path, checkpoint, out, epochs, batch_size, lr, warmup, accumulate, max_length,
              truncate, seed):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    dev = d.device
    vocab = os.path.join(checkpoint, "vocab.txt")
    tok = data.WordPiece.from_vocab(vocab)
    if task == "classify":
        train, labels = load_classification(train_path, tok, max_length, truncate)
        evaluation, _ = load_classification(eval_path, tok, max_length, truncate, labels)
        model = _labelled(bertfast.BertForSequenceClassification, checkpoint, labels)
        keys = ["labels"]
        metrics = lambda m, b: classification_metrics(m, b, dev)  # noqa: E731
    elif task == "ner":
        train, tags = load_ner(train_path, tok, max_length, truncate)
        evaluation, _ = load_ner(eval_path, tok, max_length, truncate, tags)
        model = _labelled(bertfast.BertForTokenClassification, checkpoint, tags)
        keys = ["labels"]
        metrics = lambda m, b: ner_metrics(m, b, evaluation, tags, dev)  # noqa: E731
    else:
        train = load_qa(train_path, tok, max_length, truncate)
        evaluation = load_qa(eval_path, tok, max_length, truncate)
        model = bertfast.BertForQuestionAnswering.from_pretrained(checkpoint)
        keys = ["start_positions", "end_positions"]
        metrics = lambda m, b: qa_metrics(m, b, evaluation, dev)  # noqa: E731
    raw = model.to(dev)
    if d.active:
        model = torch.nn.parallel.DistributedDataParallel(raw, device_ids=[d.local_rank] if dev.type == "cuda" else None)
    steps_per_epoch = max(1, len(train) // (batch_size * accumulate * d.world))
    opt, sched = make_optimizer(raw, lr, 0.01, steps_per_epoch * epochs, warmup)
    lengths = [len(e["input_ids"]) for e in train]
    if d.main:
        print(f"fine-tuning {task} on {len(train)} examples ({eval_path}: {len(evaluation)}), {epochs} epochs, "
              f"{d.world} rank(s) on {dev}")
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        batches = data.length_bucketed_batches(lengths, batch_size, rng)  # the same on every rank
        if d.active:
            if len(batches) < d.world:
                raise data.DataError(train_path, None, f"{len(batches)} batches for {d.world} ranks: too few examples")
            batches = batches[:len(batches) - len(batches) % d.world][d.rank::d.world]
        bar = progress(range(len(batches)), len(batches), f"epoch {epoch}", disable=not d.main)
        tokens, started, running = 0, time.perf_counter(), None
        for n in bar:
            batch = collate([train[i] for i in batches[n]], tok, keys, dev)
            step_now = (n + 1) % accumulate == 0 or n + 1 == len(batches)
            with (model.no_sync() if d.active and not step_now else contextlib.nullcontext()):
                with autocast(dev):
                    loss = model(**batch).loss
                (loss / accumulate).backward()
            if step_now:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
            tokens += int(batch["attention_mask"].sum())
            running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
            if hasattr(bar, "set_postfix_str"):
                bar.set_postfix_str(f"loss {running:.3f} {tokens / (time.perf_counter() - started):.0f} tok/s")
        if d.main:
            raw.eval()
            with torch.no_grad():
                eval_batches = [collate(evaluation[i:i + batch_size], tok, keys, dev)
                                for i in range(0, len(evaluation), batch_size)]
                result = metrics(raw, eval_batches)
            result.update(epoch=epoch, train_loss=running)
            history.append(result)
            print(f"epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                                 for k, v in result.items()))
        d.barrier()
    if d.main:
        save_checkpoint(raw, tok, out, {"task": task, "history": history, "world": d.world})
        print(f"saved {out}")
    d.barrier()
    return history
