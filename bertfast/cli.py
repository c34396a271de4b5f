"""Command line: python -m bertfast {info,compare,prepare,pretrain,finetune,predict,generate,bench}."""
from __future__ import annotations

import argparse
import os
import sys


def _below_one(args, names) -> str | None:
    """The first of these counts below 1, as an error message."""
    for name in names:
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}"
    return None


def _no_cuda(device: str | None) -> str | None:
    """An error message when --device names CUDA and torch sees none."""
    if device and device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return f"--device {device}, but torch sees no CUDA device"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bertfast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, the extension's build and the backend each op uses")
    compare = sub.add_parser("compare", help="bertfast vs transformers on the bundled MiniLM checkpoint")
    compare.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    compare.add_argument("--repeats", type=int, default=10)
    prep = sub.add_parser("prepare", help="tokenise a corpus once into shards on disk (read by pretrain --data)")
    prep.add_argument("--corpus", nargs="+", required=True,
                      help="text files: a sentence or paragraph a line, blank lines between documents")
    prep.add_argument("--out", required=True, help="the folder to write (manifest.json, vocab.txt, len*/shard-*)")
    vocab_group = prep.add_mutually_exclusive_group()
    vocab_group.add_argument("--vocab", default=None, help="an existing vocab.txt")
    vocab_group.add_argument("--vocab-size", type=int, default=30000, help="train a WordPiece vocabulary of this size "
                                                                           "on the corpus (default 30000)")
    prep.add_argument("--max-length", type=int, nargs="+", default=[128], help="one set of pairs per length, e.g. 128 512")
    prep.add_argument("--workers", type=int, default=None, help="tokenising processes (default: every core)")
    prep.add_argument("--seed", type=int, default=0)
    prep.add_argument("--cased", action="store_true", help="keep case (default: BERT's uncased normalisation)")
    pre = sub.add_parser("pretrain", help="pre-train BERT with MLM + NSP, on one process or under torchrun "
                                          "(no --data or --corpus: a tiny BERT on the standard library's docstrings)")
    source = pre.add_mutually_exclusive_group()
    source.add_argument("--data", default=None, help="a corpus written by `python -m bertfast prepare`")
    source.add_argument("--corpus", nargs="+", default=None, help="text files, prepared first into OUT/data")
    pre.add_argument("--vocab", default=None, help="vocab.txt for --corpus (default: train one on the corpus)")
    pre.add_argument("--config", default="tiny", help="tiny, base, large (1024 positions) or a config.json")
    pre.add_argument("--out", default="checkpoints/pretrain")
    pre.add_argument("--steps", type=int, default=600)
    pre.add_argument("--batch-size", type=int, default=32, help="per rank and micro-batch")
    pre.add_argument("--max-length", type=int, default=128)
    pre.add_argument("--phases", nargs="+", default=None, metavar="LENGTH:FRACTION",
                     help="BERT's phases, e.g. 128:0.9 512:0.1 (one warm-up/decay schedule across them)")
    pre.add_argument("--optimizer", choices=["adamw", "lamb"], default="adamw")
    pre.add_argument("--lr", type=float, default=1e-3)
    pre.add_argument("--warmup", type=float, default=0.1)
    pre.add_argument("--accumulate", type=int, default=1, help="gradient accumulation steps")
    pre.add_argument("--dropout", type=float, default=None, help="hidden and attention dropout (default: the config's)")
    pre.add_argument("--fsdp", action="store_true", help="under torchrun: FSDP2 (fully_shard) instead of DDP")
    pre.add_argument("--save-every", type=int, default=1000, help="steps between checkpoints (and at the end)")
    pre.add_argument("--log-every", type=int, default=25)
    pre.add_argument("--seed", type=int, default=0)
    pre.add_argument("--device", default=None)
    pre.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms(True)")
    pre.add_argument("--no-verify", action="store_true", help="skip the shards' checksums at start")
    pre.add_argument("--resume", default=None, help="an --out folder (its latest complete checkpoint) or a checkpoint folder")
    fine = sub.add_parser("finetune", help="fine-tune for classification, extractive QA or NER")
    fine.add_argument("task", choices=["classify", "qa", "ner"])
    fine.add_argument("--train", required=True)
    fine.add_argument("--eval", required=True)
    fine.add_argument("--from", dest="checkpoint", required=True, help="a checkpoint folder (config.json, model.safetensors, vocab.txt)")
    fine.add_argument("--out", default=None)
    fine.add_argument("--epochs", type=int, default=3)
    fine.add_argument("--batch-size", type=int, default=32)
    fine.add_argument("--lr", type=float, default=5e-5, help="BERT recommends 5e-5, 3e-5 or 2e-5")
    fine.add_argument("--warmup", type=float, default=0.1)
    fine.add_argument("--accumulate", type=int, default=1)
    fine.add_argument("--max-length", type=int, default=128)
    fine.add_argument("--truncate", action="store_true", help="truncate examples longer than --max-length instead of stopping")
    fine.add_argument("--seed", type=int, default=0)
    fine.add_argument("--device", default=None)
    pred = sub.add_parser("predict", help="fill [MASK]s with a masked-LM checkpoint: the top-k tokens and probabilities")
    pred.add_argument("text", nargs="+", help='e.g. "The capital of France is [MASK]."')
    pred.add_argument("--from", dest="checkpoint", required=True, help="a pretrain output or a transformers "
                                                                       "BertForMaskedLM/BertForPreTraining folder")
    pred.add_argument("--top-k", type=int, default=5)
    pred.add_argument("--device", default=None)
    gen = sub.add_parser("generate", help="continue a prompt by iterative mask filling (what BERT can do: see README)")
    gen.add_argument("prompt")
    gen.add_argument("--from", dest="checkpoint", required=True)
    gen.add_argument("--tokens", type=int, default=10, help="how many tokens to add")
    gen.add_argument("--temperature", type=float, default=1.0, help="0: always the most likely token")
    gen.add_argument("--top-k", type=int, default=0, help="sample among the k most likely (0: all)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--device", default=None)
    bench = sub.add_parser("bench", help="benchmark on this device: comparison table and a PNG chart of speedups",
                           description="Run benchmarks/ (pytest-benchmark) on this machine and chart the speedups over "
                                       "eager PyTorch. Modes: full (every shape; minutes on a GPU), reduced (the "
                                       "default: a few shapes an op), dry (tiny shapes, one round: a plumbing check "
                                       "whose timings and ratios mean nothing).")
    bench.add_argument("--mode", default="reduced", choices=["full", "reduced", "dry"],
                       help="full, reduced (default) or dry (a plumbing check; its ratios mean nothing)")
    bench.add_argument("--results", default=None, help="chart an existing results JSON instead of running the suite")
    bench.add_argument("--chart", default="bertfast-speedups.png")
    args = parser.parse_args(argv)
    if args.command == "bench":
        from bertfast.bench import main as bench_main

        return bench_main(args.mode, args.results, args.chart)
    if args.command == "prepare":
        from bertfast.training.data import DataError
        from bertfast.training.prepare import prepare

        try:
            manifest = prepare(args.corpus, args.out, vocab=args.vocab, vocab_size=args.vocab_size,
                               lengths=tuple(args.max_length), workers=args.workers, seed=args.seed,
                               lowercase=not args.cased)
        except (DataError, FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        counts = ", ".join(f"{n}: {v['examples']:,} examples" for n, v in manifest["lengths"].items())
        print(f"prepared {args.out}: {manifest['documents']:,} documents, {manifest['tokens']:,} tokens in "
              f"{manifest['seconds']:.1f} s ({manifest['tokens'] / max(manifest['seconds'], 1e-9):,.0f} tokens/s); {counts}")
        return 0
    if args.command == "pretrain":
        from bertfast.training.data import DataError
        from bertfast.training.pretrain import pretrain

        problem = _below_one(args, ("steps", "batch_size", "accumulate", "log_every")) or _no_cuda(args.device)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
        if args.resume and not os.path.isdir(args.resume):
            print(f"error: --resume {args.resume}: no such folder", file=sys.stderr)
            return 2
        try:
            pretrain(args.data, args.corpus, args.vocab, args.config, args.out, args.steps, args.batch_size,
                     args.max_length, args.lr, args.warmup, args.accumulate, args.seed, args.device, args.resume,
                     args.optimizer, args.phases, args.fsdp, args.save_every, args.log_every, args.dropout,
                     not args.no_verify, deterministic=args.deterministic)
        except (DataError, ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    if args.command == "finetune":
        from bertfast.training.data import DataError
        from bertfast.training.finetune import finetune

        problem = _below_one(args, ("epochs", "batch_size", "accumulate"))
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
        if not os.path.isdir(args.checkpoint):
            print(f"error: --from {args.checkpoint}: no such folder", file=sys.stderr)
            return 2
        try:
            finetune(args.task, args.train, args.eval, args.checkpoint, args.out or f"checkpoints/{args.task}",
                     args.epochs, args.batch_size, args.lr, args.warmup, args.accumulate, args.max_length,
                     args.truncate, args.seed, args.device)
        except DataError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    if args.command in ("predict", "generate"):
        from bertfast.predict import generate_main, predict_main

        problem = _no_cuda(args.device)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
        try:
            if args.command == "predict":
                if args.top_k < 1:
                    raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
                return predict_main(args.checkpoint, args.text, args.top_k, args.device)
            return generate_main(args.checkpoint, args.prompt, args.tokens, args.temperature, args.top_k, args.seed,
                                 args.device)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if args.command == "info":
        from bertfast.info import info

        info()
        return 0
    if args.command == "compare":
        from bertfast.compare import compare_with_transformers

        return compare_with_transformers(device=args.device, repeats=args.repeats)
    parser.print_help(sys.stderr)
    return 2
