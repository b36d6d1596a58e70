"""``python -m wsiarray`` runs the command line (see :mod:`wsiarray.cli`)."""

import sys

from .cli import main

sys.exit(main())
