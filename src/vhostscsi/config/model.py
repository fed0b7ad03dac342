"""The declarative configuration: storage objects, vhost targets, TPGs and LUNs.

This is the single source of truth that both engines reconcile against. It does no I/O: values
that need the outside world (a block device's size and limits, whether a file exists) are read by
the caller and handed in, so the model stays deterministic and fast to build from a saved file.

Every object keeps the JSON keys it did not understand in ``extra`` so that a file written by
targetcli (other fabrics, ALUA groups, ACLs, portals, future keys) survives a load/save cycle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from vhostscsi.config.attributes import default_attributes
from vhostscsi.config.errors import ConfigError
from vhostscsi.config.wwn import (
    WwnError,
    generate_lun_alias,
    generate_naa,
    generate_unit_serial,
    normalize_naa,
)

PLUGINS = ("fileio", "block", "ramdisk")
MAX_LUN = 65535  # rtslib's LUN.MAX_TARGET_LUN
# configfs directory names: no '/', no whitespace; keep to what targetcli users type.
_NAME_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,128}$")

__all__ = [
    "PLUGINS",
    "Config",
    "ConfigError",
    "Lun",
    "StorageObject",
    "Target",
    "Tpg",
    "new_storage_object",
    "new_vhost_target",
    "validate_name",
]


def validate_name(name: str) -> str:
    """Refuse names LIO cannot use as a configfs directory (or that would break our paths)."""
    if not _NAME_RE.match(name):
        raise ConfigError(
            f"invalid name {name!r}: use 1-128 letters, digits, '_', '.', ':' or '-'"
        )
    return name


@dataclass
class StorageObject:
    """A backstore: the disk behind one or more LUNs.

    ``wwn`` is the T10 unit serial, fixed at creation: it is what the guest sees as the disk's
    identity, so it is never regenerated.
    """

    plugin: str
    name: str
    wwn: str
    dev: str | None = None
    size: int = 0
    write_back: bool = True
    readonly: bool = False
    attributes: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> str:
        """The targetcli path, also the key LUNs use to refer to this object."""
        return f"/backstores/{self.plugin}/{self.name}"


@dataclass
class Lun:
    """One LUN of a TPG: an index and the storage object it exports."""

    index: int
    storage_object: str
    write_protect: bool = False
    alias: str = field(default_factory=generate_lun_alias)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Tpg:
    """A target portal group; for vhost, TPG tag N is the guest's SCSI target id N."""

    tag: int = 1
    nexus_wwn: str | None = None
    enable: bool = True
    luns: list[Lun] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def find_lun(self, index: int) -> Lun | None:
        """The LUN with this index, if any."""
        for lun in self.luns:
            if lun.index == index:
                return lun
        return None

    def add_lun(
        self, storage_object: StorageObject, index: int | None = None, write_protect: bool = False
    ) -> Lun:
        """Export a storage object; index defaults to the lowest free one, as targetcli does."""
        used = {lun.index for lun in self.luns}
        for lun in self.luns:
            if lun.storage_object == storage_object.path:
                raise ConfigError(
                    f"{storage_object.path} is already exported by LUN {lun.index} of TPG {self.tag}"
                )
        if index is None:
            index = next(i for i in range(MAX_LUN + 2) if i not in used)
        if not 0 <= index <= MAX_LUN:
            raise ConfigError(f"invalid LUN index {index}: use 0 to {MAX_LUN}")
        if index in used:
            raise ConfigError(f"LUN {index} already exists in TPG {self.tag}")
        lun = Lun(index=index, storage_object=storage_object.path, write_protect=write_protect)
        self.luns.append(lun)
        self.luns.sort(key=lambda item: item.index)
        return lun

    def remove_lun(self, index: int) -> Lun:
        """Remove and return LUN ``index``."""
        lun = self.find_lun(index)
        if lun is None:
            raise ConfigError(f"no LUN {index} in TPG {self.tag}")
        self.luns.remove(lun)
        return lun


@dataclass
class Target:
    """A target WWN on one fabric. Only fabric "vhost" is served; others are carried along."""

    wwn: str
    fabric: str = "vhost"
    tpgs: list[Tpg] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def find_tpg(self, tag: int) -> Tpg | None:
        """The TPG with this tag, if any."""
        for tpg in self.tpgs:
            if tpg.tag == tag:
                return tpg
        return None


