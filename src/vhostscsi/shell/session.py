"""One shell session: the configuration being edited, where it lives, and whether it changed.

Both modes share it: a one-shot command loads, runs one line and saves only if that line
succeeded and changed something; the interactive shell edits in memory and saves on `saveconfig`
or `exit`, as targetcli does. A lock file next to the configuration serialises concurrent
invocations so two one-shot commands cannot lose each other's change.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

from vhostscsi.config.model import Config, StorageObject
from vhostscsi.config.schema import dumps
from vhostscsi.config.store import load_config, save_config


class Session:
    """The configuration under edit, plus cheap derived indexes the tree needs for `ls`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.config = Config()
        self._saved_text = ""
        self._generation = 0
        self._index_generation = -1
        self._so_index: dict[str, StorageObject] = {}
        self._exported: set[str] = set()
        self._lock_fd: int | None = None

    # -- persistence ---------------------------------------------------------------------------

    def lock(self, on_wait: Callable[[], None] | None = None) -> None:
        """Take the per-configuration lock for the rest of this process's session.

        ``on_wait`` is called once if another session holds it (so the admin knows why nothing
        happens); then we block until it is released, as targetcli does with its lock file.
        """
        lock_path = self.path.with_name(f".{self.path.name}.lock")
        try:
            lock_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return  # read-only location: nothing we could save anyway; loading still works
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        self._lock_fd = fd

    def load(self) -> None:
        """Replace the in-memory configuration with the saved one (ConfigError if unreadable)."""
        self.config = load_config(self.path)
        self._saved_text = dumps(self.config) if self.path.exists() else ""
        self.touch()

    def save(self, path: Path | None = None) -> Path:
        """Write the configuration (atomically, with a backup) and remember what was saved."""
        target = path or self.path
        save_config(self.config, target)
        if target == self.path:
            self._saved_text = dumps(self.config)
        return target

    def dirty(self) -> bool:
        """True if the configuration differs from what is on disk."""
        return dumps(self.config) != self._saved_text

    # -- derived views ---------------------------------------------------------------------------

    def touch(self) -> None:
        """Note a change so the cached indexes are rebuilt on next use."""
        self._generation += 1

    def _refresh_index(self) -> None:
        if self._index_generation == self._generation:
            return
        self._so_index = {so.path: so for so in self.config.storage_objects}
        self._exported = {
            lun.storage_object for t in self.config.targets for tpg in t.tpgs for lun in tpg.luns
        }
        self._index_generation = self._generation

    def storage_object(self, path: str) -> StorageObject | None:
        """Storage object by path, through an index (ls on 1,000 LUNs looks up 1,000 times)."""
        self._refresh_index()
        return self._so_index.get(path)

    def is_exported(self, path: str) -> bool:
        """Whether any LUN exports this storage object (LIO's ACTIVATED/"activated")."""
        self._refresh_index()
        return path in self._exported
