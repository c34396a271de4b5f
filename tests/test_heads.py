"""Every head against transformers with the same weights and batch (fp32, CPU): logits and loss within
1e-5, gradients within 1e-5 (same fp32 arithmetic up to summation order; the chunked MLM loss sums its
chunks in a different order)."""
import pytest
import torch

import bertfast
from pairs import segments

transformers = pytest.importorskip("transformers")

HEADS = ["BertForPreTraining", "BertForMaskedLM", "BertForNextSentencePrediction", "BertForSequenceClassification",
         "BertForQuestionAnswering", "BertForTokenClassification", "BertForMultipleChoice"]


def config(**kw):
    return bertfast.BertConfig(vocab_size=120, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=128, max_position_embeddings=40, hidden_dropout_prob=0.0,
                               attention_probs_dropout_prob=0.0, **kw)


def pair(name, **kw):
    cfg = config(**kw)
    torch.manual_seed(0)
    hf_cfg = cfg.to_hf()
    hf_cfg._attn_implementation = "eager"
    hf = getattr(transformers, name)(hf_cfg).eval()
    bf = getattr(bertfast, name)(cfg).eval()
    bf.load_state_dict(hf.state_dict(), strict=True)
    bf.tie_weights()
    return cfg, hf, bf


def batch(cfg, b=3, s=11, choices=None, layout="right"):
    """Sentence pairs (segments()) in rows of lengths s, 6 and 1 (a single token), padded on the right or the
    left, or with holes."""
    g = torch.Generator().manual_seed(1)
    shape = (b, choices, s) if choices else (b, s)
    lengths = torch.tensor([s, 6, 1, 9, 4])[:b]
    mask = (torch.arange(s)[None] < lengths[:, None]).long()
    if layout == "left":
        mask = mask.flip(1)
    elif layout == "holes":
        mask[0, 3:5] = 0
        mask[1, 1] = 0
    if choices:
        mask = mask[:, None].expand(shape).contiguous()
    ids = torch.randint(1, cfg.vocab_size, shape, generator=g) * mask
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=segments(mask)), g



def labels_for(name, cfg, inputs, g):
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    b = ids.shape[0]
    if name in ("BertForPreTraining", "BertForMaskedLM"):
        labels = torch.where((torch.rand(ids.shape, generator=g) < 0.3) & mask.bool(), ids, -100)
        labels[0, 0] = ids[0, 0]  # at least one
        out = dict(labels=labels)
        if name == "BertForPreTraining":
            out["next_sentence_label"] = torch.randint(0, 2, (b,), generator=g)
        return out
    if name == "BertForNextSentencePrediction":
        return dict(labels=torch.randint(0, 2, (b,), generator=g))
    if name == "BertForSequenceClassification":
        return dict(labels=torch.randint(0, cfg.num_labels, (b,), generator=g))
    if name == "BertForQuestionAnswering":
        return dict(start_positions=torch.tensor([1, 50, 0]), end_positions=torch.tensor([3, 2, 99]))
    if name == "BertForTokenClassification":
        return dict(labels=torch.where(mask.bool(), torch.randint(0, cfg.num_labels, ids.shape, generator=g), -100))
    return dict(labels=torch.randint(0, ids.shape[1], (b,), generator=g))


def logits_of(name, out, hf_side):
    if name == "BertForPreTraining":
        return [out.prediction_logits, out.seq_relationship_logits]
    if name == "BertForQuestionAnswering":
        return [out.start_logits, out.end_logits]
    return [out.logits]


def test_question_answering_never_answers_padding():
    cfg, hf, bf = pair("BertForQuestionAnswering")
    inputs, _ = batch(cfg)
    out = bf(**inputs)
    pad = inputs["attention_mask"] == 0
    assert torch.all(out.start_logits[pad] == torch.finfo(torch.float32).min)
    assert torch.all(out.end_logits.argmax(-1) < inputs["attention_mask"].sum(-1))


def real(name, t, mask):
    """Compare token-level logits on real tokens only (padded positions differ by design)."""
    if t.dim() >= 2 and t.shape[:2] == mask.shape:
        return t[mask.bool()]
    return t


@pytest.mark.parametrize("layout,backend_name", [("right", "torch"), ("left", "torch"), ("holes", "torch"),
                                                 ("left", "triton"), ("holes", "triton")])
