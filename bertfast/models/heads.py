"""The task heads, with transformers' names, outputs and losses; each loads an HF checkpoint strictly.

Masked LM: with labels, the head runs (transform and vocabulary projection) only at the labelled
positions and computes the loss in chunks (bertfast.ops.linear_cross_entropy), so the [tokens x vocab]
logits never exist; the logits are then not returned unless output_logits=True. Without labels the
full logits are returned as in transformers.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bertfast import ops
from bertfast.config import BertConfig
from bertfast.models.bert import BertModel
from bertfast.models.pretrained import BertPreTrainedModel, _mean_rows
from bertfast.nn import FusedLayerNorm, LinearActivation
from bertfast.outputs import (BertForPreTrainingOutput, output, MaskedLMOutput, MultipleChoiceModelOutput,
                              NextSentencePredictorOutput, QuestionAnsweringModelOutput, SequenceClassifierOutput,
                              TokenClassifierOutput)

_BERT_ARGS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "inputs_embeds",
              "output_hidden_states", "output_attentions")


def _finish(output_cls, return_dict: bool | None, config: BertConfig, **fields):
    out = output(output_cls, **fields)
    return_dict = config.use_return_dict if return_dict is None else return_dict
    return out if return_dict else out.to_tuple()


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = LinearActivation(config.hidden_size, config.hidden_size, config.hidden_act)
        self.LayerNorm = FusedLayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(hidden))


class BertLMPredictionHead(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=True)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder.bias = self.bias

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden))

    def loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return ops.linear_cross_entropy(hidden, self.decoder.weight, self.decoder.bias, labels,
                                        transform=self.transform)


class BertOnlyMLMHead(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.predictions = BertLMPredictionHead(config)

    def forward(self, sequence_output: torch.Tensor) -> torch.Tensor:
        return self.predictions(sequence_output)


class BertOnlyNSPHead(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.seq_relationship = nn.Linear(config.hidden_size, 2)

    def forward(self, pooled_output: torch.Tensor) -> torch.Tensor:
        return self.seq_relationship(pooled_output)


class BertPreTrainingHeads(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.predictions = BertLMPredictionHead(config)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)


class _TiedLMMixin:
    """Ties cls.predictions.decoder.weight to the word embeddings (config.tie_word_embeddings)."""

    def _tied_keys(self) -> list[str]:
        return ["cls.predictions.decoder.weight", "cls.predictions.decoder.bias"] if self.config.tie_word_embeddings \
            else ["cls.predictions.decoder.bias"]

    def tie_weights(self) -> None:
        predictions = self.cls.predictions
        if self.config.tie_word_embeddings:
            predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight
        predictions.decoder.bias = predictions.bias

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.predictions.decoder

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.cls.predictions.decoder = value
        self.cls.predictions.bias = value.bias

    def _resize_decoder(self, n: int, keep: int, added: int, mean_resizing: bool) -> None:
        """The LM decoder follows a vocabulary resize: its bias (and, untied, its weight) keep their first
        rows; new rows as transformers (bias: the old mean, weight: drawn around the old rows' mean)."""

        predictions = self.cls.predictions
        old = predictions.decoder
        new = nn.Linear(old.in_features, n, device=old.weight.device, dtype=old.weight.dtype)
        if not (added > 0 and mean_resizing):
            self._init_weights(new)
        with torch.no_grad():
            new.weight[:keep] = old.weight[:keep]
            new.bias[:keep] = predictions.bias[:keep]
            if added > 0 and mean_resizing:
                new.weight[-added:] = _mean_rows(old.weight, added)
                new.bias[-added:] = predictions.bias.mean()
        new.weight.requires_grad_(old.weight.requires_grad)
        new.bias.requires_grad_(predictions.bias.requires_grad)
        predictions.decoder = new
        predictions.bias = new.bias


def _bert_kwargs(local: dict) -> dict:
    return {k: local[k] for k in _BERT_ARGS}


class BertForPreTraining(_TiedLMMixin, BertPreTrainedModel):
    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        config = self.config  # a transformers config, converted
        self.bert = BertModel(config)
        self.cls = BertPreTrainingHeads(config)
        self.init_weights()
        self.tie_weights()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, next_sentence_label=None, output_hidden_states=None, output_attentions=None,
                return_dict=None, output_logits=None, **kwargs):
        out = self.bert(**_bert_kwargs(locals()), return_dict=True)
        nsp_logits = self.cls.seq_relationship(out.pooler_output)
        loss = mlm_logits = None
        if labels is not None and next_sentence_label is not None:
            loss = self.cls.predictions.loss(out.last_hidden_state, labels) + \
                F.cross_entropy(nsp_logits.view(-1, 2), next_sentence_label.view(-1))
        if loss is None or output_logits:
            mlm_logits = self.cls.predictions(out.last_hidden_state)
        return _finish(BertForPreTrainingOutput, return_dict, self.config, loss=loss, prediction_logits=mlm_logits,
                       seq_relationship_logits=nsp_logits, hidden_states=out.hidden_states, attentions=out.attentions)


