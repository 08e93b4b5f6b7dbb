"""Entry point: ``python -m evaluate TASK ...`` (see ``python -m evaluate --help``)."""

import sys

from evaluate.cli import main

sys.exit(main())
