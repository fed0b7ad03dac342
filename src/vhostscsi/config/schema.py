"""Mapping between the model and targetcli's saveconfig.json (rtslib's dump format).

Written to be exchanged both ways with targetcli/rtslib:
- keys we do not understand are kept in ``extra`` and written back unchanged;
- we never add a key rtslib would refuse on restore (rtslib passes storage-object keys straight to
  the backend constructor, so e.g. a block object must not get a "size");
- output is rtslib's own layout (sorted keys, indent 2, trailing newline), so a file that went
  through us unchanged is byte-identical.

Loading is deterministic: a value missing from the file (unit serial, nexus, LUN alias) is
derived from the object's name with a hash rather than drawn at random, so two loads of the same
file give the same configuration.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from vhostscsi.config.attributes import READ_ONLY, default_attributes, hardware_attributes
from vhostscsi.config.errors import ConfigError
from vhostscsi.config.model import Config, Lun, StorageObject, Target, Tpg
from vhostscsi.config.wwn import NAA_PREFIX

# JSON plugin names rtslib accepts for the same backend (configfs directory prefixes).
_PLUGIN_ALIASES = {"rd_mcp": "ramdisk", "iblock": "block"}
_SO_KEYS = ("plugin", "name", "wwn", "dev", "size", "write_back", "readonly", "attributes")
_TPG_KEYS = ("tag", "enable", "luns", "attributes", "parameters", "nexus")
_LUN_KEYS = ("index", "storage_object", "alias", "write_protect")
_TARGET_KEYS = ("wwn", "fabric", "tpgs")
_TOP_KEYS = ("storage_objects", "targets", "fabric_modules")
_UUID_NS = uuid.UUID("6f0b7a2e-3c51-4e43-9a1d-5d2b8f0c7e11")


def _derived_hex(seed: str, digits: int) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()[:digits]


def _rest(data: dict[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in known}


def _want(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        name = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ConfigError(f"{where}: expected {name}, found {json.dumps(value)[:40]}")
    return value


def _as_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ConfigError(f"{where}: expected true or false, found {json.dumps(value)[:40]}")


# ---------------------------------------------------------------------------- dict -> model


def storage_object_from_dict(data: Any, where: str) -> StorageObject:
    """Parse one entry of "storage_objects"."""
    _want(data, dict, where)
    for key in ("name", "plugin"):
        if key not in data:
            raise ConfigError(f"{where}: missing {key!r}")
    plugin = _PLUGIN_ALIASES.get(_want(data["plugin"], str, f"{where}.plugin"), data["plugin"])
    name = _want(data["name"], str, f"{where}.name")
    write_back = _as_bool(data.get("write_back", False), f"{where}.write_back")
    attrs = _want(data.get("attributes", {}), dict, f"{where}.attributes")
    size = _want(data.get("size", 0), int, f"{where}.size")
    dev = data.get("dev")
    if dev is not None:
        _want(dev, str, f"{where}.dev")
    if plugin == "fileio" and (not dev or size <= 0):
        raise ConfigError(f"{where}: fileio storage object {name!r} needs 'dev' and a 'size' above 0")
    if plugin == "block" and not dev:
        raise ConfigError(f"{where}: block storage object {name!r} needs 'dev'")
    if plugin == "ramdisk" and size <= 0:
        raise ConfigError(f"{where}: ramdisk storage object {name!r} needs a 'size' above 0")
    if plugin in ("fileio", "block", "ramdisk"):
        merged: dict[str, Any] = default_attributes(plugin, write_back=write_back)
        merged.update(attrs)
        merged.update(hardware_attributes(merged))
    else:
        merged = dict(attrs)
    wwn = data.get("wwn") or str(uuid.uuid5(_UUID_NS, f"{plugin}/{name}"))
    return StorageObject(
        plugin=plugin,
        name=name,
        wwn=_want(wwn, str, f"{where}.wwn"),
        dev=dev,
        size=size,
        write_back=write_back,
        readonly=_as_bool(data.get("readonly", False), f"{where}.readonly"),
        attributes=merged,
        extra=_rest(data, _SO_KEYS),
    )


def lun_from_dict(data: Any, where: str, seed: str) -> Lun:
    """Parse one entry of a TPG's "luns"."""
    _want(data, dict, where)
    if "index" not in data or "storage_object" not in data:
        raise ConfigError(f"{where}: a LUN needs 'index' and 'storage_object'")
    index = _want(data["index"], int, f"{where}.index")
    so_path = _want(data["storage_object"], str, f"{where}.storage_object")
    parts = so_path.split("/")
    if len(parts) != 4 or parts[0] or parts[1] != "backstores":
        raise ConfigError(f"{where}.storage_object: malformed path {so_path!r}")
    plugin = _PLUGIN_ALIASES.get(parts[2], parts[2])
    return Lun(
        index=index,
        storage_object=f"/backstores/{plugin}/{parts[3]}",
        write_protect=_as_bool(data.get("write_protect", False), f"{where}.write_protect"),
        alias=str(data.get("alias") or _derived_hex(f"{seed}/lun{index}", 10)),
        extra=_rest(data, _LUN_KEYS),
    )


def tpg_from_dict(data: Any, where: str, target_wwn: str) -> Tpg:
    """Parse one entry of a target's "tpgs"."""
    _want(data, dict, where)
    tag = _want(data.get("tag", 1), int, f"{where}.tag")
    seed = f"{target_wwn}/tpg{tag}"
    luns = [
        lun_from_dict(item, f"{where}.luns[{i}]", seed)
        for i, item in enumerate(_want(data.get("luns", []), list, f"{where}.luns"))
    ]
    nexus = data.get("nexus")
    if nexus is not None:
        _want(nexus, str, f"{where}.nexus")
    return Tpg(
        tag=tag,
        nexus_wwn=nexus or None,
        enable=_as_bool(data.get("enable", True), f"{where}.enable"),
        luns=luns,  # file order kept: rtslib writes them in configfs directory order
        attributes=dict(_want(data.get("attributes", {}), dict, f"{where}.attributes")),
        parameters=dict(_want(data.get("parameters", {}), dict, f"{where}.parameters")),
        extra=_rest(data, _TPG_KEYS),
    )


