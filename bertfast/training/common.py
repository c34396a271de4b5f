"""Helpers shared by pre-training and fine-tuning: device, optimiser and schedule, autocast, progress."""
from __future__ import annotations

import json
import os
from contextlib import nullcontext

import torch

from bertfast.training import data


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """BERT's decay groups: none on biases and LayerNorm."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "LayerNorm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def linear_schedule(opt: torch.optim.Optimizer, total_steps: int, warmup: float):
    """Linear warm-up over warmup x total_steps, then linear decay to 0 at total_steps."""
    warm = max(1, int(total_steps * warmup))
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total_steps - s) / max(1, total_steps - warm))))


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, total_steps: int, warmup: float,
                   kind: str = "adamw"):
    """AdamW (BERT's fine-tuning default) or LAMB (its large-batch pre-training), with the linear schedule."""
    groups = parameter_groups(model, weight_decay)
    if kind == "adamw":
        opt = torch.optim.AdamW(groups, lr=lr)
    elif kind == "lamb":
        from bertfast.training.lamb import Lamb

        opt = Lamb(groups, lr=lr)
    else:
        raise ValueError(f"--optimizer must be adamw or lamb, got {kind!r}")
    return opt, linear_schedule(opt, total_steps, warmup)


def autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def save_checkpoint(model, tokenizer: data.WordPiece | None, directory: str, state: dict) -> None:
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_vocab(directory)
    with open(os.path.join(directory, "trainer_state.json"), "w") as f:
        json.dump(state, f, indent=1)


def progress(iterable, total, desc, disable: bool = False):
    if disable:
        return iterable
    try:
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, dynamic_ncols=True, mininterval=1.0)
    except ImportError:
        return iterable
