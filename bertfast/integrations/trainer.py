"""transformers.Trainer with bertfast's own models, without any call from the user.

Trainer treats a model that is not a transformers `PreTrainedModel` as a plain module in two places: its
checkpoints and `save_model()` hold the state_dict alone (no config.json, and safetensors refuses the
shared tensors of a tied BertForMaskedLM), and under DDP it asks for `find_unused_parameters=True`, which
breaks reentrant gradient checkpointing ("marked a variable ready twice"). For bertfast's models those two
methods do what Trainer does for transformers' own: save_pretrained's folder (config.json, tied weights
once), and find_unused_parameters off when gradient checkpointing is on. Every other model goes through
Trainer's methods unchanged.

`import bertfast` imports no transformers: `install()` patches Trainer at once when transformers.trainer
is already loaded, and otherwise adds a finder to sys.meta_path that patches it the moment it is loaded
(the finder looks at that one module name; the module keeps its own loader).
"""
from __future__ import annotations

import functools
import sys
import warnings

TARGET = "transformers.trainer"
_MARK = "_bertfast_original"


def _is_bertfast(model) -> bool:
    from bertfast.models.pretrained import BertPreTrainedModel

    return isinstance(model, BertPreTrainedModel)


def _save(original, self, output_dir=None, state_dict=None, **kwargs):
    model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
    if not _is_bertfast(model):
        return original(self, output_dir, state_dict, **kwargs)
    original(self, output_dir, model.state_to_save(state_dict), **kwargs)
    model.save_config(output_dir if output_dir is not None else self.args.output_dir)


def _build_accelerator_args(original, self, **kwargs):
    args = original(self, **kwargs)
    model = self.model
    if _is_bertfast(model) and self.args.ddp_find_unused_parameters is None:
        for handler in args.get("kwargs_handlers", []):
            if hasattr(handler, "find_unused_parameters"):
                handler.find_unused_parameters = not (model.is_gradient_checkpointing or self.args.gradient_checkpointing)
    return args


_PATCHES = {"_save": _save, "_build_accelerator_args": _build_accelerator_args}


def patch(module) -> None:
    """Wrap Trainer's methods in `module` (transformers.trainer); idempotent. A Trainer without them is
    left as it is, with a warning: transformers changed, bertfast's models get its plain-module path."""
    trainer = getattr(module, "Trainer", None)
    missing = [name for name in _PATCHES if not callable(getattr(trainer, name, None))]
    if missing:
        warnings.warn(f"bertfast: transformers.Trainer has no {missing}; it will save bertfast's models as plain "
                      "modules (no config.json); hand it model.to_transformers() instead", stacklevel=2)
        return
    for name, wrapper in _PATCHES.items():
        current = getattr(trainer, name)
        if hasattr(current, _MARK):
            continue
        patched = functools.update_wrapper(_method(wrapper, current), current)
        setattr(patched, _MARK, current)
        setattr(trainer, name, patched)


def _method(wrapper, original):
    def method(self, *args, **kwargs):
        return wrapper(original, self, *args, **kwargs)
    return method


class _PatchAfterLoad:
    """The loader of transformers.trainer, which patches the module once it has run and then puts the
    module's own loader back in its __loader__ and __spec__."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        module.__loader__ = self.loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self.loader
        try:
            patch(module)
        except Exception as e:  # never break the import of transformers
            warnings.warn(f"bertfast: could not patch transformers.Trainer ({e!r}); hand Trainer "
                          "model.to_transformers() to save bertfast models with their config", stacklevel=2)

    def __getattr__(self, name):  # create_module and the rest: the module's own loader
        return getattr(self.loader, name)


class TrainerFinder:
    """A sys.meta_path entry that answers for transformers.trainer only: the other finders find it, and
    its loader is wrapped so that Trainer is patched as soon as the module has run."""

    def find_spec(self, name, path=None, target=None):
        if name != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _PatchAfterLoad(spec.loader)
        return spec


def install() -> None:
    """Patch transformers.Trainer now if it is loaded, else when it is (see the module docstring)."""
    module = sys.modules.get(TARGET)
    if module is not None and getattr(module, "Trainer", None) is not None:
        patch(module)
    elif not any(isinstance(f, TrainerFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, TrainerFinder())
