"""Notice when the saved configuration changes, so shell commands take effect in the running daemon.

The shell saves atomically (write a temporary file, fsync, rename), so the file's inode changes on every save;
(inode, size, mtime) catches both that and an editor that rewrites in place. Polling the stat once a second
costs nothing and needs no inotify binding; SIGHUP forces an immediate check for those who cannot wait.
"""

from __future__ import annotations

import os
from pathlib import Path

Stamp = tuple[int, int, int, int] | None


def stamp_of(path: Path) -> Stamp:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class ConfigWatch:
    """Remembers the stamp of the configuration last applied and says when the file differs from it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._applied: Stamp = None

    def mark_applied(self, stamp: Stamp) -> None:
        self._applied = stamp

    def changed(self) -> tuple[bool, Stamp]:
        now = stamp_of(self.path)
        return now != self._applied, now
