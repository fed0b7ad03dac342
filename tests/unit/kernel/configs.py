"""The configurations the kernel-engine tests reconcile: the seed's disk0 plus a write-protected ramdisk."""

from __future__ import annotations

from vhostscsi.config.model import Config, new_storage_object, new_vhost_target

WWN = "naa.500140568720f76f"
NEXUS = "naa.5001405aaaaaaaaa"
DISK_SERIAL = "4a3a2d4b-1234-4c56-9d8e-0123456789ab"
RD_SERIAL = "5b3a2d4b-1234-4c56-9d8e-0123456789ab"


def two_luns() -> Config:
    cfg = Config()
    disk = cfg.add_storage_object(new_storage_object(
        "fileio", "disk0", dev="/var/lib/vhostscsi/disk0.img", size=64 << 20, write_back=True, wwn=DISK_SERIAL))
    ram = cfg.add_storage_object(new_storage_object("ramdisk", "rd0", size=16 << 20, wwn=RD_SERIAL))
    target = cfg.add_target(new_vhost_target(WWN))
    tpg = target.tpgs[0]
    tpg.nexus_wwn = NEXUS
    tpg.add_lun(disk).alias = "a08824829b"
    tpg.add_lun(ram, write_protect=True).alias = "b08824829b"
    return cfg


def one_lun() -> Config:
    cfg = two_luns()
    cfg.targets[0].tpgs[0].remove_lun(1)
    cfg.remove_storage_object("/backstores/ramdisk/rd0")
    return cfg
