"""What the daemon should be serving, derived from a saved configuration, and how to get there from what it serves.

Pure data and pure functions: the daemon turns a `Config` into a `DesiredState`, diffs it against the state it
last applied, and executes the resulting steps. Keeping the diff free of I/O means the ordering rules (take LUNs
away before closing their disk, open a disk before a LUN points at it) are unit-testable without a guest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from vhostscsi.config.model import Config, StorageObject

log = logging.getLogger("vhostscsi.serve")


@dataclass(frozen=True)
class DeviceSpec:
    """A storage object as the data plane needs it. ``identity`` changes mean: close and reopen."""

    so: StorageObject = field(compare=False, hash=False)
    identity: tuple


def device_spec(so: StorageObject) -> DeviceSpec:
    identity = (
        so.plugin,
        so.name,
        so.wwn,
        so.dev,
        so.write_back,
        so.readonly,
        tuple(sorted(so.attributes.items())),
        # A file or a ramdisk has the size it was opened with, so a new size there means a new disk (unplugged,
        # then plugged again). A block device's size is not saved (targetcli reads it from the device): the
        # daemon re-reads it on every reload instead (Daemon.refresh_capacities).
        None if so.plugin == "block" else so.size,
    )
    return DeviceSpec(so=so, identity=identity)


@dataclass(frozen=True)
class LunSpec:
    so_path: str
    write_protect: bool
    device_identity: tuple  # a LUN whose disk was replaced is a different LUN to the guest


@dataclass(frozen=True)
class TpgSpec:
    tag: int
    nexus: str
    luns: dict[int, LunSpec]


@dataclass(frozen=True)
class TargetSpec:
    wwn: str
    tpgs: dict[int, TpgSpec]


@dataclass(frozen=True)
class DesiredState:
    devices: dict[str, DeviceSpec]
    targets: dict[str, TargetSpec]


EMPTY = DesiredState(devices={}, targets={})


def desired_state(cfg: Config) -> DesiredState:
    """Every vhost target with its TPGs and LUNs, and only the storage objects those LUNs use.

    A LUN naming a storage object that does not exist is skipped with a warning rather than failing the
    whole configuration: the other targets keep being served.
    """
    devices: dict[str, DeviceSpec] = {}
    targets: dict[str, TargetSpec] = {}
    for target in cfg.vhost_targets():
        tpgs: dict[int, TpgSpec] = {}
        for tpg in target.tpgs:
            if not tpg.enable:
                continue
            luns: dict[int, LunSpec] = {}
            for lun in tpg.luns:
                so = cfg.find_storage_object(lun.storage_object)
                if so is None:
                    log.warning("%s tpg%d lun%d: storage object %s does not exist; LUN not served",
                                target.wwn, tpg.tag, lun.index, lun.storage_object)
                    continue
                spec = devices.get(so.path) or device_spec(so)
                devices[so.path] = spec
                luns[lun.index] = LunSpec(so.path, lun.write_protect or so.readonly, spec.identity)
            nexus = tpg.nexus_wwn or f"{target.wwn}.tpg{tpg.tag}"
            tpgs[tpg.tag] = TpgSpec(tpg.tag, nexus, luns)
        targets[target.wwn] = TargetSpec(target.wwn, tpgs)
    return DesiredState(devices, targets)


# ---- steps ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RemoveLun:
    wwn: str
    tag: int
    lun: int


@dataclass(frozen=True)
class RemoveTpg:
    wwn: str
    tag: int


@dataclass(frozen=True)
class RemoveTarget:
    wwn: str


@dataclass(frozen=True)
class CloseDevice:
    path: str


@dataclass(frozen=True)
class OpenDevice:
    path: str


@dataclass(frozen=True)
class AddTarget:
    wwn: str


@dataclass(frozen=True)
class AddTpg:
    wwn: str
    tag: int


@dataclass(frozen=True)
class AddLun:
    wwn: str
    tag: int
    lun: int


Step = RemoveLun | RemoveTpg | RemoveTarget | CloseDevice | OpenDevice | AddTarget | AddTpg | AddLun


def plan(old: DesiredState, new: DesiredState) -> list[Step]:
    """Steps from ``old`` to ``new``: removals first (LUNs, TPGs, targets, disks), then opens, then adds."""
    removes: list[Step] = []
    adds: list[Step] = []
    for wwn, old_t in old.targets.items():
        new_t = new.targets.get(wwn)
        for tag, old_tpg in old_t.tpgs.items():
            new_tpg = new_t.tpgs.get(tag) if new_t else None
            same_tpg = new_tpg is not None and new_tpg.nexus == old_tpg.nexus
            for idx, old_lun in old_tpg.luns.items():
                if not same_tpg or new_tpg.luns.get(idx) != old_lun:  # type: ignore[union-attr]
                    removes.append(RemoveLun(wwn, tag, idx))
            if not same_tpg:
                removes.append(RemoveTpg(wwn, tag))
        if new_t is None:
            removes.append(RemoveTarget(wwn))
    for path, old_d in old.devices.items():
        new_d = new.devices.get(path)
        if new_d is None or new_d.identity != old_d.identity:
            removes.append(CloseDevice(path))
    for path, new_d in new.devices.items():
        old_d = old.devices.get(path)
        if old_d is None or old_d.identity != new_d.identity:
            adds.append(OpenDevice(path))
    for wwn, new_t in new.targets.items():
        old_t = old.targets.get(wwn)
        if old_t is None:
            adds.append(AddTarget(wwn))
        for tag, new_tpg in new_t.tpgs.items():
            old_tpg = old_t.tpgs.get(tag) if old_t else None
            same_tpg = old_tpg is not None and old_tpg.nexus == new_tpg.nexus
            if not same_tpg:
                adds.append(AddTpg(wwn, tag))
            for idx, new_lun in new_tpg.luns.items():
                if not same_tpg or old_tpg.luns.get(idx) != new_lun:  # type: ignore[union-attr]
                    adds.append(AddLun(wwn, tag, idx))
    return removes + adds
