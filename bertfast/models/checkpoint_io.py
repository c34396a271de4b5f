"""Weights on disk in transformers' layout: model.safetensors (or pytorch_model.bin), or shards with an
index (model.safetensors.index.json: {"metadata": {"total_size": ...}, "weight_map": {name: file}})."""
from __future__ import annotations

import json
import os
import re

import torch

SAFE, PICKLE = "model.safetensors", "pytorch_model.bin"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(size: int | str) -> int:
    """Bytes from an int or transformers' spellings ("5GB", "500MB", "2GiB")."""
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(size))
        if not match or match.group(2).upper() not in _UNITS:
            raise ValueError(f"max_shard_size must be bytes or a size like '5GB', got {size!r}")
        value = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if value <= 0:
        raise ValueError(f"max_shard_size must be positive, got {size!r}")
    return value


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def write_weights(directory: str, state: dict[str, torch.Tensor], max_shard_size: int | str = "50GB",
                  safe_serialization: bool = True) -> list[str]:
    """Write state (contiguous CPU tensors) as one file or as shards of at most max_shard_size bytes (a
    tensor larger than that gets a shard of its own), with transformers' names; stale weight files of
    the other layout are removed so the folder holds one checkpoint. Returns the files written."""
    limit = parse_size(max_shard_size)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        if shards[-1] and size + _nbytes(tensor) > limit:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += _nbytes(tensor)
    base = SAFE if safe_serialization else PICKLE
    stem, ext = base.rsplit(".", 1)
    names = [base] if len(shards) == 1 else [f"{stem}-{i + 1:05d}-of-{len(shards):05d}.{ext}" for i in range(len(shards))]
    for old in os.listdir(directory):
        if re.fullmatch(r"(model|pytorch_model)(-\d{5}-of-\d{5})?\.(safetensors|bin)(\.index\.json)?", old) \
                and old not in names:
            os.remove(os.path.join(directory, old))
    for name, shard in zip(names, shards):
        path = os.path.join(directory, name)
        if safe_serialization:
            from safetensors.torch import save_file

            save_file(shard, path, metadata={"format": "pt"})
        else:
            torch.save(shard, path)
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(_nbytes(t) for t in state.values())},
                 "weight_map": {k: name for name, shard in zip(names, shards) for k in shard}}
        with open(os.path.join(directory, base + ".index.json"), "w", encoding="utf-8") as f:
            json.dump(index, f, indent=2, sort_keys=True)
    return names


def _load(path: str, allow_pickle: bool) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    if not allow_pickle:
        raise RuntimeError(f"{path} is a pickle, which can run code when loaded; convert it to safetensors, "
                           "or pass allow_pickle=True to load it with torch.load(weights_only=True)")
    return torch.load(path, map_location="cpu", weights_only=True)


def checkpoint_keys(directory: str) -> list[str] | None:
    """The tensor names of a folder's safetensors weights (or their index), without reading the tensors;
    None when it has neither (a pickle, or no weights)."""
    path = os.path.join(directory, SAFE)
    if os.path.isfile(path):
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            return list(f.keys())
    if os.path.isfile(path + ".index.json"):
        with open(path + ".index.json", encoding="utf-8") as f:
            weight_map = json.load(f).get("weight_map")
        return list(weight_map) if isinstance(weight_map, dict) else None
    return None


def read_weights(directory: str, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """model.safetensors, its shards, or (allow_pickle only) pytorch_model.bin or its shards."""
    for base in (SAFE, PICKLE):
        path = os.path.join(directory, base)
        if os.path.isfile(path):
            return _load(path, allow_pickle)
        index = path + ".index.json"
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ValueError(f"{index} has no weight_map")
            state: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                shard_path = os.path.join(directory, shard)
                if not os.path.isfile(shard_path):
                    raise FileNotFoundError(f"{index} names {shard!r}, which is not in {directory!r}")
                state.update(_load(shard_path, allow_pickle))
            missing = sorted(set(weight_map) - set(state))
            if missing:
                raise ValueError(f"{index} maps {missing[:5]} to shards that do not hold them")
            return state
    raise FileNotFoundError(f"no model.safetensors (nor shards with model.safetensors.index.json) in {directory!r}")
