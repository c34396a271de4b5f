"""The static roofline model (bertfast.analysis.sm90), no GPU needed.

- Every variant BertModel launches in a training or inference step (BERT-base and -large, bf16 and fp32,
  packed and padded) is among the compiled variants the model reports on: traced through the whole model
  on meta tensors, independently of the model's own per-op scenarios.
- `python -m bertfast.analysis --json` holds every launch to the goals: bandwidth fractions of the
  memory-bound kernels with dropout on, wgmma for every fp16/bf16 attention matmul (zero HMMA), no
  spills, 128-bit loads/stores, dropout's instruction overhead (LayerNorm forward <= 1.5x, each
  attention kernel's loop <= 2x at head dim 64 in 16 bits).
- BERT's dropout masks cross no threads: no `convert_layout` of a mask (i1) in the attention kernels'
  TTGIR with dropout at head dims 64 and 128, bf16.
Both run in a subprocess with TRITON_INTERPRET=0: the rest of the suite runs Triton's interpreter, whose
kernels cannot be compiled.
"""
import json

import pytest


def test_compiled_variants_are_what_the_model_launches(run_compiled):
    stdout = run_compiled("""
        import torch
        import bertfast
        from bertfast.analysis import sm90
        from bertfast.analysis.trace import gpu_trace

        listed = set(sm90.launched_variants())
        checked = 0
        for preset, dtype, train, padded in [("base", torch.bfloat16, True, False), ("large", torch.bfloat16, True, False),
                                            ("base", torch.bfloat16, True, True), ("base", torch.float32, False, False),
                                            ("large", torch.float16, False, True)]:
            hidden, inter, heads = sm90.MODELS[preset]
            cfg = bertfast.BertConfig(hidden_size=hidden, intermediate_size=inter, num_attention_heads=heads,
                                      num_hidden_layers=2, max_position_embeddings=512)
            with torch.device("meta"):
                model = bertfast.BertModel(cfg).to(dtype)
            model.train(train)
            ids = torch.empty(64, 128, dtype=torch.long, device="meta")
            mask = torch.empty(64, 128, dtype=torch.long, device="meta")
            # the forward's one host read: ids min/max, mask values ok, all real (no: the model packs its tokens,
            # unless it runs padded, as under torch.compile: the key-mask kernels), longest row, token count,
            # position 0 real in every row
            from bertfast.models.batch import host_read_stand_in
            read = host_read_stand_in([1, 30000, 1, 0, 128, 64 * 100, 1])
            with gpu_trace(host_copy=read) as events:
                if padded:
                    import bertfast.models.batch as batch
                    from bertfast.models.batch import AttentionInputs
                    batch._attention_inputs = lambda m, *rest: (AttentionInputs(key_mask=m.bool()), None)
                out = model(input_ids=ids, attention_mask=mask).last_hidden_state
                if train:
                    torch.autograd.grad(out.float().sum(), list(model.parameters()), allow_unused=True)
            launches = [e for e in events if e.kind == "triton"]
            assert launches, "the model launched no Triton kernel"
            missing = {sm90.variant_name(e) for e in launches if sm90.variant_key(e) not in listed}
            assert not missing, f"{preset} {dtype} train={train} padded={padded}: launched but not compiled: {missing}"
            checked += len(launches)
        print("checked", checked, "launches against", len(listed), "variants")
    """)
    assert "checked" in stdout


