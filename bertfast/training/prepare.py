"""A tokenised pre-training corpus on disk, written once and read through numpy.memmap.

`python -m bertfast prepare --corpus FILES... --out DIR` reads text files (a sentence or paragraph a
line, blank lines between documents) in one streaming pass, tokenises them with `tokenizers` in worker
processes, builds BERT's [CLS] A [SEP] B [SEP] pairs (next-sentence labels 50/50, B from another
document of the same block of documents when random) for each requested maximum length, and writes
shards per length:

    DIR/manifest.json                   vocab, lengths, counts, each shard's sizes and sha256
    DIR/vocab.txt
    DIR/len128/shard-00000.bin          token ids of every example, back to back (uint16 when the vocabulary
                                        fits, else uint32)
    DIR/len128/shard-00000.idx          header, example start offsets (uint64, count + 1), NSP labels (uint8)

Token type ids are not stored: segment A runs to the first [SEP]. Masking (15%, 80/10/10) is drawn at
training time. Memory stays flat in the corpus size: documents are read in blocks, at most two blocks a
worker are in flight, and shards are appended to as blocks come back, in order (the output does not
depend on the number of workers).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import struct
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from bertfast.training.data import SPECIAL_TOKENS, DataError, WordPiece, make_pretraining_examples

MAGIC = b"BFIDX\x00\x00\x01"
HEADER = struct.Struct("<8sIIQ")  # magic, version, token dtype code (2: uint16, 4: uint32), examples
VERSION = 1
FORMAT = "bertfast-pretraining-corpus"


# Reading documents, streaming ------------------------------------------------------------------------------
def iter_documents(paths: list[str]):
    """(document as a list of lines, bytes read so far) for each document of the files, one at a time."""
    done = 0
    for path in paths:
        if not os.path.isfile(path):
            raise DataError(path, None, "no such file")
        current: list[str] = []
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                done += len(raw)
                try:
                    line = raw.decode("utf-8").strip()
                except UnicodeDecodeError as e:
                    raise DataError(path, number, f"not UTF-8 text ({e.reason})") from None
                if line:
                    current.append(line)
                elif current:
                    yield current, done
                    current = []
        if current:
            yield current, done


def _blocks(paths: list[str], docs_per_block: int):
    block, done = [], 0
    for doc, done in iter_documents(paths):
        block.append(doc)
        if len(block) == docs_per_block:
            yield block, done
            block = []
    if block:
        yield block, done


# Workers ----------------------------------------------------------------------------------------------------
_WORKER: dict = {}


def _init_worker(vocab_file: str, lowercase: bool) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER["tok"] = WordPiece.from_vocab(vocab_file, lowercase=lowercase)


def _work(block_index: int, docs: list[list[str]], lengths: list[int], seed: int, dtype: str):
    """Tokenise a block of documents and build its examples for each length: per length, (ids of all
    examples back to back, example lengths, labels), and the block's document and token counts."""
    tok = _WORKER["tok"]
    flat = [line for doc in docs for line in doc]
    encoded = tok.tokenizer.encode_batch(flat, add_special_tokens=False)
    docs_ids, k = [], 0
    for doc in docs:
        docs_ids.append([e.ids for e in encoded[k:k + len(doc)] if e.ids])
        k += len(doc)
    docs_ids = [d for d in docs_ids if d]
    out = {}
    for length in lengths:
        rng = random.Random(f"{seed}/{length}/{block_index}")
        examples = make_pretraining_examples(docs_ids, length, tok.cls_id, tok.sep_id, rng)
        sizes = np.fromiter((len(e.input_ids) for e in examples), dtype=np.int64, count=len(examples))
        ids = np.fromiter((t for e in examples for t in e.input_ids), dtype=dtype, count=int(sizes.sum()))
        labels = np.fromiter((e.next_sentence_label for e in examples), dtype=np.uint8, count=len(examples))
        out[length] = (ids, sizes, labels)
    return out, len(docs), sum(len(e.ids) for e in encoded), _peak_rss_mb()


