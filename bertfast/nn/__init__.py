"""Small nn.Modules around the ops, each holding HF-named parameters and calling one op."""
from bertfast.nn.modules import Embeddings, FusedLayerNorm, LinearActivation

__all__ = ["Embeddings", "FusedLayerNorm", "LinearActivation"]
