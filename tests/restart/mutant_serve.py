#!/usr/bin/env python3
"""Break one piece of the restart machinery on purpose, to prove the restart tests can fail.

`VHOSTSCSI_RESTART_MUTANT=<name>` picks the break; the guest test then starts its daemons through this file
(`mutant_serve.py serve ...` = `vhostscsi serve ...` with the break applied), and tests/restart/conftest.py
applies the same break in-process for the unit tests. Names:
  no-record     popped requests are not marked in the in-flight area
  head-order    in-flight requests are resubmitted by descriptor number, not in the order they were taken
  no-repair     a push torn between used.idx and the in-flight area is not repaired (replays a completed request)
  no-resubmit   the new daemon skips the recovered requests (they are neither run nor left in the ring)
  no-note       the daemon does not say what a restart means for the guest that connected
"""

from __future__ import annotations

import os
import struct
import sys

from vhostscsi.virtio import inflight, scsi

MUTANTS = ("no-record", "head-order", "no-repair", "no-resubmit", "no-note")


def apply(name: str) -> None:
    if name not in MUTANTS:
        raise SystemExit(f"unknown VHOSTSCSI_RESTART_MUTANT {name!r}; one of {', '.join(MUTANTS)}")
    recover = inflight.InflightQueue.recover
    if name == "no-record":
        inflight.InflightQueue.record_pop = lambda self, head: None  # type: ignore[method-assign]
    elif name == "head-order":
        inflight.InflightQueue.recover = lambda self, used: sorted(recover(self, used))  # type: ignore
    elif name == "no-repair":
        def no_repair(self: inflight.InflightQueue, used: int) -> list[int]:
            struct.pack_into("<H", self.buf, 14, used)  # pretend the region's used_idx was always current
            return recover(self, used)
        inflight.InflightQueue.recover = no_repair  # type: ignore[method-assign]
    elif name == "no-resubmit":
        scsi.VirtioScsi.resubmit = lambda self, index, chains: 0  # type: ignore[method-assign]
    elif name == "no-note":
        from vhostscsi.engines.user import target

        target.log_restart_note = lambda label, pid, path: None  # type: ignore[assignment]


if __name__ == "__main__":
    apply(os.environ.get("VHOSTSCSI_RESTART_MUTANT", ""))
    from vhostscsi.cli import main

    sys.exit(main(sys.argv[1:]))
