"""``python -m npshuffle ...`` is the ``npshuffle`` command."""

import sys

from .cli import main

sys.exit(main())
