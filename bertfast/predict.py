"""Text prediction and generation with a masked-LM checkpoint (`python -m bertfast predict|generate`).

Any folder with config.json, the weights of a masked-LM head and vocab.txt: what `pretrain` writes, or a
transformers BertForMaskedLM / BertForPreTraining folder. Both run through bertfast's fused model.

predict: the top-k fillers of each [MASK], with probabilities (each mask on its own, given the rest of
the text as written).

generate: BERT is not a left-to-right language model; it fills masks from both sides. `generate` appends
N masks to the prompt and fills them one at a time, the most confident position first (its probability
highest among the open masks), sampling that position's token (temperature, top-k; temperature 0 takes
the most likely). It can continue text in the style and vocabulary of what it was trained on, for short
spans; it does not plan long text, and its quality falls as the masks outnumber the given words.
"""
from __future__ import annotations

import json
import os
import warnings

import torch

import bertfast
from bertfast.models.checkpoint_io import checkpoint_keys
from bertfast.training import PRETRAIN_OUT
from bertfast.training.data import WordPiece


def checkpoint_problem(folder: str) -> str | None:
    """Why `folder` is not a model folder bertfast's commands can start from, or None."""
    if not os.path.isfile(os.path.join(folder, "config.json")):
        return f"{folder}: no config.json in it (expected a model folder: config.json, model.safetensors, vocab.txt)"
    if not os.path.isfile(os.path.join(folder, "vocab.txt")):
        return f"{folder}: no vocab.txt in it (the WordPiece vocabulary the model was trained with)"
    return None


def masked_lm_problem(folder: str) -> str | None:
    """Why `folder` cannot fill masks, or None: it needs config.json, vocab.txt and the masked-LM head's weights."""
    problem = checkpoint_problem(folder)
    if problem:
        return problem
    keys = checkpoint_keys(folder)
    if keys is not None and not any(k.startswith("cls.predictions.") for k in keys):
        return (f"{folder} holds an encoder without a masked-LM head (no cls.predictions weights), so it cannot fill "
                f"masks. Use a masked-LM checkpoint: `python -m bertfast pretrain` writes one to {PRETRAIN_OUT} "
                "(a small BERT on Python's own docstrings, a few minutes on a CPU), or any transformers "
                "BertForMaskedLM / BertForPreTraining folder with vocab.txt")
    return None


class MaskedLM:
    """A masked-LM checkpoint and its vocabulary, ready to fill masks."""

    def __init__(self, directory: str, device: str | None = None) -> None:
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"--from {directory}: no such folder")
        problem = masked_lm_problem(directory)
        if problem:
            raise ValueError(f"--from {problem}")
        vocab = os.path.join(directory, "vocab.txt")
        lowercase = True
        config_path = os.path.join(directory, "tokenizer_config.json")
        if os.path.isfile(config_path):
            with open(config_path, encoding="utf-8") as f:
                lowercase = json.load(f).get("do_lower_case", True)
        self.tok = WordPiece.from_vocab(vocab, lowercase=lowercase)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.model = bertfast.BertForMaskedLM.from_pretrained(directory)
        fresh = [str(w.message) for w in caught if "newly initialised" in str(w.message) and "cls.predictions" in str(w.message)]
        if fresh:
            raise ValueError(f"--from {directory}: not a masked-LM checkpoint (its cls.predictions weights are "
                             "missing)")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device).eval()
        special = self.tok.special_ids
        self.banned = torch.tensor(sorted(special), device=self.device)

    def encode(self, text: str) -> list[int]:
        return self.tok.tokenizer.encode(text, add_special_tokens=True).ids

    @torch.no_grad()
    def probabilities(self, ids: list[int]) -> torch.Tensor:
        """[len(ids), vocab] probabilities of every position, special tokens excluded."""
        if len(ids) > self.model.config.max_position_embeddings:
            raise ValueError(f"the text has {len(ids)} tokens, more than the model's "
                             f"{self.model.config.max_position_embeddings} positions")
        x = torch.tensor([ids], device=self.device)
        logits = self.model(input_ids=x).logits[0].float()
        logits[:, self.banned] = float("-inf")
        return logits.softmax(-1)

    def predict(self, text: str, top_k: int = 5) -> list[list[tuple[str, float]]]:
        """For each [MASK] in text, its top_k (token, probability)."""
        ids = self.encode(text)
        positions = [i for i, t in enumerate(ids) if t == self.tok.mask_id]
        if not positions:
            raise ValueError("the text has no [MASK]")
        probs = self.probabilities(ids)
        out = []
        for p in positions:
            values, indices = probs[p].topk(top_k)
            out.append([(self.tok.tokenizer.id_to_token(int(i)), float(v)) for v, i in zip(values, indices)])
        return out

    def generate(self, prompt: str, tokens: int, temperature: float = 1.0, top_k: int = 0, seed: int = 0) -> str:
        """The prompt followed by `tokens` tokens filled most-confident-first (see the module docstring)."""
        if tokens < 1:
            raise ValueError(f"--tokens must be >= 1, got {tokens}")
        if temperature < 0:
            raise ValueError(f"--temperature must be >= 0, got {temperature}")
        ids = self.encode(prompt)[:-1] + [self.tok.mask_id] * tokens + [self.tok.sep_id]
        open_positions = set(range(len(ids) - 1 - tokens, len(ids) - 1))
        generator = torch.Generator(device="cpu").manual_seed(seed)
        while open_positions:
            probs = self.probabilities(ids)
            candidates = sorted(open_positions)
            confidence = probs[candidates].max(-1).values
            position = candidates[int(confidence.argmax())]
            dist = probs[position].cpu()
            if temperature == 0:
                choice = int(dist.argmax())
            else:
                logits = dist.clamp_min(1e-30).log() / temperature
                if top_k:
                    kth = logits.topk(min(top_k, logits.numel())).values[-1]
                    logits[logits < kth] = float("-inf")
                choice = int(torch.multinomial(logits.softmax(-1), 1, generator=generator))
            ids[position] = choice
            open_positions.remove(position)
        return self.tok.tokenizer.decode(ids[1:-1])


def predict_main(directory: str, texts: list[str], top_k: int, device: str | None) -> int:
    lm = MaskedLM(directory, device)
    for text in texts:
        results = lm.predict(text, top_k)
        print(text)
        for n, options in enumerate(results, 1):
            print(f"  [MASK] {n}: " + ", ".join(f"{token} {p:.3f}" for token, p in options))
        filled = text
        for options in results:
            filled = filled.replace("[MASK]", options[0][0].removeprefix("##"), 1)
        print(f"  -> {filled}")
    return 0


def generate_main(directory: str, prompt: str, tokens: int, temperature: float, top_k: int, seed: int,
                  device: str | None) -> int:
    lm = MaskedLM(directory, device)
    print(lm.generate(prompt, tokens, temperature, top_k, seed))
    return 0
