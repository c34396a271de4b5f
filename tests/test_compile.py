"""torch.compile(fullgraph=True) traces bertfast's models with no graph break and matches eager (CPU,
reference/C++ backends). Under compile the padded batch runs with the key mask (packing would need the
token count on the host). Tolerance 1e-5: the compiled graph fuses and reorders fp32 arithmetic."""
import pytest
import torch

import bertfast


def setup(cls, **kw):
    torch.manual_seed(0)
    cfg = bertfast.BertConfig.tiny(vocab_size=100, max_position_embeddings=32, hidden_dropout_prob=0.0,
                                   attention_probs_dropout_prob=0.0, **kw)
    model = cls(cfg)
    ids = torch.randint(1, 100, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 2:] = 0
    return model, dict(input_ids=ids * mask, attention_mask=mask)


def test_bert_model_forward_and_gradients():
    torch._dynamo.reset()
    model, inputs = setup(bertfast.BertModel)
    compiled = torch.compile(model, fullgraph=True)
    real = inputs["attention_mask"].bool()
    want = model(**inputs).last_hidden_state
    got = compiled(**inputs).last_hidden_state
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=1e-5)
    weights = torch.randn(want.shape[-1])
    g_want = torch.autograd.grad((want[real] * weights).sum(), list(model.parameters()), allow_unused=True)
    g_got = torch.autograd.grad((got[real] * weights).sum(), list(model.parameters()), allow_unused=True)
    for (name, _), a, b in zip(model.named_parameters(), g_got, g_want):
        if b is not None:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("cls,labels", [
    (bertfast.BertForSequenceClassification, lambda ids: torch.tensor([0, 1, 1])),
    (bertfast.BertForMaskedLM, lambda ids: torch.where((ids % 3 == 0) & (ids > 0), ids, -100)),  # real tokens only
])
def test_heads_with_losses(cls, labels):
    torch._dynamo.reset()
    model, inputs = setup(cls)
    y = labels(inputs["input_ids"])
    want = model(**inputs, labels=y).loss
    got = torch.compile(model, fullgraph=True)(**inputs, labels=y).loss
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
def test_cuda_compile_with_triton_kernels():
    """On CUDA the compiled graph calls the Triton kernels (custom ops) and matches eager."""
    torch._dynamo.reset()
    model, inputs = setup(bertfast.BertModel)
    model = model.cuda()
    inputs = {k: v.cuda() for k, v in inputs.items()}
    compiled = torch.compile(model, fullgraph=True)
    real = inputs["attention_mask"].bool()
    want = model(**inputs).last_hidden_state
    got = compiled(**inputs).last_hidden_state
    torch.testing.assert_close(got[real], want[real], atol=1e-4, rtol=1e-4)  # fp32; eager packs, compiled pads
    g_want = torch.autograd.grad(want[real].sum(), model.embeddings.LayerNorm.weight)
    g_got = torch.autograd.grad(got[real].sum(), model.embeddings.LayerNorm.weight)
    torch.testing.assert_close(g_got, g_want, atol=1e-4, rtol=1e-4)