def test_static_roofline_meets_the_goals(tmp_path, run_compiled):
    report = tmp_path / "sm90.json"
    run_compiled(module_args=["bertfast.analysis", "--json", str(report)])
    data = json.loads(report.read_text())
    predictions = data["predictions"]
    assert not data["missed"]
    training = [p for p in predictions if p["training"]]
    families = {p["family"] for p in training}
    assert families >= {"layer_norm", "bias_gelu", "attention"}, families
    for p in training:
        assert p["spill_bytes"] == 0, p["variant"]
        if p["family"] == "attention":
            assert p["hmma"] == 0 and set(p["dots"]) <= {"wgmma"}, p["variant"]
            assert p["dots"], p["variant"]
        elif p["family"] != "embedding" and p["bytes"] >= 4e6:  # (the embedding: as a whole op, below)
            goal = 0.75 if ("_bwd" in p["kernel"]) else 0.85
            assert p["fraction_of_copy"] >= goal, (p["scenario"], p["kernel"], p["fraction_of_copy"])
            assert p["share_128bit"] >= 0.85, (p["scenario"], p["kernel"])
    ops = [op for op in data["embedding_ops"] if " bf16" in op["scenario"]]
    assert {op["phase"] for op in ops} == {"forward", "backward"}
    assert all(op["fraction_of_copy"] >= 0.70 for op in ops), ops
    bf16_attention = [p for p in predictions if p["family"] == "attention" and " bf16 " in p["scenario"]]
    assert bf16_attention and all(p["hmma"] == 0 for p in bf16_attention), "bf16 attention must not use mma.sync"
    # attention: no prediction above the best published measurement at its shape (the check also fails
    # the report), and the dropout-free forward at the published shapes inside the band of kernels built
    # like ours (FlashAttention-2 to the Triton tutorial)
    rates = data["attention_rates"]
    compared = [r for r in rates if r["published"]]
    assert len(compared) >= 20, len(compared)
    assert all(r["tflops"] <= max(r["published"].values()) for r in compared), [
        r for r in compared if r["tflops"] > max(r["published"].values())]
    band = [r for r in rates if r["in_band"] is not None and "published-d64" in r["scenario"]]
    assert len(band) == 3 and all(r["in_band"] for r in band), band
    assert all(r["phase"] == "fwd" for r in band)
    overheads = data["dropout_overheads"]
    assert {o["kernel"] for o in overheads} == {"residual_layer_norm_fwd_kernel", "attention_fwd_kernel",
                                                "attention_bwd_dkdv_kernel", "attention_bwd_dq_kernel"}
    limited = [o for o in overheads if o["limit"] is not None]
    assert any(" bf16 " in o["scenario"] for o in limited)
    # BERT's attention (head dim 64, bf16) is held to the limit in all three kernels
    bert = {o["kernel"] for o in limited if o["scenario"].startswith("attention base bf16")}
    assert bert == {"attention_fwd_kernel", "attention_bwd_dkdv_kernel", "attention_bwd_dq_kernel"}, bert
    assert all(o["ratio"] <= o["limit"] for o in limited), [o for o in limited if o["ratio"] > o["limit"]]


@pytest.mark.parametrize("model", ["base", "large-d128"])
def test_attention_dropout_masks_cross_no_threads(run_compiled, model):
    """At head dims 64 and 128 in bf16 each Philox call's 8 elements lie in one thread of the forward, dK/dV
    and dQ kernels (the query-key grouping; at 128 the dQ kernel in the keys-first frame): their TTGIR
    converts no i1 tile between layouts (the fragment grouping's dK/dV kernel converted its mask 7 times
    a trip; the d = 128 forward's one [128, 1] row predicate, between its two matmuls' layouts in the
    epilogue, is no mask)."""
    stdout = run_compiled(f"""
        import re
        from bertfast.analysis import sm90
        [scenario] = [s for s in sm90.scenarios() if s.label == "attention {model} bf16 varlen S=512 p=0.1"]
        seen = set()
        for launch in sm90.traced(scenario):
            if launch.kind != "triton":
                continue
            ttgir = sm90.compile_launch(launch).asm["ttgir"]
            masks = sum(int(cols) > 1 for cols in re.findall(r"ttg.convert_layout %\\S+ : tensor<\\d+x(\\d+)xi1", ttgir))
            print(launch.name, "MASK_TILES" in sm90.variant_name(launch).split(), masks)
            seen.add(launch.name)
        print("kernels", len(seen))
    """)
    lines = [line.split() for line in stdout.splitlines() if line.startswith("attention_")]
    assert {name for name, _, _ in lines} == {"attention_fwd_kernel", "attention_bwd_dkdv_kernel",
                                              "attention_bwd_dq_kernel"}, stdout
    assert all(tiles == "True" and masks == "0" for _, tiles, masks in lines), stdout
