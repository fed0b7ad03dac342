"""What LIO should hold for a configuration: the kernel's view of our declarative model.

Pure translation, no I/O: each storage object becomes a device directory with its control string,
unit serial and attributes; each vhost TPG becomes ``vhost/<wwn>/tpgt_<tag>`` with its nexus and LUN
links. Write protection has no per-LUN switch in LIO's vhost fabric (its demo-mode sessions are
always read-write), so a TPG with a write-protected LUN gets an explicit ACL for its nexus whose
mapped LUNs carry ``write_protect``, which the kernel applies to the session it builds for that
nexus.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vhostscsi.config.attributes import READ_ONLY, default_attributes
from vhostscsi.config.model import Config, StorageObject
from vhostscsi.engines.kernel.configfs import KernelError

# Our plugin names -> LIO's HBA directory prefix and the module that implements it.
HBA_PREFIX = {"fileio": "fileio", "block": "iblock", "ramdisk": "rd_mcp"}
BACKEND_MODULE = {"fileio": "target_core_file", "block": "target_core_iblock", "ramdisk": None}
PAGE_SIZE = 4096  # rd_mcp counts its size in pages
# Attributes LIO refuses to change once a LUN exports the device: written first, before any link.
EARLY_ATTRIBUTES = ("block_size",)
# Attributes LIO takes from the device itself and refuses to set (EINVAL): iblock reports the
# block device's own write cache setting.
DEVICE_DERIVED = {"block": ("emulate_write_cache",)}


@dataclass(frozen=True)
class DesiredStorage:
    """One LIO device: where it lives and how it is configured."""

    plugin: str
    name: str
    control: str
    udev_path: str | None
    unit_serial: str
    attributes: dict[str, int]
    lio_defaults: dict[str, int]  # what LIO shows right after enable (to skip needless writes)
    expect: dict[str, str]  # backing facts the device's info must show (see current.backing)

    @property
    def hba_prefix(self) -> str:
        return HBA_PREFIX[self.plugin]

    @property
    def key(self) -> str:
        return f"{self.plugin}/{self.name}"


@dataclass(frozen=True)
class DesiredLun:
    index: int
    storage: str  # DesiredStorage.key
    alias: str
    write_protect: bool


@dataclass(frozen=True)
class DesiredTpg:
    wwn: str
    tag: int
    nexus: str | None
    attributes: dict[str, int]
    luns: tuple[DesiredLun, ...] = field(default=())

    @property
    def path(self) -> str:
        return f"vhost/{self.wwn}/tpgt_{self.tag}"

    @property
    def needs_acl(self) -> bool:
        return self.nexus is not None and any(lun.write_protect for lun in self.luns)


@dataclass(frozen=True)
class Desired:
    storage: tuple[DesiredStorage, ...]
    tpgs: tuple[DesiredTpg, ...]

    def modules(self) -> list[str]:
        """Kernel modules this configuration needs, in load order."""
        needed = ["target_core_mod"]
        for so in self.storage:
            module = BACKEND_MODULE[so.plugin]
            if module and module not in needed:
                needed.append(module)
        if self.tpgs:
            needed.append("vhost_scsi")
        return needed


def _control(so: StorageObject) -> str:
    """LIO's control string for the device (parsed by the backend's set_configfs_dev_params)."""
    if so.dev is not None and ("," in so.dev or "\n" in so.dev):
        raise KernelError(f"{so.path}: LIO cannot take a path containing ',' or a newline ({so.dev!r}); "
                          "rename the file or use a symlink")
    if so.plugin == "fileio":
        text = f"fd_dev_name={so.dev},fd_dev_size={so.size}"
        return text + (",fd_buffered_io=1" if so.write_back else "")
    if so.plugin == "block":
        return f"udev_path={so.dev}" + (",readonly=1" if so.readonly else "")
    if so.plugin == "ramdisk":
        pages = so.size // PAGE_SIZE
        if pages < 1:
            raise KernelError(f"{so.path}: a ramdisk needs at least {PAGE_SIZE} bytes")
        return f"rd_pages={pages}"
    raise KernelError(f"{so.path}: the kernel engine has no backend for plugin {so.plugin!r}")


def _expected_backing(so: StorageObject) -> dict[str, str]:
    """What ``info``/``udev_path`` show for a device configured with our control string."""
    if so.plugin == "fileio":
        mode = "Buffered-WCE" if so.write_back else "O_DSYNC"
        return {"file": str(so.dev), "size": str(so.size), "mode": mode, "udev_path": str(so.dev)}
    if so.plugin == "block":
        return {"udev_path": str(so.dev), "readonly": str(int(so.readonly))}
    return {"pages": str(so.size // PAGE_SIZE)}


def _lio_defaults(so: StorageObject) -> dict[str, int]:
    """LIO's values right after enable: targetcli's defaults minus what targetcli itself changes."""
    attrs = so.attributes
    base = default_attributes(so.plugin, write_back=so.write_back,
                              block_size=int(attrs.get("hw_block_size", 512)),
                              hw_max_sectors=attrs.get("hw_max_sectors"),
                              hw_queue_depth=attrs.get("hw_queue_depth"))
    base["emulate_model_alias"] = 0  # targetcli turns it on; LIO starts with it off
    return base


def storage_of(so: StorageObject) -> DesiredStorage:
    """The device LIO should hold for one storage object."""
    skip = set(READ_ONLY) | set(DEVICE_DERIVED.get(so.plugin, ()))
    attributes = {k: int(v) for k, v in so.attributes.items() if k not in skip}
    ordered = {k: attributes[k] for k in EARLY_ATTRIBUTES if k in attributes}
    ordered.update({k: attributes[k] for k in sorted(attributes) if k not in ordered})
    return DesiredStorage(
        plugin=so.plugin,
        name=so.name,
        control=_control(so),
        udev_path=so.dev if so.plugin in ("fileio", "block") else None,
        unit_serial=so.wwn,
        attributes=ordered,
        lio_defaults=_lio_defaults(so),
        expect=_expected_backing(so),
    )


def desired_state(cfg: Config) -> Desired:
    """Translate the saved configuration; refuses LUNs that name a storage object that is not there."""
    storage = tuple(storage_of(so) for so in cfg.storage_objects)
    tpgs: list[DesiredTpg] = []
    for target in cfg.vhost_targets():
        for tpg in target.tpgs:
            luns = []
            for lun in tpg.luns:
                so = cfg.find_storage_object(lun.storage_object)
                if so is None:
                    raise KernelError(f"/vhost/{target.wwn}/tpg{tpg.tag}/luns/lun{lun.index} names "
                                      f"{lun.storage_object}, which is not in the configuration")
                luns.append(DesiredLun(lun.index, f"{so.plugin}/{so.name}", lun.alias, lun.write_protect))
            attributes = {k: int(v) for k, v in tpg.attributes.items() if isinstance(v, (int, bool))}
            tpgs.append(DesiredTpg(target.wwn.lower(), tpg.tag, tpg.nexus_wwn, attributes, tuple(luns)))
    return Desired(storage, tuple(tpgs))
