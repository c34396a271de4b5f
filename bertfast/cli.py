"""Command line: `python -m bertfast info` and `python -m bertfast compare`."""
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
    args = parser.parse_args(argv)
    if args.command == "info":
        from bertfast.info import info

        info()
        return 0
    if args.command == "compare":
        from bertfast.compare import compare_with_transformers

        return compare_with_transformers(device=args.device, repeats=args.repeats)
    parser.print_help(sys.stderr)
    return 2
