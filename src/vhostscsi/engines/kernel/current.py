"""What LIO holds now: a scan of configfs into plain values the planner can compare.

Only the parts the kernel engine reconciles are read: devices under ``core/``, vhost targets with
their TPGs, LUN links and ACLs, and every LUN link of every fabric (so a device another fabric
still exports is never removed from under it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from vhostscsi.engines.kernel.configfs import Configfs
from vhostscsi.engines.kernel.desired import HBA_PREFIX

_HBA_RE = re.compile(r"(fileio|iblock|rd_mcp)_(\d+)$")
_PLUGIN_OF = {prefix: plugin for plugin, prefix in HBA_PREFIX.items()}
_SERIAL_PREFIX = "T10 VPD Unit Serial Number:"


@dataclass
class CurrentLun:
    path: str  # vhost/<wwn>/tpgt_<n>/lun/lun_<i>
    links: list[str]  # link names inside (normally one)
    storage_path: str | None  # core/<hba>/<name> the link points to


@dataclass
class CurrentTpg:
    path: str
    luns: dict[int, CurrentLun] = field(default_factory=dict)
    acls: list[str] = field(default_factory=list)  # initiator names


@dataclass
class Current:
    """The scanned state; paths are relative to the target root."""

    storage: dict[str, str] = field(default_factory=dict)  # "fileio/disk0" -> "core/fileio_0/disk0"
    hbas: dict[str, list[str]] = field(default_factory=dict)  # "core/fileio_0" -> device names
    targets: dict[str, dict[int, CurrentTpg]] = field(default_factory=dict)  # wwn -> tag -> tpg
    vhost_fabric: bool = False
    exported: dict[str, list[str]] = field(default_factory=dict)  # device path -> LUN dirs linking it


def scan(fs: Configfs) -> Current:
    """Read the parts of configfs the kernel engine manages."""
    cur = Current()
    for hba in fs.listdir("core"):
        match = _HBA_RE.match(hba)
        if not match or not fs.is_dir(f"core/{hba}"):
            continue
        names = [n for n in fs.listdir(f"core/{hba}") if fs.is_dir(f"core/{hba}/{n}")]
        cur.hbas[f"core/{hba}"] = names
        for name in names:
            cur.storage.setdefault(f"{_PLUGIN_OF[match.group(1)]}/{name}", f"core/{hba}/{name}")
    cur.vhost_fabric = fs.is_dir("vhost")
    for fabric in fs.listdir(""):
        if fabric == "core" or not fs.is_dir(fabric):
            continue
        for wwn in fs.listdir(fabric):
            if not fs.is_dir(f"{fabric}/{wwn}") or wwn == "discovery_auth":
                continue
            tpgs = _scan_target(fs, f"{fabric}/{wwn}")
            if fabric == "vhost":
                cur.targets[wwn] = tpgs
            for tpg in tpgs.values():
                for lun in tpg.luns.values():
                    if lun.storage_path:
                        cur.exported.setdefault(lun.storage_path, []).append(lun.path)
    return cur


def _scan_target(fs: Configfs, target: str) -> dict[int, CurrentTpg]:
    tpgs: dict[int, CurrentTpg] = {}
    for entry in fs.listdir(target):
        if not entry.startswith("tpgt_") or not entry[5:].isdigit():
            continue
        tpg = CurrentTpg(path=f"{target}/{entry}")
        for lun_dir in fs.listdir(f"{tpg.path}/lun"):
            if not lun_dir.startswith("lun_") or not lun_dir[4:].isdigit():
                continue
            path = f"{tpg.path}/lun/{lun_dir}"
            links = fs.links_in(path)
            storage = fs.link_target(f"{path}/{links[0]}") if links else None
            tpg.luns[int(lun_dir[4:])] = CurrentLun(path, links, storage)
        tpg.acls = [a for a in fs.listdir(f"{tpg.path}/acls") if fs.is_dir(f"{tpg.path}/acls/{a}")]
        tpgs[int(entry[5:])] = tpg
    return tpgs


def unit_serial(fs: Configfs, device: str) -> str | None:
    """The device's VPD unit serial as configfs shows it ("T10 VPD Unit Serial Number: <serial>")."""
    text = fs.read(f"{device}/wwn/vpd_unit_serial")
    if text is None:
        return None
    if text.startswith(_SERIAL_PREFIX):
        text = text[len(_SERIAL_PREFIX):]
    return text.strip()


def backing(fs: Configfs, device: str) -> dict[str, str]:
    """Backing facts from the device's ``info`` (file, size, mode, pages, readonly) and udev_path."""
    info = fs.read(f"{device}/info") or ""
    facts: dict[str, str] = {}
    for key, pattern in (("status", r"Status: (\S+)"), ("file", r"File: (\S*)"),
                         ("size", r"File: \S*\s+Size: (\d+)"), ("mode", r"Mode: (\S+)"),
                         ("pages", r"RamDisk Pages: (\d+)"), ("readonly", r"readonly: (\d+)")):
        match = re.search(pattern, info)
        if match:
            facts[key] = match.group(1)
    udev = fs.read(f"{device}/udev_path")
    if udev:
        facts["udev_path"] = udev.strip()
    enable = fs.read(f"{device}/enable")
    if enable is not None:
        facts["enable"] = enable.strip()
    return facts
