"""python -m bertfast COMMAND: info, compare, prepare, pretrain, finetune, predict, generate, bench
(python -m bertfast --help; each command's --help gives its arguments, defaults and an example)."""
from bertfast.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
