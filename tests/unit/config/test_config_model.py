"""The model: LIO's defaults, identities, and the rules targetcli enforces."""

from __future__ import annotations

import re

import pytest

from vhostscsi.config.model import Config, ConfigError, new_storage_object, new_vhost_target

# What LIO shows in attrib/ for a fresh fileio object created by targetcli (write_back=true).
LIO_FILEIO_ATTRIBUTES = {
    "block_size": 512, "emulate_3pc": 1, "emulate_caw": 1, "emulate_dpo": 1, "emulate_fua_read": 1,
    "emulate_fua_write": 1, "emulate_model_alias": 1, "emulate_pr": 1, "emulate_rest_reord": 0,
    "emulate_tas": 1, "emulate_tpu": 0, "emulate_tpws": 0, "emulate_ua_intlck_ctrl": 0,
    "emulate_write_cache": 1, "enforce_pr_isids": 1, "force_pr_aptpl": 0, "hw_block_size": 512,
    "hw_max_sectors": 16384, "hw_pi_prot_type": 0, "hw_queue_depth": 128, "is_nonrot": 0,
    "max_unmap_block_desc_count": 1, "max_unmap_lba_count": 8192, "max_write_same_len": 4096,
    "optimal_sectors": 16384, "pi_prot_format": 0, "pi_prot_type": 0, "pi_prot_verify": 0,
    "queue_depth": 128, "unmap_granularity": 1, "unmap_granularity_alignment": 0,
    "unmap_zeroes_data": 0,
}


def fileio(name: str = "disk0", **kw) -> object:
    return new_storage_object("fileio", name, dev=f"/var/lib/{name}.img", size=1 << 30, **kw)


def test_fileio_gets_lio_attribute_set_and_uuid_serial() -> None:
    so = fileio()
    assert so.attributes == LIO_FILEIO_ATTRIBUTES
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", so.wwn)
    assert so.path == "/backstores/fileio/disk0"
    assert fileio().wwn != so.wwn


def test_write_through_turns_write_cache_emulation_off() -> None:
    assert fileio(write_back=False).attributes["emulate_write_cache"] == 0


def test_ramdisk_and_block_limits() -> None:
    rd = new_storage_object("ramdisk", "r0", size=64 << 20)
    assert (rd.dev, rd.write_back, rd.attributes["hw_max_sectors"]) == (None, False, 4294967288)
    assert rd.attributes["max_unmap_lba_count"] == 0
    blk = new_storage_object(
        "block", "b0", dev="/dev/loop0", size=1 << 20, write_back=False,
        block_limits={"block_size": 4096, "hw_max_sectors": 320, "hw_queue_depth": 64, "nonrot": 1},
    )
    a = blk.attributes
    assert (a["block_size"], a["hw_block_size"], a["hw_max_sectors"], a["optimal_sectors"]) == (4096, 4096, 320, 320)
    assert (a["queue_depth"], a["is_nonrot"], a["max_write_same_len"], a["emulate_write_cache"]) == (64, 1, 65535, 0)


@pytest.mark.parametrize(
    ("plugin", "kw", "message"),
    [
        ("fileio", {"dev": "/x", "size": 0}, "needs a size above 0"),
        ("fileio", {"size": 10}, "needs a device or file path"),
        ("ramdisk", {"size": -1}, "needs a size above 0"),
        ("ramdisk", {"size": 4095}, "a ramdisk needs at least one 4 KiB page"),
        ("fileio", {"dev": "/x", "size": 511}, "a fileio disk needs at least one 512-byte block"),
        ("pscsi", {"dev": "/dev/sg0"}, "unknown backstore type 'pscsi'"),
    ],
)
def test_bad_storage_objects_refused(plugin: str, kw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        new_storage_object(plugin, "x", **kw)


@pytest.mark.parametrize("name", ["", "a/b", "two words", "x" * 129])
def test_bad_names_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="invalid name"):
        fileio(name)


