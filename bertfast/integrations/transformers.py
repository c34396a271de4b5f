"""bertfast's ops inside transformers' own BERT, in place: bertfast.optimize(model).

`optimize` finds every transformers BertModel in a model (a BertModel, any BertFor* head, or anything
holding one: a SentenceTransformer, a PEFT-wrapped model, a user's module) and gives those instances a
forward that runs bertfast's fused ops and padding-free execution on the model's own modules and
parameters: nothing is copied or renamed, so the model stays a transformers model (save_pretrained,
from_pretrained, Trainer, pipelines, PEFT, sentence-transformers, hooks all see what they saw before).
Each BertLayer instance gets a forward too, called by the model's forward through the module (so its
hooks and transformers' gradient checkpointing apply); called any other way it runs transformers' own.

Served fast: a [batch, seq] 0/1 attention_mask or none, input_ids or inputs_embeds, token_type_ids,
position_ids, output_hidden_states, return_dict. Anything else (output_attentions, a 3-D/4-D mask,
encoder states or a cache, a decoder config, unknown keyword arguments) runs transformers' own forward
for that call, after a one-time warning: never a wrong answer.
`restore(model)` undoes `optimize`; `optimize_transformers()` patches the classes, so that BERT models
built afterwards are fast from the start (as Liger-Kernel's apply_liger_kernel_to_* do).
"""
from __future__ import annotations

import types
import warnings

import torch.nn as nn
import torch.nn.functional as F

from bertfast import _backend, ops
from bertfast.ops import cpu
from bertfast.ops.linear import linear_keeping_input
from bertfast.models.batch import (AttentionInputs, embed_batch, residual_fold, self_attention,
                                   self_attention_keeping_input)
from bertfast.nn.int8 import Int8Linear, dequantize_linear, quantize_linear
from bertfast.nn.modules import _ACTIVATIONS, folds_bias, fused_on_cpu

_WARNED: set[str] = set()
_FAST = "_bertfast_fast"  # marks an instance forward set by optimize
_CLASS_ORIGINALS: dict[type, object] = {}  # transformers' class forwards replaced by optimize_transformers


def _bert_classes():
    from transformers.models.bert import modeling_bert

    return modeling_bert.BertModel, modeling_bert.BertLayer


def _original_forward(module: nn.Module):
    """transformers' own forward of this module's class (bound to the module)."""
    cls = type(module)
    for klass in cls.__mro__:
        if klass in _CLASS_ORIGINALS:
            return types.MethodType(_CLASS_ORIGINALS[klass], module)
    return types.MethodType(cls.forward, module)


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, stacklevel=3)


