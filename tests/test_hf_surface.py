"""The PreTrainedModel surface of bertfast's own classes (issue 12, point 2): what transformers' tools read
from a model and its config, save_pretrained's and gradient_checkpointing_enable's keyword arguments,
sharded checkpoints, output mappings, transformers' initial weights under a seed, and the same classes
working in a process where transformers cannot be imported. Reference ops on CPU, fp32: comparisons
are exact where the arithmetic is the same (initial weights, save/load round trips) and within 1e-6
where only the summation order differs (checkpointed vs not)."""
import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import bertfast

HEADS = ["BertModel", "BertForPreTraining", "BertForMaskedLM", "BertForNextSentencePrediction",
         "BertForSequenceClassification", "BertForQuestionAnswering", "BertForTokenClassification",
         "BertForMultipleChoice"]


def tiny(**kw):
    cfg = dict(vocab_size=120, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
               max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3)
    cfg.update(kw)
    return bertfast.BertConfig(**cfg)


def batch(b=3, s=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.arange(s)[None] < torch.tensor([s, 5, 1])[:b, None]).long()
    return dict(input_ids=torch.randint(1, 120, (b, s), generator=g) * mask, attention_mask=mask)


# Initial weights ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", HEADS)
def test_fresh_model_draws_transformers_weights(name):
    """Under the same seed every parameter and buffer equals transformers' draw, and the RNG is left in the
    same state (the same draws in the same order, the head's `bert` not drawn twice)."""
    transformers = pytest.importorskip("transformers")
    config = tiny(num_labels=2 if name == "BertForQuestionAnswering" else 3)
    torch.manual_seed(123)
    ours = getattr(bertfast, name)(config)
    after_ours = torch.rand(4)
    torch.manual_seed(123)
    theirs = getattr(transformers, name)(config.to_hf())
    after_theirs = torch.rand(4)
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert torch.equal(after_ours, after_theirs)


# Config --------------------------------------------------------------------------------------------
def test_config_attributes_tools_read(tmp_path):
    c = bertfast.BertConfig(torch_dtype="bfloat16", use_return_dict=False)
    assert c.dtype is torch.bfloat16 and c.torch_dtype is torch.bfloat16
    assert c.return_dict is False and c.use_return_dict is False
    c.use_return_dict = True
    assert c.return_dict is True
    assert c._commit_hash is None and c._attn_implementation == "bertfast" and c.is_encoder_decoder is False
    saved = c.to_dict()
    assert saved["dtype"] == "bfloat16" and not any(k.startswith("_") for k in saved)
    assert "use_return_dict" not in saved and "torch_dtype" not in saved
    c.save_pretrained(tmp_path)
    again = bertfast.BertConfig.from_pretrained(tmp_path)
    assert again == c and again.name_or_path == str(tmp_path)
    with pytest.raises(ValueError, match="dtype"):
        bertfast.BertConfig(dtype="float99")


def test_config_from_and_to_transformers():
    transformers = pytest.importorskip("transformers")
    hf = transformers.BertConfig(hidden_size=64, num_attention_heads=4, num_labels=5, dtype="float16")
    hf.name_or_path = "somewhere"
    ours = bertfast.BertConfig.from_hf(hf)
    assert ours.num_labels == 5 and ours.dtype is torch.float16 and ours.name_or_path == "somewhere"
    back = ours.to_hf()
    assert isinstance(back, transformers.BertConfig) and back.num_labels == 5 and back.name_or_path == "somewhere"
    model = bertfast.BertForSequenceClassification(hf)  # a transformers config is accepted as is
    assert isinstance(model.config, bertfast.BertConfig) and model.classifier.out_features == 5
    with pytest.raises(TypeError, match="config must be"):
        bertfast.BertModel({"hidden_size": 64})


# Model attributes ----------------------------------------------------------------------------------
def test_model_attributes_tools_read():
    torch.manual_seed(0)
    model = bertfast.BertForMaskedLM(tiny())
    assert model.device == torch.device("cpu") and model.dtype is torch.float32
    assert model.main_input_name == "input_ids" and model.supports_gradient_checkpointing
    assert model.base_model is model.bert and model.bert.base_model is model.bert
    assert model.get_input_embeddings() is model.bert.embeddings.word_embeddings
    assert model.get_output_embeddings() is model.cls.predictions.decoder
    assert model.can_generate() is False and model.name_or_path == ""
    tied_once = sum(p.numel() for p in set(model.parameters()))
    assert model.num_parameters() == tied_once
    tables = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    assert model.num_parameters(exclude_embeddings=True) == tied_once - tables
    model.bert.encoder.requires_grad_(False)
    assert model.num_parameters(only_trainable=True) == tied_once - sum(p.numel() for p in model.bert.encoder.parameters())
    assert model.to(torch.bfloat16).dtype is torch.bfloat16


