"""python -m bertfast.analysis [--json PATH] [--filter TEXT]: BERT's static report (bertfast.analysis.sm90)."""
import sys

from bertfast.analysis.sm90 import main

if __name__ == "__main__":
    sys.exit(main())
