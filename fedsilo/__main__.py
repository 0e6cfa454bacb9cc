"""``python -m fedsilo``: the same command line as ``fedsilo``."""

import sys

from fedsilo.cli import main

sys.exit(main())