def test_attributes_agree_with_transformers():
    transformers = pytest.importorskip("transformers")
    config = tiny()
    ours, theirs = bertfast.BertForPreTraining(config), transformers.BertForPreTraining(config.to_hf())
    for kw in ({}, {"only_trainable": True}, {"exclude_embeddings": True}):
        assert ours.num_parameters(**kw) == theirs.num_parameters(**kw), kw
    # transformers 4's get_extended_attention_mask (5 dropped it; code written for 4 still calls it)
    mask = batch()["attention_mask"]
    for dtype in (torch.float32, torch.bfloat16):
        got = ours.get_extended_attention_mask(mask, mask.shape, dtype=dtype)
        assert got.shape == (3, 1, 1, 9) and got.dtype is dtype
        assert torch.equal(got[:, 0, 0] == 0, mask.bool()) and (got[~mask.bool()[:, None, None]] == torch.finfo(dtype).min).all()


@pytest.mark.parametrize("mean_resizing", [False, True])
def test_resize_token_embeddings(tmp_path, mean_resizing):
    """Old rows kept, the decoder and its bias follow (still tied), config.vocab_size updated, new ids
    accepted, a save/load round trip exact; new rows drawn as transformers draws them."""
    transformers = pytest.importorskip("transformers")
    config = tiny()
    torch.manual_seed(0)
    ours = bertfast.BertForMaskedLM(config)
    torch.manual_seed(0)
    theirs = transformers.BertForMaskedLM(config.to_hf())
    old = ours.get_input_embeddings().weight.detach().clone()
    torch.manual_seed(5)
    ours.resize_token_embeddings(131, pad_to_multiple_of=8, mean_resizing=mean_resizing)
    torch.manual_seed(5)
    theirs.resize_token_embeddings(131, pad_to_multiple_of=8, mean_resizing=mean_resizing)
    new = ours.get_input_embeddings().weight
    assert new.shape == (136, 64) and ours.config.vocab_size == 136
    assert torch.equal(new[:120], old)
    torch.testing.assert_close(new, theirs.get_input_embeddings().weight, rtol=0, atol=1e-6)
    assert ours.cls.predictions.decoder.weight is new and ours.cls.predictions.bias.shape == (136,)
    assert ours.cls.predictions.decoder.bias is ours.cls.predictions.bias
    ids = torch.tensor([[1, 130, 135]])
    logits = ours(ids).logits
    assert logits.shape == (1, 3, 136)
    ours.save_pretrained(tmp_path)
    again = bertfast.BertForMaskedLM.from_pretrained(tmp_path)
    assert torch.equal(again(ids).logits, ours.eval()(ids).logits)
    with pytest.raises(IndexError, match="input_ids"):
        ours(torch.tensor([[136]]))
    shrunk = ours.resize_token_embeddings(100)
    assert shrunk.num_embeddings == 100 and ours(torch.tensor([[99]])).logits.shape[-1] == 100


@pytest.mark.parametrize("backend_name", ["torch", "triton"])
def test_input_require_grads_and_hooks_on_the_word_embeddings(backend_name, backend):
    """enable_input_require_grads on a frozen model: the embeddings' output requires grad, so adapters
    behind reentrant checkpointing get gradients; a user's hook on the word embeddings sees every lookup,
    padded and packed (the fused embedding runs the lookup as a module call while hooked)."""
    backend(backend_name)
    torch.manual_seed(0)
    model = bertfast.BertModel(tiny())
    model.requires_grad_(False)
    model.gradient_checkpointing_enable({"use_reentrant": True})  # PEFT's and older transformers' choice
    adapter = torch.nn.Parameter(torch.ones(64))
    model.encoder.layer[1].output.LayerNorm.register_forward_hook(lambda m, a, out: out * adapter)
    model.train()
    inputs = batch()
    with pytest.warns(UserWarning, match="None of the inputs have requires_grad"):
        out = model(**inputs).last_hidden_state
    assert not out.requires_grad  # reentrant checkpointing, no input requiring grad: the adapter is cut off
    model.enable_input_require_grads()
    model(**inputs).last_hidden_state.sum().backward()
    assert adapter.grad is not None and adapter.grad.abs().sum() > 0
    model.disable_input_require_grads()
    assert not model.get_input_embeddings()._forward_hooks

    seen = []
    model.get_input_embeddings().register_forward_hook(lambda m, a, out: seen.append(tuple(a[0].shape)))
    model.eval()
    with torch.no_grad():
        hooked = model(**inputs).last_hidden_state
        model(input_ids=inputs["input_ids"])  # no padding: the padded path
    assert len(seen) == 2
    model.get_input_embeddings()._forward_hooks.clear()
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).last_hidden_state, hooked, rtol=1e-6, atol=1e-6)


