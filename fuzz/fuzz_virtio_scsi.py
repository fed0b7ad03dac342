#!/usr/bin/env python3
"""atheris: bytes -> requests, control messages and event buffers on real rings in guarded memory ->
VirtioScsi -> SCSI core -> range-checked fileio/ramdisk backstores (tests/hardening/test_fuzz_virtio_scsi.py's
checks: no exception, no internal error, no access outside a LUN, guard pages intact, write-protected LUN intact).
Byte 0 bit 0 chooses hostile framing (else well-framed requests with hostile CDBs); bits 1-3 the request count."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import hardening_module, run  # noqa: E402
from bytes_random import BytesRandom  # noqa: E402


load = hardening_module("virtio_scsi")


def make(t):
    def one_input(data: bytes) -> None:
        if not data:
            return
        t._run(BytesRandom(data[1:]), 1 + ((data[0] >> 1) & 7), bool(data[0] & 1))
        if not os.environ.get("FUZZ_KNOWN_WP_BUG"):  # set it to look past that open bug (fuzz/crashes/)
            assert t.STATS["wp_changed"] == [], "the write-protected LUN changed"
        t.STATS["wp_changed"].clear()

    return one_input


if __name__ == "__main__":
    run("virtio_scsi", load, make)
