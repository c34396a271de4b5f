"""Each measured bertfast kernel benchmark next to the static model's prediction for the same call.

    python -m benchmarks.predicted RESULTS_JSON [--markdown OUT.md] [--json OUT.json]
    python -m benchmarks.predicted --example [...]   (the CPU dry run: one small row of each kind, no
                                                      measurement, to exercise the mapping and the model)

For every bertfast row of the benchmarks' results.json (LayerNorm, bias+GELU, attention without
padding, the embedding sum), the same op at the same shape and dtype is traced on meta tensors and
predicted by bertfast.analysis.sm90 (the sum of its launches' predicted times, forward kernels only for
"fwd"), and printed with the measured time and their ratio. A ratio off by more than 25% is flagged:
the model (or the kernel) needs a look. Runs with TRITON_INTERPRET=0 (it compiles for sm_90).
benchmarks/gpu_check.sh runs it after the benchmarks.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "fp32": torch.float32, "float32": torch.float32}
FORWARD_KERNELS = ("_fwd_kernel", "embedding_sum_forward")
TOLERANCE = 0.25


def _fields(case: str) -> tuple[dict, torch.dtype]:
    words = case.split()
    fields = dict(w.split("=", 1) for w in words if "=" in w)
    return fields, DTYPES[words[-1]]


def scenario_for(group: str, case: str, variant: str):
    """The sm90 Scenario of a benchmark row (a bertfast variant), or None when the model has none."""
    from bertfast.analysis import sm90

    op, _, _ = group.rpartition(" ")
    fields, dtype = _fields(case)
    label = f"{group} {case} {variant}"
    if op in ("fused_residual_layer_norm", "fused_residual_layer_norm + projection bias") and variant == "bertfast":
        run = sm90._layer_norm(int(fields["T"]), int(fields["H"]), dtype, 0.0, True, dtype, dtype,
                               x_bias=op.endswith("projection bias"))
        return sm90.Scenario(label, "layer_norm", run)
    if op == "fused_bias_gelu" and variant == "bertfast":
        return sm90.Scenario(label, "bias_gelu", sm90._bias_gelu(int(fields["T"]), int(fields["I"]), dtype))
    if op == "attention" and variant in ("bertfast", "bertfast varlen") and fields.get("pad") == "none":
        batch, seq = int(fields["B"]), int(fields["S"])
        run = sm90._attention(batch * seq, seq, int(fields["H"]), int(fields["D"]), dtype, 0.0,
                              variant == "bertfast varlen")
        return sm90.Scenario(label, "attention", run)
    if op == "embedding_sum" and variant == "bertfast kernel":
        tokens = int(fields["T"])
        seq = 128 if tokens >= 128 else tokens
        run = sm90._embedding(tokens, int(fields["H"]), dtype, seq, per_token_ids=True)
        return sm90.Scenario(label, "embedding", run)
    return None


EXAMPLE = {"results": [
    {"group": "fused_residual_layer_norm fwd+bwd", "case": "T=64 H=128 bf16", "variant": "bertfast"},
    {"group": "fused_residual_layer_norm + projection bias fwd+bwd", "case": "T=64 H=128 bf16", "variant": "bertfast"},
    {"group": "fused_bias_gelu fwd", "case": "T=64 I=256 bf16", "variant": "bertfast"},
    {"group": "attention fwd+bwd", "case": "B=2 H=2 S=64 D=32 pad=none bf16", "variant": "bertfast varlen"},
    {"group": "embedding_sum fwd+bwd", "case": "T=256 H=64 bf16", "variant": "bertfast kernel"}]}


def compare(results: dict) -> list[dict]:
    from bertfast.analysis import sm90

    rows = []
    for r in results["results"]:
        if not r["variant"].startswith("bertfast"):
            continue
        scenario = scenario_for(r["group"], r["case"], r["variant"])
        if scenario is None:
            continue
        forward_only = r["group"].endswith(" fwd")
        predictions = [p for p in sm90.model([scenario])
                       if not forward_only or any(k in p.kernel for k in FORWARD_KERNELS)]
        predicted_ms = sum(p.predicted_us for p in predictions) / 1e3
        measured = r.get("time_ms", float("nan"))
        ratio = measured / predicted_ms if predicted_ms else float("nan")
        rows.append(dict(group=r["group"], case=r["case"], variant=r["variant"], measured_ms=measured,
                         predicted_ms=round(predicted_ms, 5), ratio=round(ratio, 3),
                         kernels=[f"{p.kernel} {p.predicted_us:.1f}us ({p.bound})" for p in predictions],
                         off=bool(abs(ratio - 1) > TOLERANCE)))
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["Predicted: the static model of the compiled kernels (bertfast.analysis.sm90), no GPU involved; "
             "measured: the benchmark's median (CUDA-graph replay on a GPU). Ratio = measured / predicted; "
             f"'off' when it is outside 1 +- {TOLERANCE:.0%}.", "",
             "| group | case | variant | measured ms | predicted ms | ratio | off | predicted kernels |",
             "|---|---|---|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['group']} | {r['case']} | {r['variant']} | {r['measured_ms']:.4f} | {r['predicted_ms']:.4f} "
                     f"| {r['ratio']:.2f} | {'OFF' if r['off'] else ''} | {'; '.join(r['kernels'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="?")
    parser.add_argument("--example", action="store_true", help="predict EXAMPLE's rows (no results file)")
    parser.add_argument("--markdown")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.example:
        rows = compare(EXAMPLE)
    else:
        with open(args.results) as f:
            rows = compare(json.load(f))
    text = markdown(rows)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