def unsupported(config) -> str | None:
    """Why bertfast cannot serve this BERT config fast, or None."""
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return "a decoder / cross-attention config"
    if config.hidden_size % config.num_attention_heads:
        return "a hidden size that is not a multiple of the heads"
    if (config.hidden_size // config.num_attention_heads) not in (16, 32, 64, 128):
        return f"head dimension {config.hidden_size // config.num_attention_heads} (the fused attention takes 16-128)"
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return f"position_embedding_type={config.position_embedding_type!r}"
    return None


# The fast forwards --------------------------------------------------------------------------------------
# Keyword arguments served (output_attentions is checked separately); num_items_in_batch is for the heads'
# losses (transformers.Trainer passes it down) and output_router_logits for mixtures of experts: a
# BertModel ignores both, and so does this.
_SERVED_KWARGS = {"output_hidden_states", "return_dict", "output_attentions", "num_items_in_batch",
                  "output_router_logits"}


def bert_model_forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                       inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None,
                       past_key_values=None, use_cache=None, **kwargs):
    """transformers' BertModel.forward, through bertfast's ops (see the module docstring)."""
    from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions

    config = self.config
    output_attentions = kwargs.get("output_attentions") or False
    reason = unsupported(config)
    if reason is not None:
        pass
    elif encoder_hidden_states is not None or encoder_attention_mask is not None or past_key_values is not None or use_cache:
        reason = "encoder states or a cache"
    elif output_attentions:
        reason = "output_attentions=True"
    elif attention_mask is not None and attention_mask.dim() != 2:
        reason = "a 3-D/4-D attention_mask"
    elif set(kwargs) - _SERVED_KWARGS:
        reason = f"the arguments {sorted(set(kwargs) - _SERVED_KWARGS)}"
    elif (input_ids is None) == (inputs_embeds is None):
        reason = "not exactly one of input_ids and inputs_embeds (transformers says so)"
    if inputs_embeds is not None and getattr(self, "_bertfast_outputs_fp32", False):
        inputs_embeds = inputs_embeds.to(self.embeddings.word_embeddings.weight.dtype)  # (optimize's dtype=)
    if reason is not None:
        _warn_once(reason, f"bertfast: {reason} runs transformers' own BertModel.forward for that call")
        return _finish(self, _original_forward(self)(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                                       position_ids=position_ids, inputs_embeds=inputs_embeds,
                                       encoder_hidden_states=encoder_hidden_states,
                                       encoder_attention_mask=encoder_attention_mask, past_key_values=past_key_values,
                                       use_cache=use_cache, **kwargs))
    output_hidden_states = kwargs.get("output_hidden_states")
    output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
    return_dict = kwargs.get("return_dict")
    return_dict = getattr(config, "return_dict", True) if return_dict is None else return_dict

    hidden, attn, packed = embed_batch(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                                       False, padding_free=getattr(self, "_bertfast_padding_free", True))
    all_hidden = [hidden] if output_hidden_states else None
    attn = attn.with_dropout_seeds(len(self.encoder.layer), hidden, self.training)  # one draw for every layer
    for i, layer in enumerate(self.encoder.layer):
        # Through the module: its hooks, and transformers' gradient checkpointing (GradientCheckpointingLayer)
        hidden = layer(hidden, None, bertfast_attn=attn.layer(i))
        if all_hidden is not None:
            all_hidden.append(hidden)
    if packed is not None:
        sequence_output = ops.pad(hidden, packed.indices, packed.batch, packed.seqlen)
        if all_hidden is not None:
            all_hidden = [ops.pad(h, packed.indices, packed.batch, packed.seqlen) for h in all_hidden]
    else:
        sequence_output = hidden
    pooled = self.pooler(sequence_output) if self.pooler is not None else None
    out = BaseModelOutputWithPoolingAndCrossAttentions(
        last_hidden_state=sequence_output, pooler_output=pooled,
        hidden_states=tuple(all_hidden) if all_hidden is not None else None)
    return _finish(self, out if return_dict else out.to_tuple())


def _finish(model, output):
    """The forward's output, its floating tensors handed on in fp32 when optimize(dtype=...) set the model's
    weights to a 16-bit dtype (the pooling, normalisation and heads after it run in fp32)."""
    return _outputs_fp32(output) if getattr(model, "_bertfast_outputs_fp32", False) else output


def bert_layer_forward(self, hidden_states, attention_mask=None, *args, bertfast_attn: AttentionInputs | None = None,
                       **kwargs):
    """transformers' BertLayer.forward through bertfast's ops when called by bert_model_forward (which
    passes the prepared attention as bertfast_attn); transformers' own otherwise."""
    if bertfast_attn is None:
        return _original_forward(self)(hidden_states, attention_mask, *args, **kwargs)
    attention = self.attention
    # Where residual_fold allows, each LayerNorm's residual is the view that linear_keeping_input returns,
    # so that its gradient is added in the input-gradient matmul (ops/linear.py).
    if residual_fold(attention.output, self.training, hidden_states):
        context, _, residual = self_attention_keeping_input(attention.self, hidden_states, bertfast_attn, self.training)
    else:
        context, _ = self_attention(attention.self, hidden_states, bertfast_attn, self.training)
        residual = hidden_states
    attention_output = _dense_residual_layer_norm(attention.output, context, residual, self.training,
                                                  bertfast_attn.seed(1))
    intermediate, residual = _intermediate(self.intermediate, attention_output, self,
                                           residual_fold(self.output, self.training, attention_output))
    return _dense_residual_layer_norm(self.output, intermediate, residual, self.training, bertfast_attn.seed(2))


def _dense_residual_layer_norm(module, x, residual, training, seed=None):
    """transformers' BertSelfOutput / BertOutput: LayerNorm(dropout(dense(x)) + residual), fused (the dense
    layer's bias folded into the LayerNorm where folds_bias allows)."""
    ln, dense = module.LayerNorm, module.dense
    if folds_bias(dense, x):
        return ops.fused_residual_layer_norm(F.linear(x, dense.weight), residual, ln.weight, ln.bias, ln.eps,
                                             module.dropout.p, training, seed=seed, x_bias=dense.bias)
    return ops.fused_residual_layer_norm(cpu.linear(dense, x), residual, ln.weight, ln.bias, ln.eps,
                                         module.dropout.p, training, seed=seed)


