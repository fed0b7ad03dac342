"""What we write must restore in targetcli: checked against rtslib-fb's own classes.

rtslib restores a storage object by passing its JSON keys (minus a fixed few) straight to the
backend's constructor, and sets a TPG's leftover keys as attributes of its TPG object; a key it
does not expect makes targetcli's restore fail. We cannot run rtslib's restore here (it needs the
kernel's configfs), so we hold our output against the real library's signatures and properties.
"""

from __future__ import annotations

import inspect
import json

import pytest

from vhostscsi.config.model import Config, new_storage_object, new_vhost_target
from vhostscsi.config.schema import dumps

rtslib_root = pytest.importorskip("rtslib.root", reason="rtslib-fb is not installed")
rtslib_target = pytest.importorskip("rtslib.target")

# the keys RTSRoot.restore removes before calling the constructor (rtslib/root.py)
RESTORE_DROPS = ("exists", "attributes", "plugin", "buffered_mode", "alua_tpgs")
TPG_SETUP_KEYS = ("luns", "portals", "node_acls", "tag", "attributes", "parameters", "enable")


def saved_document() -> dict:
    cfg = Config()
    f = cfg.add_storage_object(new_storage_object("fileio", "disk0", dev="/var/lib/disk0.img", size=1 << 30))
    b = cfg.add_storage_object(new_storage_object("block", "disk1", dev="/dev/sdb", size=1 << 30,
                                                  write_back=False, readonly=True))
    r = cfg.add_storage_object(new_storage_object("ramdisk", "scratch", size=1 << 20))
    tpg = cfg.add_target(new_vhost_target()).tpgs[0]
    tpg.add_lun(b)
    tpg.add_lun(f, write_protect=True)
    tpg.add_lun(r)
    return json.loads(dumps(cfg))


def test_storage_objects_fit_rtslib_constructors() -> None:
    for so in saved_document()["storage_objects"]:
        cls = rtslib_root.so_mapping[so["plugin"]]
        kwargs = {k: v for k, v in so.items() if k not in RESTORE_DROPS}
        inspect.signature(cls.__init__).bind(None, **kwargs)  # raises TypeError on an unknown key


def test_tpg_extras_are_rtslib_tpg_properties() -> None:
    (target,) = saved_document()["targets"]
    (tpg,) = target["tpgs"]
    leftovers = {k for k in tpg if k not in TPG_SETUP_KEYS}
    assert leftovers == {"nexus"}
    prop = inspect.getattr_static(rtslib_target.TPG, "nexus")
    assert isinstance(prop, property) and prop.fset is not None


def test_lun_paths_name_rtslib_plugins() -> None:
    (target,) = saved_document()["targets"]
    for lun in target["tpgs"][0]["luns"]:
        _, _, plugin, name = lun["storage_object"].split("/")
        assert plugin in rtslib_root.so_mapping and name
