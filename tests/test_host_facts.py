"""The forward's host facts in one Triton launch (kernels/host_facts.py, under the interpreter) against the
torch reductions they replace (models.batch.read_host_facts on the torch backend): exact (integers), over
mask dtypes (int64, int32, bool, float), id tensors of 1 and 2 dimensions and broadcast ones ([1, 1],
[1, S]), left padding, holes, empty and one-token rows, sizes that give one program and several (rows
not a multiple of the tile's 16, sequences not of its 128 columns), bad mask values and ids out of range
at either end of each id tensor."""
import pytest
import torch
from dispatch_counts import CountOps

from bertfast.models import batch


def read(backend, monkeypatch, mask, named):
    monkeypatch.setenv("BERTFAST_BACKEND", backend)
    try:
        return vars(batch.read_host_facts(mask, named))
    except (ValueError, IndexError) as e:
        return f"{type(e).__name__}: {e}"


def masks(b, s, g):
    """name -> [b, s] mask: full, right and left padding, holes, an empty and a one-token row."""
    lengths = torch.randint(1, s + 1, (b,), generator=g)
    right = (torch.arange(s)[None] < lengths[:, None]).long()
    holes = right.clone()
    holes[:, s // 3] = 0
    odd = right.clone()
    odd[0] = 0  # an empty row
    odd[-1] = 0
    odd[-1, 0] = 1  # one token
    return {"full": torch.ones(b, s, dtype=torch.long), "right": right, "left": right.flip(1), "holes": holes,
            "empty and one-token rows": odd}


@pytest.mark.parametrize("b,s", [(1, 1), (3, 11), (37, 300), (300, 37), (17, 129)])
def test_facts_match_torchs(b, s, monkeypatch):
    g = torch.Generator().manual_seed(b * 1000 + s)
    ids = torch.randint(0, 100, (b, s), generator=g)
    named = [("input_ids", ids, 100), ("token_type_ids", torch.randint(0, 2, (1, 1), generator=g), 2),
             ("position_ids", torch.arange(s)[None], 512)]
    for name, mask in masks(b, s, g).items():
        for dtype in (torch.int64, torch.int32, torch.bool, torch.float32):
            m = mask.to(dtype)
            for ids_given in (named[:1], named, [(n, t.to(torch.int32), r) for n, t, r in named]):
                want = read("torch", monkeypatch, m, ids_given)
                got = read("triton", monkeypatch, m, ids_given)
                assert got == want, (name, dtype, len(ids_given))
    # no mask, no ids, 1-D ids
    for mask, named_ids in ((None, named), (masks(b, s, g)["left"], []), (None, [("input_ids", ids[0], 100)])):
        assert read("triton", monkeypatch, mask, named_ids) == read("torch", monkeypatch, mask, named_ids)


def test_bad_values_and_ids_out_of_range_raise_as_torchs(monkeypatch):
    g = torch.Generator().manual_seed(1)
    b, s = 37, 300
    ids = torch.randint(1, 99, (b, s), generator=g)
    mask = torch.ones(b, s, dtype=torch.long)
    mask[5, 200:] = 0
    cases = []
    for value in (2, -1):
        m = mask.clone()
        m[36, 299] = value  # the last element, in the last program's rows
        cases.append((m, [("input_ids", ids, 100)]))
    for value in (0.5, float("nan")):
        m = mask.float()
        m[20, 0] = value
        cases.append((m, [("input_ids", ids, 100)]))
    for where, value in (((0, 0), -1), ((36, 299), 100), ((18, 150), 10**12)):
        bad = ids.clone()
        bad[where] = value
        cases.append((mask, [("input_ids", bad, 100)]))
    cases.append((mask, [("input_ids", ids, 100), ("token_type_ids", torch.tensor([[2]]), 2)]))
    cases.append((mask, [("input_ids", ids, 100), ("position_ids", torch.arange(s)[None] + 300, 512)]))
    for m, named in cases:
        want = read("torch", monkeypatch, m, named)
        assert isinstance(want, str), want
        assert read("triton", monkeypatch, m, named) == want


def test_one_launch_and_no_torch_reduction(monkeypatch):
    """On the Triton path the facts take one kernel: no torch reduction, comparison or stack runs."""
    monkeypatch.setenv("BERTFAST_BACKEND", "triton")
    ids = torch.randint(0, 100, (7, 50))
    mask = torch.ones(7, 50, dtype=torch.long)
    mask[2, 30:] = 0
    named = [("input_ids", ids, 100), ("position_ids", torch.arange(50)[None], 512)]
    with CountOps() as ops:
        facts = batch.read_host_facts(mask, named)
    assert vars(facts) == {"all_real": False, "longest": 50, "total": 7 * 50 - 20, "first_real": True}
    torch_ops = {"min", "max", "sum", "all", "ne", "eq", "ge", "le", "bitwise_and", "bitwise_or", "stack"}
    assert not torch_ops & set(ops.calls), ops.calls  # (the interpreter's own copies aside)
    monkeypatch.setenv("BERTFAST_BACKEND", "torch")
    with CountOps() as ops:
        assert vars(batch.read_host_facts(mask, named)) == vars(facts)
    assert torch_ops <= set(ops.calls) and sum(ops.calls[k] for k in torch_ops) >= 15, ops.calls
