"""The predicted BERT training step on one H200: bertfast against transformers, traced the same way.

`python -m bertfast.analysis.step [--layers N]` runs one training step (forward and backward of the
encoder, bf16 weights, dropout 0.1, 16,384 tokens: batch 128 x 128) of bertfast's BertModel, with no
padding and with half the tokens padding, and of transformers' BertModel with its eager attention, each
through `bertfast.analysis.predict` on meta tensors, and prints every launch's predicted time summed by
kind. The same rates serve both: matmuls at the measured large bf16 matmul rate (790 TFLOP/s, our H200
run), torch's other kernels and bertfast's memory-bound kernels from their bytes under the constants
calibrated on measured kernels (gpus.FIT; median error 2%, worst 26% on Liger's H100 rows), a fixed
cost per launch; bertfast's attention kernels by the same model with its tensor cores and issue in series
(held to the published attention measurements: within gpus.FIT's attention_error of the Triton tutorial
kernel, the published kernel built most like ours). Where the numbers are weaker: with padding bertfast's
attention is charged as if every sequence were full (an over-estimate), and transformers' sdpa attention
is not traced: on meta tensors it takes torch's math path, which is not what it runs on a GPU.
"""
from __future__ import annotations

import argparse
import collections
import sys

import torch

BATCH, SEQ = 128, 128
MATMULS = ("mm", "addmm", "bmm")


def _bertfast_step(layers: int, real_fraction: float):
    import bertfast

    cfg = bertfast.BertConfig.base(num_hidden_layers=layers)
    with torch.device("meta"):
        model = bertfast.BertModel(cfg, add_pooling_layer=False).to(torch.bfloat16)
    total = int(BATCH * SEQ * real_fraction)
    # the forward's one host read: id range, mask values ok, all real, longest row, token count, position 0 real
    facts = torch.tensor([0, 30000, 1, int(real_fraction == 1.0), SEQ, total, 1])
    return _training_step(model), facts


def _transformers_step(layers: int):
    import transformers

    cfg = transformers.BertConfig(num_hidden_layers=layers)
    cfg._attn_implementation = "eager"
    with torch.device("meta"):
        model = transformers.BertModel(cfg, add_pooling_layer=False).to(torch.bfloat16)
    return _training_step(model)


def _training_step(model):
    """The encoder's forward and backward (a gradient of the hidden states' shape), in training mode."""
    model.train()

    def step(ids, mask):
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
        out.backward(torch.empty_like(out))
    return step


def predicted_steps(layers: int = 12) -> dict[str, list]:
    """name -> the LaunchPredictions of one training step (see the module docstring)."""
    from bertfast.analysis.predict import predict

    ids = torch.zeros(BATCH, SEQ, dtype=torch.long)
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    out = {}
    for name, fraction in (("bertfast, no padding", 1.0), ("bertfast, 50% padding", 0.5)):
        step, facts = _bertfast_step(layers, fraction)
        out[name] = predict(step, ids, mask, gpu="h200", host_copy=lambda t, f=facts: f[: t.numel()].reshape(t.shape))
    out["transformers eager"] = predict(_transformers_step(layers), ids, mask, gpu="h200")
    return out


def summary(launches: list) -> dict[str, float]:
    """Milliseconds by kind: matmuls, bertfast's attention kernels, everything else; and the total."""
    by = collections.defaultdict(float)
    for p in launches:
        kind = "matmuls" if p.name in MATMULS else "attention kernels" if p.name.startswith("attention") else "other"
        by[kind] += p.us / 1e3
    by["total"] = sum(p.us for p in launches) / 1e3
    by["launches"] = len(launches)
    return dict(by)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bertfast.analysis.step", description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=12, help="encoder layers (BERT-base: 12)")
    args = parser.parse_args(argv)
    steps = {name: summary(launches) for name, launches in predicted_steps(args.layers).items()}
    base = steps["transformers eager"]["total"]
    print(f"Predicted training step, BERT-base encoder ({args.layers} layers), bf16, dropout 0.1, {BATCH}x{SEQ} "
          "tokens, one H200 (no GPU involved: bertfast.analysis.predict)")
    print(f"{'':<24} {'launches':>8} {'matmuls ms':>10} {'attention ms':>12} {'other ms':>9} {'total ms':>9} "
          f"{'vs eager':>8}  range")
    eager = steps["transformers eager"]
    for name, s in steps.items():
        low, high = speedup_range(s, eager)
        print(f"{name:<24} {s['launches']:>8.0f} {s.get('matmuls', 0):>10.2f} {s.get('attention kernels', 0):>12.2f} "
              f"{s.get('other', 0):>9.2f} {s['total']:>9.2f} {base / s['total']:>7.2f}x  {low:.2f}-{high:.2f}x")
    print(f"range: the other kernels off by the calibration's worst error ({_worst():.0%}) and bertfast's attention "
          f"kernels by the attention model's ({_worst('attention_error'):.0%}, against the published Triton tutorial "
          "kernel), in opposite directions for the two; matmuls at the measured rate in both")
    return 0


def speedup_range(s: dict, eager: dict) -> tuple[float, float]:
    """(low, high) predicted speedup over transformers eager under the errors main() prints."""
    worst, attention = _worst(), _worst("attention_error")

    def time(x, other_error, attention_error):
        return (x.get("matmuls", 0) + (1 + attention_error) * x.get("attention kernels", 0)
                + (1 + other_error) * x.get("other", 0))
    low = time(eager, -worst, 0) / time(s, worst, attention)
    high = time(eager, worst, 0) / time(s, -worst, -attention)
    return low, high


def _worst(key: str = "worst_error") -> float:
    from bertfast.analysis.gpus import FIT

    return FIT[key]


if __name__ == "__main__":
    sys.exit(main())
