"""What the daemon should be serving, derived from a saved configuration, and how to get there from what it serves.

Pure data and pure functions: the daemon turns a `Config` into a `DesiredState`, diffs it against the state it
last applied, and executes the resulting steps. Keeping the diff free of I/O means the ordering rules (take LUNs
away before closing their disk, open a disk before a LUN points at it) are unit-testable without a guest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
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
    """Steps from ``old`` to ``new``: removals first (LUNs, TPGs, targets, disks), then opens, then adds.

    What is added is what a plan from ``new`` back to ``old`` would remove, so both come from one walk:
    removals children first, additions parents first.
    """
    removes: list[Step] = list(_departures(old, new, RemoveTarget, RemoveTpg, RemoveLun, parents_first=False))
    removes += [CloseDevice(path) for path in _changed_devices(old, new)]
    adds: list[Step] = [OpenDevice(path) for path in _changed_devices(new, old)]
    adds += _departures(new, old, AddTarget, AddTpg, AddLun, parents_first=True)
    return removes + adds


def _changed_devices(a: DesiredState, b: DesiredState) -> list[str]:
    """The disks of ``a`` that ``b`` lacks or has with another identity (closed and reopened, never adjusted)."""
    return [path for path, spec in a.devices.items()
            if (other := b.devices.get(path)) is None or other.identity != spec.identity]


def _departures(a: DesiredState, b: DesiredState, target_step: Callable[[str], Step],
                tpg_step: Callable[[str, int], Step], lun_step: Callable[[str, int, int], Step],
                parents_first: bool) -> Iterator[Step]:
    """A step for each target, TPG and LUN of ``a`` that ``b`` lacks or has otherwise, in ``a``'s order.

    A TPG whose nexus changed is another I_T nexus to the guest, so its LUNs all depart with it.
    """
    for wwn, target in a.targets.items():
        gone = wwn not in b.targets
        if parents_first and gone:
            yield target_step(wwn)
        for tag, tpg in target.tpgs.items():
            other = None if gone else b.targets[wwn].tpgs.get(tag)
            kept = other.luns if other is not None and other.nexus == tpg.nexus else None
            if parents_first and kept is None:
                yield tpg_step(wwn, tag)
            for idx, lun in tpg.luns.items():
                if kept is None or kept.get(idx) != lun:
                    yield lun_step(wwn, tag, idx)
            if not parents_first and kept is None:
                yield tpg_step(wwn, tag)
        if not parents_first and gone:
            yield target_step(wwn)