class BertForMaskedLM(_TiedLMMixin, BertPreTrainedModel):
    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        config = self.config  # a transformers config, converted
        self.bert = BertModel(config, add_pooling_layer=False)
        self.cls = BertOnlyMLMHead(config)
        self.init_weights()
        self.tie_weights()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, output_hidden_states=None, output_attentions=None, return_dict=None, output_logits=None,
                **kwargs):
        out = self.bert(**_bert_kwargs(locals()), return_dict=True)
        loss = logits = None
        if labels is not None:
            loss = self.cls.predictions.loss(out.last_hidden_state, labels)
        if labels is None or output_logits:
            logits = self.cls(out.last_hidden_state)
        return _finish(MaskedLMOutput, return_dict, self.config, loss=loss, logits=logits,
                       hidden_states=out.hidden_states, attentions=out.attentions)


class BertForNextSentencePrediction(BertPreTrainedModel):
    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        config = self.config  # a transformers config, converted
        self.bert = BertModel(config)
        self.cls = BertOnlyNSPHead(config)
        self.init_weights()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, output_hidden_states=None, output_attentions=None, return_dict=None, **kwargs):
        out = self.bert(**_bert_kwargs(locals()), return_dict=True)
        logits = self.cls(out.pooler_output)
        loss = F.cross_entropy(logits.view(-1, 2), labels.view(-1)) if labels is not None else None
        return _finish(NextSentencePredictorOutput, return_dict, self.config, loss=loss, logits=logits,
                       hidden_states=out.hidden_states, attentions=out.attentions)


class _ClassifierHead(BertPreTrainedModel):
    """Shared by the classification heads: bert, dropout (classifier_dropout or hidden_dropout_prob), classifier."""

    def __init__(self, config: BertConfig, out_features: int, pooling: bool) -> None:
        super().__init__(config)
        config = self.config  # a transformers config, converted
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=pooling)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, out_features)
        self.init_weights()


class BertForSequenceClassification(_ClassifierHead):
    def __init__(self, config: BertConfig) -> None:
        super().__init__(config, config.num_labels, pooling=True)
        config = self.config  # a transformers config, converted

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, output_hidden_states=None, output_attentions=None, return_dict=None, **kwargs):
        out = self.bert(**_bert_kwargs(locals()), return_dict=True)
        logits = self.classifier(self.dropout(out.pooler_output))
        loss = None
        if labels is not None:
            loss = sequence_classification_loss(self.config, logits, labels)
        return _finish(SequenceClassifierOutput, return_dict, self.config, loss=loss, logits=logits,
                       hidden_states=out.hidden_states, attentions=out.attentions)


