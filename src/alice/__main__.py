"""``python -m alice``: the ``alice`` command line."""

import sys

from .cli import main

sys.exit(main())
