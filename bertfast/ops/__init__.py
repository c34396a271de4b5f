"""The public functional ops: validate inputs, pick a backend (Triton, the C++/CUDA extension or the
torch reference, see bertfast._backend), differentiate."""
from bertfast.ops.attention import fused_attention, fused_attention_varlen, pad, unpad
from bertfast.ops.bias_gelu import fused_bias_gelu
from bertfast.ops.cross_entropy import linear_cross_entropy
from bertfast.ops.embedding_layer_norm import embedding_layer_norm
from bertfast.ops.embedding_sum import embedding_sum
from bertfast.ops.layer_norm import fused_residual_layer_norm

__all__ = ["embedding_layer_norm", "embedding_sum", "fused_attention", "fused_attention_varlen", "fused_bias_gelu",
           "fused_residual_layer_norm", "linear_cross_entropy", "pad", "unpad"]
