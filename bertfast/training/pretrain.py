"""Pre-training with MLM + NSP (`python -m bertfast pretrain`), on one process or many under torchrun.

Data: a corpus prepared on disk by `python -m bertfast prepare` (`--data DIR`); given `--corpus` files
(or nothing: the standard library's docstrings), it is prepared first into OUT/data. Masking (15%,
80/10/10) is drawn per example at training time from (seed, phase, position in the stream), so it does
not depend on the rank or the number of ranks.

Distribution: under torchrun, DDP (or FSDP2's fully_shard with --fsdp), NCCL on GPUs and gloo on CPU.
A step takes the next global batch (batch size x ranks x accumulation) of a seeded blocked permutation
of the examples, each rank a disjoint part; the loss is normalised by the global number of masked
tokens (one all-reduce of a count a step), so a step's gradient is the same for any split of its global
batch. Gradient accumulation skips the gradient sync (no_sync) but on the last micro-batch.

Recipe: AdamW or LAMB (--optimizer lamb), BERT's two phases (--phases 128:0.9 512:0.1: the first 90% of
the steps at length 128, the rest at 512) under one warm-up/decay schedule, presets tiny/base/large.

Checkpoints: OUT/checkpoint-STEP (config.json, model.safetensors, vocab.txt, trainer_state.json, and
training_state.pt: optimiser, schedule, every rank's RNG states, the step). Rank 0 writes each into a
temporary folder renamed when complete, so a run killed while writing leaves the previous one loadable.
`--resume OUT` (or a checkpoint folder) continues from the latest complete checkpoint exactly: the same
losses as a run never stopped. The final model is also written to OUT itself (transformers'
BertForPreTraining.from_pretrained(OUT) loads it).
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import random
import re
import shutil
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

import bertfast
from bertfast.training import PRETRAIN_OUT, data, distributed
from bertfast.training.common import autocast, make_optimizer, progress
from bertfast.training.prepare import PreparedCorpus, describe_sources, prepare

__all__ = ["pretrain"]

STDLIB_MODULES = ["json", "os", "re", "collections", "functools", "itertools", "argparse", "logging", "pathlib",
                  "typing", "unittest", "textwrap", "string", "random", "statistics", "datetime", "decimal",
                  "fractions", "heapq", "bisect", "csv", "subprocess", "threading", "shutil", "tempfile",
                  "urllib.parse", "http.client", "email.message", "inspect", "dataclasses", "enum", "contextlib",
                  "operator", "math", "socket", "sqlite3", "zipfile", "tarfile", "gzip", "pickle", "copy",
                  "pprint", "traceback", "warnings", "abc", "io", "time", "calendar", "locale", "difflib"]


def stdlib_documents() -> list[list[str]]:
    """The docstrings of Python's standard library, as documents of sentences: a corpus every machine has."""
    import importlib
    import inspect

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


# Phases and the example stream ---------------------------------------------------------------------------
def parse_phases(phases: list[str] | None, max_length: int) -> list[tuple[int, float]]:
    """['128:0.9', '512:0.1'] -> [(128, 0.9), (512, 0.1)]; none: one phase at max_length."""
    if not phases:
        return [(max_length, 1.0)]
    out = []
    for item in phases:
        m = re.fullmatch(r"(\d+):(\d*\.?\d+)", item)
        if not m or int(m.group(1)) < 8 or not float(m.group(2)) > 0:
            raise ValueError(f"--phases takes LENGTH:FRACTION items such as 128:0.9, got {item!r}")
        out.append((int(m.group(1)), float(m.group(2))))
    total = sum(f for _, f in out)
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"--phases fractions must sum to 1, got {total:g}")
    return out


def phase_bounds(phases: list[tuple[int, float]], steps: int) -> list[tuple[int, int, int]]:
    """(length, first step, end step) of each phase, covering 0..steps."""
    bounds, start, acc = [], 0, 0.0
    for i, (length, fraction) in enumerate(phases):
        acc += fraction
        end = steps if i == len(phases) - 1 else round(steps * acc)
        bounds.append((length, start, end))
        start = end
    return bounds


