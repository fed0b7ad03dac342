"""/backstores: block, fileio and ramdisk storage objects (targetcli's commands and summaries)."""

from __future__ import annotations

import glob
import os
import stat
from typing import Any

from configshell import ExecutionError

from vhostscsi.config.attributes import READ_ONLY, WRITABLE
from vhostscsi.config.errors import ConfigError
from vhostscsi.config.model import StorageObject, new_storage_object
from vhostscsi.shell.base import Node, parse_bool
from vhostscsi.shell.devices import (
    block_limits,
    block_size_or_zero,
    check_new_file,
    create_backing_file,
    probe_block_device,
)
from vhostscsi.shell.lioinfo import info_text
from vhostscsi.shell.sizes import bytes_to_human, human_to_bytes

_ATTR_DESC = "LIO storage object attribute (see targetcli(8))."
_BOOL_ATTRS = {n for n in WRITABLE if n.startswith("emulate_") and n != "emulate_ua_intlck_ctrl"} | {
    "enforce_pr_isids",
    "force_pr_aptpl",
    "is_nonrot",
    "unmap_zeroes_data",
    "pi_prot_verify",
}


def complete_path(text: str, want: Any) -> list[str]:
    """File-name completion for dev=/file_or_dev= (directories last, with a trailing '/')."""
    found = []
    for entry in glob.glob(text + "*"):
        try:
            mode = os.stat(entry).st_mode
        except OSError:
            continue
        if stat.S_ISDIR(mode):
            found.append(entry + "/")
        elif want(mode):
            found.append(entry)
    found.sort(key=lambda s: "~" + s if s.endswith("/") else s)
    if len(found) == 1 and not found[0].endswith("/"):
        return [found[0] + " "]
    return found


def one_completion(candidates: list[str], text: str) -> list[str]:
    """configshell's convention: a single match gets a trailing space."""
    matches = [c for c in candidates if c.startswith(text)]
    return [matches[0] + " "] if len(matches) == 1 else matches


def validate_attribute(name: str, value: int) -> int:
    """LIO's range checks for the attributes admins set most."""
    if value < 0:
        raise ExecutionError(f"invalid value {value} for {name}: must not be negative")
    if name in _BOOL_ATTRS and value not in (0, 1):
        raise ExecutionError(f"invalid value {value} for {name}: use 0 or 1")
    if name == "block_size" and value not in (512, 1024, 2048, 4096):
        raise ExecutionError(f"invalid block_size {value}: use 512, 1024, 2048 or 4096")
    if name == "queue_depth" and value == 0:
        raise ExecutionError("invalid queue_depth 0: must be at least 1")
    if name == "emulate_ua_intlck_ctrl" and value > 2:
        raise ExecutionError(f"invalid emulate_ua_intlck_ctrl {value}: use 0, 1 or 2")
    if name == "emulate_rest_reord" and value != 0:
        raise ExecutionError("emulate_rest_reord=1 is not implemented (as in LIO): keep 0")
    if name == "pi_prot_type" and value > 3:
        raise ExecutionError(f"invalid pi_prot_type {value}: use 0 to 3")
    return value


class Backstores(Node):
    """The /backstores container."""

    def __init__(self, parent: Node) -> None:
        super().__init__("backstores", parent)
        BlockBackstore(self)
        FileioBackstore(self)
        RamdiskBackstore(self)

    def refresh(self) -> None:
        for child in self.children:
            child.refresh()


class Backstore(Node):
    """One plugin directory (/backstores/fileio, ...)."""

    plugin = ""

    def __init__(self, parent: Node) -> None:
        super().__init__(self.plugin, parent)
        self.refresh()

    def refresh(self) -> None:
        self.clear_children()
        for so in self.session.config.storage_objects:
            if so.plugin == self.plugin:
                StorageObjectNode(so, self)

    def summary(self) -> tuple[str, bool | None]:
        return (f"Storage Objects: {len(self._children)}", None)

    def _add(self, so: StorageObject) -> StorageObjectNode:
        self.session.config.add_storage_object(so)
        self.session.touch()
        return StorageObjectNode(so, self)

    def ui_command_delete(self, name: str) -> None:
        """
        Deletes the storage object having the specified name. Refused while
        LUNs still export it: delete those LUNs first (they are named in the
        error). The backing file or device is left untouched.
        """
        path = f"/backstores/{self.plugin}/{name}"
        if self.session.config.find_storage_object(path) is None:
            raise ExecutionError(f"No storage object named {name}.")
        self.session.config.remove_storage_object(path)
        self.session.touch()
        for child in list(self._children):
            if child.name == name:
                self.remove_child(child)
        self.info(f"Deleted storage object {name}.")

    def ui_complete_delete(self, parameters: dict, text: str, current_param: str) -> list[str]:
        if current_param != "name":
            return []
        return one_completion([child.name for child in self.children], text)


