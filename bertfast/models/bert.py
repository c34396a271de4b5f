"""BERT, read top to bottom: HF's module tree and parameter names, bertfast's ops underneath.

An HF BertModel state_dict loads unchanged (`load_state_dict(hf.state_dict(), strict=True)`), and the
forward takes HF's arguments and returns HF's output fields.

Padding-free execution: when attention_mask has padding, the model packs the real tokens once after the
embeddings, runs every layer on the packed [tokens, H] (matmuls, GELU, LayerNorm and attention see only
real tokens; attention through cu_seqlens) and pads back at the end, so its cost follows the real token
count. Padded positions of last_hidden_state (and of hidden_states) are zeros; transformers computes
values there that nothing attends to. Real tokens match transformers.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from bertfast import ops
from bertfast._validate import id_range_stats, raise_if_ids_out_of_range
from bertfast.config import BertConfig, _as_dtype, is_transformers_config
from bertfast.models.checkpoint_io import read_weights, write_weights
from bertfast.nn import Embeddings, FusedLayerNorm, LinearActivation
from bertfast.nn.modules import default_ids, embed
from bertfast.outputs import BaseModelOutputWithPoolingAndCrossAttentions, output


class AttentionInputs:
    """What every layer's attention needs, prepared once per forward: the packed sequences (cu_seqlens and
    max_seqlen, when the batch had padding and runs padding-free), or an additive mask (then the
    reference attention runs on the padded batch), and whether the probabilities are wanted."""

    def __init__(self, additive_mask=None, output_attentions=False, cu_seqlens=None, max_seqlen=0, key_mask=None):
        self.additive_mask = additive_mask
        self.key_mask = key_mask  # [B, S] bool, for the padded path (under torch.compile)
        self.output_attentions = output_attentions
        self.cu_seqlens = cu_seqlens
        self.max_seqlen = max_seqlen

    @property
    def packed(self) -> bool:
        return self.cu_seqlens is not None

    @property
    def needs_reference(self) -> bool:
        return self.additive_mask is not None or self.output_attentions


def reference_attention(q, k, v, additive_mask, dropout_p, training):
    """Eager attention that also returns the probabilities (for output_attentions and 4-D masks)."""
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if additive_mask is not None:
        scores = scores + additive_mask
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(F.dropout(probs, dropout_p, training), v), probs


def dropout_p(module: nn.Module) -> float:
    """A module's dropout probability: bertfast's modules keep it as dropout_p, transformers' as an
    nn.Dropout named dropout."""
    p = getattr(module, "dropout_p", None)
    return float(p if p is not None else module.dropout.p)


def self_attention(sa: nn.Module, hidden: torch.Tensor, attn: AttentionInputs, training: bool):
    """(context, probabilities or None) of a self-attention module holding query/key/value projections
    and num_attention_heads / attention_head_size / all_head_size (bertfast's BertSelfAttention, or
    transformers' made fast by bertfast.optimize): packed through cu_seqlens, padded with the key mask,
    or the reference attention when the probabilities or an additive mask are asked for."""
    p = dropout_p(sa)
    heads = (*hidden.shape[:-1], sa.num_attention_heads, sa.attention_head_size)
    q, k, v = (lin(hidden).view(heads) for lin in (sa.query, sa.key, sa.value))
    fused_training = training and p > 0
    seed = None  # drawn by the op, only when a Triton kernel needs one
    if attn.packed:  # [tokens, heads, D]
        context = ops.fused_attention_varlen(q, k, v, attn.cu_seqlens, attn.max_seqlen, p, None, fused_training, seed,
                                             validate=False)
        return context.reshape(hidden.shape[0], sa.all_head_size), None
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, heads, S, D] views
    if attn.needs_reference:
        context, probs = reference_attention(q, k, v, attn.additive_mask, p, training)
    else:
        context, probs = ops.fused_attention(q, k, v, attn.key_mask, p, None, fused_training, seed), None
    return context.transpose(1, 2).reshape(*hidden.shape[:-1], sa.all_head_size), probs


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

    def forward(self, hidden: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(hidden), input_tensor, self.dropout_p)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, hidden: torch.Tensor, attn: AttentionInputs):
        context, probs = self.self(hidden, attn)
        return self.output(context, hidden), probs


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
        return self.output(self.intermediate(attention_output), attention_output), probs


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
        for i, layer in enumerate(self.layer):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled() \
                    and i % self.checkpoint_every == 0:
                # Recomputed in the backward; the RNG states (the CPU's and the input's device's) are
                # restored there, so the dropout seeds drawn inside the layer (and so the masks) are the
                # same both times.
                with torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()) \
                        if self.checkpoint_offload else contextlib.nullcontext():
                    hidden = checkpoint(lambda h, lay=layer: lay(h, attn)[0], hidden, **self.checkpoint_options)
                probs = None
            else:
                hidden, probs = layer(hidden, attn)
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


_WARNED: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, stacklevel=3)


class HostFacts:
    """What a forward must know on the host, read in its one synchronisation: whether the 2-D mask has
    padding, its longest row and its token count (for packing), whether every row with a real token has
    one at position 0 (no left padding); the mask's values and the ids were checked in the same read."""

    def __init__(self, all_real: bool = True, longest: int = 0, total: int = 0, first_real: bool = True) -> None:
        self.all_real, self.longest, self.total, self.first_real = all_real, longest, total, first_real


def read_host_facts(attention_mask, named_ids) -> HostFacts:
    """One host synchronisation for all of a forward's checks and sizes: the 2-D attention_mask's values
    (0/1), padding, longest row and token count, and each (name, ids, rows) id tensor's range. Raises
    ValueError for a bad mask, IndexError for an id outside its table."""
    parts = list(id_range_stats(named_ids))
    has_mask = attention_mask is not None and attention_mask.dim() == 2 and attention_mask.numel() > 0
    if has_mask:
        real = attention_mask if attention_mask.dtype == torch.bool else attention_mask != 0
        lengths = real.sum(1)
        parts += [ops.attention.mask_values_ok(attention_mask).to(torch.int64), real.all().to(torch.int64),
                  lengths.max(), lengths.sum(), (real[:, 0] | (lengths == 0)).all().to(torch.int64)]
    if not parts:
        return HostFacts()
    values = torch.stack(parts).tolist()  # the forward's one host synchronisation
    if has_mask:
        values, (values_ok, all_real, longest, total, first_real) = values[:-5], values[-5:]
        if not values_ok:
            raise ValueError(ops.attention.MASK_VALUES_MESSAGE)
        facts = HostFacts(bool(all_real), int(longest), int(total), bool(first_real))
    else:
        facts = HostFacts()
    raise_if_ids_out_of_range(named_ids, values)
    return facts


def _attention_inputs(attention_mask, batch: int, seq: int, dtype: torch.dtype, output_attentions: bool,
                      facts: HostFacts | None = None):
    """(AttentionInputs, the [B, S] bool key mask when the batch runs padding-free, else None). facts: the
    mask's values checked and its padding read already (read_host_facts), or None (read here, or under
    torch.compile not at all)."""
    if attention_mask is None:
        attention_mask_2d = None
    elif attention_mask.dim() == 2:
        attention_mask_2d = ops.attention.check_attention_mask(attention_mask, batch, seq,
                                                               values_checked=facts is not None)
    elif attention_mask.dim() in (3, 4):
        _warn_once("additive", "bertfast: a 3-D/4-D additive attention_mask runs the reference (eager) attention, "
                               "not the fused kernel")
        if attention_mask.dtype == torch.bool:
            mask = torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device)
            attention_mask = mask.masked_fill(~attention_mask, torch.finfo(dtype).min)
        if attention_mask.dim() == 3:
            attention_mask = attention_mask[:, None]
        return AttentionInputs(additive_mask=attention_mask.to(dtype), output_attentions=output_attentions), None
    else:
        raise ValueError(f"attention_mask must be [batch, seq] (or a 4-D additive mask), got shape {tuple(attention_mask.shape)}")
    if output_attentions:
        _warn_once("probs", "bertfast: output_attentions=True runs the reference (eager) attention, not the fused kernel")
        additive = None
        if attention_mask_2d is not None:
            additive = torch.zeros((batch, 1, 1, seq), dtype=dtype, device=attention_mask_2d.device)
            additive = additive.masked_fill(~attention_mask_2d[:, None, None, :], torch.finfo(dtype).min)
        return AttentionInputs(additive_mask=additive, output_attentions=True), None
    if attention_mask_2d is None:
        return AttentionInputs(), None
    if torch.compiler.is_compiling():
        # Packing needs the token count on the host (a graph break): compiled graphs run the padded batch
        # with the key mask instead.
        return AttentionInputs(key_mask=attention_mask_2d), None
    if facts.all_real if facts is not None else bool(attention_mask_2d.all()):
        return AttentionInputs(), None  # no padding: the padded layout has no waste
    return AttentionInputs(), attention_mask_2d


