"""saveconfig.json both ways: targetcli's files load and come back unchanged; bad files are refused."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from vhostscsi.config.errors import ConfigError
from vhostscsi.config.model import Config, new_storage_object, new_vhost_target
from vhostscsi.config.schema import config_from_dict, config_to_dict, derived_nexus, dumps

DATA = Path(__file__).parent / "data" / "targetcli_vhost.json"


def targetcli_doc() -> dict:
    return json.loads(DATA.read_text())


def test_targetcli_file_loads_with_its_values() -> None:
    cfg = config_from_dict(targetcli_doc())
    disk1 = cfg.find_storage_object("/backstores/block/disk1")
    assert disk1 is not None
    assert (disk1.dev, disk1.readonly, disk1.write_back, disk1.wwn) == (
        "/dev/disk/by-id/dm-uuid-mpath-36005076306ffc7630000000000002000", False, False,
        "a0882482-9b3e-4d1c-9a53-0c5e31c2f7d1",
    )
    assert disk1.attributes["hw_max_sectors"] == 2560  # from optimal_sectors, as LIO set it
    assert disk1.attributes["submit_type"] == 0  # a newer kernel's attribute is kept
    disk0 = cfg.find_storage_object("/backstores/fileio/disk0")
    assert disk0 is not None and (disk0.size, disk0.write_back) == (1073741824, True)
    (vhost,) = cfg.vhost_targets()
    assert vhost.wwn == "naa.500140568720f76f"
    assert [(lun.index, lun.storage_object, lun.alias) for lun in vhost.tpgs[0].luns] == [
        (0, "/backstores/block/disk1", "a08824829b"),
        (1, "/backstores/fileio/disk0", "5d7e0c1f3a"),
    ]
    assert [t.fabric for t in cfg.targets] == ["iscsi", "vhost"]


def test_round_trip_changes_nothing_but_adds_the_nexus() -> None:
    original = targetcli_doc()
    cfg = config_from_dict(copy.deepcopy(original))
    written = json.loads(dumps(cfg))
    tpg = written["targets"][1]["tpgs"][0]
    assert tpg.pop("nexus") == derived_nexus("naa.500140568720f76f", 1)
    assert written == original
    # and once the nexus is in the file, the text is stable byte for byte
    assert dumps(config_from_dict(json.loads(dumps(cfg)))) == dumps(cfg)


def test_lun_order_of_the_file_is_kept() -> None:
    doc = targetcli_doc()
    luns = doc["targets"][1]["tpgs"][0]["luns"]
    luns.reverse()  # rtslib lists LUNs in configfs directory order, not by number
    text = json.dumps(doc, sort_keys=True, indent=2) + "\n"
    cfg = config_from_dict(json.loads(text))
    assert [lun.index for lun in cfg.targets[1].tpgs[0].luns] == [1, 0]
    assert dumps(cfg).replace(f'          "nexus": "{cfg.targets[1].tpgs[0].nexus_wwn}",\n', "") == text


def test_loading_is_deterministic() -> None:
    doc = targetcli_doc()
    for so in doc["storage_objects"]:
        del so["wwn"]
    for lun in doc["targets"][1]["tpgs"][0]["luns"]:
        del lun["alias"]
    assert dumps(config_from_dict(copy.deepcopy(doc))) == dumps(config_from_dict(copy.deepcopy(doc)))


def test_new_objects_written_in_rtslib_shapes() -> None:
    cfg = Config()
    cfg.add_storage_object(new_storage_object("fileio", "f", dev="/f.img", size=4096, wwn="w1"))
    cfg.add_storage_object(new_storage_object("block", "b", dev="/dev/loop0", size=8192, wwn="w2"))
    cfg.add_storage_object(new_storage_object("ramdisk", "r", size=4096, wwn="w3"))
    t = cfg.add_target(new_vhost_target("naa.5001405aaaaaaaaa"))
    t.tpgs[0].nexus_wwn = "naa.5001405bbbbbbbbb"
    t.tpgs[0].add_lun(cfg.storage_objects[2], write_protect=True).alias = "0123456789"
    d = config_to_dict(cfg)
    f, b, r = d["storage_objects"]
    # keys rtslib's storage object constructors accept, and nothing else
    assert sorted(f) == ["aio", "alua_tpgs", "attributes", "dev", "name", "plugin", "size", "write_back", "wwn"]
    assert sorted(b) == ["alua_tpgs", "attributes", "dev", "name", "plugin", "readonly", "write_back", "wwn"]
    assert sorted(r) == ["alua_tpgs", "attributes", "name", "plugin", "size", "wwn"]
    assert "hw_max_sectors" not in f["attributes"]  # read-only in LIO: rtslib never saves it
    assert d["targets"] == [{
        "fabric": "vhost", "wwn": "naa.5001405aaaaaaaaa",
        "tpgs": [{
            "attributes": {"fabric_prot_type": 0}, "enable": True, "nexus": "naa.5001405bbbbbbbbb",
            "node_acls": [], "portals": [], "tag": 1,
            "luns": [{"alias": "0123456789", "alua_tg_pt_gp_name": "default_tg_pt_gp", "index": 0,
                      "storage_object": "/backstores/ramdisk/r", "write_protect": True}],
        }],
    }]


def test_rtslib_plugin_aliases_accepted() -> None:
    doc = {"storage_objects": [{"name": "r", "plugin": "rd_mcp", "size": 4096}],
           "targets": [{"fabric": "vhost", "wwn": "naa.5001405aaaaaaaaa",
                        "tpgs": [{"tag": 1, "luns": [{"index": 0, "storage_object": "/backstores/rd_mcp/r"}]}]}]}
    cfg = config_from_dict(doc)
    assert cfg.storage_objects[0].path == "/backstores/ramdisk/r"
    assert cfg.targets[0].tpgs[0].luns[0].storage_object == "/backstores/ramdisk/r"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.__setitem__("storage_objects", {}), "storage_objects: expected list"),
        (lambda d: d["storage_objects"][0].pop("name"), "storage_objects[0]: missing 'name'"),
        (lambda d: d["storage_objects"][1].__setitem__("size", "1G"), "storage_objects[1].size: expected int"),
        (lambda d: d["storage_objects"][1].__setitem__("write_back", "yes"), "expected true or false"),
        (lambda d: d["targets"][1]["tpgs"][0]["luns"][0].__setitem__("storage_object", "/backstores/block/nope"),
         "LUN 0: storage object /backstores/block/nope is not defined"),
        (lambda d: d["targets"][1]["tpgs"][0]["luns"][0].__setitem__("storage_object", "disk1"), "malformed path"),
        (lambda d: d["targets"][1].pop("fabric"), "targets[1]: a target needs 'wwn' and 'fabric'"),
        (lambda d: d["storage_objects"].append(dict(d["storage_objects"][1])), "share a plugin and name"),
    ],
)
def test_bad_documents_give_one_line(mutate, message: str) -> None:
    doc = targetcli_doc()
    mutate(doc)
    with pytest.raises(ConfigError) as err:
        config_from_dict(doc)
    assert message in str(err.value)
    assert "\n" not in str(err.value)
