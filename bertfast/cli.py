"""Command line: python -m bertfast {info,compare,pretrain,finetune,bench}."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bertfast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, the extension's build and the backend each op uses")
    compare = sub.add_parser("compare", help="bertfast vs transformers on the bundled MiniLM checkpoint")
    compare.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    compare.add_argument("--repeats", type=int, default=10)
    pre = sub.add_parser("pretrain", help="pre-train BERT with MLM + NSP (no --corpus: a tiny BERT on the "
                                          "standard library's docstrings)")
    pre.add_argument("--corpus", nargs="*", default=None, help="text files: a sentence a line, blank lines between documents")
    pre.add_argument("--vocab", default=None, help="vocab.txt (default: train a WordPiece vocabulary on the corpus)")
    pre.add_argument("--config", default="tiny", help="tiny, base, large or a config.json")
    pre.add_argument("--out", default="checkpoints/pretrain")
    pre.add_argument("--steps", type=int, default=600)
    pre.add_argument("--batch-size", type=int, default=32)
    pre.add_argument("--max-length", type=int, default=128)
    pre.add_argument("--lr", type=float, default=1e-3)
    pre.add_argument("--warmup", type=float, default=0.1)
    pre.add_argument("--accumulate", type=int, default=1, help="gradient accumulation steps")
    pre.add_argument("--seed", type=int, default=0)
    pre.add_argument("--device", default=None)
    pre.add_argument("--resume", default=None, help="a checkpoint folder written by pretrain")
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
    bench = sub.add_parser("bench", help="benchmark on this device: comparison table and a PNG chart of speedups")
    bench.add_argument("--mode", default="reduced", choices=["full", "reduced", "dry"])
    bench.add_argument("--results", default=None, help="chart an existing results JSON instead of running the suite")
    bench.add_argument("--chart", default="bertfast-speedups.png")
    args = parser.parse_args(argv)
    if args.command == "bench":
        from bertfast.bench import main as bench_main

        return bench_main(args.mode, args.results, args.chart)
    if args.command == "pretrain":
        from bertfast.training.pretrain import pretrain

        pretrain(args.corpus, args.vocab, args.config, args.out, args.steps, args.batch_size, args.max_length, args.lr,
                 args.warmup, args.accumulate, args.seed, args.device, args.resume)
        return 0
    if args.command == "finetune":
        from bertfast.training.data import DataError
        from bertfast.training.finetune import finetune

        try:
            finetune(args.task, args.train, args.eval, args.checkpoint, args.out or f"checkpoints/{args.task}",
                     args.epochs, args.batch_size, args.lr, args.warmup, args.accumulate, args.max_length,
                     args.truncate, args.seed, args.device)
        except DataError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    if args.command == "info":
        from bertfast.info import info

        info()
        return 0
    if args.command == "compare":
        from bertfast.compare import compare_with_transformers

        return compare_with_transformers(device=args.device, repeats=args.repeats)
    parser.print_help(sys.stderr)
    return 2