@dataclass
class Config:
    """The whole saved configuration (one saveconfig.json)."""

    storage_objects: list[StorageObject] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    fabric_modules: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    # path -> object, rebuilt whenever the list's members change (compared by identity, in C);
    # reconcilers look up every LUN's storage object, which would be quadratic with a scan.
    _so_index: dict[str, StorageObject] = field(default_factory=dict, repr=False, compare=False)
    _so_index_key: tuple[int, ...] = field(default=(-1,), repr=False, compare=False)

    def vhost_targets(self) -> list[Target]:
        """The targets our engines serve."""
        return [t for t in self.targets if t.fabric == "vhost"]

    def find_storage_object(self, path: str) -> StorageObject | None:
        """Look up a storage object by its /backstores/<plugin>/<name> path."""
        key = tuple(map(id, self.storage_objects))
        if key != self._so_index_key:
            self._so_index = {so.path: so for so in self.storage_objects}
            self._so_index_key = key
        so = self._so_index.get(path)
        if so is not None and so.path == path:
            return so
        # a miss (or an object renamed behind our back) is confirmed by a scan
        for so in self.storage_objects:
            if so.path == path:
                return so
        return None

    def find_target(self, wwn: str, fabric: str = "vhost") -> Target | None:
        """Look up a target by WWN (case-insensitive, as configfs names are for NAA)."""
        wanted = wwn.lower()
        for target in self.targets:
            if target.fabric == fabric and target.wwn.lower() == wanted:
                return target
        return None

    def luns_using(self, so_path: str) -> list[tuple[Target, Tpg, Lun]]:
        """Every LUN (on any fabric) that exports the storage object at so_path."""
        found = []
        for target in self.targets:
            for tpg in target.tpgs:
                for lun in tpg.luns:
                    if lun.storage_object == so_path:
                        found.append((target, tpg, lun))
        return found

    def add_storage_object(self, so: StorageObject) -> StorageObject:
        """Add a new storage object; names are unique per plugin, as in LIO."""
        if self.find_storage_object(so.path) is not None:
            raise ConfigError(f"a {so.plugin} storage object named {so.name!r} already exists")
        if so.dev is not None and so.plugin in ("fileio", "block"):
            for other in self.storage_objects:
                if other.dev == so.dev and other.plugin in ("fileio", "block"):
                    raise ConfigError(
                        f"storage object for {so.dev} already exists: {other.path}"
                    )
        self.storage_objects.append(so)
        return so

    def remove_storage_object(self, path: str) -> StorageObject:
        """Remove a storage object; refused while a LUN still exports it (the LUNs are named)."""
        so = self.find_storage_object(path)
        if so is None:
            raise ConfigError(f"no storage object {path}")
        users = self.luns_using(path)
        if users:
            names = ", ".join(
                f"/{t.fabric}/{t.wwn}/tpg{tpg.tag}/luns/lun{lun.index}" for t, tpg, lun in users
            )
            raise ConfigError(f"{path} is in use by {names}: delete the LUN(s) first")
        self.storage_objects.remove(so)
        return so

    def add_target(self, target: Target) -> Target:
        """Add a target; WWNs are unique per fabric."""
        if self.find_target(target.wwn, target.fabric) is not None:
            raise ConfigError(f"target {target.wwn} already exists")
        self.targets.append(target)
        return target

    def remove_target(self, wwn: str, fabric: str = "vhost") -> Target:
        """Remove a target with all its TPGs and LUNs (the storage objects stay)."""
        target = self.find_target(wwn, fabric)
        if target is None:
            raise ConfigError(f"no {fabric} target {wwn}")
        self.targets.remove(target)
        return target


def new_storage_object(
    plugin: str,
    name: str,
    *,
    dev: str | None = None,
    size: int = 0,
    write_back: bool = True,
    readonly: bool = False,
    wwn: str | None = None,
    block_limits: dict[str, int] | None = None,
) -> StorageObject:
    """Build a validated storage object with a fresh unit serial and LIO's default attributes.

    ``block_limits`` carries what the caller read from a block device's queue (hw_max_sectors,
    hw_queue_depth, block_size, nonrot, unmap_max_lba, unmap_granularity, unmap_alignment).
    """
    if plugin not in PLUGINS:
        raise ConfigError(f"unknown backstore type {plugin!r}: use one of {', '.join(PLUGINS)}")
    validate_name(name)
    if plugin in ("fileio", "block") and not dev:
        raise ConfigError(f"a {plugin} storage object needs a device or file path")
    if plugin in ("fileio", "ramdisk") and size <= 0:
        raise ConfigError(f"invalid size {size}: a {plugin} storage object needs a size above 0")
    if plugin == "fileio" and size < 512:
        raise ConfigError(f"invalid size {size}: a fileio disk needs at least one 512-byte block")
    if plugin == "ramdisk" and size < 4096:
        raise ConfigError(f"invalid size {size}: a ramdisk needs at least one 4 KiB page")
    if plugin == "ramdisk":
        dev, write_back, readonly = None, False, False
    if plugin == "fileio":
        readonly = False
    limits = dict(block_limits or {})
    attributes = default_attributes(
        plugin,
        write_back=write_back,
        block_size=limits.get("block_size", 512),
        hw_max_sectors=limits.get("hw_max_sectors"),
        hw_queue_depth=limits.get("hw_queue_depth"),
        nonrot=bool(limits.get("nonrot", 0)),
        unmap_max_lba=limits.get("unmap_max_lba", 0),
        unmap_granularity=limits.get("unmap_granularity", 0),
        unmap_alignment=limits.get("unmap_alignment", 0),
    )
    return StorageObject(
        plugin=plugin,
        name=name,
        wwn=wwn or generate_unit_serial(),
        dev=dev,
        size=size,
        write_back=write_back,
        readonly=readonly,
        attributes=attributes,
    )


def new_vhost_target(wwn: str | None = None) -> Target:
    """A vhost target with TPG 1 and a fresh initiator nexus, like `targetcli /vhost create`."""
    if wwn is None:
        wwn = generate_naa()
    else:
        try:
            wwn = normalize_naa(wwn)
        except WwnError as exc:
            raise ConfigError(str(exc)) from None
    tpg = Tpg(tag=1, nexus_wwn=generate_naa(), attributes={"fabric_prot_type": 0})
    return Target(wwn=wwn, fabric="vhost", tpgs=[tpg])
