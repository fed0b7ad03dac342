#!/usr/bin/env python3
"""atheris: bytes -> ring layout (descriptor table, avail ring, indirect tables) -> SplitVirtqueue, checked
against the reference walker of tests/hardening/test_fuzz_virtqueue.py (exact views, errors, guard pages)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import hardening_module, run  # noqa: E402
from bytes_random import BytesRandom  # noqa: E402


load = hardening_module("virtqueue")


def make(t):
    def one_input(data: bytes) -> None:
        if len(data) < 6:
            return
        size = 1 << (data[0] % 5)
        last = int.from_bytes(data[1:3], "little")
        step = int.from_bytes(data[3:5], "little") if data[5] & 1 else data[3] % (size + 1)
        t.check_layout(t.layout_from(BytesRandom(data[6:]), size, last, step, bool(data[5] & 2)))

    return one_input


if __name__ == "__main__":
    run("virtqueue", load, make)
