"""Saved configurations for the tests that start the real daemon (targetcli's saveconfig.json, as the shell saves it)."""

from __future__ import annotations

import os
from pathlib import Path

from vhostscsi.config.model import Config, StorageObject, new_storage_object, new_vhost_target
from vhostscsi.config.store import save_config


def save_targets(path: Path, targets: dict[str, list[tuple[StorageObject, bool]]]) -> Path:
    """Save a configuration: for each vhost target WWN, its LUNs 0.. as (storage object, write_protect); fileio
    backing files that do not exist yet are created sparse at the object's size."""
    cfg = Config()
    for wwn, luns in targets.items():
        target = new_vhost_target(wwn)
        for so, write_protect in luns:
            if cfg.find_storage_object(so.path) is None:
                cfg.add_storage_object(so)
            if so.plugin == "fileio" and so.dev and not os.path.exists(so.dev) and os.path.isdir(os.path.dirname(so.dev)):
                with open(so.dev, "wb") as f:
                    f.truncate(so.size)
            target.tpgs[0].add_lun(so, write_protect=write_protect)
        cfg.add_target(target)
    save_config(cfg, path)
    return path


def one_disk_config(path: Path, disk: Path, size: int, *, wwn: str, write_back: bool = True,
                    write_protect: bool = False, create: bool = True) -> Path:
    """A saved configuration at `path`: one fileio disk0 on `disk` (created sparse at `size` if missing), vhost
    target `wwn` with it as LUN 0."""
    if create and not disk.exists():
        with open(disk, "wb") as f:
            f.truncate(size)
    so = new_storage_object("fileio", "disk0", dev=str(disk), size=size, write_back=write_back)
    return save_targets(path, {wwn: [(so, write_protect)]})
