"""`vhostscsi serve` whose --coalesce-us accepts bounds far above the product's limit (10 ms).

    python long_hold_serve.py serve --coalesce-us 100000000 --config ... --socket-dir ...

Only the flush tests start it: with calls held up to 100 s, a call that a test sees signalled within the test
can only have come from a flush path, never from the hold's timer. Nothing else changes.
"""

from __future__ import annotations

import sys

from vhostscsi import cli
from vhostscsi.engines.user import coalesce

coalesce.MAX_COALESCE_US = 10**9

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
