"""A writer for the kernel's initramfs format (cpio "newc"), deterministic by construction.

Every header carries mtime 0, uid/gid 0 and sequential inode numbers, so the same entries give
the same bytes: that is what lets images be cached by content hash. Device nodes are written
as headers only, so building an image needs no root.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

__all__ = ["Entry", "write_cpio"]


@dataclass(frozen=True)
class Entry:
    """One archive member; ``data`` is the file content or the symlink target."""

    path: str  # no leading '/'
    mode: int  # full st_mode: S_IFREG | 0o755, S_IFDIR | 0o755, S_IFLNK | 0o777, S_IFCHR | 0o600
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(ino: int, entry: Entry, size: int) -> bytes:
    name = entry.path.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (ino, entry.mode, 0, 0, nlink, 0, size, 0, 0, entry.rdev[0], entry.rdev[1], len(name), 0)
    head = b"070701" + b"".join(b"%08X" % f for f in fields)
    return head + name + _pad(len(head) + len(name))


def write_cpio(out: BinaryIO, entries: Iterable[Entry]) -> None:
    """Write entries (parents before children, as the kernel unpacks in order) and the trailer."""
    ino = 1
    for entry in entries:
        data = entry.data if stat.S_ISREG(entry.mode) or stat.S_ISLNK(entry.mode) else b""
        out.write(_header(ino, entry, len(data)))
        out.write(data)
        out.write(_pad(len(data)))
        ino += 1
    out.write(_header(0, Entry("TRAILER!!!", 0), 0))
