"""A directory laid out as LIO 6.1's configfs shows a configured target (seen in a real guest).

It stands in for /sys/kernel/config/target when a test needs "what the kernel holds": the same
names, the same text in ``info``/``wwn/vpd_unit_serial``/``nexus``, the same relative symlinks and
the read-only modes of the ``hw_*`` attributes. Plain directories cannot run LIO's logic, so tests
use it only as input to the planner, never as a simulator.
"""

from __future__ import annotations

import os
from pathlib import Path

from vhostscsi.config.attributes import READ_ONLY


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)


def add_device(root: Path, hba: str, name: str, info: str, serial: str, attributes: dict[str, int],
               udev_path: str = "") -> Path:
    device = root / "core" / hba / name
    for sub in ("alua/default_tg_pt_gp", "pr", "statistics", "wwn", "action"):
        (device / sub).mkdir(parents=True, exist_ok=True)
    _write(device / "control", "", 0o200)
    _write(device / "enable", "1\n")
    _write(device / "info", info)
    _write(device / "udev_path", udev_path + "\n" if udev_path else "")
    _write(device / "wwn" / "vpd_unit_serial", f"T10 VPD Unit Serial Number: {serial}\n")
    for key, value in attributes.items():
        _write(device / "attrib" / key, f"{value}\n", 0o444 if key in READ_ONLY else 0o644)
    return device


def fileio_info(path: str, size: int, buffered: bool) -> str:
    mode = "Buffered-WCE" if buffered else "O_DSYNC"
    return ("Status: ACTIVATED  Max Queue Depth: 128  SectorSize: 512  HwMaxSectors: 16384\n"
            f"        TCM FILEIO ID: 0        File: {path}  Size: {size}  Mode: {mode} Async: 0\n")


def rd_info(pages: int) -> str:
    return ("Status: ACTIVATED  Max Queue Depth: 128  SectorSize: 512  HwMaxSectors: 4294967288\n"
            f"        TCM RamDisk ID: 0  RamDisk Pages: {pages}  SG_table_count: 1  nullio: 0\n")


def add_tpg(root: Path, wwn: str, tag: int, nexus: str | None) -> Path:
    (root / "vhost" / "discovery_auth").mkdir(parents=True, exist_ok=True)
    _write(root / "vhost" / "version", "TCM_VHOST fabric module v0.1 on Linux/x86_64on 6.1.0-56-amd64\n", 0o444)
    tpg = root / "vhost" / wwn / f"tpgt_{tag}"
    for sub in ("acls", "attrib", "auth", "lun", "np", "param"):
        (tpg / sub).mkdir(parents=True, exist_ok=True)
    (root / "vhost" / wwn / "fabric_statistics").mkdir(exist_ok=True)
    _write(tpg / "attrib" / "fabric_prot_type", "0\n")
    _write(tpg / "nexus", f"{nexus}\n" if nexus else "")
    return tpg


def add_lun(tpg: Path, index: int, alias: str, device_rel: str) -> Path:
    lun = tpg / "lun" / f"lun_{index}"
    (lun / "statistics").mkdir(parents=True)
    for name in ("alua_tg_pt_gp", "alua_tg_pt_offline", "alua_tg_pt_status", "alua_tg_pt_write_md"):
        _write(lun / name, "")
    os.symlink(f"../../../../../../target/{device_rel}", lun / alias)
    return lun


def add_mapped_lun(tpg: Path, initiator: str, index: int, alias: str, write_protect: bool) -> Path:
    mapped = tpg / "acls" / initiator / f"lun_{index}"
    mapped.mkdir(parents=True)
    _write(mapped / "write_protect", f"{int(write_protect)}\n")
    os.symlink(f"../../../lun/lun_{index}", mapped / alias)
    return mapped
