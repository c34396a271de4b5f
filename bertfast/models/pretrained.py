"""transformers' PreTrainedModel surface of bertfast's own classes: weight init, HF checkpoint loading
and saving (sharded, safetensors), resizing, gradient checkpointing, and the rest of what transformers'
tools use (Trainer, pipelines, PEFT, sentence-transformers). Needs no transformers.
"""
from __future__ import annotations

import inspect
import json
import os
import warnings

import torch
import torch.nn as nn

from bertfast.config import BertConfig, _as_dtype, is_transformers_config
from bertfast.models.checkpoint_io import read_weights, write_weights

# bertfast.optimize, registered by bertfast.integrations when it is imported (import bertfast does): the
# models do not import the integrations, which import them.
_MAKE_FAST = []


def register_optimize(make_fast) -> None:
    """Let to_transformers() hand its transformers model to `make_fast` (bertfast.optimize)."""
    _MAKE_FAST[:] = [make_fast]


def _checkpoints_layers(module: nn.Module) -> bool:
    """Whether a module recomputes its layers under gradient checkpointing (bertfast's BertEncoder)."""
    return hasattr(module, "checkpoint_options")


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
            if not _MAKE_FAST:
                raise RuntimeError("to_transformers(optimize=True) needs bertfast.integrations (import bertfast)")
            _MAKE_FAST[0](hf)
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
            if _checkpoints_layers(module):
                module.gradient_checkpointing = True
                module.checkpoint_options, module.checkpoint_every, module.checkpoint_offload = \
                    options, every_n_layers, bool(offload)

    def gradient_checkpointing_disable(self) -> None:
        for module in self.modules():
            if _checkpoints_layers(module):
                module.gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules() if _checkpoints_layers(m))

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
