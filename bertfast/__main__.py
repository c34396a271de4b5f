"""python -m bertfast {info,compare}"""
from bertfast.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