def packed_embeddings(emb: nn.Module, packed, input_ids, token_type_ids, position_ids, inputs_embeds,
                      training: bool) -> torch.Tensor:
    """The embeddings of the real tokens only: [tokens, H] (ids checked already). Ids are gathered (after
    HF's defaults and broadcasting) at the packed positions, so positions and segments are those of the
    padded layout: HF's default positions are the packed tokens' column indices, its default segment
    stays one id."""
    seq = packed.seqlen
    if position_ids is None:
        default_ids(emb, seq)  # (checks seq against max_position_embeddings)
        position_ids = (packed.indices % seq)[None]
    else:
        position_ids = _pack(packed, position_ids, "position_ids")
    token_type_ids = None if token_type_ids is None else _pack(packed, token_type_ids, "token_type_ids")
    return embed(emb, _pack(packed, input_ids), token_type_ids, position_ids, _pack(packed, inputs_embeds),
                 ids_checked=True, training=training)[0]


def _pack(packed, t, name=None):
    """[B, S, ...] or broadcastable ids -> [1, tokens, ...] at the packed positions."""
    if t is None:
        return None
    batch, seq = packed.batch, packed.seqlen
    if name is not None:
        try:
            torch.broadcast_shapes(t.shape, (batch, seq))
        except RuntimeError:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, which does not broadcast to {(batch, seq)}") from None
    t = t.expand(batch, seq, *t.shape[2:])
    return t.reshape(batch * seq, *t.shape[2:]).index_select(0, packed.indices)[None]