def _intermediate(module, x, layer, keep_input: bool = False):
    """(transformers' BertIntermediate: act(dense(x)), x or the view of it that linear_keeping_input
    returns): the bias add fused into GELU when the projection is a plain nn.Linear (a LoRA-wrapped one
    runs as itself) and the config names a GELU; keep_input (the caller's models.batch.residual_fold, which
    holds only on the Triton path): the view, on that fused path."""
    dense = module.dense
    hidden_act = getattr(getattr(layer.attention.self, "config", None), "hidden_act", None)
    approximate = _ACTIVATIONS.get(hidden_act, (None, None))[0] if isinstance(hidden_act, str) else None
    if approximate is not None and cpu.packed_linear_applies(dense, x):  # fp32 CPU inference: oneDNN's GELU post-op
        return cpu.linear(dense, x, "gelu" if approximate == "none" else "gelu_tanh"), x
    if approximate is not None and type(dense) is nn.Linear and dense.bias is not None and (
            _backend.use_triton(x) or fused_on_cpu(approximate, x, dense.weight, dense.bias)):
        y, kept = linear_keeping_input(x, dense.weight) if keep_input else (F.linear(x, dense.weight), x)
        return ops.fused_bias_gelu(y, dense.bias, approximate), kept
    if approximate is not None and isinstance(dense, Int8Linear):  # GELU fused into the dequantisation
        return dense(x, activation="gelu" if approximate == "none" else "gelu_tanh"), x
    return module.intermediate_act_fn(dense(x)), x


