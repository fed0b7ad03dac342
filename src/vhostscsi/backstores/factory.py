"""From a configured storage object to an open I/O engine.

Takes anything shaped like ``vhostscsi.config.model.StorageObject`` (plugin, name, dev, size,
write_back, readonly, attributes), so the engines stay independent of the config package.
"""

from __future__ import annotations

import errno
from typing import Any, Protocol

from vhostscsi.backstores.base import Backstore
from vhostscsi.backstores.block import BlockBackstore
from vhostscsi.backstores.errors import BackstoreError
from vhostscsi.backstores.fileio import FileIOBackstore
from vhostscsi.backstores.ramdisk import RamdiskBackstore

__all__ = ["open_backstore", "StorageObjectLike"]


class StorageObjectLike(Protocol):
    """The fields of a storage object the engines need."""

    plugin: str
    name: str
    dev: str | None
    size: int
    write_back: bool
    readonly: bool
    attributes: dict[str, Any]


def open_backstore(so: StorageObjectLike) -> Backstore:
    """Open the engine for ``so``; every failure is a BackstoreError naming the object."""
    attrs = so.attributes or {}
    block_size = int(attrs.get("block_size") or 0)
    plugin = "ramdisk" if so.plugin in ("rd_mcp", "ramdisk", "memory") else so.plugin
    if plugin == "ramdisk":
        return RamdiskBackstore(so.name, int(so.size), block_size or 512)
    if plugin in ("fileio", "block") and not so.dev:
        raise BackstoreError(errno.EINVAL, f"{so.name}: a {plugin} backstore needs a dev path")
    assert so.dev is not None
    if plugin == "fileio":
        return FileIOBackstore(
            so.name,
            so.dev,
            size=int(so.size or 0),
            block_size=block_size or 512,
            write_back=bool(so.write_back),
            readonly=bool(getattr(so, "readonly", False)),
        )
    if plugin in ("block", "iblock"):
        return BlockBackstore(
            so.name, so.dev, block_size=block_size or None, readonly=bool(getattr(so, "readonly", False))
        )
    raise BackstoreError(
        errno.EINVAL, f"{so.name}: unknown backstore plugin {so.plugin!r}: use fileio, block or ramdisk"
    )
