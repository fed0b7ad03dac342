"""Shared helpers: storage-object stand-ins and patterned buffers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class SO:
    """The fields open_backstore reads, as vhostscsi.config.model.StorageObject has them."""

    plugin: str
    name: str
    dev: str | None = None
    size: int = 0
    write_back: bool = True
    readonly: bool = False
    attributes: dict[str, Any] = field(default_factory=dict)


def pattern(n: int, seed: int = 1) -> bytearray:
    """Bytes that differ at every offset in a way a misplaced copy would show."""
    return bytearray(((i * 7 + seed) ^ (i >> 8)) & 0xFF for i in range(n))


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
