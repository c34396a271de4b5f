"""Data for pre-training and fine-tuning: WordPiece tokenisation, BERT's pre-training examples, masking,
length-bucketed batches, and the fine-tuning file formats.

Pre-training (as in the BERT paper): each example is [CLS] A [SEP] B [SEP] with segment ids 0 for A and
1 for B; B is the segment that really follows A half of the time (next_sentence_label 0) and a segment
from elsewhere otherwise (label 1). 15% of the tokens are selected for prediction, never [CLS], [SEP] or
padding; of those 80% become [MASK], 10% a random token, 10% stay. The masking is drawn anew each time
a batch is made, so every epoch sees new masks.
"""
from __future__ import annotations

import csv
import json
import os
import random
from dataclasses import dataclass

import torch

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


class DataError(ValueError):
    """Bad input data, with the file and line it came from."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}")


# Tokenizer -------------------------------------------------------------------------------------------
class WordPiece:
    """A WordPiece tokenizer from HF `tokenizers` (BERT's uncased normalisation by default)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        vocab = tokenizer.get_vocab()
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise ValueError(f"the vocabulary lacks the special tokens {missing}")
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (vocab[t] for t in SPECIAL_TOKENS)
        self.vocab_size = tokenizer.get_vocab_size()
        self.special_ids = {self.pad_id, self.cls_id, self.sep_id, self.mask_id, self.unk_id}

    @classmethod
    def from_vocab(cls, vocab_file: str, lowercase: bool = True) -> "WordPiece":
        from tokenizers import BertWordPieceTokenizer

        if not os.path.isfile(vocab_file):
            raise FileNotFoundError(f"no vocabulary file at {vocab_file!r}")
        return cls(BertWordPieceTokenizer(vocab_file, lowercase=lowercase))

    @classmethod
    def train(cls, files: list[str], vocab_size: int = 30000, lowercase: bool = True, min_frequency: int = 2) -> "WordPiece":
        from tokenizers import BertWordPieceTokenizer

        tok = BertWordPieceTokenizer(lowercase=lowercase)
        tok.train(files, vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS)
        return cls(tok)

    @classmethod
    def train_from_iterator(cls, texts, vocab_size: int = 30000, lowercase: bool = True) -> "WordPiece":
        from tokenizers import BertWordPieceTokenizer

        tok = BertWordPieceTokenizer(lowercase=lowercase)
        tok.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS)
        return cls(tok)

    def save_vocab(self, directory: str) -> str:
        os.makedirs(directory, exist_ok=True)
        vocab = sorted(self.tokenizer.get_vocab().items(), key=lambda kv: kv[1])
        path = os.path.join(directory, "vocab.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(token for token, _ in vocab) + "\n")
        return path

    def ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode(self, a: str, b: str | None = None, max_length: int = 512) -> tuple[list[int], list[int]]:
        """[CLS] a [SEP] (b [SEP]), truncating the longer part first; returns (ids, token_type_ids)."""
        ids_a, ids_b = self.ids(a), self.ids(b) if b is not None else None
        return build_pair(ids_a, ids_b, self.cls_id, self.sep_id, max_length)


def build_pair(ids_a, ids_b, cls_id, sep_id, max_length):
    ids_a, ids_b = list(ids_a), list(ids_b) if ids_b is not None else None
    budget = max_length - (3 if ids_b is not None else 2)
    while len(ids_a) + len(ids_b or []) > budget:
        if ids_b is not None and len(ids_b) > len(ids_a):
            ids_b.pop()
        else:
            ids_a.pop()
    ids = [cls_id, *ids_a, sep_id]
    types = [0] * len(ids)
    if ids_b is not None:
        ids += [*ids_b, sep_id]
        types += [1] * (len(ids_b) + 1)
    return ids, types


# Pre-training examples ---------------------------------------------------------------------------------
@dataclass
class PretrainingExample:
    input_ids: list[int]
    token_type_ids: list[int]
    next_sentence_label: int  # 0: B follows A; 1: B is random


def make_pretraining_examples(docs_ids: list[list[list[int]]], max_length: int, cls_id: int, sep_id: int,
                              rng: random.Random) -> list[PretrainingExample]:
    """Pairs of segments as in BERT. A document's sentences are gathered into chunks of about
    max_length tokens (at least two sentences where the document has them); A is the chunk's first
    sentences up to a random split. With probability 1/2, B is the rest of the chunk (label 0); otherwise
    B is a run of sentences from another random document (label 1), and the unused rest of the chunk
    goes back to start the next one. The label split stays at 50/50 (see below)."""
    examples = []
    target = max_length - 3
    n_docs = len(docs_ids)
    flatten = lambda sentences: [t for s in sentences for t in s]  # noqa: E731
    for d, doc in enumerate(docs_ids):
        i = 0
        while i < len(doc):
            chunk, length = [], 0
            while i < len(doc) and (length < target or len(chunk) < 2):
                chunk.append(doc[i])
                length += len(doc[i])
                i += 1
            split = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
            a = flatten(chunk[:split])
            # A one-sentence chunk (a document's tail) can only take a random B; the coin is biased back
            # towards real pairs while random ones are ahead, so the labels stay 50/50 overall.
            ahead = sum(e.next_sentence_label for e in examples[-200:]) * 2 > len(examples[-200:])
            if len(chunk) >= 2 and (ahead or rng.random() < 0.5):
                b, label = flatten(chunk[split:]), 0
            else:
                other = d
                if n_docs > 1:
                    other = rng.randrange(n_docs - 1)
                    other += other >= d
                start = rng.randrange(len(docs_ids[other]))
                b, label = flatten(docs_ids[other][start:start + max(1, len(chunk) - split)]), 1
                i -= len(chunk) - split
            if a and b:
                ids, types = build_pair(a, b, cls_id, sep_id, max_length)
                examples.append(PretrainingExample(ids, types, label))
    return examples


# Masking -----------------------------------------------------------------------------------------------
def mask_tokens(input_ids: torch.Tensor, special_mask: torch.Tensor, vocab_size: int, mask_id: int,
                generator: torch.Generator | None = None, mlm_probability: float = 0.15,
                low_token_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking on a [B, S] batch: select each non-special token with probability mlm_probability;
    of the selected, 80% -> [MASK], 10% -> a random token, 10% unchanged. Returns (masked ids, labels)
    with labels -100 where not selected. special_mask marks [CLS], [SEP], padding (never selected)."""
    probs = torch.full(input_ids.shape, mlm_probability)
    selected = torch.bernoulli(probs, generator=generator).bool() & ~special_mask
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
    roll = torch.rand(input_ids.shape, generator=generator)
    to_mask = selected & (roll < 0.8)
    to_random = selected & (roll >= 0.8) & (roll < 0.9)
    masked = input_ids.clone()
    masked[to_mask] = mask_id
    random_ids = torch.randint(low_token_id, vocab_size, input_ids.shape, generator=generator)
    masked[to_random] = random_ids[to_random]
    return masked, labels


def pad_batch(rows: list[list[int]], pad_id: int) -> torch.Tensor:
    longest = max(len(r) for r in rows)
    return torch.tensor([r + [pad_id] * (longest - len(r)) for r in rows], dtype=torch.long)


class PretrainingCollator:
    """Pads a list of PretrainingExample and masks it (new masks every call)."""

    def __init__(self, tokenizer: WordPiece, seed: int = 0) -> None:
        self.tok = tokenizer
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, examples: list[PretrainingExample]) -> dict[str, torch.Tensor]:
        ids = pad_batch([e.input_ids for e in examples], self.tok.pad_id)
        types = pad_batch([e.token_type_ids for e in examples], 0)
        attention = pad_batch([[1] * len(e.input_ids) for e in examples], 0)
        special = torch.zeros_like(ids, dtype=torch.bool)
        for sid in (self.tok.pad_id, self.tok.cls_id, self.tok.sep_id):
            special |= ids == sid
        # random replacements avoid the special tokens at the start of BERT vocabularies
        low = max(self.tok.special_ids) + 1 if max(self.tok.special_ids) < self.tok.vocab_size - 1 else 0
        masked, labels = mask_tokens(ids, special, self.tok.vocab_size, self.tok.mask_id, self.generator, low_token_id=low)
        nsp = torch.tensor([e.next_sentence_label for e in examples], dtype=torch.long)
        return dict(input_ids=masked, token_type_ids=types, attention_mask=attention, labels=labels,
                    next_sentence_label=nsp)


def length_bucketed_batches(lengths: list[int], batch_size: int, rng: random.Random,
                            bucket_factor: int = 50) -> list[list[int]]:
    """Indices in batches of similar length (cuts padding): shuffle, sort within pools of
    batch_size * bucket_factor, cut into batches, shuffle the batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    pool = batch_size * bucket_factor
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start:start + pool], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


# Fine-tuning files ---------------------------------------------------------------------------------------
def read_records(path: str, required: list[str]) -> list[tuple[int, dict]]:
    """JSONL (one object a line) or CSV (a header row). Returns (line number, record) pairs; a missing
    column, a bad line or an empty file raises DataError naming the file and line."""
    if not os.path.isfile(path):
        raise DataError(path, None, "no such file")
    records: list[tuple[int, dict]] = []
    if path.endswith(".csv"):
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            absent = [c for c in required if c not in header]
            if header and absent:
                raise DataError(path, 1, f"missing column(s) {absent}; the header has {header}")
            for row in reader:
                records.append((reader.line_num, row))
    else:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(path, n, f"not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(path, n, "each line must be a JSON object")
                absent = [c for c in required if c not in row]
                if absent:
                    raise DataError(path, n, f"missing field(s) {absent}")
                records.append((n, row))
    if not records:
        raise DataError(path, None, "the file holds no examples")
    return records
