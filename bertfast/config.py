"""BertConfig: HuggingFace's BertConfig fields and defaults, without depending on transformers."""
from __future__ import annotations

import copy
import json
import os
from typing import Any

_DEFAULTS: dict[str, Any] = dict(
    vocab_size=30522,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    hidden_act="gelu",
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
    max_position_embeddings=512,
    type_vocab_size=2,
    initializer_range=0.02,
    layer_norm_eps=1e-12,
    pad_token_id=0,
    position_embedding_type="absolute",
    use_cache=True,
    classifier_dropout=None,
    is_decoder=False,
    add_cross_attention=False,
    num_labels=2,
    problem_type=None,
    id2label=None,
    label2id=None,
    output_hidden_states=False,
    output_attentions=False,
    return_dict=True,
    tie_word_embeddings=True,
    dtype=None,
)
# Older names transformers still reads.
_ALIASES = {"use_return_dict": "return_dict", "torch_dtype": "dtype"}


def _as_dtype(value: Any):
    """A torch dtype from transformers' spellings ("float32", "torch.bfloat16", a torch.dtype); None and
    "auto" are kept."""
    if value is None or value == "auto" or not isinstance(value, str):
        return value
    import torch

    dtype = getattr(torch, value.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype must name a torch dtype, got {value!r}")
    return dtype


def is_transformers_config(obj: Any) -> bool:
    """A transformers PretrainedConfig (duck-typed: transformers need not be installed)."""
    return not isinstance(obj, BertConfig) and callable(getattr(obj, "to_dict", None)) and \
        hasattr(obj, "model_type") and type(obj).__module__.startswith("transformers")


ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "tanh", "gelu_python")


class BertConfig:
    """Holds every HF BertConfig field (unknown extra keys from a config.json are kept as attributes), and
    the attributes transformers' tools read from a model's config (return_dict/use_return_dict,
    dtype/torch_dtype, name_or_path, _commit_hash, _attn_implementation, is_encoder_decoder)."""

    model_type = "bert"
    # Read by transformers' pipelines and trainers; not written to config.json.
    _commit_hash = None
    _attn_implementation = "bertfast"
    is_encoder_decoder = False
    torchscript = False

    def __init__(self, **kwargs: Any) -> None:
        values = dict(_DEFAULTS)
        for key, value in kwargs.items():
            values[_ALIASES.get(key, key)] = value
        values["dtype"] = _as_dtype(values["dtype"])
        self._name_or_path = str(values.pop("_name_or_path", values.pop("name_or_path", "")) or "")
        num_labels = values.pop("num_labels")
        for key, value in values.items():
            setattr(self, key, value)
        if self.id2label is None:
            self.id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
        self.id2label = {int(k): v for k, v in self.id2label.items()}
        if self.label2id is None:
            self.label2id = {v: k for k, v in self.id2label.items()}
        self.validate()

    @property
    def use_return_dict(self) -> bool:
        return bool(self.return_dict)

    @use_return_dict.setter
    def use_return_dict(self, value: bool) -> None:
        self.return_dict = value

    @property
    def torch_dtype(self):
        return self.dtype

    @torch_dtype.setter
    def torch_dtype(self, value) -> None:
        self.dtype = _as_dtype(value)

    @property
    def name_or_path(self) -> str:
        return self._name_or_path

    @name_or_path.setter
    def name_or_path(self, value) -> None:
        self._name_or_path = str(value)

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, n: int) -> None:
        self.id2label = {i: f"LABEL_{i}" for i in range(n)}
        self.label2id = {v: k for k, v in self.id2label.items()}

    def validate(self) -> None:
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                             f"({self.num_attention_heads})")
        if not isinstance(self.hidden_act, str) or self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {ACTIVATIONS}, got {self.hidden_act!r}")
        if self.position_embedding_type != "absolute":
            raise ValueError(f"position_embedding_type {self.position_embedding_type!r} is not supported (only 'absolute')")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            p = getattr(self, name)
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    # Presets --------------------------------------------------------------------------------------
    @classmethod
    def base(cls, **kwargs: Any) -> "BertConfig":
        return cls(**kwargs)

    @classmethod
    def large(cls, **kwargs: Any) -> "BertConfig":
        return cls(**{**dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096), **kwargs})

    @classmethod
    def tiny(cls, **kwargs: Any) -> "BertConfig":
        return cls(**{**dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512), **kwargs})

    # Conversions ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = copy.deepcopy({k: v for k, v in self.__dict__.items() if not k.startswith("_")})
        out["model_type"] = self.model_type
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        if out.get("dtype") is not None:
            out["dtype"] = str(out["dtype"]).removeprefix("torch.")
        return out

    def to_json_string(self, use_diff: bool = False) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: str | os.PathLike, use_diff: bool = False) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json_string())

    def get_text_config(self, *args, **kwargs) -> "BertConfig":
        return self

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "BertConfig":
        values = dict(values)
        model_type = values.pop("model_type", "bert")
        if model_type != "bert":
            raise ValueError(f"config model_type is {model_type!r}, expected 'bert'")
        values.pop("transformers_version", None)
        return cls(**values)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "BertConfig":
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "BertConfig":
        path = os.path.join(directory, "config.json") if os.path.isdir(directory) else directory
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no config.json at {path!r} (bertfast loads local folders only; nothing is downloaded)")
        config = cls.from_json_file(path)
        config.name_or_path = os.fspath(directory)
        return config

    @classmethod
    def from_hf(cls, hf_config: Any) -> "BertConfig":
        """From a transformers.BertConfig."""
        config = cls.from_dict(hf_config.to_dict())
        config.name_or_path = getattr(hf_config, "name_or_path", "") or ""
        return config

    def to_hf(self):
        """A transformers.BertConfig with the same fields (needs transformers)."""
        from transformers import BertConfig as HFBertConfig

        hf = HFBertConfig(**{k: v for k, v in self.to_dict().items() if k != "model_type"})
        hf.name_or_path = self.name_or_path
        return hf

    def save_pretrained(self, directory: str | os.PathLike, **kwargs: Any) -> None:
        os.makedirs(directory, exist_ok=True)
        self.to_json_file(os.path.join(directory, "config.json"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BertConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"BertConfig({json.dumps(self.to_dict(), sort_keys=True)})"
