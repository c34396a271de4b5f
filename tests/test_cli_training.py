"""The training commands end to end on CPU, small: pre-training lowers the MLM loss; fine-tuning runs each
task and reports its metrics; bad data stops with a message naming the file and line."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data"


def run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "bertfast", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env={**__import__("os").environ, "TRITON_INTERPRET": "0", "BERTFAST_BACKEND": "auto"})


def test_default_pretraining_lowers_mlm_loss(tmp_path):
    out = run("pretrain", "--steps", "120", "--batch-size", "16", "--out", str(tmp_path / "pt"))
    assert out.returncode == 0, out.stderr[-3000:]
    history = json.loads((tmp_path / "pt" / "trainer_state.json").read_text())["history"]
    first, last = history[0], history[-1]
    assert last["mlm_loss"] < first["mlm_loss"] - 0.5, history
    assert (tmp_path / "pt" / "vocab.txt").exists() and (tmp_path / "pt" / "model.safetensors").exists()
    # resume continues from the saved step
    again = run("pretrain", "--steps", "130", "--batch-size", "16", "--resume", str(tmp_path / "pt"), "--out",
                str(tmp_path / "pt2"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "pt2" / "trainer_state.json").read_text())["step"] == 130


@pytest.mark.parametrize("task,train,evaluate,metric,bar", [
    ("ner", "ner_train.jsonl", "ner_eval.jsonl", "entity_f1", 0.5),
    ("qa", "qa_train.jsonl", "qa_eval.jsonl", "exact_match", 0.3),
])
def test_finetune_tasks_learn(tmp_path, minilm_dir, task, train, evaluate, metric, bar):
    """Three epochs on the bundled templated sets (their entities and answers follow from the words
    around them) must learn measurably: chance is near 0 for both (entity F1 of random tags; an exact
    span among ~100 of a context). Seen: entity F1 0.37 -> 0.71, exact match 0.37 -> 0.47."""
    out = run("finetune", task, "--train", str(DATA / train), "--eval", str(DATA / evaluate), "--from", minilm_dir,
              "--epochs", "3", "--out", str(tmp_path / task))
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"epoch 1: {metric}" in out.stdout
    history = json.loads((tmp_path / task / "trainer_state.json").read_text())["history"]
    assert history[-1][metric] > bar and history[-1][metric] > history[0][metric], history


def test_finetune_classify_beats_chance(tmp_path, minilm_dir):
    out = run("finetune", "classify", "--train", str(DATA / "sentiment_train.jsonl"), "--eval",
              str(DATA / "sentiment_eval.jsonl"), "--from", minilm_dir, "--epochs", "3", "--out", str(tmp_path / "c"))
    assert out.returncode == 0, out.stderr[-3000:]
    history = json.loads((tmp_path / "c" / "trainer_state.json").read_text())["history"]
    assert history[-1]["accuracy"] > 0.8, history  # chance is 0.5


@pytest.mark.parametrize("content,expected", [
    ("", "the file holds no examples"),
    ('{"text": "fine", "label": "positive"}\n{"text": "x", "label": "neutral"}\n', ":2: unknown label 'neutral'"),
    ('{"text": "fine", "label": "positive"}\n{"label": "negative"}\n', ":2: missing field(s) ['text']"),
    ('{"text": "' + "word " * 300 + '", "label": "positive"}\n', ":1: 302 tokens, longer than --max-length 128"),
])
def test_bad_eval_data_names_file_and_line(tmp_path, minilm_dir, content, expected):
    bad = tmp_path / "eval.jsonl"
    bad.write_text(content)
    out = run("finetune", "classify", "--train", str(DATA / "sentiment_train.jsonl"), "--eval", str(bad), "--from",
              minilm_dir, "--epochs", "1", "--out", str(tmp_path / "c"))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert f"error: {bad}" in out.stderr and expected in out.stderr, out.stderr