# Gradient checkpointing ------------------------------------------------------------------------------
def _grads(model, inputs):
    model.zero_grad()
    model(**inputs).last_hidden_state.square().mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_keyword_arguments():
    torch.manual_seed(0)
    model = bertfast.BertModel(tiny(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)).train()
    inputs = batch()
    torch.manual_seed(3)
    want = _grads(model, inputs)
    for kwargs in ({"gradient_checkpointing_kwargs": {"use_reentrant": False}, "every_n_layers": 2},
                   {"gradient_checkpointing_kwargs": None, "offload": True}, {"every_n_layers": 5}):
        model.gradient_checkpointing_enable(**kwargs)
        assert model.is_gradient_checkpointing
        torch.manual_seed(3)
        got = _grads(model, inputs)
        assert got.keys() == want.keys()
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-6, msg=f"{kwargs}: {k}")
        model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing
    with pytest.warns(UserWarning, match=r"not honoured.*\['some_future_option'\]"):
        model.gradient_checkpointing_enable(some_future_option=3)
    with pytest.warns(UserWarning, match="preserve_rng_state"):
        model.gradient_checkpointing_enable({"preserve_rng_state": False})
    with pytest.raises(ValueError, match="every_n_layers"):
        model.gradient_checkpointing_enable(every_n_layers=0)


def test_gradient_checkpointing_default_is_transformers_non_reentrant():
    """transformers 5's gradient_checkpointing_enable() defaults to use_reentrant=False, under which frozen
    embeddings (a checkpointed layer whose input needs no grad) still give every layer its gradients; the
    reentrant variant would give the layers none. Ours, by default, gives the same gradients as without
    checkpointing."""
    torch.manual_seed(0)
    model = bertfast.BertModel(tiny()).train()
    model.embeddings.requires_grad_(False)
    inputs = batch()
    want = _grads(model, inputs)
    model.gradient_checkpointing_enable()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the reentrant variant warns that no input requires grad
        got = _grads(model, inputs)
    assert got.keys() == want.keys() and any(k.startswith("encoder.layer.0.") for k in got)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-6, msg=k)


