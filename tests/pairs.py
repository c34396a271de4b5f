"""Sentence-pair inputs for the model tests."""


def segments(mask):
    """Sentence pairs: token type 1 on the second half of each row's real tokens (segment B, as a
    tokenizer gives the second text of a pair), 0 on the first half and on padding; whatever the
    layout (left padding, holes). A one-token row is all segment A."""
    real = mask.bool()
    rank = real.long().cumsum(-1)  # 1-based position among the row's real tokens
    count = real.sum(-1, keepdim=True)
    return ((rank > (count + 1) // 2) & real).long()
