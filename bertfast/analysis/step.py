"""The predicted BERT training step on one H200: bertfast against transformers, traced the same way.

`python -m bertfast.analysis.step [--layers N]` runs one training step (forward and backward of the
encoder, bf16 weights, dropout 0.1, 16,384 tokens: batch 128 x 128) of bertfast's BertModel, with no
padding and with half the tokens padding, and of transformers' BertModel with its eager attention, each
through `bertfast.analysis.predict` on meta tensors, and prints every launch's predicted time summed by
kind. The same rates serve both: matmuls at the measured large bf16 matmul rate (790 TFLOP/s, our H200
run; an addmm's 2-D C read in series with it), torch's other kernels and bertfast's memory-bound kernels from their bytes under the constants
calibrated on measured kernels (gpus.FIT; median error 2%, worst 26% on Liger's H100 rows), a fixed
cost per launch; bertfast's attention kernels by the same model with its tensor cores and issue in series
(held to the published attention measurements: within gpus.FIT's attention_error of the Triton tutorial
kernel, the published kernel built most like ours). transformers with attn_implementation="sdpa" is
traced with F.scaled_dot_product_attention dispatched as on a Hopper GPU (on meta tensors torch would take
its math path): torch's flash kernel when nothing is padded (HF passes no mask), its memory-efficient
kernel with HF's padding mask, each charged at FlashAttention-2's published H100 rate (gpus.sdpa_tflops:
an upper bound on their speed at S=128). Where the numbers are weaker: with padding bertfast's attention is
charged as if every sequence were full (an over-estimate), and the sdpa rate is a bound, not a measurement.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import sys
from unittest import mock

import torch

BATCH, SEQ = 128, 128
MATMULS = ("mm", "addmm", "addmm_", "bmm")


def _bertfast_step(layers: int, real_fraction: float):
    import bertfast

    cfg = bertfast.BertConfig.base(num_hidden_layers=layers)
    with torch.device("meta"):
        model = bertfast.BertModel(cfg, add_pooling_layer=False).to(torch.bfloat16)
    total = int(BATCH * SEQ * real_fraction)
    # the forward's one host read: id range, mask values ok, all real, longest row, token count, position 0 real
    facts = torch.tensor([0, 30000, 1, int(real_fraction == 1.0), SEQ, total, 1])
    return _training_step(model), facts


def _transformers_step(layers: int, attention: str = "eager"):
    import transformers

    cfg = transformers.BertConfig(num_hidden_layers=layers)
    cfg._attn_implementation = attention
    with torch.device("meta"):
        model = transformers.BertModel(cfg, add_pooling_layer=False).to(torch.bfloat16)
    step = _training_step(model)
    if attention != "sdpa":
        return step

    def with_fused_sdpa(ids, mask):
        with _fused_sdpa():
            step(ids, mask)
    return with_fused_sdpa


@contextlib.contextmanager
def _fused_sdpa():
    """F.scaled_dot_product_attention as it dispatches on a Hopper GPU, for meta tensors (on which torch
    would take its math path): the flash kernel without a mask, the memory-efficient one with HF's
    additive padding mask (flash takes no mask). Both are torch's own ops, with their backwards; the
    predictor charges them at gpus.sdpa_tflops."""
    import torch.nn.functional as F

    original = F.scaled_dot_product_attention

    def fused(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if is_causal or enable_gqa or query.device.type != "meta":
            return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                            scale=scale, enable_gqa=enable_gqa)
        if attn_mask is None:
            return torch.ops.aten._scaled_dot_product_flash_attention(query, key, value, dropout_p, False, False,
                                                                       scale=scale)[0]
        bias = attn_mask.expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])
        if bias.dtype == torch.bool:  # (HF's sdpa masks are additive or boolean)
            bias = torch.zeros(bias.shape, dtype=query.dtype, device=query.device)
        return torch.ops.aten._scaled_dot_product_efficient_attention(query, key, value, bias, True, dropout_p, False,
                                                                       scale=scale)[0]

    with mock.patch.object(F, "scaled_dot_product_attention", fused):
        yield


@contextlib.contextmanager
def _cuda_dropout():
    """F.dropout as it dispatches on a CUDA tensor, for meta tensors: at::dropout takes torch's fused
    kernel (native_dropout: one launch, its backward one more) where the input is on CUDA, and otherwise
    the composite bernoulli_, div_ and mul, three launches, which a trace on meta tensors would charge
    every nn.Dropout of transformers' layers."""
    import torch.nn.functional as F

    original = F.dropout

    def dropout(input, p=0.5, training=True, inplace=False):
        if input.device.type != "meta" or inplace or not training or not 0 < p < 1 or input.numel() == 0:
            return original(input, p, training, inplace)
        return torch.native_dropout(input, p, True)[0]

    with mock.patch.object(F, "dropout", dropout):
        yield


