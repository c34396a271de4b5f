"""The padding-free batch machinery that BertModel and bertfast.optimize (transformers' own BertModel
made fast) share: what every layer's attention gets (AttentionInputs) and how it runs on a packed or a
padded batch (self_attention), the forward's one host read (HostFacts), and the embeddings of a batch,
packed to its real tokens when it has padding (embed_batch).

Padding-free execution: when attention_mask has padding, the real tokens are packed once after the
embeddings, every layer runs on the packed [tokens, H] (matmuls, GELU, LayerNorm and attention see only
real tokens; attention through cu_seqlens) and the model pads back at the end, so its cost follows the
real token count.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from bertfast import _backend, ops
from bertfast.ops import cpu
from bertfast.ops.linear import linear_keeping_input
from bertfast._validate import id_range_stats, raise_if_ids_out_of_range
from bertfast.nn.modules import default_ids, embed


class AttentionInputs:
    """What every layer's attention needs, prepared once per forward: the packed sequences (cu_seqlens and
    max_seqlen, when the batch had padding and runs padding-free), or an additive mask (then the
    reference attention runs on the padded batch), and whether the probabilities are wanted; in training
    on the Triton path, the layers' dropout seeds (with_dropout_seeds, layer)."""

    SEEDS_PER_LAYER = 3  # the attention's, the attention-output LayerNorm's, the output LayerNorm's
    # int64s from one seed to the next: 16 bytes, so that every seed's address is 16-byte aligned as a lone
    # draw's is (Triton specialises a pointer argument on it: one compiled variant a kernel, not two)
    SEED_STRIDE = 2

    def __init__(self, additive_mask=None, output_attentions=False, cu_seqlens=None, max_seqlen=0, key_mask=None,
                 seeds=None):
        self.additive_mask = additive_mask
        self.key_mask = key_mask  # [B, S] bool, for the padded path (under torch.compile)
        self.output_attentions = output_attentions
        self.cu_seqlens = cu_seqlens
        self.max_seqlen = max_seqlen
        self.seeds = seeds  # int64 on the device: SEEDS_PER_LAYER a layer (every SEED_STRIDE-th), or None: each
        # op draws its own

    def _with(self, seeds) -> "AttentionInputs":
        return AttentionInputs(self.additive_mask, self.output_attentions, self.cu_seqlens, self.max_seqlen,
                               self.key_mask, seeds)

    def with_dropout_seeds(self, layers: int, hidden: torch.Tensor, training: bool) -> "AttentionInputs":
        """These inputs with every layer's dropout seeds drawn in one launch (ops._seed.dropout_seeds), when
        training on the Triton path (where the fused ops read seeds from device memory); unchanged
        otherwise. One draw a forward instead of one per fused op (three a layer)."""
        if not training or not layers or not _backend.use_triton(hidden):
            return self
        from bertfast.ops._seed import dropout_seeds

        return self._with(dropout_seeds(self.SEEDS_PER_LAYER * self.SEED_STRIDE * layers, hidden.device))

    def layer(self, index: int) -> "AttentionInputs":
        """The inputs of layer `index`: its own slice of the seeds (the same seeds when a checkpointed layer
        is recomputed, so the same masks)."""
        if self.seeds is None:
            return self
        n = self.SEEDS_PER_LAYER * self.SEED_STRIDE
        return self._with(self.seeds[n * index:n * (index + 1)])

    def seed(self, which: int) -> torch.Tensor | None:
        """Seed `which` (0: attention, 1: the attention-output LayerNorm, 2: the output LayerNorm) of a
        layer's inputs (`layer`), an int64 [1] view, or None: the op draws its own."""
        return None if self.seeds is None else self.seeds[self.SEED_STRIDE * which:self.SEED_STRIDE * which + 1]

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


def _plain_linear(module: nn.Module) -> bool:
    return type(module) is nn.Linear and not (module._forward_hooks or module._forward_pre_hooks)


def residual_fold(output: nn.Module, training: bool, x: torch.Tensor) -> bool:
    """Whether the linear layer whose input x is also output's residual adds the residual's gradient in
    its input-gradient matmul (ops.linear.linear_keeping_input): output (a BertSelfOutput / BertOutput,
    bertfast's or transformers') runs as bertfast's Triton residual LayerNorm with its dropout on, so that
    the residual gradient is that LayerNorm backward's own buffer (see ops/linear.py). The caller also
    makes sure the output module runs as its plain forward (no hooks)."""
    return training and dropout_p(output) > 0 and _backend.use_triton(x)


def packed_qkv(sa: nn.Module, hidden: torch.Tensor) -> torch.Tensor | None:
    """q, k and v as one matmul, [..., 3, heads, D], when that is what runs: on the Triton path with a
    gradient to compute (training: one matmul and one bias sum in the backward instead of three each, and
    no sum of three input gradients), the three projections plain nn.Linear without hooks (a PEFT adapter,
    a hook or a quantised layer runs as itself), alike in bias and dtype, and no global module hook. The
    weights and biases are concatenated at each call, in one launch (_ConcatProjections; 3 H x H + 3 H:
    3.5 MB in BERT-base's bf16); the parameters and their names are unchanged. None otherwise (the three
    projections run one by one)."""
    return _packed_qkv(sa, hidden, False)[0]


