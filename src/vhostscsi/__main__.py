"""Allow ``python -m vhostscsi``, handy where the console script is not on PATH (inside test guests)."""

import sys

from vhostscsi.cli import main

sys.exit(main())
