"""Making other libraries' models run on bertfast's ops in place. Nothing here imports transformers at
`import bertfast`: it is imported only when one of these functions is called. `import bertfast` does run
trainer.install(), which teaches transformers.Trainer, when it is loaded, to save bertfast's models."""
from bertfast.integrations import trainer as _trainer

_trainer.install()


def optimize(model, *, padding_free: bool = True, dtype=None, quantize: str | None = None):
    """bertfast.integrations.transformers.optimize: every transformers BertModel inside `model` runs
    bertfast's fused ops and padding-free execution, in place (its classes, parameters and hooks kept);
    dtype=torch.bfloat16: its weights held in bf16, its outputs handed on in fp32; quantize="int8": its
    encoder's linear layers in int8 for CPU inference (bertfast.nn.int8)."""
    from bertfast.integrations.transformers import optimize as run

    return run(model, padding_free=padding_free, dtype=dtype, quantize=quantize)


def restore(model):
    """Undo optimize(model)."""
    from bertfast.integrations.transformers import restore as run

    return run(model)


def optimize_transformers() -> None:
    """Patch transformers' BERT classes so that every BERT model runs bertfast's ops (Liger-style)."""
    from bertfast.integrations.transformers import optimize_transformers as run

    run()


def restore_transformers() -> None:
    """Undo optimize_transformers()."""
    from bertfast.integrations.transformers import restore_transformers as run

    run()


def _register() -> None:
    # bertfast's own models hand their transformers twin to optimize (BertPreTrainedModel.to_transformers)
    # through this registration: the models never import the integrations, which import them.
    from bertfast.models.pretrained import register_optimize

    register_optimize(optimize)


_register()