def test_vhost_target_generated_like_targetcli() -> None:
    t = new_vhost_target()
    assert re.fullmatch(r"naa\.5001405[0-9a-f]{9}", t.wwn)
    assert [tpg.tag for tpg in t.tpgs] == [1]
    assert re.fullmatch(r"naa\.5001405[0-9a-f]{9}", t.tpgs[0].nexus_wwn or "")
    assert t.tpgs[0].nexus_wwn != t.wwn


def test_vhost_target_wwn_validated_and_normalised() -> None:
    assert new_vhost_target("NAA.500140568720F76F").wwn == "naa.500140568720f76f"
    for bad in ("naa.123", "iqn.2003-01.org.x:y", "naa.300140568720f76f", "naa.500140568720f76g"):
        with pytest.raises(ConfigError, match="invalid WWN"):
            new_vhost_target(bad)


def test_duplicates_refused() -> None:
    cfg = Config()
    cfg.add_storage_object(fileio())
    with pytest.raises(ConfigError, match="named 'disk0' already exists"):
        cfg.add_storage_object(fileio())
    with pytest.raises(ConfigError, match="storage object for /var/lib/disk0.img already exists"):
        cfg.add_storage_object(new_storage_object("fileio", "other", dev="/var/lib/disk0.img", size=4096))
    t = cfg.add_target(new_vhost_target("naa.500140568720f76f"))
    with pytest.raises(ConfigError, match="already exists"):
        cfg.add_target(new_vhost_target("naa.500140568720F76F"))
    assert cfg.find_target("NAA.500140568720F76F") is t


def test_luns_lowest_free_index_and_one_per_storage_object() -> None:
    cfg = Config()
    a, b, c = (cfg.add_storage_object(fileio(n)) for n in ("a", "b", "c"))
    tpg = cfg.add_target(new_vhost_target()).tpgs[0]
    assert tpg.add_lun(a, 1).index == 1
    assert tpg.add_lun(b).index == 0
    assert tpg.add_lun(c).index == 2
    with pytest.raises(ConfigError, match="already exported by LUN 1"):
        tpg.add_lun(a)
    with pytest.raises(ConfigError, match="LUN 2 already exists"):
        tpg.add_lun(fileio("d"), 2)
    with pytest.raises(ConfigError, match="invalid LUN index 65536"):
        tpg.add_lun(fileio("e"), 65536)
    assert [lun.index for lun in tpg.luns] == [0, 1, 2]


def test_deleting_a_used_storage_object_is_refused_naming_the_luns() -> None:
    cfg = Config()
    so = cfg.add_storage_object(fileio())
    t1 = cfg.add_target(new_vhost_target("naa.5001405aaaaaaaaa"))
    t2 = cfg.add_target(new_vhost_target("naa.5001405bbbbbbbbb"))
    t1.tpgs[0].add_lun(so, 3)
    t2.tpgs[0].add_lun(so, 0)
    with pytest.raises(ConfigError) as err:
        cfg.remove_storage_object(so.path)
    assert str(err.value) == (
        "/backstores/fileio/disk0 is in use by /vhost/naa.5001405aaaaaaaaa/tpg1/luns/lun3, "
        "/vhost/naa.5001405bbbbbbbbb/tpg1/luns/lun0: delete the LUN(s) first"
    )
    assert cfg.storage_objects == [so]
    t1.tpgs[0].remove_lun(3)
    cfg.remove_target(t2.wwn)
    assert cfg.remove_storage_object(so.path) is so
    assert cfg.storage_objects == []


def test_lookup_index_follows_changes_made_behind_its_back() -> None:
    cfg = Config()
    r0, r1 = (cfg.add_storage_object(new_storage_object("ramdisk", n, size=4096)) for n in ("r0", "r1"))
    assert cfg.find_storage_object("/backstores/ramdisk/r1") is r1
    cfg.storage_objects.pop()  # a reconciler's own edit, same length after the append below
    x = new_storage_object("ramdisk", "x", size=4096)
    cfg.storage_objects.append(x)
    assert cfg.find_storage_object("/backstores/ramdisk/r1") is None
    assert cfg.find_storage_object("/backstores/ramdisk/x") is x
    r0.name = "renamed"
    assert cfg.find_storage_object("/backstores/ramdisk/r0") is None
    assert cfg.find_storage_object("/backstores/ramdisk/renamed") is r0
