"""Shared helpers: storage objects and patterned buffers."""

from __future__ import annotations

import random
from typing import Any

from vhostscsi.config.model import StorageObject


def SO(plugin: str, name: str, **kw: Any) -> StorageObject:
    """A real config-model storage object with a fixed serial (tests need no fresh UUIDs)."""
    return StorageObject(plugin=plugin, name=name, wwn="00000000-0000-0000-0000-000000000001", **kw)


def pattern(n: int, seed: int = 1) -> bytearray:
    """Reproducible random bytes: any misplaced or missing copy shows up as a mismatch."""
    return bytearray(random.Random(seed).randbytes(n))


def split(buf: bytearray, sizes: list[int]) -> list[memoryview]:
    """Cut buf into consecutive views of the given sizes (the rest goes in a last view)."""
    mv = memoryview(buf)
    out, pos = [], 0
    for s in sizes:
        out.append(mv[pos : pos + s])
        pos += s
    if pos < len(buf):
        out.append(mv[pos:])
    return out