class _ConcatProjections(torch.autograd.Function):
    """(weight [3 out, in], bias [3 out] or None) of three projections' (weight, bias) pairs (or weights
    alone), written by one torch.cat into one buffer (the weights, then the biases) of which both are
    views; torch.cat of the weights and another of the biases were two launches. Backward: the gradients
    split back, as views (no launch)."""

    @staticmethod
    def forward(ctx, *params):
        with_bias = len(params) == 6
        weights = params[0::2] if with_bias else params
        ctx.rows = [w.shape[0] for w in weights]
        ctx.with_bias = with_bias
        flat = torch.cat([w.reshape(-1) for w in weights] + (list(params[1::2]) if with_bias else []))
        split = sum(w.numel() for w in weights)
        weight = flat[:split].view(sum(ctx.rows), weights[0].shape[1])
        return weight, flat[split:] if with_bias else None

    @staticmethod
    def backward(ctx, dweight, dbias):
        dws = dweight.split(ctx.rows) if dweight is not None else (None,) * 3
        if not ctx.with_bias:
            return dws
        dbs = dbias.split(ctx.rows) if dbias is not None else (None,) * 3
        return tuple(g for pair in zip(dws, dbs) for g in pair)


def _packed_qkv(sa: nn.Module, hidden: torch.Tensor, keep_input: bool):
    """(packed_qkv's result, hidden or the view of it that linear_keeping_input returns: keep_input)."""
    lins = (sa.query, sa.key, sa.value)
    if not (_backend.use_triton(hidden) and torch.is_grad_enabled() and all(map(_plain_linear, lins))):
        return None, hidden
    if not any(p.requires_grad for lin in lins for p in lin.parameters()) and not hidden.requires_grad:
        return None, hidden
    shapes = {(lin.weight.dtype, lin.bias is None, lin.in_features, lin.out_features) for lin in lins}
    if len(shapes) != 1 or lins[0].out_features != sa.num_attention_heads * sa.attention_head_size:
        return None, hidden
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return None, hidden
    weight, bias = _ConcatProjections.apply(*(p for lin in lins for p in (lin.weight, lin.bias) if p is not None))
    qkv, kept = linear_keeping_input(hidden, weight, bias) if keep_input else (F.linear(hidden, weight, bias), hidden)
    return qkv.view(*hidden.shape[:-1], 3, sa.num_attention_heads, sa.attention_head_size), kept


def self_attention(sa: nn.Module, hidden: torch.Tensor, attn: AttentionInputs, training: bool):
    """(context, probabilities or None) of a self-attention module holding query/key/value projections
    and num_attention_heads / attention_head_size / all_head_size (bertfast's BertSelfAttention, or
    transformers' made fast by bertfast.optimize): packed through cu_seqlens, padded with the key mask,
    or the reference attention when the probabilities or an additive mask are asked for."""
    return _self_attention(sa, hidden, attn, training, False)[:2]


def self_attention_keeping_input(sa: nn.Module, hidden: torch.Tensor, attn: AttentionInputs, training: bool):
    """(context, probabilities or None, residual): self_attention, and what to pass as the attention-output
    LayerNorm's residual in hidden's place, where residual_fold allows: a view of hidden through which the
    residual's gradient is added in the q/k/v matmul's backward (ops.linear), or hidden itself."""
    return _self_attention(sa, hidden, attn, training, True)


