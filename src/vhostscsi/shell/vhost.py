"""/vhost: targets, TPGs and LUNs of the vhost fabric (targetcli's vhost tree)."""

from __future__ import annotations

from typing import Any

from configshell import ExecutionError

from vhostscsi.config.model import Lun, Target, Tpg, new_vhost_target
from vhostscsi.config.schema import derived_nexus
from vhostscsi.config.wwn import WwnError, normalize_naa
from vhostscsi.shell.backstores import one_completion, show_storage_object_info
from vhostscsi.shell.base import Node, parse_bool


def _number(text: str, prefix: str, what: str) -> int:
    """'3', 'lun3' or 'tpg3' -> 3, or a one-line error."""
    raw = text[len(prefix):] if text.lower().startswith(prefix) else text
    try:
        value = int(raw)
    except ValueError:
        raise ExecutionError(f"{what} must be a number (or {prefix}N), got {text!r}") from None
    if value < 0:
        raise ExecutionError(f"{what} must not be negative, got {text!r}")
    return value


def require_vhost(target: Target) -> None:
    """Targets of other fabrics are carried for targetcli, not edited (except deletions)."""
    if target.fabric != "vhost":
        raise ExecutionError(
            f"/{target.fabric} is kept for targetcli; vhostscsi creates objects under /vhost only"
        )


class FabricNode(Node):
    """/<fabric>: the targets of one fabric module."""

    fabric = "vhost"

    def __init__(self, parent: Node, fabric: str | None = None) -> None:
        if fabric is not None:
            self.fabric = fabric
        super().__init__(self.fabric, parent)
        self.refresh()

    def refresh(self) -> None:
        self.clear_children()
        for target in self.session.config.targets:
            if target.fabric == self.fabric:
                TargetNode(target, self)

    def summary(self) -> tuple[str, bool | None]:
        return (f"Targets: {len(self._children)}", None)

    def ui_command_delete(self, wwn: str) -> None:
        """
        Recursively deletes the target with the specified wwn, with its TPGs
        and LUNs. Storage objects are kept.
        """
        target = self.session.config.find_target(wwn, self.fabric)
        if target is None:
            raise ExecutionError(f"No such target {wwn} in /{self.fabric}.")
        self.session.config.remove_target(target.wwn, self.fabric)
        self.session.touch()
        self.refresh()
        self.info(f"Deleted Target {target.wwn}.")

    def ui_complete_delete(self, parameters: dict, text: str, current_param: str) -> list[str]:
        if current_param != "wwn":
            return []
        wwns = [t.wwn for t in self.session.config.targets if t.fabric == self.fabric]
        return one_completion(wwns, text)


class ForeignFabric(FabricNode):
    """A fabric from a targetcli file (iscsi, loopback, ...): kept and shown, not served.

    Only deletions are offered, so that a backstore such a target still uses can be freed.
    """


class VhostFabric(FabricNode):
    """/vhost: the fabric module we serve."""

    fabric = "vhost"

    def ui_command_create(self, wwn: str | None = None) -> None:
        """
        Creates a new vhost target with TPG 1. Without "wwn", a random
        naa.5001405xxxxxxxxx name is generated; a given one must be an NAA
        name: naa. followed by 16 hex digits.
        """
        target = self.session.config.add_target(new_vhost_target(wwn))
        self.session.touch()
        TargetNode(target, self)
        self.info(f"Created target {target.wwn}.")
        self.info(f"Created TPG {target.tpgs[0].tag}.")

    def ui_command_info(self) -> None:
        """Displays information about the vhost fabric module."""
        self.info("Fabric module name: vhost")
        self.info("ConfigFS path: /sys/kernel/config/target/vhost")
        self.info("Allowed WWN types: naa")
        self.info("Fabric module features: nexus, tpgts")
        self.info("Corresponding kernel module: tcm_vhost")


