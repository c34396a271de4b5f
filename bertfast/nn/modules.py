from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bertfast import _backend, ops
from bertfast.ops import cpu
from bertfast.ops.linear import linear_keeping_input

# hidden_act -> (fused GELU approximation or None, plain activation)
_ACTIVATIONS = {
    "gelu": ("none", None),
    "gelu_python": ("none", None),
    "gelu_new": ("tanh", None),
    "gelu_pytorch_tanh": ("tanh", None),
    "relu": (None, F.relu),
    "tanh": (None, torch.tanh),
}


def fused_on_cpu(approximate: str, *tensors) -> bool:
    """Whether bias + GELU should run as the C++ kernel after a bias-free matmul on the CPU, rather than as
    addmm and torch's in-place GELU: for the tanh form only. Measured on the 2-core AMD EPYC (AVX-512),
    [1000, 1536] bf16, 2 threads: erf GELU in place 0.43-0.46 ms against 0.58-0.60 ms for the fused kernel
    (torch's erf GELU is oneDNN's); tanh GELU about 2.0 ms against 0.62-0.66 ms."""
    return approximate == "tanh" and cpu.applies(*tensors)


def folds_bias(linear: nn.Module, x: torch.Tensor) -> bool:
    """Whether the linear layer whose output a fused LayerNorm takes runs as a bias-free matmul, its bias
    folded into the LayerNorm (ops.fused_residual_layer_norm's x_bias: the bias gradient then comes from
    the LayerNorm backward's partial sums, not from a separate pass over the output gradient). On the
    Triton path, for a plain nn.Linear with a bias and no hooks; anything else (LoRA-wrapped, quantized,
    hooked, a subclass) runs as the module it is."""
    return type(linear) is nn.Linear and linear.bias is not None and not runs_as_module(linear, nn.Linear) \
        and _backend.use_triton(x)


class FusedLayerNorm(nn.LayerNorm):
    """nn.LayerNorm (same parameters and state_dict) computing LayerNorm(dropout(x + x_bias) + residual) in one
    op (x_bias: the bias of the linear layer that produced x, or None; see folds_bias)."""

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, dropout_p: float = 0.0,
                x_bias: torch.Tensor | None = None, seed: torch.Tensor | None = None) -> torch.Tensor:
        training = self.training and dropout_p > 0
        # seed None: drawn by the op from torch's generator, only when a Triton kernel needs one.
        return ops.fused_residual_layer_norm(x, residual, self.weight, self.bias, self.eps, dropout_p, training,
                                             seed=seed, x_bias=x_bias)


class LinearActivation(nn.Linear):
    """nn.Linear followed by an activation; for GELU the bias add is fused into the activation kernel."""

    def __init__(self, in_features: int, out_features: int, activation: str = "gelu", **kwargs) -> None:
        super().__init__(in_features, out_features, **kwargs)
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x, False)[0]

    def forward_keeping_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(forward(x), x or a view of it to pass as the next residual LayerNorm's residual: on the Triton
        path with GELU, the residual's gradient is then added in this layer's input-gradient matmul; see
        ops/linear.py and models.batch.residual_fold, which the caller checks)."""
        return self._forward(x, True)

    def _forward(self, x: torch.Tensor, keep_input: bool) -> tuple[torch.Tensor, torch.Tensor]:
        approximate, plain = _ACTIVATIONS[self.activation]
        if approximate is not None and self.bias is not None and (_backend.use_triton(x) or fused_on_cpu(
                approximate, x, self.weight, self.bias)):
            y, kept = linear_keeping_input(x, self.weight) if keep_input else (F.linear(x, self.weight), x)
            return ops.fused_bias_gelu(y, self.bias, approximate), kept
        # Otherwise on the CPU the matmul's own bias add (addmm) is the cheaper fusion.
        y = F.linear(x, self.weight, self.bias)
        if plain:
            return plain(y), x
        if not y.requires_grad and not torch.compiler.is_compiling():
            # Inference: y is ours, so GELU in place spares a second [tokens, intermediate] buffer (2% of
            # a BERT-base CPU forward).
            return torch.ops.aten.gelu_(y, approximate=approximate), x
        return F.gelu(y, approximate=approximate), x


class Embeddings(nn.Module):
    """HF BertEmbeddings: word + position + token-type embeddings (one fused op), LayerNorm, dropout."""

    def __init__(self, config) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = FusedLayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout_p = config.hidden_dropout_prob
        self.register_buffer("position_ids", torch.arange(config.max_position_embeddings).expand((1, -1)), persistent=False)
        self.register_buffer("token_type_ids", torch.zeros(self.position_ids.size(), dtype=torch.long), persistent=False)

    def default_ids(self, seq: int, token_type_ids=None, position_ids=None):
        return default_ids(self, seq, token_type_ids, position_ids)

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                ids_checked: bool = False) -> torch.Tensor:
        """ids_checked: the caller checked the ids' ranges (BertModel does, in its one host read)."""
        return embed(self, input_ids, token_type_ids, position_ids, inputs_embeds, ids_checked, self.training)