# optimize / restore ----------------------------------------------------------------------------------------
def _convert(model: nn.Module, padding_free: bool) -> None:
    _, layer_cls = _bert_classes()
    model.forward = types.MethodType(bert_model_forward, model)
    setattr(model, _FAST, True)
    model._bertfast_padding_free = padding_free
    for layer in model.encoder.layer:
        if isinstance(layer, layer_cls):
            layer.forward = types.MethodType(bert_layer_forward, layer)
            setattr(layer, _FAST, True)


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512-BF16 or AMX-BF16 on x86; bf16 on Arm), as Linux
    reports it: without it oneDNN emulates bf16 matmuls, slower than fp32. (Elsewhere: no.)"""
    from bertfast.info import cpu_flags

    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"})


def _outputs_fp32(output):
    """A bf16 BertModel's output with its floating tensors (last_hidden_state, pooler_output,
    hidden_states, attentions) in fp32."""
    import torch

    def up(x):
        if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != torch.float32:
            return x.float()
        if isinstance(x, tuple):
            return tuple(up(y) for y in x)
        return x

    if isinstance(output, tuple) and not hasattr(output, "keys"):
        return up(output)
    for key in list(output.keys()):
        output[key] = up(output[key])
    return output


def _cast(module: nn.Module, dtype) -> None:
    import torch

    if dtype is None:
        return
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"bertfast.optimize: dtype must be torch.float32 or torch.bfloat16, got {dtype}")
    devices = {p.device.type for p in module.parameters()}
    if dtype == torch.bfloat16 and devices <= {"cpu"} and not cpu_supports_bf16():
        _warn_once("bf16-cpu", "bertfast.optimize(dtype=torch.bfloat16): this CPU has no native bf16 (AVX-512-BF16, "
                               "AMX or Arm bf16); the model stays in fp32")
        return
    module.to(dtype)
    module._bertfast_outputs_fp32 = dtype != torch.float32


QUANTIZE = (None, "int8")


def _quantize(module: nn.Module, quantize: str | None) -> None:
    """quantize="int8": the encoder's linear layers (query, key, value sharing one quantised input; the
    attention output; the intermediate, its GELU fused; the output) become Int8Linear, in place; the
    model's parameters are frozen (int8 is for inference: no gradient passes an int8 layer)."""
    if quantize is None:
        return
    import torch

    devices = {p.device.type for p in module.parameters()}
    if devices != {"cpu"}:
        raise ValueError(f"bertfast.optimize(quantize='int8') is CPU inference; the model is on {sorted(devices)}")
    from bertfast.ops.cpu import built

    if not built() or not hasattr(torch, "_int_mm"):
        raise RuntimeError("bertfast.optimize(quantize='int8') needs bertfast._C built with its CPU kernels "
                           "and torch._int_mm")
    for layer in module.encoder.layer:
        sa = layer.attention.self
        if all(type(lin) is nn.Linear for lin in (sa.query, sa.key, sa.value)):
            first = quantize_linear(sa.query)
            quantize_linear(sa.key, shared=first)
            quantize_linear(sa.value, shared=first)
        for lin in (layer.attention.output.dense, layer.intermediate.dense, layer.output.dense):
            if type(lin) is nn.Linear:
                quantize_linear(lin)
    frozen = [p for p in module.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    module._bertfast_frozen = frozen


def optimize(model: nn.Module, *, padding_free: bool = True, dtype=None, quantize: str | None = None) -> nn.Module:
    """Make every transformers BertModel inside `model` run bertfast's fused ops, in place; returns `model`.
    padding_free=False keeps padded batches padded (the key-mask kernels) instead of packing them.
    dtype=torch.bfloat16 holds each BertModel's weights in bf16 (cast once, here) and hands its outputs on
    in fp32 (the pooling and normalisation after it, and heads outside it, run in fp32); on a CPU without
    native bf16 it warns once and keeps fp32. quantize="int8" (CPU inference) runs each BertModel's encoder
    linear layers in int8: per-channel weights, per-token activations (bertfast.nn.int8); its parameters
    are frozen; restore() undoes it. In fp32 CPU inference the encoder's plain linear layers run through
    oneDNN with their weights packed once (bertfast.ops.cpu.linear; repacked when a weight changes)."""
    if quantize not in QUANTIZE:
        raise ValueError(f"bertfast.optimize: quantize must be one of {QUANTIZE}, got {quantize!r}")
    model_cls, _ = _bert_classes()
    converted, skipped = [], []
    for name, module in model.named_modules():
        if isinstance(module, model_cls):
            why = unsupported(module.config)
            if why is None:
                _convert(module, padding_free)
                _quantize(module, quantize)  # (from the fp32 weights, before a cast to bf16)
                _cast(module, dtype)
                converted.append(name or type(module).__name__)
            else:
                skipped.append(f"{name or type(module).__name__} ({why})")
    if skipped:
        warnings.warn(f"bertfast.optimize: left as transformers runs them: {skipped}", stacklevel=2)
    if not converted and not skipped:
        others = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.endswith("Model")})
        warnings.warn(f"bertfast.optimize: no transformers BertModel found in {type(model).__name__} (models in it: "
                      f"{others or 'none'}); nothing converted: bertfast serves BERT only", stacklevel=2)
    model._bertfast_converted = converted
    return model


def restore(model: nn.Module) -> nn.Module:
    """Undo optimize: every module it converted runs transformers' own forward again."""
    for module in model.modules():
        if getattr(module, _FAST, False):
            for attr in ("forward", _FAST, "_bertfast_padding_free", "_bertfast_outputs_fp32"):
                module.__dict__.pop(attr, None)  # (weights stay in the dtype optimize(dtype=) cast them to)
            for p in module.__dict__.pop("_bertfast_frozen", []):
                p.requires_grad_(True)
        dequantize_linear(module)
        cpu.drop_packed(module)
    model.__dict__.pop("_bertfast_converted", None)
    return model


def optimize_transformers() -> None:
    """Patch transformers' BertModel and BertLayer classes: BERT models built afterwards (and those built
    before) run bertfast's ops. Undo with restore_transformers(). (transformers.Trainer learns to save
    bertfast's own models by itself, once `import bertfast` has run: bertfast.integrations.trainer.)"""
    model_cls, layer_cls = _bert_classes()
    for cls, fast in ((model_cls, bert_model_forward), (layer_cls, bert_layer_forward)):
        if cls not in _CLASS_ORIGINALS:
            _CLASS_ORIGINALS[cls] = cls.forward
            cls.forward = fast


def restore_transformers() -> None:
    """Undo optimize_transformers."""
    for cls, forward in list(_CLASS_ORIGINALS.items()):
        cls.forward = forward
        del _CLASS_ORIGINALS[cls]
