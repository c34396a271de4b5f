"""Hardening: gradient checkpointing and determinism (CPU, and CUDA GPU-marked), and a bad-input suite
where every case is a clear exception naming the argument (or a documented result), never a crash or NaN."""
import pytest
import torch

import bertfast


def tiny(**kw):
    cfg = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
               max_position_embeddings=16)
    cfg.update(kw)
    return bertfast.BertConfig(**cfg)


def batch(b=3, s=10, vocab=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([s, s // 2, 1, 3][:b] + [s] * max(0, b - 4))
    mask = (torch.arange(s)[None] < lengths[:, None]).long()
    return dict(input_ids=torch.randint(1, vocab, (b, s), generator=g) * mask, attention_mask=mask)


def grads_of(model, inputs, seed=0):
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    out = model(**inputs).last_hidden_state
    (out * torch.linspace(-1, 1, out.shape[-1], device=out.device)).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# cpu: the reference ops; triton: the Triton kernels under the interpreter (their dropout masks are drawn
# in the kernels and must be redrawn identically); cuda: the Triton kernels on a GPU
ON = [pytest.param("cpu"), pytest.param("triton"), pytest.param("cuda", marks=pytest.mark.gpu)]


def on(device, inputs):
    return {k: v.to("cpu" if device == "triton" else device) for k, v in inputs.items()}


@pytest.fixture
def place(backend):
    """The torch device of a case of ON, with the backend it means set."""
    def choose(device):
        if device == "triton":
            backend("triton")
            return "cpu"
        return device
    return choose


@pytest.mark.parametrize("device", ON)
@pytest.mark.parametrize("reentrant", [True, False])
def test_gradient_checkpointing_gives_the_same_gradients(reentrant, device, place):
    torch.manual_seed(0)
    model = bertfast.BertModel(tiny()).train().to(place(device))  # dropout on: the recomputation must redraw the same masks
    inputs = on(device, batch())
    want = grads_of(model, inputs)
    model.gradient_checkpointing_enable({"use_reentrant": reentrant})
    got = grads_of(model, inputs)
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("device", ON)
def test_deterministic_algorithms_give_bitwise_identical_gradients(device, monkeypatch, place):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what deterministic cuBLAS asks for
    torch.manual_seed(0)
    model = bertfast.BertModel(tiny()).train().to(place(device))
    inputs = on(device, batch())
    torch.use_deterministic_algorithms(True)
    try:
        a, b = grads_of(model, inputs, seed=3), grads_of(model, inputs, seed=3)
    finally:
        torch.use_deterministic_algorithms(False)
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.fixture(scope="module")
def model():
    return bertfast.BertModel(tiny()).eval()


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(input_ids=torch.tensor([[1, 64]])), IndexError, "input_ids holds 64"),
    (dict(input_ids=torch.tensor([[1, -1]])), IndexError, "input_ids holds -1"),
    (dict(input_ids=torch.tensor([[1, 2]]), token_type_ids=torch.tensor([[0, 2]])), IndexError, "token_type_ids holds 2"),
    (dict(input_ids=torch.tensor([[1, 2]]), position_ids=torch.tensor([[0, 16]])), IndexError, "position_ids holds 16"),
    (dict(input_ids=torch.ones(1, 17, dtype=torch.long)), ValueError, "more than max_position_embeddings=16"),
    (dict(input_ids=torch.ones(2, 4, dtype=torch.long), attention_mask=torch.ones(2, 5)), ValueError,
     r"attention_mask must have shape \[batch, seq\] = \[2, 4\]"),
    (dict(input_ids=torch.ones(2, 4, dtype=torch.long), attention_mask=torch.full((2, 4), 2)), ValueError, "only 0 and 1"),
    (dict(input_ids=torch.ones(2, 4, dtype=torch.long), attention_mask=torch.full((2, 4), 0.5)), ValueError,
     "only 0 and 1"),
    (dict(input_ids=torch.ones(2, 4, dtype=torch.long), attention_mask=torch.full((2, 4), -1)), ValueError,
     "only 0 and 1"),
    (dict(input_ids=torch.ones(2, 4, dtype=torch.long), attention_mask=torch.ones(3, 4)), ValueError, "attention_mask must have shape"),
    (dict(input_ids=torch.ones(2, 4, dtype=torch.long), token_type_ids=torch.zeros(3, 4, dtype=torch.long)), ValueError,
     "token_type_ids has shape"),
    (dict(input_ids=torch.ones(2, 4)), TypeError, "input_ids must have dtype"),
    (dict(input_ids=torch.ones(2, 4, dtype=torch.long), inputs_embeds=torch.ones(2, 4, 32)), ValueError, "exactly one of"),
    (dict(), ValueError, "exactly one of"),
    (dict(input_ids=torch.ones(4, dtype=torch.long)), ValueError, r"input_ids must be a \[batch, seq\] tensor"),
    (dict(input_ids=torch.ones(2, 4, dtype=torch.long, device="meta")), (ValueError, NotImplementedError, RuntimeError),
     "meta|device"),
])
def test_bad_input_raises_clearly(model, kwargs, error, match):
    with pytest.raises(error, match=match):
        model(**kwargs)


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32, torch.float16, torch.int32])
def test_masks_of_every_dtype_mean_the_same(model, dtype):
    inputs = batch()
    with torch.no_grad():
        want = model(**inputs).last_hidden_state
        got = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"].to(dtype)).last_hidden_state
    torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_empty_zero_length_and_odd_layouts(model):
    with torch.no_grad():
        empty = model(input_ids=torch.ones(0, 5, dtype=torch.long)).last_hidden_state
        assert empty.shape == (0, 5, 32)
        padded = model(input_ids=torch.ones(2, 5, dtype=torch.long), attention_mask=torch.zeros(2, 5, dtype=torch.long))
        assert torch.all(padded.last_hidden_state == 0) and torch.isfinite(padded.pooler_output).all()
        ids = torch.randint(1, 64, (6, 9))
        base = model(input_ids=ids[::2]).last_hidden_state
        torch.testing.assert_close(model(input_ids=ids[::2].contiguous()).last_hidden_state, base)  # non-contiguous
        expanded = model(input_ids=ids[:1].expand(3, 9)).last_hidden_state
        torch.testing.assert_close(expanded[2], expanded[0])


