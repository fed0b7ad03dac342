"""The root node `/`: the tree's top plus saveconfig, restoreconfig and clearconfig."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from configshell import ExecutionError

from vhostscsi import __version__
from vhostscsi.config.model import Config
from vhostscsi.config.store import load_config
from vhostscsi.shell.backstores import Backstores, complete_path
from vhostscsi.shell.base import Node, parse_bool
from vhostscsi.shell.session import Session
from vhostscsi.shell.vhost import ForeignFabric, VhostFabric


def _conflicts(current: Config, incoming: Config) -> str | None:
    """rtslib's rule: restoring without clear_existing must not overwrite existing objects."""
    paths = {so.path for so in current.storage_objects}
    for so in incoming.storage_objects:
        if so.path in paths:
            return f"storageobject '{so.plugin}:{so.name}' exist not restoring"
    wwns = {(t.fabric, t.wwn.lower()) for t in current.targets}
    for t in incoming.targets:
        if (t.fabric, t.wwn.lower()) in wwns:
            return f"target with wwn {t.wwn} exist, not restoring"
    return None


class Root(Node):
    """`/`."""

    def __init__(self, shell: Any, session: Session) -> None:
        self.session_obj = session
        super().__init__("/", None, shell=shell)
        self.refresh()

    def refresh(self) -> None:
        """Rebuild the whole tree from the model (after restore/clear)."""
        self.session_obj.touch()
        self.clear_children()
        Backstores(self)
        VhostFabric(self)
        others = {t.fabric for t in self.session_obj.config.targets} - {"vhost", "backstores"}
        for fabric in sorted(others):
            ForeignFabric(self, fabric)

    def ui_command_saveconfig(self, savefile: str | None = None) -> None:
        """
        Saves the current configuration (atomically, keeping the previous
        versions as gzip backups in backup/ next to it, the last 10).
        Without "savefile", the configuration file in use is written.
        """
        path = Path(os.path.expanduser(savefile)) if savefile else None
        written = self.session.save(path)
        self.info(f"Configuration saved to {written}")

    def ui_command_restoreconfig(self, savefile: str | None = None, clear_existing: str | None = None) -> None:
        """
        Restores a configuration from a file (ours or targetcli's
        saveconfig.json). Without "clear_existing=true" the restore is
        refused if it would overwrite an existing storage object or target.
        """
        path = Path(os.path.expanduser(savefile)) if savefile else self.session.path
        if not path.is_file():
            raise ExecutionError(f"Restore file {path} not found")
        incoming = load_config(path)
        clear = parse_bool(self, clear_existing, False)
        current = self.session.config
        if clear:
            current.storage_objects = []
            current.targets = []
        else:
            problem = _conflicts(current, incoming)
            if problem:
                raise ExecutionError(problem)
        current.storage_objects.extend(incoming.storage_objects)
        current.targets.extend(incoming.targets)
        if clear or not current.fabric_modules:
            current.fabric_modules = incoming.fabric_modules
        current.extra.update(incoming.extra)
        self.refresh()
        self.info(f"Configuration restored from {path}")

    def ui_complete_saveconfig(self, parameters: dict, text: str, current_param: str) -> list[str]:
        if current_param != "savefile":
            return []
        return complete_path(text, stat.S_ISREG)

    ui_complete_restoreconfig = ui_complete_saveconfig

    def ui_command_clearconfig(self, confirm: str | None = None) -> None:
        """
        Removes the entire configuration of backstores and targets (backing
        files are kept). As a precaution, confirm=True is required.
        """
        if not parse_bool(self, confirm, False):
            raise ExecutionError("As a precaution, confirm=True needs to be set")
        self.session.config.storage_objects = []
        self.session.config.targets = []
        self.refresh()
        self.info("All configuration cleared")

    def ui_command_version(self) -> None:
        """Displays the vhostscsi version."""
        self.info(f"vhostscsi version {__version__}")

