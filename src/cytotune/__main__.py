"""``python -m cytotune``: the same command line as the ``cytotune`` script."""
import sys

from cytotune.cli import main

if __name__ == "__main__":
    sys.exit(main())
