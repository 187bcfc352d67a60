"""``python -m callhome``: the same command as ``callhome``."""

import sys

from .cli import main

sys.exit(main())