# Writing ----------------------------------------------------------------------------------------------------
class _ShardWriter:
    """Appends examples to DIR/len{L}/shard-NNNNN.{bin,idx}, starting a new shard every shard_tokens tokens."""

    def __init__(self, directory: str, dtype: str, shard_tokens: int) -> None:
        self.directory, self.dtype, self.shard_tokens = directory, np.dtype(dtype), shard_tokens
        os.makedirs(directory, exist_ok=True)
        self.shards: list[dict] = []
        self._open()

    def _open(self) -> None:
        self.name = f"shard-{len(self.shards):05d}"
        self.bin = open(os.path.join(self.directory, self.name + ".bin"), "wb")
        self.offsets, self.labels, self.tokens = [np.zeros(1, np.uint64)], [], 0
        self.bin_hash = hashlib.sha256()

    def add(self, ids: np.ndarray, sizes: np.ndarray, labels: np.ndarray) -> None:
        start = i = 0
        while i < len(sizes):
            cum = np.cumsum(sizes[i:])
            take = int(np.searchsorted(cum, self.shard_tokens - self.tokens, side="right"))
            if take == 0:
                if self.tokens:  # full: the rest goes to a new shard
                    self._close()
                    self._open()
                    continue
                take = 1  # an example longer than a shard gets one of its own
            stop = start + int(cum[take - 1])
            chunk = ids[start:stop].tobytes()
            self.bin.write(chunk)
            self.bin_hash.update(chunk)
            self.offsets.append(self.tokens + np.cumsum(sizes[i:i + take]).astype(np.uint64))
            self.labels.append(labels[i:i + take])
            self.tokens += stop - start
            start, i = stop, i + take

    def _close(self) -> None:
        self.bin.close()
        offsets = np.concatenate(self.offsets)
        labels = np.concatenate(self.labels) if self.labels else np.zeros(0, np.uint8)
        count = len(labels)
        idx_path = os.path.join(self.directory, self.name + ".idx")
        with open(idx_path, "wb") as f:
            payload = HEADER.pack(MAGIC, VERSION, self.dtype.itemsize, count) + offsets.tobytes() + labels.tobytes()
            f.write(payload)
        self.shards.append({"name": self.name, "examples": count, "tokens": int(self.tokens),
                            "bin_bytes": int(self.tokens) * self.dtype.itemsize,
                            "bin_sha256": self.bin_hash.hexdigest(),
                            "idx_sha256": hashlib.sha256(payload).hexdigest()})

    def finish(self) -> list[dict]:
        self._close()
        if self.shards[-1]["examples"] == 0 and len(self.shards) > 1:  # an empty last shard
            last = self.shards.pop()
            for ext in (".bin", ".idx"):
                os.remove(os.path.join(self.directory, last["name"] + ext))
        return self.shards


def describe_sources(paths: list[str]) -> list[dict]:
    """The text files as the manifest records them (absolute path, size): what a later run compares to
    decide whether this corpus was prepared from the same files."""
    return [{"path": os.path.abspath(p), "bytes": os.path.getsize(p)} for p in paths]