class FileioBackstore(Backstore):
    """/backstores/fileio."""

    plugin = "fileio"

    def ui_command_create(
        self, name: str, file_or_dev: str, size: str | None = None, write_back: str | None = None,
        sparse: str | None = None, wwn: str | None = None,
    ) -> None:
        """
        Creates a FileIO storage object. If "file_or_dev" is a path to a
        regular file to be used as backend, then the "size" parameter is
        mandatory unless the file exists. "write_back" (default true)
        controls write caching; "sparse" (default true) applies only when
        the file is created.

        SIZE SYNTAX
        ===========
        - a number of bytes, or
        - a number with one of the k, K, m, M, g, G, t, T suffixes (powers of 1024).
        """
        wb = parse_bool(self, write_back, True)
        is_sparse = parse_bool(self, sparse, True)
        path = os.path.abspath(os.path.expanduser(file_or_dev))
        nbytes = human_to_bytes(size) if size is not None else None
        created = False
        if os.path.exists(path):
            mode = os.stat(path).st_mode
            if stat.S_ISBLK(mode):
                nbytes = block_size_or_zero(path)
                self.info("Note: block backstore preferred for best results")
            elif stat.S_ISREG(mode):
                actual = os.path.getsize(path)
                if nbytes is not None and nbytes != actual:
                    self.info(f"{path} exists, using its size ({actual} bytes) instead")
                nbytes = actual
            else:
                raise ExecutionError(f"Path {path} exists but is not a file")
        else:
            if nbytes is None:
                raise ExecutionError(
                    "Attempting to create file for new fileio backstore, need a size"
                )
            check_new_file(path)
            created = True
        so = new_storage_object(
            "fileio", name, dev=path, size=nbytes or 0, write_back=wb, wwn=wwn
        )
        # Refuse duplicates before touching the disk, then create the file.
        if self.session.config.find_storage_object(so.path) is not None:
            raise ConfigError(f"a fileio storage object named {name!r} already exists")
        if created:
            create_backing_file(path, so.size, is_sparse)
        try:
            self._add(so)
        except ConfigError:
            if created:
                os.unlink(path)
            raise
        self.info(f"Created fileio {name} with size {so.size}")

    def ui_complete_create(self, parameters: dict, text: str, current_param: str) -> list[str]:
        if current_param != "file_or_dev" or not text:
            return []
        return complete_path(text, lambda m: stat.S_ISREG(m) or stat.S_ISBLK(m))


class BlockBackstore(Backstore):
    """/backstores/block."""

    plugin = "block"

    def ui_command_create(
        self, name: str, dev: str, readonly: str | None = None, write_back: str | None = None,
        wwn: str | None = None,
    ) -> None:
        """
        Creates a Block storage object. "dev" is the path to the block
        device to use. "readonly" defaults to the device's own read-only
        flag; "write_back" (default false) turns on the emulated write cache.
        """
        path = os.path.expanduser(dev)
        bdev = probe_block_device(path)
        ro = parse_bool(self, readonly, bdev.readonly)
        wb = parse_bool(self, write_back, False)
        so = new_storage_object(
            "block", name, dev=path, size=bdev.size, write_back=wb, readonly=ro, wwn=wwn,
            block_limits=block_limits(bdev),
        )
        self._add(so)
        self.info(f"Created block storage object {name} using {path}.")

    def ui_complete_create(self, parameters: dict, text: str, current_param: str) -> list[str]:
        if current_param != "dev" or not text:
            return []
        return complete_path(text, stat.S_ISBLK)