# Saving and loading -------------------------------------------------------------------------------------
def test_save_pretrained_keyword_arguments_and_shards(tmp_path):
    torch.manual_seed(0)
    model = bertfast.BertForPreTraining(tiny()).eval()
    inputs = batch()
    want = model(**inputs).prediction_logits
    model.save_pretrained(tmp_path / "one", safe_serialization=True)
    assert sorted(os.listdir(tmp_path / "one")) == ["config.json", "model.safetensors"]
    model.save_pretrained(tmp_path / "one", max_shard_size="100KB")  # re-saved sharded: the single file goes
    files = sorted(os.listdir(tmp_path / "one"))
    shards = [f for f in files if f.startswith("model-")]
    assert "model.safetensors" not in files and "model.safetensors.index.json" in files and len(shards) > 2
    assert all(os.path.getsize(tmp_path / "one" / f) <= 100_000 + 40_000 for f in shards)  # + header, or one tensor
    index = json.loads((tmp_path / "one" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert "cls.predictions.decoder.weight" not in index["weight_map"]  # tied: written once
    again = bertfast.BertForPreTraining.from_pretrained(tmp_path / "one")
    assert torch.equal(again(**inputs).prediction_logits, want)

    model.save_pretrained(tmp_path / "bin", safe_serialization=False, max_shard_size=10**9)
    assert "pytorch_model.bin" in os.listdir(tmp_path / "bin")
    with pytest.raises(RuntimeError, match="pickle"):
        bertfast.BertForPreTraining.from_pretrained(tmp_path / "bin")
    again = bertfast.BertForPreTraining.from_pretrained(tmp_path / "bin", allow_pickle=True)
    assert torch.equal(again(**inputs).prediction_logits, want)

    with pytest.warns(UserWarning, match=r"ignored: \['push_to_hub', 'variant'\]"):
        model.save_pretrained(tmp_path / "kw", push_to_hub=True, variant="fp16", token=None)
    model.save_pretrained(tmp_path / "not-main", is_main_process=False)
    assert not (tmp_path / "not-main").exists()
    state = {k: torch.full_like(v, 0.5) if k.endswith("seq_relationship.bias") else v
             for k, v in model.state_dict().items()}
    model.save_pretrained(tmp_path / "given", state_dict=state)
    again = bertfast.BertForPreTraining.from_pretrained(tmp_path / "given")
    assert torch.equal(again.cls.seq_relationship.bias, torch.full((2,), 0.5))
    with pytest.raises(ValueError, match="max_shard_size"):
        model.save_pretrained(tmp_path / "bad", max_shard_size="lots")


def test_sharded_checkpoints_cross_both_libraries(tmp_path):
    """A sharded folder written by transformers loads into bertfast and the reverse, with equal outputs."""
    transformers = pytest.importorskip("transformers")
    config = tiny()
    torch.manual_seed(0)
    theirs = transformers.BertForSequenceClassification(config.to_hf()).eval()
    theirs.save_pretrained(tmp_path / "hf", max_shard_size="100KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    ours = bertfast.BertForSequenceClassification.from_pretrained(tmp_path / "hf")
    inputs = batch()
    torch.testing.assert_close(ours(**inputs).logits, theirs(**inputs).logits, rtol=1e-5, atol=1e-5)
    ours.save_pretrained(tmp_path / "ours", max_shard_size="100KB")
    back = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "ours").eval()
    torch.testing.assert_close(back(**inputs).logits, theirs(**inputs).logits, rtol=1e-5, atol=1e-5)


def test_from_pretrained_keyword_arguments(tmp_path):
    torch.manual_seed(0)
    bertfast.BertModel(tiny()).save_pretrained(tmp_path / "sub")
    model = bertfast.BertModel.from_pretrained(tmp_path, subfolder="sub", add_pooling_layer=False,
                                               torch_dtype="bfloat16", hidden_dropout_prob=0.2)
    assert model.pooler is None and model.dtype is torch.bfloat16 and model.config.hidden_dropout_prob == 0.2
    with pytest.warns(UserWarning, match=r"ignored: \['revision'\]"):
        bertfast.BertModel.from_pretrained(tmp_path / "sub", revision="main", local_files_only=True)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['hidden_sise'\]"):
        bertfast.BertModel.from_pretrained(tmp_path / "sub", hidden_sise=3)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        bertfast.BertModel.from_pretrained(tmp_path / "nowhere")


# Outputs ----------------------------------------------------------------------------------------------
def test_outputs_are_mappings_like_model_output():
    from bertfast.outputs import BaseModelOutputWithPoolingAndCrossAttentions, MaskedLMOutput

    x, y = torch.ones(2), torch.zeros(2)
    out = BaseModelOutputWithPoolingAndCrossAttentions({"last_hidden_state": x, "pooler_output": y})
    assert out["last_hidden_state"] is x and out[0] is x and out[1] is y and out.pooler_output is y
    assert list(dict(out)) == ["last_hidden_state", "pooler_output"] and out.to_tuple() == (x, y)
    assert list(MaskedLMOutput([("logits", x)])) == ["logits"]
    with pytest.raises(TypeError, match="no field 'scores'"):
        MaskedLMOutput({"scores": x})
    masked = MaskedLMOutput(logits=x)
    assert masked[0] is x and list(masked.keys()) == ["logits"]


# Without transformers -----------------------------------------------------------------------------------
def test_own_classes_work_where_transformers_cannot_be_imported(tmp_path):
    """transformers blocked in a fresh process: models build, run, checkpoint, save and load; outputs
    are bertfast's own mappings."""
    script = textwrap.dedent(f"""
        import sys
        sys.modules["transformers"] = None  # import transformers -> ImportError
        import torch, bertfast
        from bertfast.outputs import ModelOutput
        cfg = bertfast.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=16)
        model = bertfast.BertForSequenceClassification(cfg).train()
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={{"use_reentrant": False}})
        ids = torch.randint(1, 50, (2, 7))
        out = model(ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 1]))
        out.loss.backward()
        assert type(out).__module__ == "bertfast.outputs" and isinstance(out, ModelOutput) and out[0] is out.loss
        model.save_pretrained({str(tmp_path)!r}, max_shard_size="50KB")
        again = bertfast.BertForSequenceClassification.from_pretrained({str(tmp_path)!r})
        assert torch.equal(again(ids).logits, model.eval()(ids).logits)
        try:
            model.to_transformers()
        except ImportError:
            print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_to_transformers_shares_parameters():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    ours = bertfast.BertForMaskedLM(tiny()).eval()
    theirs = ours.to_transformers()
    assert isinstance(theirs, transformers.BertForMaskedLM)
    own = {id(p) for p in ours.parameters()}
    assert all(id(p) in own for p in theirs.parameters())
    assert theirs.cls.predictions.decoder.weight is theirs.bert.embeddings.word_embeddings.weight
    inputs = batch()
    mask = inputs["attention_mask"].bool()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fast path: no fallback warning
        got = theirs(**inputs).logits
    torch.testing.assert_close(got[mask], ours(**inputs).logits[mask], rtol=1e-5, atol=1e-5)