def sequence_classification_loss(config: BertConfig, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """transformers' rule: problem_type, or else regression for one label, single-label for integer
    labels, multi-label otherwise (and config.problem_type is set from the first batch, as there)."""
    num_labels = config.num_labels
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        return F.mse_loss(logits.squeeze(), labels.squeeze()) if num_labels == 1 else F.mse_loss(logits, labels)
    if config.problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
    if config.problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits, labels)
    raise ValueError(f"problem_type must be regression, single_label_classification or multi_label_classification, "
                     f"got {config.problem_type!r}")


class BertForMultipleChoice(_ClassifierHead):
    def __init__(self, config: BertConfig) -> None:
        super().__init__(config, 1, pooling=True)
        config = self.config  # a transformers config, converted

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, output_hidden_states=None, output_attentions=None, return_dict=None, **kwargs):
        first = input_ids if input_ids is not None else inputs_embeds
        if first is None or first.dim() < 3:
            raise ValueError("multiple choice inputs must be [batch, num_choices, seq] (inputs_embeds with a hidden dim)")
        num_choices = first.shape[1]
        flat = lambda t, keep=1: t.reshape(-1, *t.shape[-keep:]) if t is not None else None  # noqa: E731
        out = self.bert(flat(input_ids), flat(attention_mask), flat(token_type_ids), flat(position_ids),
                        flat(inputs_embeds, 2), output_hidden_states=output_hidden_states,
                        output_attentions=output_attentions, return_dict=True)
        logits = self.classifier(self.dropout(out.pooler_output)).view(-1, num_choices)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return _finish(MultipleChoiceModelOutput, return_dict, self.config, loss=loss, logits=logits,
                       hidden_states=out.hidden_states, attentions=out.attentions)


class BertForTokenClassification(_ClassifierHead):
    def __init__(self, config: BertConfig) -> None:
        super().__init__(config, config.num_labels, pooling=False)
        config = self.config  # a transformers config, converted

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, output_hidden_states=None, output_attentions=None, return_dict=None, **kwargs):
        out = self.bert(**_bert_kwargs(locals()), return_dict=True)
        logits = self.classifier(self.dropout(out.last_hidden_state))
        loss = F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1)) if labels is not None else None
        return _finish(TokenClassifierOutput, return_dict, self.config, loss=loss, logits=logits,
                       hidden_states=out.hidden_states, attentions=out.attentions)


class BertForQuestionAnswering(BertPreTrainedModel):
    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        config = self.config  # a transformers config, converted
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.init_weights()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                start_positions=None, end_positions=None, output_hidden_states=None, output_attentions=None,
                return_dict=None, **kwargs):
        out = self.bert(**_bert_kwargs(locals()), return_dict=True)
        start_logits, end_logits = (t.squeeze(-1).contiguous() for t in self.qa_outputs(out.last_hidden_state).split(1, -1))
        if attention_mask is not None and attention_mask.dim() == 2:
            # Padded positions are never an answer: their logits are the dtype's minimum (transformers
            # computes logits there from the padding's hidden states, which bertfast does not compute).
            pad = attention_mask == 0
            start_logits = start_logits.masked_fill(pad, torch.finfo(start_logits.dtype).min)
            end_logits = end_logits.masked_fill(pad, torch.finfo(end_logits.dtype).min)
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored = start_logits.size(1)  # positions outside the sequence are clamped to it and ignored, as in HF
            start_positions = start_positions.reshape(-1).clamp(0, ignored)
            end_positions = end_positions.reshape(-1).clamp(0, ignored)
            loss = (F.cross_entropy(start_logits, start_positions, ignore_index=ignored)
                    + F.cross_entropy(end_logits, end_positions, ignore_index=ignored)) / 2
        return _finish(QuestionAnsweringModelOutput, return_dict, self.config, loss=loss, start_logits=start_logits,
                       end_logits=end_logits, hidden_states=out.hidden_states, attentions=out.attentions)