class BlockedPermutation:
    """A seeded permutation of range(n) per epoch, computed a block at a time (memory O(n / block)):
    the blocks in a random order, each block's items in a random order. order(k) is the k-th item of the
    endless stream epoch 0, epoch 1, ..."""

    def __init__(self, n: int, seed: int, stream: int, block: int = 4096) -> None:
        if n <= 0:
            raise ValueError("the prepared corpus has no examples of this length")
        self.n, self.seed, self.stream, self.block = n, seed, stream, min(block, n)
        self.blocks = -(-n // self.block)
        self._epoch = self._block = None

    def _epoch_order(self, epoch: int):
        if self._epoch != epoch:
            order = np.random.default_rng([self.seed, self.stream, epoch]).permutation(self.blocks)
            sizes = np.minimum(self.block, self.n - order * self.block)
            self._order, self._ends, self._epoch, self._block = order, np.cumsum(sizes), epoch, None
        return self._order, self._ends

    def __call__(self, k: int) -> int:
        epoch, pos = divmod(k, self.n)
        order, ends = self._epoch_order(epoch)
        slot = int(np.searchsorted(ends, pos, side="right"))
        offset = pos - (int(ends[slot - 1]) if slot else 0)
        b = int(order[slot])
        if self._block != (epoch, b):
            size = min(self.block, self.n - b * self.block)
            self._inner = np.random.default_rng([self.seed, self.stream, epoch, b + 1]).permutation(size)
            self._block = (epoch, b)
        return b * self.block + int(self._inner[offset])


class Batches:
    """The micro-batches of a step for one rank: the step's global batch is slots [step*G, (step+1)*G) of
    the phase's example stream (G = batch x ranks x accumulation); micro-batch a of rank r takes slots
    (a * ranks + r) * batch ... + batch. Each example is masked with a generator seeded by
    (seed, phase, slot), so the masks do not depend on the split."""

    def __init__(self, corpus: PreparedCorpus, tokenizer: data.WordPiece, seed: int, phase: int, batch: int,
                 world: int, rank: int, accumulate: int) -> None:
        self.corpus, self.tok, self.seed, self.phase = corpus, tokenizer, seed, phase
        self.batch, self.world, self.rank, self.accumulate = batch, world, rank, accumulate
        self.order = BlockedPermutation(len(corpus), seed, phase)
        self.low = max(tokenizer.special_ids) + 1 if max(tokenizer.special_ids) < tokenizer.vocab_size - 1 else 0

    def step(self, step_in_phase: int) -> list[dict[str, torch.Tensor]]:
        g = self.batch * self.world * self.accumulate
        base = step_in_phase * g
        out = []
        for a in range(self.accumulate):
            first = base + (a * self.world + self.rank) * self.batch
            out.append(self.collate([first + i for i in range(self.batch)]))
        return out

    def collate(self, slots: list[int]) -> dict[str, torch.Tensor]:
        rows, types, labels, nsp = [], [], [], []
        tok = self.tok
        for slot in slots:
            ids, label = self.corpus[self.order(slot)]
            ids_t = torch.from_numpy(ids).long()[None]
            special = (ids_t == tok.pad_id) | (ids_t == tok.cls_id) | (ids_t == tok.sep_id)
            gen = torch.Generator().manual_seed(hash((self.seed, self.phase, slot)) & ((1 << 62) - 1))
            m, y = data.mask_tokens(ids_t, special, tok.vocab_size, tok.mask_id, gen, low_token_id=self.low)
            first_sep = int(np.argmax(ids == tok.sep_id)) if (ids == tok.sep_id).any() else len(ids) - 1
            rows.append(m[0].tolist())
            labels.append(y[0].tolist())
            types.append([0] * (first_sep + 1) + [1] * (len(ids) - first_sep - 1))
            nsp.append(label)
        pad = data.pad_batch
        return dict(input_ids=pad(rows, tok.pad_id), token_type_ids=pad(types, 0),
                    attention_mask=pad([[1] * len(r) for r in rows], 0), labels=pad(labels, -100),
                    next_sentence_label=torch.tensor(nsp, dtype=torch.long))


# Checkpoints -----------------------------------------------------------------------------------------------------
def find_checkpoint(path: str) -> str:
    """The checkpoint to resume from: path itself if it holds training_state.pt, else its latest complete
    checkpoint-STEP folder."""
    if not os.path.isdir(path):
        raise ValueError(f"--resume {path}: no such folder")
    if os.path.isfile(os.path.join(path, "training_state.pt")):
        return path
    found = [p for p in glob.glob(os.path.join(path, "checkpoint-*"))
             if re.fullmatch(r"checkpoint-\d+", os.path.basename(p)) and os.path.isfile(os.path.join(p, "training_state.pt"))]
    if not found:
        raise ValueError(f"--resume {path}: no complete checkpoint in it (checkpoint-STEP with training_state.pt)")
    return max(found, key=lambda p: int(p.rsplit("-", 1)[1]))


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def _state_dicts(model, opt, d: distributed.Dist):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_training_checkpoint(out: str, step: int, model, raw, opt, sched, d: distributed.Dist, vocab_file: str,
                             meta: dict, history: list) -> str | None:
    """Every rank takes part (FSDP gathers the full state); rank 0 writes OUT/checkpoint-STEP atomically."""
    model_state, optim_state = _state_dicts(model, opt, d)
    rngs = d.gather_objects(rng_state())
    final = os.path.join(out, f"checkpoint-{step}")
    if d.main:
        os.makedirs(out, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".checkpoint-{step}-", dir=out)
        raw.save_pretrained(tmp, state_dict=model_state)
        shutil.copy(vocab_file, os.path.join(tmp, "vocab.txt"))
        with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
            json.dump({"step": step, "history": history}, f, indent=1)
        torch.save({"step": step, "optimizer": optim_state, "scheduler": sched.state_dict(), "rng": rngs,
                    "world": d.world, **meta}, os.path.join(tmp, "training_state.pt"))
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(tmp, final)  # complete, or absent
    d.barrier()
    return final


# The loop ----------------------------------------------------------------------------------------------------------
def build_config(name: str, vocab_size: int, max_length: int, dropout: float | None) -> bertfast.BertConfig:
    extra = {} if dropout is None else dict(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    if name.endswith(".json"):
        cfg = bertfast.BertConfig.from_json_file(name)
        if cfg.vocab_size < vocab_size:
            raise ValueError(f"{name}: vocab_size {cfg.vocab_size} is smaller than the tokenizer's {vocab_size}")
        if cfg.max_position_embeddings < max_length:
            raise ValueError(f"{name}: max_position_embeddings {cfg.max_position_embeddings} < max length {max_length}")
        for k, v in extra.items():
            setattr(cfg, k, v)
        return cfg
    presets = {"tiny": (bertfast.BertConfig.tiny, 128), "base": (bertfast.BertConfig.base, 512),
               "large": (bertfast.BertConfig.large, 1024)}  # the seed gives BERT-large 1024 positions
    if name not in presets:
        raise ValueError(f"--config must be tiny, base, large or a config.json path, got {name!r}")
    make, positions = presets[name]
    return make(vocab_size=vocab_size, max_position_embeddings=max(positions, max_length), **extra)


def _prepare_default(out: str, corpus: list[str] | None, vocab: str | None, lengths: list[int], workers) -> str:
    target = os.path.join(out, "data")
    sources = corpus
    if not corpus:
        os.makedirs(os.path.join(out, "data-source"), exist_ok=True)
        path = os.path.join(out, "data-source", "stdlib-docstrings.txt")
        with open(path, "w", encoding="utf-8") as f:
            for doc in stdlib_documents():
                f.write("\n".join(doc) + "\n\n")
        sources = [path]
    if os.path.isfile(os.path.join(target, "manifest.json")):  # prepared by an earlier run from the same files
        with open(os.path.join(target, "manifest.json"), encoding="utf-8") as f:
            manifest = json.load(f)
        same = manifest.get("sources") == describe_sources(sources)
        if same and all(str(n) in manifest["lengths"] for n in lengths):
            return target
    prepare(sources, target, vocab=vocab, vocab_size=30000 if corpus else 8000, lengths=tuple(lengths),
            workers=workers, progress=False, docs_per_block=500)
    return target


def peak_flops(device: torch.device) -> float | None:
    """bf16 dense tensor peak of known GPUs (for MFU); None elsewhere."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return 989e12 if ("H100" in name or "H200" in name) else None


def pretrain(data_dir: str | None = None, corpus: list[str] | None = None, vocab: str | None = None,
             config: str = "tiny", out: str = PRETRAIN_OUT, steps: int = 600, batch_size: int = 32,
             max_length: int = 128, lr: float = 1e-3, warmup: float = 0.1, accumulate: int = 1, seed: int = 0,
             device: str | None = None, resume: str | None = None, optimizer: str = "adamw",
             phases: list[str] | None = None, fsdp: bool = False, save_every: int = 1000, log_every: int = 25,
             dropout: float | None = None, verify: bool = True, workers: int | None = None,
             deterministic: bool = False) -> dict:
    """Returns the trainer state ({"step", "history"}); see the module docstring."""
    for name, value in (("--steps", steps), ("--batch-size", batch_size), ("--accumulate", accumulate)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    d = distributed.setup(device)
    try:
        return _pretrain(d, data_dir, corpus, vocab, config, out, steps, batch_size, max_length, lr, warmup,
                         accumulate, seed, resume, optimizer, phases, fsdp, save_every, log_every, dropout, verify,
                         workers, deterministic)
    finally:
        distributed.teardown(d)


def _pretrain(d, data_dir, corpus, vocab, config, out, steps, batch_size, max_length, lr, warmup, accumulate, seed,
              resume, optimizer, phases, fsdp, save_every, log_every, dropout, verify, workers, deterministic):
    if deterministic:
        torch.use_deterministic_algorithms(True)
    plan = parse_phases(phases, max_length)
    lengths = sorted({n for n, _ in plan})
    checkpoint = find_checkpoint(resume) if resume else None
    saved = torch.load(os.path.join(checkpoint, "training_state.pt"), map_location="cpu", weights_only=False) \
        if checkpoint else None
    if saved is not None and data_dir is None:
        data_dir = saved.get("data_dir")
    if data_dir is None:
        if d.main:
            data_dir = _prepare_default(out, corpus, vocab, lengths, workers)
        d.barrier()
        data_dir = os.path.join(out, "data")
    corpora = {n: PreparedCorpus(data_dir, n, verify=verify) for n in lengths}
    tokenizer = data.WordPiece.from_vocab(corpora[lengths[0]].vocab_file,
                                          lowercase=corpora[lengths[0]].manifest.get("lowercase", True))

    torch.manual_seed(seed)
    if checkpoint:
        model = bertfast.BertForPreTraining.from_pretrained(checkpoint)
    else:
        model = bertfast.BertForPreTraining(build_config(config, tokenizer.vocab_size, max(lengths), dropout))
    if model.config.max_position_embeddings < max(lengths):
        raise ValueError(f"the model has {model.config.max_position_embeddings} positions, fewer than the phase length "
                         f"{max(lengths)}")
    raw = model.to(d.device).train()
    if d.active and fsdp:
        from torch.distributed.fsdp import fully_shard

        for layer in raw.bert.encoder.layer:
            fully_shard(layer)
        model = fully_shard(raw)
    elif d.active:
        model = torch.nn.parallel.DistributedDataParallel(raw, device_ids=[d.local_rank] if d.device.type == "cuda" else None)
    opt, sched = make_optimizer(raw, lr, 0.01, steps, warmup, optimizer)
    global_batch = batch_size * d.world * accumulate
    history: list = []
    start_step = 0
    if saved is not None:
        if saved["global_batch"] != global_batch:
            raise SystemExit(f"error: the checkpoint was trained with a global batch of {saved['global_batch']}; this "
                             f"run's is {global_batch} (batch {batch_size} x {d.world} ranks x {accumulate}): an exact "
                             "resume needs the same")
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, opt, saved["optimizer"], options=StateDictOptions(full_state_dict=True))
        sched.load_state_dict(saved["scheduler"])
        if saved["world"] == d.world:
            set_rng_state(saved["rng"][d.rank])
        elif d.main:
            print(f"warning: the checkpoint had {saved['world']} ranks, this run {d.world}: RNG states not restored")
        start_step = saved["step"]
        history = json.load(open(os.path.join(checkpoint, "trainer_state.json")))["history"]
    meta = {"data_dir": os.path.abspath(data_dir), "global_batch": global_batch, "phases": plan, "seed": seed,
            "optimizer_name": optimizer}
    bounds = phase_bounds(plan, steps)
    streams = {i: Batches(corpora[n], tokenizer, seed, i, batch_size, d.world, d.rank, accumulate)
               for i, (n, _, _) in enumerate(bounds)}
    if d.main:
        n0 = lengths[0]
        print(f"pre-training on {data_dir}: {len(corpora[n0])} examples of length <= {n0}, vocab {tokenizer.vocab_size}, "
              f"{d.world} rank(s) on {d.device}{' (FSDP2)' if fsdp and d.active else ''}, global batch {global_batch}, "
              f"steps {start_step}..{steps}, phases {[(n, e - s) for n, s, e in bounds]}")
    flops_per_token = 6 * raw.num_parameters(exclude_embeddings=True)
    peak = peak_flops(d.device)
    # on the device, read at log steps only: mlm, nsp, nsp correct, tokens (the examples are the steps'
    # global batches)
    window = torch.zeros(4, dtype=torch.float64, device=d.device)
    step_losses: list[torch.Tensor] = []
    started = time.perf_counter()
    bar = progress(range(start_step, steps), steps - start_step, "pretrain", disable=not d.main)
    last = None
    step = start_step
    for step in bar:
        phase = next(i for i, (_, s, e) in enumerate(bounds) if s <= step < e)
        micro = streams[phase].step(step - bounds[phase][1])
        counts = [float((m["labels"] != -100).sum()) for m in micro]  # made on the host: no device sync
        total_masked = float(d.sum(torch.tensor([sum(counts)], dtype=torch.float64))[0]) if d.active else sum(counts)
        step_loss = torch.zeros((), dtype=torch.float64, device=d.device)
        for a, (batch, n_masked) in enumerate(zip(micro, counts)):
            sync = a == len(micro) - 1
            batch = {k: v.to(d.device, non_blocking=True) for k, v in batch.items()}
            context = model.no_sync() if (d.active and not fsdp and not sync) else contextlib.nullcontext()
            if d.active and fsdp:
                model.set_requires_gradient_sync(sync)
            with context:
                with autocast(d.device):
                    result = model(**batch)
                nsp_logits = result.seq_relationship_logits.float()
                nsp = F.cross_entropy(nsp_logits, batch["next_sentence_label"])
                mlm = result.loss - nsp  # the model's loss is the MLM mean plus the NSP mean
                mlm_part = mlm * (n_masked / total_masked) if total_masked else mlm * 0.0
                objective = d.world * mlm_part + nsp / accumulate
                objective.backward()
            with torch.no_grad():
                step_loss += objective.detach().double() / d.world
                window += torch.stack([mlm_part.detach().double(), nsp.detach().double() / accumulate / d.world,
                                       (nsp_logits.argmax(-1) == batch["next_sentence_label"]).sum().double(),
                                       batch["attention_mask"].sum().double()])
            last = batch
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step_losses.append(step_loss)
        done = step + 1
        if done % log_every == 0 or done == steps:
            history.append(_log(d, model, raw, last, window, step_losses, started, done, sched, bounds[phase][0],
                                flops_per_token, peak, bar, global_batch))
            window.zero_()
            step_losses = []
            started = time.perf_counter()
        if done == steps or (save_every and done % save_every == 0):
            save_training_checkpoint(out, done, model, raw, opt, sched, d, corpora[lengths[0]].vocab_file, meta,
                                     history)
    state = {"step": max(steps, start_step), "history": history}
    final = os.path.join(out, f"checkpoint-{steps}")
    if d.main and state["step"] == steps and os.path.isdir(final):
        for name in os.listdir(final):
            if name != "training_state.pt":
                shutil.copy(os.path.join(final, name), os.path.join(out, name))
        print(f"saved {out} (config.json, model.safetensors, vocab.txt; checkpoint-{steps} for --resume)")
    return state


@torch.no_grad()
def _log(d, model, raw, batch, window, step_losses, started, step, sched, length, flops_per_token, peak, bar,
         global_batch) -> dict:
    """Global metrics over the window (one all-reduce): losses, NSP accuracy, tokens/s, MFU; MLM accuracy of
    each rank's last batch (its first rows, every position's logits: a forward in eval mode on all ranks)."""
    rows = {k: v[:8] for k, v in batch.items()}
    was_training = raw.training
    model.eval()
    logits = model(input_ids=rows["input_ids"], attention_mask=rows["attention_mask"],
                   token_type_ids=rows["token_type_ids"]).prediction_logits
    model.train(was_training)
    selected = rows["labels"] != -100
    correct = float((logits.argmax(-1)[selected] == rows["labels"][selected]).sum())
    losses = torch.stack(step_losses)
    packed = torch.cat([window, torch.tensor([correct, float(selected.sum())], dtype=torch.float64,
                                             device=window.device), losses])
    total = d.sum(packed).cpu()
    mlm, nsp, nsp_correct, tokens, mlm_correct, mlm_count = total[:6].tolist()
    per_step = total[6:].tolist()
    n = len(per_step)
    examples = n * global_batch
    elapsed = max(time.perf_counter() - started, 1e-9)
    entry = {"step": step, "loss": sum(per_step) / n, "step_losses": per_step, "mlm_loss": mlm / n, "nsp_loss": nsp / n,
             "mlm_accuracy": mlm_correct / max(mlm_count, 1), "nsp_accuracy": nsp_correct / max(examples, 1),
             "tokens_per_s": tokens / elapsed, "lr": sched.get_last_lr()[0], "length": length}
    if peak:
        entry["mfu"] = tokens / elapsed * flops_per_token / (peak * d.world)
    if d.main:
        msg = (f"step {step}: loss {entry['loss']:.4f} | mlm {entry['mlm_loss']:.3f} acc {entry['mlm_accuracy']:.3f} | "
               f"nsp {entry['nsp_loss']:.3f} acc {entry['nsp_accuracy']:.3f} | {entry['tokens_per_s']:,.0f} tok/s"
               + (f" | MFU {entry['mfu']:.1%}" if "mfu" in entry else ""))
        if hasattr(bar, "write"):
            bar.write(msg)
        else:
            print(msg, flush=True)
    return entry