def default_ids(emb: nn.Module, seq: int, token_type_ids=None, position_ids=None):
    """HF's defaults for an embeddings module (bertfast's or transformers'): positions 0..seq-1 (checked
    against max_position_embeddings) and segment 0, from its position_ids / token_type_ids buffers."""
    max_len = emb.position_embeddings.num_embeddings
    if position_ids is None:
        if seq > max_len:
            raise ValueError(f"the sequence has {seq} tokens, more than max_position_embeddings={max_len}")
        position_ids = emb.position_ids[:, :seq]
    if token_type_ids is None:
        token_type_ids = emb.token_type_ids[:, :1]
    return token_type_ids, position_ids


def runs_as_module(module: nn.Module, plain: type = nn.Embedding) -> bool:
    """The module must run as a module call: forward hooks on it (its own or global ones), or a forward
    other than the plain class's (nn.Embedding for the word lookup)."""
    from torch.nn.modules import module as module_globals

    return bool(module._forward_hooks or module._forward_pre_hooks or module_globals._global_forward_hooks
                or module_globals._global_forward_pre_hooks) or type(module).forward is not plain.forward


def embed(emb: nn.Module, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
          ids_checked: bool = False, training: bool = False) -> torch.Tensor:
    """HF's BertEmbeddings (word + position + segment, LayerNorm, dropout) through bertfast's ops, for an
    embeddings module holding HF's submodules (bertfast's Embeddings, or transformers' BertEmbeddings)."""
    seq = (input_ids if input_ids is not None else inputs_embeds).shape[1]
    token_type_ids, position_ids = default_ids(emb, seq, token_type_ids, position_ids)
    if input_ids is not None and runs_as_module(emb.word_embeddings):
        # Hooks on the word embeddings (enable_input_require_grads, PEFT, a user's) or a replaced module
        # see their call: the lookup runs as the module, the rest stays fused.
        inputs_embeds, input_ids = emb.word_embeddings(input_ids), None
    ln = emb.LayerNorm
    tables = (emb.word_embeddings.weight, emb.token_type_embeddings.weight, emb.position_embeddings.weight)
    if input_ids is not None and cpu.applies(*tables, ln.weight, ln.bias):  # CPU inference: one C++ pass
        x = ops.embedding_layer_norm(input_ids, token_type_ids, position_ids, *tables, ln.weight, ln.bias, ln.eps,
                                     padding_idx=emb.word_embeddings.padding_idx, ids_checked=ids_checked)
    else:
        x = ops.embedding_sum(input_ids, token_type_ids, position_ids, *tables, padding_idx=emb.word_embeddings.padding_idx,
                              inputs_embeds=inputs_embeds, ids_checked=ids_checked)
        x = ops.fused_residual_layer_norm(x, None, ln.weight, ln.bias, ln.eps)
    p = getattr(emb, "dropout_p", None)
    p = emb.dropout.p if p is None else p
    # Dropout after the LayerNorm, as in HF (the fused op's dropout acts on its input).
    return F.dropout(x, p, training)