@pytest.mark.parametrize("name", HEADS)
def test_head_matches_transformers(name, layout, backend_name, backend):
    """Each head, right or left padding or holes, a single-token row; the reference ops, and the Triton
    kernels under the interpreter."""
    backend(backend_name)
    kw = dict(num_labels=3) if name in ("BertForSequenceClassification", "BertForTokenClassification") else {}
    cfg, hf, bf = pair(name, **kw)
    inputs, g = batch(cfg, choices=4 if name == "BertForMultipleChoice" else None, layout=layout)
    labels = labels_for(name, cfg, inputs, g)
    mask = inputs["attention_mask"]
    # logits without labels
    with torch.no_grad():
        want, got = hf(**inputs), bf(**inputs)
    for a, b in zip(logits_of(name, want, True), logits_of(name, got, False)):
        torch.testing.assert_close(real(name, b, mask), real(name, a, mask), atol=1e-5, rtol=1e-5)
    # loss and gradients with labels
    if name == "BertForQuestionAnswering":
        # bertfast gives padded positions the minimum logit (never an answer); transformers does not, so
        # its loss differs with padding by design: compare on a batch without padding.
        inputs = dict(inputs, attention_mask=torch.ones_like(mask))
    want, got = hf(**inputs, **labels), bf(**inputs, **labels)
    torch.testing.assert_close(got.loss, want.loss, atol=1e-5, rtol=1e-5)
    want.loss.backward()
    got.loss.backward()
    hf_params = dict(hf.named_parameters())
    for key, p in bf.named_parameters():
        if p.grad is None:
            assert hf_params[key].grad is None or hf_params[key].grad.abs().max() == 0, key
            continue
        torch.testing.assert_close(p.grad, hf_params[key].grad, atol=1e-5, rtol=1e-4, msg=lambda m: f"{key}: {m}")


def test_mlm_with_labels_skips_full_logits_unless_asked():
    cfg, hf, bf = pair("BertForMaskedLM")
    inputs, g = batch(cfg)
    labels = labels_for("BertForMaskedLM", cfg, inputs, g)
    out = bf(**inputs, **labels)
    assert out.logits is None and out.loss is not None
    out = bf(**inputs, **labels, output_logits=True)
    assert out.logits.shape == (*inputs["input_ids"].shape, cfg.vocab_size)


def test_mlm_loss_ignores_minus_100_everywhere_and_chunks_agree():
    cfg, hf, bf = pair("BertForMaskedLM")
    inputs, g = batch(cfg)
    none = torch.full_like(inputs["input_ids"], -100)
    loss = bf(**inputs, labels=none).loss
    assert loss.item() == 0.0 and loss.requires_grad  # HF gives NaN here
    hidden = torch.randn(50, cfg.hidden_size)
    labels = torch.randint(0, cfg.vocab_size, (50,))
    w, b = torch.randn(cfg.vocab_size, cfg.hidden_size), torch.randn(cfg.vocab_size)
    full = torch.nn.functional.cross_entropy(hidden @ w.T + b, labels)
    chunked = bertfast.ops.linear_cross_entropy(hidden, w, b, labels, chunk_rows=7)
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("problem", ["regression", "single_label_classification", "multi_label_classification"])
def test_sequence_classification_problem_types(problem):
    num_labels = 1 if problem == "regression" else 3
    cfg, hf, bf = pair("BertForSequenceClassification", num_labels=num_labels)
    inputs, g = batch(cfg)
    if problem == "regression":
        labels = torch.randn(3)
    elif problem == "single_label_classification":
        labels = torch.tensor([0, 2, 1])
    else:
        labels = torch.randint(0, 2, (3, 3)).float()
    want, got = hf(**inputs, labels=labels), bf(**inputs, labels=labels)
    assert bf.config.problem_type == hf.config.problem_type == problem
    torch.testing.assert_close(got.loss, want.loss, atol=1e-5, rtol=1e-5)


def test_decoder_is_tied_to_word_embeddings():
    bf = bertfast.BertForPreTraining(config())
    assert bf.cls.predictions.decoder.weight is bf.bert.embeddings.word_embeddings.weight
    assert bf.cls.predictions.decoder.bias is bf.cls.predictions.bias


def test_fine_tune_from_a_bare_encoder_checkpoint(tmp_path, minilm_dir):
    with pytest.warns(UserWarning, match="newly initialised"):
        model = bertfast.BertForSequenceClassification.from_pretrained(minilm_dir, num_labels=2)
    base = bertfast.BertModel.from_pretrained(minilm_dir)
    torch.testing.assert_close(model.bert.encoder.layer[0].output.dense.weight, base.encoder.layer[0].output.dense.weight)
    model.save_pretrained(tmp_path)
    again = transformers.BertForSequenceClassification.from_pretrained(str(tmp_path))
    torch.testing.assert_close(again.classifier.weight, model.classifier.weight)


def test_pretraining_checkpoint_round_trip_with_transformers(tmp_path):
    cfg, hf, bf = pair("BertForPreTraining")
    hf.save_pretrained(tmp_path)
    loaded = bertfast.BertForPreTraining.from_pretrained(tmp_path)
    for k, v in hf.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, msg=k)
    assert loaded.cls.predictions.decoder.weight is loaded.bert.embeddings.word_embeddings.weight