def prepare(corpus: list[str], out: str, vocab: str | None = None, vocab_size: int = 30000,
            lengths: tuple[int, ...] = (128,), workers: int | None = None, seed: int = 0, lowercase: bool = True,
            shard_tokens: int = 1 << 28, docs_per_block: int = 2000, progress: bool = True) -> dict:
    """Write the prepared corpus (see the module docstring); returns the manifest."""
    if not corpus:
        raise DataError("--corpus", None, "no files given")
    for path in corpus:
        if not os.path.isfile(path):
            raise DataError(path, None, "no such file")
    lengths = tuple(sorted(set(int(n) for n in lengths)))
    if not lengths or min(lengths) < 8:
        raise ValueError(f"--max-length values must be >= 8, got {lengths}")
    workers = max(1, workers or os.cpu_count() or 1)
    os.makedirs(out, exist_ok=True)
    if vocab:
        tokenizer = WordPiece.from_vocab(vocab, lowercase=lowercase)
    else:  # tokenizers trains from the files in a streaming pass of its own
        try:
            tokenizer = WordPiece.train(list(corpus), vocab_size=vocab_size, lowercase=lowercase)
        except Exception as e:  # tokenizers raises a bare Exception, naming no file, on bytes that are not UTF-8
            if "UTF-8" not in str(e):
                raise
            for _ in iter_documents(list(corpus)):  # raises the DataError naming the file and line
                pass
            raise
    vocab_file = tokenizer.save_vocab(out)
    dtype = "uint16" if tokenizer.vocab_size <= 1 << 16 else "uint32"
    writers = {n: _ShardWriter(os.path.join(out, f"len{n}"), dtype, shard_tokens) for n in lengths}
    total_bytes = sum(os.path.getsize(p) for p in corpus)
    bar = _progress(total_bytes, progress)
    documents = tokens = 0
    peaks = {"workers": 0.0}
    start = time.perf_counter()

    import multiprocessing as mp

    context = mp.get_context("spawn" if os.name == "nt" else "forkserver")
    with context.Pool(workers, initializer=_init_worker, initargs=(vocab_file, lowercase)) as pool:
        pending: deque = deque()
        blocks = _blocks(list(corpus), docs_per_block)

        def drain_one() -> None:
            nonlocal documents, tokens
            result, done = pending.popleft()
            per_length, n_docs, n_tokens, worker_rss = result.get()
            peaks["workers"] = max(peaks["workers"], worker_rss)
            for n, (ids, sizes, labels) in per_length.items():
                writers[n].add(ids, sizes, labels)
            documents += n_docs
            tokens += n_tokens
            if bar is not None:
                elapsed = max(time.perf_counter() - start, 1e-9)
                bar.update(done - bar.n)
                bar.set_postfix_str(f"{documents / elapsed:,.0f} docs/s, {tokens / elapsed:,.0f} tokens/s")

        for index, (docs, done) in enumerate(blocks):
            pending.append((pool.apply_async(_work, (index, docs, list(lengths), seed, dtype)), done))
            while len(pending) >= 2 * workers:
                drain_one()
        while pending:
            drain_one()
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - start
    if documents == 0:
        raise DataError(", ".join(corpus), None, "the corpus is empty")
    manifest = {"format": FORMAT, "version": VERSION, "vocab": "vocab.txt", "vocab_size": tokenizer.vocab_size,
                "lowercase": lowercase, "special_tokens": SPECIAL_TOKENS, "dtype": dtype, "seed": seed,
                "documents": documents, "tokens": tokens, "source_bytes": total_bytes,
                "sources": describe_sources(corpus),
                "seconds": round(elapsed, 3), "workers": workers,
                "peak_rss_mb": {"main": round(_peak_rss_mb(), 1), "worker": round(peaks["workers"], 1)}, "lengths": {}}
    for n, writer in writers.items():
        shards = writer.finish()
        manifest["lengths"][str(n)] = {"directory": f"len{n}", "examples": sum(s["examples"] for s in shards),
                                       "tokens": sum(s["tokens"] for s in shards), "shards": shards}
    tmp = os.path.join(out, "manifest.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, os.path.join(out, "manifest.json"))  # a manifest exists only for a complete corpus
    return manifest


def _peak_rss_mb() -> float:
    """This process's peak resident memory (0 where the resource module is missing)."""
    try:
        import resource
    except ImportError:
        return 0.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="B", unit_scale=True, desc="prepare", dynamic_ncols=True, mininterval=1.0)


# Reading ----------------------------------------------------------------------------------------------------
@dataclass
class _Shard:
    name: str
    tokens: np.ndarray  # memmap
    offsets: np.ndarray
    labels: np.ndarray


