"""Writes the small labelled sets in examples/data (deterministic): a sentiment set for `finetune
classify`, and tiny NER and QA sets for `finetune ner` / `finetune qa`. They are synthetic (templates),
made so the fine-tuning commands have data on a machine with no downloads."""
import json
import random
from pathlib import Path

OUT = Path(__file__).parent / "data"
SUBJECTS = ["movie", "book", "restaurant", "phone", "hotel", "service", "album", "game", "laptop", "show", "meal",
            "concert", "car", "course", "app"]
POSITIVE = ["wonderful", "excellent", "delightful", "great", "fantastic", "superb", "enjoyable", "brilliant", "lovely",
            "impressive", "charming", "reliable"]
NEGATIVE = ["terrible", "awful", "boring", "disappointing", "horrible", "dreadful", "poor", "annoying", "mediocre",
            "broken", "unpleasant", "useless"]
TEMPLATES = ["The {s} was {a}.", "I thought the {s} was really {a}.", "What a {a} {s} this turned out to be.",
             "Honestly, the {s} felt {a} from start to finish.", "My friends agreed the {s} was {a}.",
             "We found the {s} {a} and would say so again.", "Overall a {a} {s}.", "This {s} is simply {a}."]
NAMES = ["Alice", "Bob", "Carla", "Deepak", "Elena", "Farid", "Grace", "Hiro"]
CITIES = ["Paris", "Lagos", "Lima", "Oslo", "Hanoi", "Denver", "Cairo", "Perth"]
ORGS = ["Acme", "Globex", "Initech", "Umbrella", "Stark", "Wayne"]


def sentiment(rng, n):
    rows = []
    for _ in range(n):
        label = rng.choice(["positive", "negative"])
        adjective = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
        rows.append({"text": rng.choice(TEMPLATES).format(s=rng.choice(SUBJECTS), a=adjective), "label": label})
    return rows


def ner(rng, n):
    rows = []
    for _ in range(n):
        name, city, org = rng.choice(NAMES), rng.choice(CITIES), rng.choice(ORGS)
        form = rng.randrange(3)
        if form == 0:
            words, tags = [name, "moved", "to", city, "last", "year", "."], ["B-PER", "O", "O", "B-LOC", "O", "O", "O"]
        elif form == 1:
            words = [name, "works", "for", org, "Corp", "in", city, "."]
            tags = ["B-PER", "O", "O", "B-ORG", "I-ORG", "O", "B-LOC", "O"]
        else:
            words, tags = ["The", org, "office", "in", city, "hired", name, "."], ["O", "B-ORG", "O", "O", "B-LOC", "O", "B-PER", "O"]
        rows.append({"tokens": words, "tags": tags})
    return rows


def qa(rng, n):
    rows = []
    for _ in range(n):
        name, city, org = rng.choice(NAMES), rng.choice(CITIES), rng.choice(ORGS)
        context = f"{name} works for {org} and lives in {city}. The company was founded long ago."
        question, answer = rng.choice([("Where does {n} live?", city), ("Who works for {o}?", name),
                                       ("Which company does {n} work for?", org)])
        question = question.format(n=name, o=org)
        rows.append({"question": question, "context": context, "answer_text": answer,
                     "answer_start": context.index(answer)})
    return rows


def write(name, rows):
    with open(OUT / name, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    rng = random.Random(0)
    OUT.mkdir(exist_ok=True)
    write("sentiment_train.jsonl", sentiment(rng, 400))
    write("sentiment_eval.jsonl", sentiment(rng, 200))
    write("ner_train.jsonl", ner(rng, 200))
    write("ner_eval.jsonl", ner(rng, 60))
    write("qa_train.jsonl", qa(rng, 200))
    write("qa_eval.jsonl", qa(rng, 60))
