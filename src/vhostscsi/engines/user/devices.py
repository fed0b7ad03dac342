"""Open disks (backstore + SCSI logical unit) shared by every LUN that exports them.

One storage object is opened once however many LUNs and targets export it, as in LIO, so reservations and
the write cache belong to the disk rather than to a path to it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from vhostscsi.backstores import Backstore, BackstoreError, open_backstore
from vhostscsi.config.model import StorageObject
from vhostscsi.scsi.device import Device

log = logging.getLogger("vhostscsi.serve")


@dataclass
class OpenDisk:
    so: StorageObject
    backstore: Backstore
    device: Device


class DeviceTable:
    """Storage-object path -> open disk."""

    def __init__(self) -> None:
        self._disks: dict[str, OpenDisk] = {}

    def get(self, path: str) -> OpenDisk | None:
        return self._disks.get(path)

    def open(self, so: StorageObject) -> OpenDisk | None:
        """Open ``so``; on failure log one line and return None (its LUNs are not served, the rest is)."""
        try:
            bs = open_backstore(so)
        except BackstoreError as e:
            log.error("cannot open %s: %s", so.path, e)
            return None
        dev = Device(bs, so.name, so.wwn, so.attributes, so.write_back, plugin=so.plugin)
        disk = OpenDisk(so, bs, dev)
        self._disks[so.path] = disk
        where = f" on {so.dev}" if so.dev else ""
        log.info("opened %s%s: %d bytes, %d-byte blocks", so.path, where, bs.size, bs.block_size)
        return disk

    def close(self, path: str) -> None:
        disk = self._disks.pop(path, None)
        if disk is None:
            return
        _flush(disk)
        disk.backstore.close()
        log.info("closed %s", path)

    def refresh(self, path: str) -> bool:
        """Re-read the medium's size (a block device was grown); True when the guest must be told."""
        disk = self._disks.get(path)
        if disk is None:
            return False
        try:
            return disk.device.refresh_capacity()
        except BackstoreError as e:
            log.error("cannot re-read the size of %s: %s", path, e)
            return False

    def flush_all(self) -> None:
        for disk in self._disks.values():
            _flush(disk)

    def close_all(self) -> None:
        for path in list(self._disks):
            self.close(path)


def _flush(disk: OpenDisk) -> None:
    try:
        disk.backstore.flush()
    except BackstoreError as e:
        log.error("flush of %s failed: %s", disk.so.path, e)