def test_bad_configs():
    with pytest.raises(ValueError, match="multiple of num_attention_heads"):
        tiny(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="layer_norm_eps must be > 0"):
        tiny(layer_norm_eps=0.0)
    with pytest.raises(ValueError, match=r"hidden_dropout_prob must be in \[0, 1\)"):
        tiny(hidden_dropout_prob=1.0)


def test_pickled_checkpoints_are_refused_unless_asked(tmp_path):
    model = bertfast.BertModel(tiny())
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(RuntimeError, match="is a pickle"):
        bertfast.BertModel.from_pretrained(tmp_path)
    loaded = bertfast.BertModel.from_pretrained(tmp_path, allow_pickle=True)
    assert torch.equal(loaded.embeddings.word_embeddings.weight, model.embeddings.word_embeddings.weight)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def test_a_thousand_training_steps_keep_memory_flat_and_loss_finite():
    torch.manual_seed(0)
    model = bertfast.BertForMaskedLM(tiny(hidden_dropout_prob=0.1)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    inputs = batch(b=4, s=12)
    labels = torch.where(inputs["attention_mask"].bool(), inputs["input_ids"], -100)
    rss = []
    for step in range(1000):
        opt.zero_grad(set_to_none=True)
        loss = model(**inputs, labels=labels).loss
        assert torch.isfinite(loss), f"step {step}: loss {loss.item()}"
        loss.backward()
        opt.step()
        if step in (100, 999):
            rss.append(_rss_mb())
    assert rss[1] - rss[0] < 30, f"resident memory grew from {rss[0]:.0f} MB to {rss[1]:.0f} MB"