class RamdiskBackstore(Backstore):
    """/backstores/ramdisk."""

    plugin = "ramdisk"

    def ui_command_create(
        self, name: str, size: str, nullio: str | None = None, wwn: str | None = None
    ) -> None:
        """
        Creates a RAM disk storage object of "size" bytes (same size syntax as
        fileio). Its contents do not survive the serving process.
        """
        so = new_storage_object("ramdisk", name, size=human_to_bytes(size), wwn=wwn)
        if parse_bool(self, nullio, False):
            so.extra["nullio"] = True
        self._add(so)
        self.info(f"Created ramdisk {name} with size {size}.")


class StorageObjectNode(Node):
    """/backstores/<plugin>/<name>: summary, `info`, LIO attributes."""

    extra_groups = {
        "attribute": {
            **{name: ["number", _ATTR_DESC, True] for name in sorted(WRITABLE)},
            **{name: ["number", _ATTR_DESC, False] for name in READ_ONLY},
        }
    }

    def __init__(self, so: StorageObject, parent: Node) -> None:
        super().__init__(so.name, parent)
        self.so = so
        unknown = set(so.attributes) - set(self._configuration_groups["attribute"])
        if unknown:  # attributes from a newer kernel's file: show them, read-only
            groups = {g: dict(p) for g, p in self._configuration_groups.items()}
            for name in unknown:
                groups["attribute"][name] = ["string", _ATTR_DESC, False]
            self._configuration_groups = groups
        Alua(self)

    def summary(self) -> tuple[str, bool | None]:
        so = self.so
        status = "activated" if self.session.is_exported(so.path) else "deactivated"
        wb = "write-back" if so.write_back else "write-thru"
        if so.plugin == "fileio":
            return (f"{so.dev} ({bytes_to_human(so.size)}) {wb} {status}", True)
        if so.plugin == "block":
            size = block_size_or_zero(so.dev or "") or so.size
            ro = "ro " if so.readonly else ""
            return (f"{so.dev} ({bytes_to_human(size)}) {ro}{wb} {status}", True)
        nullio = "nullio " if so.extra.get("nullio") else ""
        return (f"{nullio}({bytes_to_human(so.size)}) {status}", True)

    def ui_getgroup_attribute(self, name: str) -> Any:
        return self.so.attributes.get(name, 0)

    def ui_setgroup_attribute(self, name: str, value: Any) -> None:
        if value is None:
            raise ExecutionError(f"a value is required for {name}")
        value = validate_attribute(name, int(value))
        self.so.attributes[name] = value
        if name == "emulate_write_cache" and self.so.plugin == "fileio":
            self.so.write_back = bool(value)
        if name in ("block_size", "queue_depth", "optimal_sectors"):
            hw = {"block_size": "hw_block_size", "queue_depth": "hw_queue_depth"}.get(name)
            if hw and self.so.plugin != "block":
                self.so.attributes[hw] = value
        self.session.touch()

    def ui_command_info(self) -> None:
        """
        Displays LIO's status lines for this storage object (the text of its
        configfs "info" file), followed by its saved settings.
        """
        show_storage_object_info(self, self.so)


def show_storage_object_info(node: Node, so: StorageObject) -> None:
    """LIO's info text, then targetcli's `key: value` lines."""
    bdev = None
    if so.plugin == "block" and so.dev:
        try:
            bdev = probe_block_device(so.dev)
        except ConfigError:
            bdev = None
    node.shell.con.display(info_text(so, node.session.is_exported(so.path), bdev))
    fields = {"name": so.name, "plugin": so.plugin, "wwn": so.wwn}
    if so.dev is not None:
        fields["dev"] = so.dev
    if so.plugin != "block":
        fields["size"] = so.size
    if so.plugin in ("fileio", "block"):
        fields["write_back"] = so.write_back
    if so.plugin == "block":
        fields["readonly"] = so.readonly
    for key, value in sorted(fields.items()):
        node.info(f"{key}: {value}")


class Alua(Node):
    """alua/ with LIO's default target port group, shown as targetcli shows it."""

    def __init__(self, parent: Node) -> None:
        super().__init__("alua", parent)
        AluaGroup(self)

    def summary(self) -> tuple[str, bool | None]:
        return (f"ALUA Groups: {len(self._children)}", None)


class AluaGroup(Node):
    """default_tg_pt_gp: always Active/optimized (implicit ALUA, as LIO's default group)."""

    def __init__(self, parent: Node) -> None:
        super().__init__("default_tg_pt_gp", parent)

    def summary(self) -> tuple[str, bool | None]:
        return ("ALUA state: Active/optimized", True)