def host_facts_of(model: nn.Module, input_ids, token_type_ids, position_ids, attention_mask) -> HostFacts:
    """read_host_facts for a BERT model's inputs against its embedding tables (given ids only)."""
    emb = model.embeddings
    named = [(name, t, table.num_embeddings) for name, t, table in (
        ("input_ids", input_ids, emb.word_embeddings), ("token_type_ids", token_type_ids, emb.token_type_embeddings),
        ("position_ids", position_ids, emb.position_embeddings)) if t is not None]
    return read_host_facts(attention_mask, named)


def embed_batch(model: nn.Module, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                output_attentions: bool, padding_free: bool = True):
    """The embeddings and the attention inputs of a BERT model's forward (bertfast's, or transformers'
    made fast by bertfast.optimize): (hidden, AttentionInputs, the Unpadded packing or None).

    One host synchronisation reads the mask's values, padding and sizes, and the ids' ranges. A batch with
    padding is packed (hidden [tokens, H]) unless padding_free is off or it is padded on the left under a
    pooler, which reads position 0 where transformers computes a value (then it runs padded with the key
    mask, computing it the same way)."""
    batch, seq = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
    dtype = inputs_embeds.dtype if inputs_embeds is not None else model.embeddings.word_embeddings.weight.dtype
    facts = None
    if not torch.compiler.is_compiling():
        facts = host_facts_of(model, input_ids, token_type_ids, position_ids, attention_mask)
    attn, key_mask = _attention_inputs(attention_mask, batch, seq, dtype, output_attentions, facts)
    if key_mask is not None and (not padding_free or (model.pooler is not None and not facts.first_real)):
        attn, key_mask = AttentionInputs(key_mask=key_mask), None
    if key_mask is None:
        hidden = embed(model.embeddings, input_ids, token_type_ids, position_ids, inputs_embeds,
                       ids_checked=facts is not None, training=model.training)
        return hidden, attn, None
    packed = ops.unpad(None, key_mask, sizes=(facts.longest, facts.total))
    attn.cu_seqlens, attn.max_seqlen = packed.cu_seqlens, packed.max_seqlen
    hidden = packed_embeddings(model.embeddings, packed, input_ids, token_type_ids, position_ids, inputs_embeds,
                               training=model.training)
    return hidden, attn, packed


