"""Output classes with HF's names and behaviour: attribute, key and index access; None fields skipped
in indexing and in to_tuple()."""
from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch


class ModelOutput(OrderedDict):
    """Like transformers' ModelOutput: an ordered mapping of the fields that are not None, also built from a
    dict or an iterable of (key, value) pairs given as the only argument."""

    def __post_init__(self) -> None:
        names = [f.name for f in fields(self)]
        first = getattr(self, names[0])
        if first is not None and not isinstance(first, torch.Tensor) and \
                all(getattr(self, n) is None for n in names[1:]):
            pairs = first.items() if isinstance(first, Mapping) else _pairs(first)
            if pairs is not None:
                object.__setattr__(self, names[0], None)
                for key, value in pairs:
                    if key not in names:
                        raise TypeError(f"{type(self).__name__} has no field {key!r} (fields: {names})")
                    object.__setattr__(self, key, value)
        for name in names:
            value = getattr(self, name)
            if value is not None:
                super().__setitem__(name, value)

    def __getitem__(self, key):
        if isinstance(key, str):
            return dict.__getitem__(self, key)
        return self.to_tuple()[key]

    def __setattr__(self, name, value) -> None:
        if name in self.keys() and value is not None:
            super().__setitem__(name, value)
        super().__setattr__(name, value)

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        super().__setattr__(key, value)

    def __reduce__(self):
        return type(self), tuple(getattr(self, f.name) for f in fields(self))

    def to_tuple(self) -> tuple:
        return tuple(self[k] for k in self.keys())


def _pairs(value):
    """A list of (str, value) pairs from an iterable of pairs, or None if value is not one."""
    try:
        items = list(value)
    except TypeError:
        return None
    if items and all(isinstance(i, (tuple, list)) and len(i) == 2 and isinstance(i[0], str) for i in items):
        return items
    return None


@dataclass
class BaseModelOutputWithPoolingAndCrossAttentions(ModelOutput):
    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    past_key_values: object | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class BertForPreTrainingOutput(ModelOutput):
    loss: torch.Tensor | None = None
    prediction_logits: torch.Tensor | None = None
    seq_relationship_logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class MaskedLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class NextSentencePredictorOutput(MaskedLMOutput):
    pass


@dataclass
class SequenceClassifierOutput(MaskedLMOutput):
    pass


@dataclass
class TokenClassifierOutput(MaskedLMOutput):
    pass


@dataclass
class MultipleChoiceModelOutput(MaskedLMOutput):
    pass


@dataclass
class QuestionAnsweringModelOutput(ModelOutput):
    loss: torch.Tensor | None = None
    start_logits: torch.Tensor | None = None
    end_logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


_TWINS: dict[type, type] = {}


def _twin(cls: type) -> type:
    """transformers' class of the same name (a ModelOutput subclass with the same fields), or for a class
    transformers keeps in its BERT module, a dataclass subclass of transformers' ModelOutput with cls's
    fields (importing transformers' BERT module would cost seconds)."""
    import transformers.modeling_outputs as hf_outputs
    from transformers.utils import ModelOutput as HFModelOutput

    twin = getattr(hf_outputs, cls.__name__, None)
    if twin is None:
        twin = dataclass(type(cls.__name__, (HFModelOutput,), {
            "__annotations__": {f.name: f.type for f in fields(cls)},
            **{f.name: None for f in fields(cls)}, "__module__": __name__, "__qualname__": cls.__name__}))
    if [f.name for f in fields(twin)] != [f.name for f in fields(cls)]:
        raise TypeError(f"transformers' {cls.__name__} has other fields")
    return twin


def output(cls: type, **values) -> ModelOutput:
    """An output of class cls; once the process has imported transformers (so that a pipeline, Trainer or
    user may test isinstance against transformers' ModelOutput), transformers' class of the same name and
    fields. Code that has not imported transformers cannot tell the two apart: same fields, mapping,
    indexing and to_tuple()."""
    if "transformers" in sys.modules:
        twin = _TWINS.get(cls)
        if twin is None:
            try:
                twin = _twin(cls)
            except Exception:  # a transformers without these classes: ours serve
                twin = cls
            _TWINS[cls] = twin
        cls = twin
    return cls(**values)
