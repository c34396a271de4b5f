"""BERT, read top to bottom: HF's module tree and parameter names, bertfast's ops underneath.

An HF BertModel state_dict loads unchanged (`load_state_dict(hf.state_dict(), strict=True)`), and the
forward takes HF's arguments and returns HF's output fields. Each layer sees what
bertfast.models.batch prepared once per forward (AttentionInputs): a batch with padding runs on its
packed real tokens (padding-free execution), whose cost follows the real token count. Padded positions
of last_hidden_state (and of hidden_states) are zeros; transformers computes values there that nothing
attends to. Real tokens match transformers. Loading, saving and the rest of transformers'
PreTrainedModel surface: bertfast.models.pretrained.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from bertfast import ops
from bertfast.config import BertConfig
from bertfast.models.batch import (AttentionInputs, embed_batch, residual_fold, self_attention,
                                   self_attention_keeping_input)
from bertfast.models.pretrained import BertPreTrainedModel
from bertfast.nn import Embeddings, FusedLayerNorm, LinearActivation
from bertfast.nn.modules import folds_bias, runs_as_module
from bertfast.outputs import BaseModelOutputWithPoolingAndCrossAttentions, output


class BertSelfAttention(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.head_dim
        self.all_head_size = config.hidden_size
        self.query = nn.Linear(config.hidden_size, self.all_head_size)
        self.key = nn.Linear(config.hidden_size, self.all_head_size)
        self.value = nn.Linear(config.hidden_size, self.all_head_size)
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(self, hidden: torch.Tensor, attn: AttentionInputs):
        return self_attention(self, hidden, attn, self.training)


class BertSelfOutput(nn.Module):
    def __init__(self, config: BertConfig, in_features: int | None = None) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features or config.hidden_size, config.hidden_size)
        self.LayerNorm = FusedLayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout_p = config.hidden_dropout_prob

    def forward(self, hidden: torch.Tensor, input_tensor: torch.Tensor, seed: torch.Tensor | None = None) -> torch.Tensor:
        """seed: the dropout seed (AttentionInputs.seed), or None: the op draws one."""
        if folds_bias(self.dense, hidden):  # the bias added (and its gradient summed) in the LayerNorm's kernels
            return self.LayerNorm(F.linear(hidden, self.dense.weight), input_tensor, self.dropout_p,
                                  x_bias=self.dense.bias, seed=seed)
        return self.LayerNorm(self.dense(hidden), input_tensor, self.dropout_p, seed=seed)

    def takes_folded_residual(self, x: torch.Tensor) -> bool:
        """Whether this module runs its plain forward, its fused LayerNorm's dropout on
        (models.batch.residual_fold; the LayerNorm module's own training flag, which its forward reads):
        then the linear layer whose input x is also this module's residual may add that residual's
        gradient in its matmul (ops/linear.py)."""
        return residual_fold(self, self.LayerNorm.training, x) and not runs_as_module(self, BertSelfOutput) \
            and not runs_as_module(self.LayerNorm, FusedLayerNorm)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, hidden: torch.Tensor, attn: AttentionInputs):
        if not runs_as_module(self.self, BertSelfAttention) and isinstance(self.output, BertSelfOutput) \
                and self.output.takes_folded_residual(hidden):
            # hidden's two gradients (q/k/v matmul, LayerNorm residual) summed in the matmul (ops/linear.py)
            context, probs, residual = self_attention_keeping_input(self.self, hidden, attn, self.self.training)
        else:
            (context, probs), residual = self.self(hidden, attn), hidden
        return self.output(context, residual, attn.seed(1)), probs


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = LinearActivation(config.hidden_size, config.intermediate_size, config.hidden_act)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.dense(hidden)


class BertOutput(BertSelfOutput):
    def __init__(self, config: BertConfig) -> None:
        super().__init__(config, config.intermediate_size)


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, hidden: torch.Tensor, attn: AttentionInputs):
        attention_output, probs = self.attention(hidden, attn)
        dense = getattr(self.intermediate, "dense", None)
        if isinstance(dense, LinearActivation) and not runs_as_module(self.intermediate, BertIntermediate) \
                and not runs_as_module(dense, LinearActivation) and isinstance(self.output, BertSelfOutput) \
                and self.output.takes_folded_residual(attention_output):
            # attention_output's two gradients summed in the intermediate matmul (ops/linear.py)
            intermediate, residual = dense.forward_keeping_input(attention_output)
        else:
            intermediate, residual = self.intermediate(attention_output), attention_output
        return self.output(intermediate, residual, attn.seed(2)), probs


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False
        self.checkpoint_options = {"use_reentrant": False, "preserve_rng_state": True}
        self.checkpoint_every = 1
        self.checkpoint_offload = False

    def forward(self, hidden: torch.Tensor, attn: AttentionInputs, output_hidden_states: bool = False):
        all_hidden = [hidden] if output_hidden_states else None
        all_probs = [] if attn.output_attentions else None
        attn = attn.with_dropout_seeds(len(self.layer), hidden, self.training)  # one draw for every layer
        for i, layer in enumerate(self.layer):
            layer_attn = attn.layer(i)
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled() \
                    and i % self.checkpoint_every == 0:
                # Recomputed in the backward with the same seeds (layer_attn's), or, where the ops draw
                # their own, with the RNG states (the CPU's and the input's device's) restored: the same
                # masks both times.
                with torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()) \
                        if self.checkpoint_offload else contextlib.nullcontext():
                    hidden = checkpoint(lambda h, lay=layer, a=layer_attn: lay(h, a)[0], hidden,
                                        **self.checkpoint_options)
                probs = None
            else:
                hidden, probs = layer(hidden, layer_attn)
            if output_hidden_states:
                all_hidden.append(hidden)
            if all_probs is not None:
                all_probs.append(probs)
        return hidden, all_hidden, all_probs


class BertPooler(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden[:, 0]))


class BertModel(BertPreTrainedModel):
    def __init__(self, config: BertConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config)
        config = self.config  # a transformers config, converted
        self.embeddings = Embeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.init_weights()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                output_hidden_states=None, output_attentions=None, return_dict=None, **kwargs):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        if input_ids is not None and (not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2):
            raise ValueError(f"input_ids must be a [batch, seq] tensor, got {getattr(input_ids, 'shape', type(input_ids))}")
        if inputs_embeds is not None and (not isinstance(inputs_embeds, torch.Tensor) or inputs_embeds.dim() != 3):
            raise ValueError(f"inputs_embeds must be a [batch, seq, hidden] tensor, got "
                             f"{getattr(inputs_embeds, 'shape', type(inputs_embeds))}")
        hidden, attn, packed = embed_batch(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                                           output_attentions)
        sequence_output, all_hidden, all_probs = self.encoder(hidden, attn, output_hidden_states)
        if packed is not None:
            sequence_output = ops.pad(sequence_output, packed.indices, packed.batch, packed.seqlen)
            all_hidden = [ops.pad(t, packed.indices, packed.batch, packed.seqlen) for t in all_hidden] \
                if all_hidden is not None else None
        pooled = self.pooler(sequence_output) if self.pooler is not None else None

        out = output(BaseModelOutputWithPoolingAndCrossAttentions,
                     last_hidden_state=sequence_output,
                     pooler_output=pooled,
                     hidden_states=tuple(all_hidden) if all_hidden is not None else None,
                     attentions=tuple(all_probs) if all_probs is not None else None)
        return out if return_dict else out.to_tuple()
