"""The deliberate bugs the test suite must always catch (run by tests/mutants/run.py).

Each mutant is one small, plausible edit to a kernel, launcher, model or data function (`old` must occur
exactly once in `path`), and the tests expected to kill it. Add one for every kernel change.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]  # pytest arguments: files, or "file::test", with "-k expr" allowed as one item
    why: str = ""


LN = "bertfast/kernels/layer_norm.py"
ATT = "bertfast/kernels/attention.py"
GELU = "bertfast/kernels/bias_gelu.py"
DROP = "bertfast/kernels/dropout.py"
EMB = "bertfast/kernels/embedding_sum.py"

MUTANTS = [
    # --- the sixteen of the first mutation run -------------------------------------------------------
    Mutant("dropout scale sign (LayerNorm)", LN, "x = tl.where(keep, x * scale, 0.0)",
           "x = tl.where(keep, -x * scale, 0.0)", ("tests/test_layer_norm.py", "-k dropout")),
    Mutant("LayerNorm backward drops a term", LN,
           "dh = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]",
           "dh = (wdy - xhat * c1[:, None]) * rstd[:, None]", ("tests/test_layer_norm.py", "-k fp32_residual")),
    Mutant("eps outside the square root", LN,
           "rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / N + eps)",
           "rstd = 1.0 / (tl.sqrt(tl.sum(centred * centred, axis=1) / N) + eps)",
           ("tests/test_layer_norm.py", "-k realistic")),
    Mutant("key mask off by one", ATT, "tl.load(MASK + b * stride_mb + cols, mask=valid, other=0)",
           "tl.load(MASK + b * stride_mb + cols + 1, mask=valid, other=0)",
           ("tests/test_attention.py", "-k padded_matches or left_padding")),
    Mutant("dropout masks disagree (forward / dQ)", ATT,
           "keep = _keep_mask(seed, bh, rows, start_n, threshold, BLOCK_N)",
           "keep = _keep_mask(seed, bh + 1, rows, start_n, threshold, BLOCK_N)",
           ("tests/test_attention.py", "-k dropout")),
    Mutant("softmax scale", "bertfast/ops/attention.py",
           "scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(head_dim)",
           "scale = float(softmax_scale) if softmax_scale is not None else 1.0 / head_dim",
           ("tests/test_attention.py", "-k padded_matches")),
    Mutant("dQ's scale", ATT, "dq = dq * sm_scale", "dq = dq", ("tests/test_attention.py", "-k padded_matches")),
    Mutant("GELU's derivative", GELU, "grad = cdf + h * INV_SQRT_2PI * tl.exp(-0.5 * h * h)",
           "grad = cdf + h * tl.exp(-0.5 * h * h)", ("tests/test_bias_gelu.py", "-k fp32_erf")),
    Mutant("GELU's tanh constant", GELU, "TANH_COEF = tl.constexpr(0.044715)", "TANH_COEF = tl.constexpr(0.04)",
           ("tests/test_bias_gelu.py", "-k tanh")),
    Mutant("padding_idx gets a gradient (CPU extension)", "csrc/embedding_sum_cpu.cpp",
           "if (row == padding_idx) continue;", "", ("tests/test_embedding_sum.py", "-k fp32_matches"),
           why="rebuilds bertfast._C in the scratch copy"),
    Mutant("packed position ids from the packed index", "bertfast/models/bert.py",
           "position_ids = (packed.indices % seq)[None]",
           "position_ids = (torch.arange(packed.indices.numel(), device=packed.indices.device) % seq)[None]",
           ("tests/test_model_parity.py", "-k layouts")),
    Mutant("pad-back indices", "bertfast/ops/attention.py", "out = out.index_copy(0, indices, packed)",
           "out = out.index_copy(0, indices.roll(1), packed)", ("tests/test_model_parity.py", "-k random_base")),
    Mutant("80/10/10 masking", "bertfast/training/data.py", "to_mask = selected & (roll < 0.8)",
           "to_mask = selected & (roll < 0.7)", ("tests/test_data.py", "-k masking_statistics")),
    Mutant("special tokens masked", "bertfast/training/data.py",
           "selected = torch.bernoulli(probs, generator=generator).bool() & ~special_mask",
           "selected = torch.bernoulli(probs, generator=generator).bool()", ("tests/test_data.py", "-k masking")),
    Mutant("the id range check", "bertfast/_validate.py", "if lo < 0 or hi >= rows:", "if lo < 0 or hi > rows:",
           ("tests/test_embedding_sum.py", "-k out_of_range")),
    Mutant("the float mask check", "bertfast/ops/attention.py",
           "return ((attention_mask == 0) | (attention_mask == 1)).all()",
           "return ((attention_mask >= 0) & (attention_mask <= 1)).all()", ("tests/test_hardening.py", "-k bad_input")),
    # --- the static-roofline issue's kernel changes ---------------------------------------------------
    Mutant("dropout RNG: one 16-bit lane used twice (rows)", DROP, "return tl.join(word & 0xFFFF, word >> 16)",
           "return tl.join(word & 0xFFFF, word & 0xFFFF)", ("tests/test_dropout.py", "-k correlation")),
    Mutant("dropout RNG: high lane compared wrongly (fragments)", DROP,
           "return tl.join((word & 0xFFFF) >= threshold, word >= (threshold << 16))",
           "return tl.join((word & 0xFFFF) >= threshold, (word & 0xFFFF) >= threshold)",
           ("tests/test_dropout.py", "-k correlation")),
    Mutant("dropout RNG: stream (head) ignored", DROP,
           "r0, r1, r2, r3 = tl.philox(seed, groups[None, :, :], rows[:, None, None], stream, 0, ROUNDS)",
           "r0, r1, r2, r3 = tl.philox(seed, groups[None, :, :], rows[:, None, None], 0, 0, ROUNDS)",
           ("tests/test_dropout.py", "-k correlation")),
    Mutant("dropout RNG: the row left out of the counter (rows)", DROP,
           "r0, r1, r2, r3 = tl.philox(seed, c0, c1, stream, 0, ROUNDS)",
           "r0, r1, r2, r3 = tl.philox(seed, c0, c1 * 0, stream, 0, ROUNDS)",
           ("tests/test_dropout.py", "-k correlation")),
    Mutant("dropout threshold in 8 bits", DROP, "return min(max(int(round(p * (1 << BITS))), 0), (1 << BITS) - 1)",
           "return min(max(int(round(p * (1 << 8))), 0), (1 << 8) - 1)", ("tests/test_dropout.py", "-k binomial")),
    Mutant("LayerNorm backward prefetches the wrong rows", LN, "next_rows = rows + step",
           "next_rows = rows + step + 1", ("tests/test_layer_norm.py", "-k fp32_residual")),
    Mutant("column sums skip the first block", "bertfast/kernels/reduce.py", "for first in range(0, P, BLOCK_M):",
           "for first in range(BLOCK_M, P, BLOCK_M):", ("tests/test_layer_norm.py", "-k fp32_residual")),
    Mutant("bias+GELU's fast erf constant", GELU, "AS_A3 = tl.constexpr(1.421413741)",
           "AS_A3 = tl.constexpr(1.4214)", ("tests/test_bias_gelu.py", "-k every")),
    Mutant("dK's scale (transposed kernel)", ATT, "dk = dk * sm_scale", "dk = dk",
           ("tests/test_attention.py", "-k padded_matches")),
    Mutant("embedding backward: slots swapped", EMB, "slot = tl.where(started_here, 1, 0)",
           "slot = tl.where(started_here, 0, 1)", ("tests/test_embedding_sum.py", "-k triton")),
    Mutant("embedding backward: padding row not zeroed", EMB,
           "zero = in_runs & ((lo < 0) | (rows == padding_idx))", "zero = in_runs & (lo < 0)",
           ("tests/test_embedding_sum.py", "-k triton_backward")),
    Mutant("one host read: the longest row short by one", "bertfast/models/bert.py",
           "packed = ops.unpad(None, key_mask, sizes=(facts.longest, facts.total))",
           "packed = ops.unpad(None, key_mask, sizes=(facts.longest - 1, facts.total))",
           ("tests/test_model_parity.py", "-k layouts")),
    Mutant("left padding packed under a pooler", "bertfast/models/bert.py",
           "(model.pooler is not None and not facts.first_real)", "False",
           ("tests/test_heads.py", "-k PreTraining and left")),
    Mutant("a row without real tokens counts as left padding", "bertfast/models/bert.py",
           "(real[:, 0] | (lengths == 0)).all()", "real[:, 0].all()", ("tests/test_hardening.py", "-k odd_layouts")),
    # --- issue 12: transformers' PreTrainedModel surface on bertfast's own classes ----------------------
    Mutant("HF surface: a head draws its bert's weights twice", "bertfast/models/bert.py",
           "if not isinstance(child, BertPreTrainedModel):", "if True:",
           ("tests/test_hf_surface.py", "-k fresh_model")),
    Mutant("HF surface: the shard index names the first shard for all", "bertfast/models/checkpoint_io.py",
           '"weight_map": {k: name for name, shard in zip(names, shards) for k in shard}}',
           '"weight_map": {k: names[0] for name, shard in zip(names, shards) for k in shard}}',
           ("tests/test_hf_surface.py", "-k shards")),
    Mutant("HF surface: resize drops the last kept row", "bertfast/models/bert.py",
           "new.weight[:keep] = old.weight[:keep]", "new.weight[:keep - 1] = old.weight[:keep - 1]",
           ("tests/test_hf_surface.py", "-k resize")),
    Mutant("HF surface: hooks on the word embeddings bypassed", "bertfast/nn/modules.py",
           "if input_ids is not None and runs_as_module(emb.word_embeddings):", "if False:",
           ("tests/test_hf_surface.py", "-k input_require_grads")),
    Mutant("HF surface: bertfast's own outputs under transformers' tools", "bertfast/outputs.py",
           'if "transformers" in sys.modules:', "if False:",
           ("tests/test_integrations.py", "-k own_classes_in_pipelines")),
    Mutant("HF surface: a given state_dict ignored by save_pretrained", "bertfast/models/bert.py",
           "source = self.state_dict() if state_dict is None else state_dict", "source = self.state_dict()",
           ("tests/test_hf_surface.py", "-k save_pretrained_keyword")),
    Mutant("HF surface: Trainer's patched save keeps the tied copies", "bertfast/integrations/transformers.py",
           "original(self, output_dir, {k: v for k, v in state.items() if k not in tied})",
           "original(self, output_dir, state)", ("tests/test_integrations.py", "-k own_tied")),
    # --- issue 13: pre-training at scale ---------------------------------------------------------------
    Mutant("pretrain: MLM loss averaged per rank, not over the global masked count", "bertfast/training/pretrain.py",
           "mlm_part = mlm * (n_masked / total_masked) if total_masked else mlm * 0.0",
           "mlm_part = mlm / (d.world * accumulate)", ("tests/test_pretrain_scale.py", "-k torchrun and ddp-accumulate")),
    Mutant("pretrain: every rank reads the same slots", "bertfast/training/pretrain.py",
           "first = base + (a * self.world + self.rank) * self.batch", "first = base + a * self.world * self.batch",
           ("tests/test_pretrain_scale.py", "-k disjoint")),
    Mutant("pretrain: resume leaves the RNG unrestored", "bertfast/training/pretrain.py",
           "            set_rng_state(saved[\"rng\"][d.rank])", "            pass",
           ("tests/test_pretrain_scale.py", "-k resume_equals")),
    Mutant("LAMB: trust ratio inverted", "bertfast/training/lamb.py",
           "trust = torch.where((pn > 0) & (un > 0), pn / un, torch.ones_like(pn))",
           "trust = torch.where((pn > 0) & (un > 0), un / pn, torch.ones_like(pn))", ("tests/test_pretrain_scale.py", "-k lamb")),
    Mutant("prepare: segment B given segment A's token type", "bertfast/training/pretrain.py",
           "types.append([0] * (first_sep + 1) + [1] * (len(ids) - first_sep - 1))",
           "types.append([0] * len(ids))", ("tests/test_pretrain_scale.py", "-k disjoint")),
]