def _self_attention(sa: nn.Module, hidden: torch.Tensor, attn: AttentionInputs, training: bool, keep_input: bool):
    p = dropout_p(sa)
    heads = (*hidden.shape[:-1], sa.num_attention_heads, sa.attention_head_size)
    fused_training = training and p > 0
    seed = attn.seed(0)  # None: drawn by the op, only when a Triton kernel needs one
    qkv, kept = _packed_qkv(sa, hidden, keep_input)
    if qkv is not None and not attn.needs_reference:
        if attn.packed:  # [tokens, 3, heads, D]
            context = ops.attention.fused_attention_qkv(qkv, None, p, None, fused_training, seed,
                                                        cu_seqlens=attn.cu_seqlens, max_seqlen=attn.max_seqlen,
                                                        validate=False)
            return context.reshape(hidden.shape[0], sa.all_head_size), None, kept
        context = ops.attention.fused_attention_qkv(qkv, attn.key_mask, p, None, fused_training, seed)
        return context.transpose(1, 2).reshape(*hidden.shape[:-1], sa.all_head_size), None, kept
    if qkv is not None:
        q, k, v = qkv.unbind(-3)
    else:
        q, k, v = (cpu.linear(lin, hidden).view(heads) for lin in (sa.query, sa.key, sa.value))
    if attn.packed:  # [tokens, heads, D]
        context = ops.fused_attention_varlen(q, k, v, attn.cu_seqlens, attn.max_seqlen, p, None, fused_training, seed,
                                             validate=False)
        return context.reshape(hidden.shape[0], sa.all_head_size), None, kept
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, heads, S, D] views
    if attn.needs_reference:
        context, probs = reference_attention(q, k, v, attn.additive_mask, p, training)
    else:
        context, probs = ops.fused_attention(q, k, v, attn.key_mask, p, None, fused_training, seed), None
    return context.transpose(1, 2).reshape(*hidden.shape[:-1], sa.all_head_size), probs, kept


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
    ValueError for a bad mask, IndexError for an id outside its table. On the Triton path one kernel
    computes them all (kernels/host_facts.py); otherwise torch's reductions (about 18 launches)."""
    has_mask = attention_mask is not None and attention_mask.dim() == 2 and attention_mask.numel() > 0
    live = [t for _, t, _ in named_ids if t.numel() > 0]
    if not live and not has_mask:
        return HostFacts()
    mask = attention_mask if has_mask else None
    if _backend.use_triton(mask if has_mask else live[0]):
        from bertfast.kernels import host_facts
        if host_facts.applies(mask, live):
            rows = host_facts.host_facts(mask, live).tolist()  # the forward's one host synchronisation
            return _facts(_combine(rows, len(live), has_mask, mask.numel() if has_mask else 0), has_mask, named_ids)
    parts = list(id_range_stats(named_ids))
    if has_mask:
        real = attention_mask if attention_mask.dtype == torch.bool else attention_mask != 0
        lengths = real.sum(1)
        parts += [ops.attention.mask_values_ok(attention_mask).to(torch.int64), real.all().to(torch.int64),
                  lengths.max(), lengths.sum(), (real[:, 0] | (lengths == 0)).all().to(torch.int64)]
    return _facts(torch.stack(parts).tolist(), has_mask, named_ids)  # the forward's one host synchronisation


def _combine(rows: list, num_ids: int, has_mask: bool, mask_elements: int) -> list:
    """The host's half of kernels/host_facts.py: its per-program partial rows (as lists) combined into the
    layout _facts reads: each id tensor's (min, max), then with a mask (values ok, no padding, longest
    row, tokens, position 0 real)."""
    out = []
    for i in range(num_ids):
        out += [min(r[2 * i] for r in rows), max(r[2 * i + 1] for r in rows)]
    if has_mask:
        base = 2 * num_ids
        tokens = sum(r[base + 2] for r in rows)
        out += [int(all(r[base] for r in rows)), int(tokens == mask_elements), max(r[base + 1] for r in rows), tokens,
                int(all(r[base + 3] for r in rows))]
    return out


def _facts(values: list, has_mask: bool, named_ids) -> HostFacts:
    """HostFacts from the host values [min, max of each id tensor, then with a mask: values ok, no padding,
    longest row, tokens, position 0 real]; raises for a bad mask or an id out of range."""
    if has_mask:
        values, (values_ok, all_real, longest, total, first_real) = values[:-5], values[-5:]
        if not values_ok:
            raise ValueError(ops.attention.MASK_VALUES_MESSAGE)
        facts = HostFacts(bool(all_real), int(longest), int(total), bool(first_real))
    else:
        facts = HostFacts()
    raise_if_ids_out_of_range(named_ids, values)
    return facts


def host_read_stand_in(values):
    """For traces without a GPU (bertfast.analysis): what the forward's one host read returns, from the
    facts in read_host_facts' layout (min and max of each id tensor, then with a mask: values ok, no
    padding, longest row, tokens, position 0 real). As a function of the meta tensor read: host_facts'
    partial rows [programs, K] (the first row the facts, the others neutral; "no padding" is the host's,
    from the tokens), or the torch path's flat vector."""
    values = [int(v) for v in values]

    def read(t: torch.Tensor) -> torch.Tensor:
        if t.dim() != 2:
            return torch.tensor(values[: t.numel()]).reshape(t.shape)
        has_mask = len(values) % 2 == 1
        ids = (len(values) - 5) // 2 if has_mask else len(values) // 2
        first = values[:2 * ids] + ([values[2 * ids]] + values[2 * ids + 2:] if has_mask else [])
        # a program with no rows: what _combine ignores (int64's largest minimum, smallest maximum)
        neutral = [2 ** 63 - 1, -2 ** 63] * ids + ([1, 0, 0, 1] if has_mask else [])
        rows = [first] + [neutral] * (t.shape[0] - 1)
        return torch.tensor(rows).reshape(t.shape)
    return read


def _attention_inputs(attention_mask, batch: int, seq: int, dtype: torch.dtype, output_attentions: bool,
                      facts: HostFacts | None = None):
    """(AttentionInputs, the [B, S] bool key mask when the batch runs padding-free, else None). facts: the
    mask's values checked and its padding read already (read_host_facts), or None (read here, or under
    torch.compile not at all)."""
    if attention_mask is None:
        attention_mask_2d = None
    elif attention_mask.dim() == 2:
        if facts is not None and facts.all_real and not output_attentions:
            # No padding (the one host read said so): the shape checked, no bool key mask made (a launch).
            ops.attention.check_attention_mask(attention_mask, batch, seq, values_checked=True, as_bool=False)
            return AttentionInputs(), None
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