class TargetNode(Node):
    """/vhost/<wwn>."""

    def __init__(self, target: Target, parent: Node) -> None:
        super().__init__(target.wwn, parent)
        self.target = target
        self.refresh()

    def refresh(self) -> None:
        self.clear_children()
        for tpg in self.target.tpgs:
            TpgNode(tpg, self)

    def summary(self) -> tuple[str, bool | None]:
        if self.target.fabric == "vhost":
            try:
                normalize_naa(self.target.wwn)
            except WwnError:
                return ("INVALID WWN", False)  # a hand-edited file; targetcli flags it the same way
        return (f"TPGs: {len(self._children)}", None)

    def ui_command_create(self, tag: str | None = None) -> None:
        """
        Creates a new TPG within the target. "tag" is a positive number,
        optionally prefixed with 'tpg'; without it the next free tag is used.
        Each TPG gets its own initiator nexus WWN.
        """
        require_vhost(self.target)
        used = {tpg.tag for tpg in self.target.tpgs}
        value = _number(tag, "tpg", "Tag") if tag is not None else max(used, default=0) + 1
        if value < 1:
            raise ExecutionError("Tag must be a positive number.")
        if value in used:
            raise ExecutionError(f"TPG {value} already exists in {self.target.wwn}.")
        tpg = new_vhost_target(self.target.wwn).tpgs[0]
        tpg.tag = value
        self.target.tpgs.append(tpg)
        self.target.tpgs.sort(key=lambda t: t.tag)
        self.session.touch()
        TpgNode(tpg, self)
        self.info(f"Created TPG {value}.")

    def ui_command_delete(self, tag: str) -> None:
        """Deletes a TPG (with its LUNs) from the target."""
        value = _number(tag, "tpg", "Tag")
        tpg = self.target.find_tpg(value)
        if tpg is None:
            raise ExecutionError(f"No TPG {value} in {self.target.wwn}.")
        self.target.tpgs.remove(tpg)
        self.session.touch()
        self.refresh()
        self.info(f"Deleted TPGT {value}.")

    def ui_complete_delete(self, parameters: dict, text: str, current_param: str) -> list[str]:
        if current_param != "tag":
            return []
        return one_completion([str(t.tag) for t in self.target.tpgs], text)


class TpgNode(Node):
    """/vhost/<wwn>/tpgN: its summary is the initiator nexus, as in targetcli."""

    extra_groups = {
        "attribute": {"fabric_prot_type": ["number", "T10-PI protection type offered to the guest.", True]},
        "parameter": {},
    }

    def __init__(self, tpg: Tpg, parent: TargetNode) -> None:
        super().__init__(f"tpg{tpg.tag}", parent)
        self.tpg = tpg
        if tpg.nexus_wwn is None and parent.target.fabric == "vhost":
            tpg.nexus_wwn = derived_nexus(parent.target.wwn, tpg.tag)
        LunsNode(self)

    def summary(self) -> tuple[str, bool | None]:
        if not self.tpg.enable:
            return ("disabled", False)
        return (self.tpg.nexus_wwn or "", None)

    def ui_getgroup_attribute(self, name: str) -> Any:
        return self.tpg.attributes.get(name, 0)

    def ui_setgroup_attribute(self, name: str, value: Any) -> None:
        if value is None:
            raise ExecutionError(f"a value is required for {name}")
        if name == "fabric_prot_type" and int(value) not in (0, 1, 3):
            raise ExecutionError(f"invalid fabric_prot_type {value}: use 0, 1 or 3")
        self.tpg.attributes[name] = int(value)
        self.session.touch()

    def ui_getgroup_parameter(self, name: str) -> Any:
        return self.tpg.parameters.get(name, "")

    def ui_setgroup_parameter(self, name: str, value: Any) -> None:
        self.tpg.parameters[name] = value
        self.session.touch()

    def ui_command_info(self) -> None:
        """Displays the TPG's tag and initiator nexus."""
        self.info(f"tag: {self.tpg.tag}")
        self.info(f"enable: {self.tpg.enable}")
        self.info(f"nexus: {self.tpg.nexus_wwn}")