def _training_step(model):
    """The encoder's forward and backward (a gradient of the hidden states' shape), in training mode, with
    dropout dispatched as on a CUDA tensor (_cuda_dropout)."""
    model.train()

    def step(ids, mask):
        with _cuda_dropout():
            out = model(input_ids=ids, attention_mask=mask).last_hidden_state
            out.backward(torch.empty_like(out))
    return step


def predicted_steps(layers: int = 12) -> dict[str, list]:
    """name -> the LaunchPredictions of one training step (see the module docstring)."""
    from bertfast.analysis.predict import predict
    from bertfast.models.batch import host_read_stand_in

    ids = torch.zeros(BATCH, SEQ, dtype=torch.long)
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    out = {}
    for name, fraction in (("bertfast, no padding", 1.0), ("bertfast, 50% padding", 0.5)):
        step, facts = _bertfast_step(layers, fraction)
        out[name] = predict(step, ids, mask, gpu="h200", host_copy=host_read_stand_in(facts))
    out["transformers eager"] = predict(_transformers_step(layers), ids, mask, gpu="h200")
    # sdpa: no mask when nothing is padded (HF drops an all-ones mask, so torch runs its flash kernel);
    # HF's padding mask otherwise (the memory-efficient kernel, over every padded position)
    out["transformers sdpa, no padding"] = predict(_transformers_step(layers, "sdpa"), ids, None, gpu="h200")
    out["transformers sdpa, 50% padding"] = predict(_transformers_step(layers, "sdpa"), ids, mask, gpu="h200")
    return out


def summary(launches: list) -> dict[str, float]:
    """Milliseconds by kind: matmuls, bertfast's attention kernels, everything else; and the total."""
    by = collections.defaultdict(float)
    for p in launches:
        kind = "matmuls" if p.name in MATMULS else "attention kernels" if p.name.startswith("attention") else \
            "sdpa" if "scaled_dot_product" in p.name else "other"
        by[kind] += p.us / 1e3
    by["total"] = sum(p.us for p in launches) / 1e3
    by["launches"] = len(launches)
    return dict(by)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bertfast.analysis.step", description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=12, help="encoder layers (BERT-base: 12)")
    args = parser.parse_args(argv)
    steps = {name: summary(launches) for name, launches in predicted_steps(args.layers).items()}
    eager = steps["transformers eager"]
    print(f"Predicted training step, BERT-base encoder ({args.layers} layers), bf16, dropout 0.1, {BATCH}x{SEQ} "
          "tokens, one H200 (no GPU involved: bertfast.analysis.predict)")
    print(f"{'':<30} {'launches':>8} {'matmuls ms':>10} {'attention ms':>12} {'other ms':>9} {'total ms':>9} "
          f"{'vs eager':>8} {'range':>10} {'vs sdpa':>8} {'range':>10}")
    for name, s in steps.items():
        sdpa = steps["transformers sdpa, 50% padding" if "50% padding" in name else "transformers sdpa, no padding"]
        ranges = [speedup_range(s, base) for base in (eager, sdpa)]
        attention = s.get("attention kernels", 0) + s.get("sdpa", 0)
        print(f"{name:<30} {s['launches']:>8.0f} {s.get('matmuls', 0):>10.2f} {attention:>12.2f} "
              f"{s.get('other', 0):>9.2f} {s['total']:>9.2f} "
              + " ".join(f"{base['total'] / s['total']:>7.2f}x {low:>4.2f}-{high:.2f}x"
                         for base, (low, high) in zip((eager, sdpa), ranges)))
    print(f"range: the other kernels off by the calibration's worst error ({_worst():.0%}) and bertfast's attention "
          f"kernels by the attention model's ({_worst('attention_error'):.0%}, against the published Triton tutorial "
          "kernel), in opposite directions for the two; matmuls at the measured rate in both. vs sdpa: the same "
          "padding; transformers sdpa's attention (torch's flash kernel without padding, its memory-efficient one "
          "with HF's padding mask) at FlashAttention-2's published H100 rate at S=512, an upper bound on its speed "
          "at S=128, so 'vs sdpa' is if anything low")
    return 0


def speedup_range(s: dict, base: dict) -> tuple[float, float]:
    """(low, high) predicted speedup of s over base under the errors main() prints (torch's SDPA kernels,
    charged at a published bound, without one)."""
    worst, attention = _worst(), _worst("attention_error")

    def time(x, other_error, attention_error):
        return (x.get("matmuls", 0) + x.get("sdpa", 0) + (1 + attention_error) * x.get("attention kernels", 0)
                + (1 + other_error) * x.get("other", 0))
    low = time(base, -worst, 0) / time(s, worst, attention)
    high = time(base, worst, 0) / time(s, -worst, -attention)
    return low, high


def _worst(key: str = "worst_error") -> float:
    from bertfast.analysis.gpus import FIT

    return FIT[key]


if __name__ == "__main__":
    sys.exit(main())
