"""Open disks (backstore + SCSI logical unit) shared by every LUN that exports them.

One storage object is opened once however many LUNs and targets export it, as in LIO, so reservations and
the write cache belong to the disk rather than to a path to it.
"""

from __future__ import annotations

import logging
import os
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
    reported_offline: bool = False  # the "offline" line was logged for the current outage


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

    def check_media(self) -> int:
        """The daemon's periodic tick: take offline every disk whose medium is gone (backing file deleted,
        block device removed: `Backstore.medium_gone`), so its LUNs answer NOT READY instead of acknowledging
        writes that nobody will ever read; log one line per outage, also for a disk the SCSI core took
        offline itself (ENXIO/ENODEV from the backstore). A few syscalls per disk per tick, none per I/O.
        Returns how many disks are offline."""
        offline = 0
        for path, disk in self._disks.items():
            dev = disk.device
            if dev.offline is None:
                why = disk.backstore.medium_gone()
                if why is None:
                    continue
                dev.set_offline(why)
            offline += 1
            if not disk.reported_offline:
                disk.reported_offline = True
                where = f" ({disk.so.dev})" if disk.so.dev else ""
                log.error("%s%s is offline: %s; its LUNs answer NOT READY until it is back and the "
                          "configuration is reloaded (SIGHUP)", path, where, dev.offline_reason)
        return offline

    def reopen_offline(self) -> list[str]:
        """Reopen every offline disk whose medium is back (a restored file, a re-attached device) and put it
        online again; the others stay offline. Returns the paths brought back (their size may have changed:
        the caller re-reads capacities)."""
        back: list[str] = []
        for path, disk in self._disks.items():
            if disk.device.offline is None:
                continue
            if disk.so.dev and not os.path.exists(disk.so.dev):
                continue  # not back yet (and opening a fileio path would create an empty file)
            try:
                bs = open_backstore(disk.so)
            except BackstoreError as e:
                log.warning("%s is still offline: %s", path, e)
                continue
            if bs.medium_gone() is not None:
                bs.close()
                continue
            old, disk.backstore = disk.backstore, bs
            disk.device.backstore = bs
            try:
                old.close()
            except BackstoreError:
                pass
            disk.device.set_online()
            disk.reported_offline = False
            log.info("%s is back online (reopened %s)", path, disk.so.dev or path)
            back.append(path)
        return back

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