class LunsNode(Node):
    """/vhost/<wwn>/tpgN/luns."""

    def __init__(self, parent: TpgNode) -> None:
        super().__init__("luns", parent)
        self.tpg = parent.tpg
        self.target = parent.parent.target
        self.refresh()

    def refresh(self) -> None:
        self.clear_children()
        for lun in self.tpg.luns:
            LunNode(lun, self)

    def summary(self) -> tuple[str, bool | None]:
        return (f"LUNs: {len(self._children)}", None)

    def ui_command_create(
        self, storage_object: str, lun: str | None = None, write_protect: str | None = None
    ) -> None:
        """
        Creates a new LUN in the TPG, exporting an existing storage object
        given by its path (e.g. /backstores/fileio/disk0). Without "lun" the
        lowest free LUN number is used; "lunN" is accepted too.
        "write_protect=true" makes the LUN read-only for the guest.
        """
        require_vhost(self.target)
        path = storage_object.rstrip("/")
        if not path.startswith("/"):
            path = "/" + path
        so = self.session.storage_object(path)
        if so is None:
            raise ExecutionError(f"storage object {storage_object} not found: create it under /backstores first")
        index = _number(lun, "lun", "LUN") if lun is not None else None
        wp = parse_bool(self, write_protect, False)
        new = self.tpg.add_lun(so, index, write_protect=wp)
        self.session.touch()
        LunNode(new, self)
        self.info(f"Created LUN {new.index}.")

    def ui_complete_create(self, parameters: dict, text: str, current_param: str) -> list[str]:
        if current_param == "storage_object":
            return one_completion([so.path for so in self.session.config.storage_objects], text)
        if current_param == "write_protect":
            return one_completion(["true", "false"], text)
        return []

    def ui_command_delete(self, lun: str) -> None:
        """Deletes a LUN ("N" or "lunN"); the storage object is kept."""
        index = _number(lun, "lun", "LUN")
        self.tpg.remove_lun(index)
        self.session.touch()
        for child in list(self._children):
            if child.lun.index == index:
                self.remove_child(child)
        self.info(f"Deleted LUN {index}.")

    def ui_complete_delete(self, parameters: dict, text: str, current_param: str) -> list[str]:
        if current_param != "lun":
            return []
        return one_completion([str(lun.index) for lun in self.tpg.luns], text)


class LunNode(Node):
    """/vhost/<wwn>/tpgN/luns/lunM."""

    extra_groups = {
        "attribute": {"write_protect": ["number", "1: the guest may read but not write this LUN.", True]},
    }

    def __init__(self, lun: Lun, parent: LunsNode) -> None:
        super().__init__(f"lun{lun.index}", parent)
        self.lun = lun

    def summary(self) -> tuple[str, bool | None]:
        so = self.session.storage_object(self.lun.storage_object)
        if so is None:
            return ("BROKEN STORAGE LINK", False)
        text = f"{so.plugin}/{so.name}"
        if so.dev:
            text += f" ({so.dev})"
        text += " (default_tg_pt_gp)"
        if self.lun.write_protect:
            text += " (ro)"
        return (text, True)

    def ui_getgroup_attribute(self, name: str) -> Any:
        return int(self.lun.write_protect)

    def ui_setgroup_attribute(self, name: str, value: Any) -> None:
        if value is None:
            raise ExecutionError(f"a value is required for {name}")
        if int(value) not in (0, 1):
            raise ExecutionError(f"invalid write_protect {value}: use 0 or 1")
        self.lun.write_protect = bool(int(value))
        self.session.touch()

    def ui_command_info(self) -> None:
        """
        Displays LIO's status lines for the storage object behind this LUN
        (what `cat .../lun_N/<link>/info` shows under the kernel).
        """
        so = self.session.storage_object(self.lun.storage_object)
        if so is None:
            raise ExecutionError(f"storage object {self.lun.storage_object} does not exist")
        show_storage_object_info(self, so)
        self.info(f"write_protect: {self.lun.write_protect}")
