"""``python -m data_preparation``: see :mod:`data_preparation.cli`."""

import sys

from data_preparation.cli import main

if __name__ == "__main__":
    sys.exit(main())