def derived_nexus(target_wwn: str, tag: int) -> str:
    """A stable nexus WWN for a TPG whose file has none (rtslib does not save it)."""
    return NAA_PREFIX + _derived_hex(f"nexus/{target_wwn.lower()}/{tag}", 9)


def target_from_dict(data: Any, where: str) -> Target:
    """Parse one entry of "targets" (any fabric)."""
    _want(data, dict, where)
    if "wwn" not in data or "fabric" not in data:
        raise ConfigError(f"{where}: a target needs 'wwn' and 'fabric'")
    wwn = _want(data["wwn"], str, f"{where}.wwn")
    fabric = _want(data["fabric"], str, f"{where}.fabric")
    tpgs = [
        tpg_from_dict(item, f"{where}.tpgs[{i}]", wwn)
        for i, item in enumerate(_want(data.get("tpgs", []), list, f"{where}.tpgs"))
    ]
    if fabric == "vhost":
        for tpg in tpgs:
            if tpg.nexus_wwn is None:
                tpg.nexus_wwn = derived_nexus(wwn, tpg.tag)
    return Target(wwn=wwn, fabric=fabric, tpgs=tpgs, extra=_rest(data, _TARGET_KEYS))


def config_from_dict(data: Any) -> Config:
    """Parse a whole saveconfig.json document and check that every LUN's storage object exists."""
    _want(data, dict, "top level")
    sos = [
        storage_object_from_dict(item, f"storage_objects[{i}]")
        for i, item in enumerate(_want(data.get("storage_objects", []), list, "storage_objects"))
    ]
    targets = [
        target_from_dict(item, f"targets[{i}]")
        for i, item in enumerate(_want(data.get("targets", []), list, "targets"))
    ]
    fabric_modules = _want(data.get("fabric_modules", []), list, "fabric_modules")
    paths = {so.path for so in sos}
    if len(paths) != len(sos):
        raise ConfigError("storage_objects: two storage objects share a plugin and name")
    for t in targets:
        for tpg in t.tpgs:
            for lun in tpg.luns:
                if lun.storage_object not in paths:
                    raise ConfigError(
                        f"target {t.wwn} TPG {tpg.tag} LUN {lun.index}: "
                        f"storage object {lun.storage_object} is not defined"
                    )
    return Config(
        storage_objects=sos,
        targets=targets,
        fabric_modules=list(fabric_modules),
        extra=_rest(data, _TOP_KEYS),
    )


# ---------------------------------------------------------------------------- model -> dict


def storage_object_to_dict(so: StorageObject) -> dict[str, Any]:
    """One "storage_objects" entry with exactly the keys rtslib dumps for this plugin."""
    d: dict[str, Any] = {"alua_tpgs": []}
    d.update(so.extra)
    d["name"] = so.name
    d["plugin"] = so.plugin
    d["wwn"] = so.wwn
    d["attributes"] = {k: v for k, v in so.attributes.items() if k not in READ_ONLY}
    if so.plugin == "fileio":
        d.setdefault("aio", False)
        d.update(dev=so.dev, size=so.size, write_back=so.write_back)
    elif so.plugin == "block":
        d.update(dev=so.dev, readonly=so.readonly, write_back=so.write_back)
    elif so.plugin == "ramdisk":
        d["size"] = so.size
    else:
        if so.dev is not None:
            d["dev"] = so.dev
        if so.size:
            d["size"] = so.size
    return d


def lun_to_dict(lun: Lun) -> dict[str, Any]:
    """One LUN entry; write_protect only when set (rtslib ignores the key, targetcli files lack it)."""
    d: dict[str, Any] = {"alua_tg_pt_gp_name": "default_tg_pt_gp"}
    d.update(lun.extra)
    d.update(alias=lun.alias, index=lun.index, storage_object=lun.storage_object)
    if lun.write_protect:
        d["write_protect"] = True
    return d


def tpg_to_dict(tpg: Tpg) -> dict[str, Any]:
    """One TPG entry; "nexus" is a TPG property rtslib restores, so targetcli keeps our nexus."""
    d: dict[str, Any] = {"node_acls": [], "portals": []}
    d.update(tpg.extra)
    d.update(tag=tpg.tag, enable=tpg.enable, luns=[lun_to_dict(lun) for lun in tpg.luns])
    if tpg.attributes:
        d["attributes"] = dict(tpg.attributes)
    if tpg.parameters:
        d["parameters"] = dict(tpg.parameters)
    if tpg.nexus_wwn:
        d["nexus"] = tpg.nexus_wwn
    return d


def target_to_dict(target: Target) -> dict[str, Any]:
    """One "targets" entry."""
    d = dict(target.extra)
    d.update(wwn=target.wwn, fabric=target.fabric, tpgs=[tpg_to_dict(t) for t in target.tpgs])
    return d


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The whole document."""
    d = dict(cfg.extra)
    d["fabric_modules"] = list(cfg.fabric_modules)
    d["storage_objects"] = [storage_object_to_dict(so) for so in cfg.storage_objects]
    d["targets"] = [target_to_dict(t) for t in cfg.targets]
    return d


def dumps(cfg: Config) -> str:
    """Serialise exactly as rtslib's save_to_file does."""
    return json.dumps(config_to_dict(cfg), sort_keys=True, indent=2) + "\n"
