"""``python -m rlhf_exp.compare``."""
import sys

from rlhf_exp.compare.cli import main

if __name__ == "__main__":
    sys.exit(main())