class PreparedCorpus:
    """The examples of one maximum length of a prepared corpus, as one indexable sequence over its shards:
    corpus[i] -> (token ids as a numpy array, NSP label). Opening checks every shard's header and sizes
    (and with verify=True its sha256); problems raise DataError naming the shard."""

    def __init__(self, directory: str, max_length: int | None = None, verify: bool = True) -> None:
        path = os.path.join(directory, "manifest.json")
        if not os.path.isdir(directory):
            raise DataError(directory, None, "no such folder")
        if not os.path.isfile(path):
            raise DataError(directory, None, "no manifest.json: not a corpus written by `python -m bertfast prepare` "
                                             "(or its preparation did not finish)")
        with open(path, encoding="utf-8") as f:
            self.manifest = manifest = json.load(f)
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise DataError(path, None, f"format {manifest.get('format')!r} version {manifest.get('version')!r}, "
                                        f"expected {FORMAT!r} version {VERSION}")
        available = sorted(int(n) for n in manifest["lengths"])
        if max_length is None:
            max_length = available[0]
        if str(max_length) not in manifest["lengths"]:
            raise DataError(directory, None, f"no examples of max length {max_length} (prepared: {available})")
        self.directory, self.max_length = directory, max_length
        self.vocab_file = os.path.join(directory, manifest["vocab"])
        self.vocab_size = manifest["vocab_size"]
        entry = manifest["lengths"][str(max_length)]
        self.shards = [self._open(os.path.join(directory, entry["directory"]), s, verify) for s in entry["shards"]]
        counts = np.array([len(s.labels) for s in self.shards], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)])
        self.cls_id, self.sep_id = (SPECIAL_TOKENS.index(t) for t in ("[CLS]", "[SEP]"))

    def _open(self, directory: str, meta: dict, verify: bool) -> _Shard:
        base = os.path.join(directory, meta["name"])
        for ext in (".bin", ".idx"):
            if not os.path.isfile(base + ext):
                raise DataError(base + ext, None, "missing shard file")
        with open(base + ".idx", "rb") as f:
            raw = f.read()
        if len(raw) < HEADER.size:
            raise DataError(base + ".idx", None, "truncated index (shorter than its header)")
        magic, version, itemsize, count = HEADER.unpack_from(raw)
        if magic != MAGIC or version != VERSION or itemsize not in (2, 4):
            raise DataError(base + ".idx", None, "not a bertfast shard index (bad header)")
        expected = HEADER.size + 8 * (count + 1) + count
        if len(raw) != expected or count != meta["examples"]:
            raise DataError(base + ".idx", None, f"truncated or corrupt index: {len(raw)} bytes for {count} examples "
                                                 f"(expected {expected}; manifest: {meta['examples']} examples)")
        offsets = np.frombuffer(raw, np.uint64, count + 1, HEADER.size)
        labels = np.frombuffer(raw, np.uint8, count, HEADER.size + 8 * (count + 1))
        size = os.path.getsize(base + ".bin")
        if size != meta["bin_bytes"] or int(offsets[-1]) * itemsize != size:
            raise DataError(base + ".bin", None, f"truncated or corrupt: {size} bytes, expected {meta['bin_bytes']}")
        if verify:
            if hashlib.sha256(raw).hexdigest() != meta["idx_sha256"]:
                raise DataError(base + ".idx", None, "checksum mismatch: the file is corrupt")
            digest = hashlib.sha256()
            with open(base + ".bin", "rb") as f:
                for chunk in iter(lambda: f.read(1 << 24), b""):
                    digest.update(chunk)
            if digest.hexdigest() != meta["bin_sha256"]:
                raise DataError(base + ".bin", None, "checksum mismatch: the file is corrupt")
        dtype = np.uint16 if itemsize == 2 else np.uint32
        tokens = np.memmap(base + ".bin", dtype=dtype, mode="r") if size else np.zeros(0, dtype)
        return _Shard(base, tokens, offsets, labels)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"example {i} of {len(self)}")
        s = int(np.searchsorted(self.starts, i, side="right")) - 1
        shard, j = self.shards[s], i - int(self.starts[s])
        ids = np.asarray(shard.tokens[int(shard.offsets[j]):int(shard.offsets[j + 1])], dtype=np.int64)
        if len(ids) > self.max_length or (len(ids) and int(ids.max()) >= self.vocab_size):
            raise DataError(shard.name + ".bin", None, f"example {j} is corrupt (length {len(ids)}, ids up to "
                                                       f"{int(ids.max()) if len(ids) else 0}; vocab {self.vocab_size})")
        return ids, int(shard.labels[j])