class BertPreTrainedModel(nn.Module):
    """Weight init, HF checkpoint loading and saving, and the parts of transformers' PreTrainedModel that
    its tools use (Trainer, pipelines, PEFT, sentence-transformers), shared by BertModel and the heads.
    Needs no transformers."""

    config_class = BertConfig
    base_model_prefix = "bert"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _keys_to_ignore_on_save = None

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        if is_transformers_config(config):
            config = BertConfig.from_hf(config)
        if not isinstance(config, BertConfig):
            raise TypeError(f"config must be a bertfast.BertConfig or a transformers.BertConfig, got "
                            f"{type(config).__name__}")
        self.config = config
        self.warnings_issued: dict = {}

    # What transformers' tools read from a model ---------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next((p.dtype for p in self.parameters() if p.is_floating_point()), torch.float32)

    @property
    def name_or_path(self) -> str:
        return self.config.name_or_path

    @property
    def base_model(self) -> nn.Module:
        return getattr(self, self.base_model_prefix, self)

    @classmethod
    def can_generate(cls) -> bool:
        return False

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Parameters (a tied one once); without the embedding tables' weights if exclude_embeddings."""
        skip = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)} if exclude_embeddings else set()
        return sum(p.numel() for p in self.parameters()
                   if id(p) not in skip and (p.requires_grad or not only_trainable))

    def get_input_embeddings(self) -> nn.Module:
        return self.base_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.base_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module | None:
        return None

    def get_extended_attention_mask(self, attention_mask: torch.Tensor, input_shape=None, device=None,
                                    dtype: torch.dtype | None = None) -> torch.Tensor:
        """transformers' broadcastable additive mask: 0 where attended, the dtype's minimum elsewhere."""
        dtype = self.dtype if dtype is None else dtype
        if attention_mask.dim() == 3:
            extended = attention_mask[:, None, :, :]
        elif attention_mask.dim() == 2:
            extended = attention_mask[:, None, None, :]
        else:
            raise ValueError(f"attention_mask must be [batch, seq] or [batch, seq, seq], got {tuple(attention_mask.shape)}")
        return (1.0 - extended.to(dtype)) * torch.finfo(dtype).min

    def enable_input_require_grads(self) -> None:
        """Make the word embeddings' output require grad (for adapters on a frozen model with gradient
        checkpointing), by a forward hook as transformers does; the fused embedding then runs the lookup
        as a module call so that the hook sees it."""
        self.disable_input_require_grads()
        self._require_grads_hook = self.get_input_embeddings().register_forward_hook(
            lambda module, args, output: output.requires_grad_(True))

    def disable_input_require_grads(self) -> None:
        hook = self.__dict__.pop("_require_grads_hook", None)
        if hook is not None:
            hook.remove()

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None,
                                mean_resizing: bool = True) -> nn.Embedding:
        """transformers' resize: rows kept, new rows drawn around the old rows' mean (mean_resizing, as
        transformers: a normal with 1e-9 times their covariance) or initialised as at construction; a tied
        LM decoder and its bias follow; config.vocab_size updated."""
        old = self.get_input_embeddings()
        if new_num_tokens is None and pad_to_multiple_of is None:
            return old
        n = old.num_embeddings if new_num_tokens is None else int(new_num_tokens)
        if pad_to_multiple_of is not None:
            if not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1:
                raise ValueError(f"pad_to_multiple_of must be a positive int, got {pad_to_multiple_of!r}")
            n = -(-n // pad_to_multiple_of) * pad_to_multiple_of
        if n < 1:
            raise ValueError(f"new_num_tokens must be >= 1, got {new_num_tokens}")
        new = nn.Embedding(n, old.embedding_dim, padding_idx=old.padding_idx if (old.padding_idx or 0) < n else None,
                           device=old.weight.device, dtype=old.weight.dtype)
        keep = min(n, old.num_embeddings)
        added = n - old.num_embeddings
        if not (added > 0 and mean_resizing):
            self._init_weights(new)
        with torch.no_grad():
            new.weight[:keep] = old.weight[:keep]
            if added > 0 and mean_resizing:
                new.weight[-added:] = _mean_rows(old.weight, added)
        new.weight.requires_grad_(old.weight.requires_grad)
        self.set_input_embeddings(new)
        decoder = self.get_output_embeddings()
        if decoder is not None:
            self._resize_decoder(n, keep, added, mean_resizing)
        self.config.vocab_size = n
        self.tie_weights()
        return new

    def _resize_decoder(self, n: int, keep: int, added: int, mean_resizing: bool) -> None:
        raise NotImplementedError

    def to_transformers(self, optimize: bool = True) -> nn.Module:
        """transformers' class of the same name holding this model's parameters (shared, not copied), made
        fast by bertfast.optimize unless optimize=False: for tools that want a transformers PreTrainedModel
        (transformers.Trainer writes config.json only for one). Needs transformers."""
        import transformers

        cls = getattr(transformers, type(self).__name__)
        with torch.device("meta"):
            hf = cls(self.config.to_hf())
        missing, unexpected = hf.load_state_dict(self.state_dict(keep_vars=True), strict=False, assign=True)
        if unexpected or any(not k.endswith(("position_ids", "token_type_ids")) for k in missing):
            raise RuntimeError(f"{cls.__name__} does not fit: missing {missing}, unexpected {unexpected}")
        own = dict(self.named_buffers())
        for name, buffer in list(hf.named_buffers()):
            if buffer.is_meta:
                owner, _, leaf = name.rpartition(".")
                hf.get_submodule(owner).register_buffer(leaf, own[name].clone(), persistent=False)
        hf.tie_weights()
        hf.train(self.training)
        if optimize:
            from bertfast.integrations import optimize as make_fast

            make_fast(hf)
        return hf

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def init_weights(self) -> None:
        """transformers' order: children before parents, and a sub-model (the `bert` of a head) is left as
        its own construction initialised it, so a model drawn under a seed equals transformers' draw."""
        def visit(module: nn.Module) -> None:
            for child in module.children():
                if not isinstance(child, BertPreTrainedModel):
                    visit(child)
            self._init_weights(module)

        visit(self)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None,
                                      every_n_layers: int = 1, offload: bool = False, **kwargs) -> None:
        """Recompute encoder layers in the backward instead of storing their activations (transformers'
        API): gradient_checkpointing_kwargs go to torch.utils.checkpoint.checkpoint (use_reentrant defaults
        to False, as in transformers 5: frozen embeddings still give the layers gradients, and DDP may look
        for unused parameters; preserve_rng_state stays on, as the dropout seeds are drawn inside the
        layer); every_n_layers checkpoints layers 0, n, 2n, ...; offload keeps the saved inputs in
        host memory (torch.autograd.graph.save_on_cpu). Other keyword arguments are named in a warning."""
        if kwargs:
            warnings.warn(f"gradient_checkpointing_enable: not honoured by bertfast, ignored: {sorted(kwargs)}",
                          stacklevel=2)
        options = {"use_reentrant": False, **(gradient_checkpointing_kwargs or {})}
        if not options.get("preserve_rng_state", True):
            warnings.warn("gradient_checkpointing_enable: preserve_rng_state=False would draw other dropout masks in "
                          "the recomputation; kept True", stacklevel=2)
        options["preserve_rng_state"] = True
        if not isinstance(every_n_layers, int) or every_n_layers < 1:
            raise ValueError(f"every_n_layers must be an int >= 1, got {every_n_layers!r}")
        for module in self.modules():
            if isinstance(module, BertEncoder):
                module.gradient_checkpointing = True
                module.checkpoint_options, module.checkpoint_every, module.checkpoint_offload = \
                    options, every_n_layers, bool(offload)

    def gradient_checkpointing_disable(self) -> None:
        for module in self.modules():
            if isinstance(module, BertEncoder):
                module.gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules() if isinstance(m, BertEncoder))

    # Checkpoints ----------------------------------------------------------------------------------
    def _normalise_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """HF's own renames: legacy LayerNorm gamma/beta, the dropped position_ids buffer, and the
        'bert.' prefix added or removed to fit this model (head weights are dropped when a bare
        BertModel loads a checkpoint of a model with heads, as transformers does)."""
        out = {}
        for key, value in state.items():
            key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
            if key.endswith("embeddings.position_ids"):
                continue
            out[key] = value
        prefix = self.base_model_prefix + "."
        own = self.state_dict().keys()
        has_prefix = any(k.startswith(prefix) for k in own)
        ckpt_prefixed = any(k.startswith(prefix) for k in out)
        if not has_prefix and ckpt_prefixed:
            out = {k[len(prefix):]: v for k, v in out.items() if k.startswith(prefix)}
        elif has_prefix and not ckpt_prefixed:
            out = {(prefix + k if (prefix + k) in own else k): v for k, v in out.items()}
        return out

    def load_checkpoint_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Strict load of a checkpoint state_dict: missing, unexpected and wrongly shaped tensors of the BERT
        encoder raise, listed. For a model with a task head, as in transformers, head weights the
        checkpoint lacks keep their fresh initialisation and another head's weights are dropped (fine-tuning
        from a pre-trained encoder); both are listed in a warning."""
        state = self._normalise_state_dict(state)
        own = self.state_dict()
        prefix = self.base_model_prefix + "."
        pooler = [k for k in state if k.removeprefix(prefix).startswith("pooler.") and k not in own]
        if pooler and not any(k.removeprefix(prefix).startswith("pooler.") for k in own):
            # built without a pooler (add_pooling_layer=False), as transformers: its weights are not used
            warnings.warn(f"{type(self).__name__} has no pooler; the checkpoint's {pooler} are not used", stacklevel=3)
            state = {k: v for k, v in state.items() if k not in pooler}
        missing = sorted(set(own) - set(state) - set(self._tied_keys()))
        unexpected = sorted(set(state) - set(own))
        if any(k.startswith(prefix) for k in own):
            new_head = [k for k in missing if not k.startswith(prefix)]
            other_head = [k for k in unexpected if not k.startswith(prefix)]
            if new_head or other_head:
                warnings.warn(f"{type(self).__name__}: head weights newly initialised (not in the checkpoint): "
                              f"{new_head}; checkpoint weights of another head, not used: {other_head}", stacklevel=3)
            missing = [k for k in missing if k.startswith(prefix)]
            unexpected = [k for k in unexpected if k.startswith(prefix)]
            state = {k: v for k, v in state.items() if k in own}
        shapes = sorted(f"{k}: checkpoint {tuple(v.shape)}, model {tuple(own[k].shape)}"
                        for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape))
        if missing or unexpected or shapes:
            parts = []
            if missing:
                parts.append(f"missing keys ({len(missing)}): {missing}")
            if unexpected:
                parts.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
            if shapes:
                parts.append(f"wrongly shaped tensors ({len(shapes)}): {shapes}")
            raise RuntimeError(f"checkpoint does not fit {type(self).__name__}: " + "; ".join(parts))
        self.load_state_dict(state, strict=False)
        self.tie_weights()

    def _tied_keys(self) -> list[str]:
        return []

    def tie_weights(self) -> None:
        pass

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *args, dtype: torch.dtype | str | None = None,
                        device: str | torch.device | None = None, allow_pickle: bool = False, **kwargs):
        """Load config.json and the weights (model.safetensors, or its shards with
        model.safetensors.index.json) from a local folder; nothing is downloaded. Keyword arguments naming
        config fields update the config (num_labels=3, hidden_dropout_prob=0.0, ...), as in transformers;
        torch_dtype is dtype's old name; subfolder is honoured.

        A pickled pytorch_model.bin is refused unless allow_pickle=True, and then read with weights_only=True."""
        directory = os.fspath(directory)
        subfolder = kwargs.pop("subfolder", "")
        directory = os.path.join(directory, subfolder) if subfolder else directory
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"{directory!r} is not a folder (bertfast loads local folders only; nothing is "
                                    "downloaded)")
        dtype = kwargs.pop("torch_dtype", None) if dtype is None else dtype
        dtype = None if dtype == "auto" else _as_dtype(dtype)
        ignored = sorted(k for k in kwargs if k in _HUB_LOADING_KWARGS and k not in _ALREADY_SO)
        init_params = set(inspect.signature(cls.__init__).parameters) - {"self", "config"}
        init_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in init_params}  # add_pooling_layer=False
        unknown = sorted(k for k in kwargs if k not in _HUB_LOADING_KWARGS and k != "config"
                         and not k.startswith("_") and k not in _CONFIG_FIELDS)
        if unknown:
            raise TypeError(f"{cls.__name__}.from_pretrained: unexpected keyword arguments {unknown} (neither config "
                            f"fields nor transformers' loading options)")
        if ignored:
            warnings.warn(f"{cls.__name__}.from_pretrained: not honoured by bertfast (local folders only), ignored: "
                          f"{ignored}", stacklevel=2)
        config = kwargs.pop("config", None) or BertConfig.from_pretrained(directory)
        if is_transformers_config(config):
            config = BertConfig.from_hf(config)
        for key, value in kwargs.items():
            if key not in _HUB_LOADING_KWARGS:
                setattr(config, key, value)
        model = cls(config, *args, **init_kwargs)
        model.load_checkpoint_state_dict(read_weights(directory, allow_pickle))
        if dtype is not None or device is not None:
            model.to(device=device, dtype=dtype)
        return model.eval()

    def save_config(self, directory: str | os.PathLike) -> None:
        """config.json with this class as its architecture, as transformers writes it."""
        os.makedirs(directory, exist_ok=True)
        config = self.config.to_dict()
        config["architectures"] = [type(self).__name__]
        with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True)

    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True,
                        state_dict: dict[str, torch.Tensor] | None = None, max_shard_size: int | str = "50GB",
                        safe_serialization: bool = True, **kwargs) -> None:
        """Write config.json and the weights in the layout transformers reads: model.safetensors, or shards of
        at most max_shard_size with model.safetensors.index.json (pytorch_model.bin and its shards when
        safe_serialization=False). state_dict replaces the model's own (Trainer passes one; tied copies are
        dropped); a process that is not the main one writes nothing. Other keyword arguments of
        transformers' save_pretrained (push_to_hub, variant, token, save_function, ...) are named in a
        warning and ignored."""
        if kwargs:
            active = sorted(k for k, v in kwargs.items() if v not in (None, False))
            if active:
                warnings.warn(f"{type(self).__name__}.save_pretrained: not honoured by bertfast, ignored: {active}",
                              stacklevel=2)
        if not is_main_process:
            return
        directory = os.fspath(save_directory)
        if os.path.isfile(directory):
            raise ValueError(f"save_pretrained needs a folder, and {directory!r} is a file")
        self.save_config(directory)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_to_save(state_dict).items()}
        write_weights(directory, state, max_shard_size, safe_serialization)

    def state_to_save(self, state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """This model's state_dict (or the one given) without the tied copies, as transformers writes it
        (from_pretrained ties them again)."""
        tied = set(self._tied_keys())
        source = self.state_dict() if state_dict is None else state_dict
        return {k: v for k, v in source.items() if k not in tied}


def _mean_rows(weight: torch.Tensor, added: int) -> torch.Tensor:
    """transformers' mean resizing: rows drawn from a normal around the old rows' mean with 1e-9 times their
    covariance (the mean itself where that covariance is not positive definite)."""
    old = weight.detach().float()
    mean = old.mean(0)
    centred = old - mean
    covariance = 1e-9 * (centred.T @ centred) / old.shape[0]
    try:
        rows = torch.distributions.MultivariateNormal(mean, covariance_matrix=covariance).sample((added,))
    except ValueError:  # not positive definite
        rows = mean[None].expand(added, -1)
    return rows.to(weight.dtype)


# transformers' from_pretrained options that mean nothing for a local folder.
_HUB_LOADING_KWARGS = frozenset({"local_files_only", "trust_remote_code", "revision", "cache_dir", "token",
                                 "low_cpu_mem_usage", "use_safetensors", "attn_implementation", "force_download",
                                 "proxies", "output_loading_info", "device_map", "variant", "code_revision",
                                 "key_mapping", "weights_only"})
# ... of which these describe what bertfast does anyway (local files, no remote code, safetensors first).
_ALREADY_SO = frozenset({"local_files_only", "trust_remote_code", "low_cpu_mem_usage", "use_safetensors", "weights_only"})
_CONFIG_FIELDS = frozenset(BertConfig().to_dict()) | {"num_labels", "name_or_path", "torch_dtype",
                                                      "use_return_dict"}


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
