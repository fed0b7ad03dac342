"""The daemon's reconcile plan: from one saved configuration to the next, in an order that is safe live.

Pure (no daemon, no I/O): the steps are checked exactly, including their order, since the order is what keeps
a guest from ever seeing a LUN whose disk is closed.
"""

from __future__ import annotations

import copy

from vhostscsi.config.model import Config, new_storage_object, new_vhost_target
from vhostscsi.engines.user import desired as d

WWN = "naa.5001405000000001"
WWN2 = "naa.5001405000000002"


def base() -> Config:
    cfg = Config()
    disk = cfg.add_storage_object(new_storage_object("fileio", "disk0", dev="/img/disk0", size=1 << 20))
    cfg.add_storage_object(new_storage_object("ramdisk", "rd1", size=1 << 20))
    cfg.add_storage_object(new_storage_object("block", "blk", dev="/dev/sdz", size=1 << 30))
    t = cfg.add_target(new_vhost_target(WWN))
    t.tpgs[0].add_lun(disk)
    return cfg


def test_first_apply_opens_before_it_exports() -> None:
    cfg = base()
    steps = d.plan(d.EMPTY, d.desired_state(cfg))
    assert steps == [d.OpenDevice("/backstores/fileio/disk0"), d.AddTarget(WWN), d.AddTpg(WWN, 1), d.AddLun(WWN, 1, 0)]


def test_unused_storage_objects_are_not_opened() -> None:
    state = d.desired_state(base())
    assert set(state.devices) == {"/backstores/fileio/disk0"}


def test_same_config_is_no_step() -> None:
    cfg = base()
    assert d.plan(d.desired_state(cfg), d.desired_state(copy.deepcopy(cfg))) == []


def test_lun_added_and_removed() -> None:
    old = base()
    new = copy.deepcopy(old)
    tpg = new.find_target(WWN).tpgs[0]
    tpg.add_lun(new.find_storage_object("/backstores/ramdisk/rd1"), index=1)
    tpg.remove_lun(0)
    steps = d.plan(d.desired_state(old), d.desired_state(new))
    assert steps == [
        d.RemoveLun(WWN, 1, 0),
        d.CloseDevice("/backstores/fileio/disk0"),
        d.OpenDevice("/backstores/ramdisk/rd1"),
        d.AddLun(WWN, 1, 1),
    ]


def test_write_protect_change_replugs_the_lun_but_keeps_the_disk_open() -> None:
    old = base()
    new = copy.deepcopy(old)
    new.find_target(WWN).tpgs[0].luns[0].write_protect = True
    assert d.plan(d.desired_state(old), d.desired_state(new)) == [d.RemoveLun(WWN, 1, 0), d.AddLun(WWN, 1, 0)]


def test_changed_disk_is_closed_after_its_luns_go_and_reopened_before_they_return() -> None:
    old = base()
    new = copy.deepcopy(old)
    new.find_storage_object("/backstores/fileio/disk0").size = 2 << 20  # a file keeps its opened size
    assert d.plan(d.desired_state(old), d.desired_state(new)) == [
        d.RemoveLun(WWN, 1, 0),
        d.CloseDevice("/backstores/fileio/disk0"),
        d.OpenDevice("/backstores/fileio/disk0"),
        d.AddLun(WWN, 1, 0),
    ]


def test_block_device_size_is_not_identity() -> None:
    """(The daemon re-reads block sizes on reload; a recorded size must not unplug the LUN.)"""
    old = base()
    old.find_target(WWN).tpgs[0].add_lun(old.find_storage_object("/backstores/block/blk"))
    new = copy.deepcopy(old)
    new.find_storage_object("/backstores/block/blk").size = 2 << 30
    assert d.plan(d.desired_state(old), d.desired_state(new)) == []


def test_target_removed_and_another_created() -> None:
    old = base()
    new = copy.deepcopy(old)
    new.remove_target(WWN)
    t2 = new.add_target(new_vhost_target(WWN2))
    t2.tpgs[0].add_lun(new.find_storage_object("/backstores/fileio/disk0"))
    assert d.plan(d.desired_state(old), d.desired_state(new)) == [
        d.RemoveLun(WWN, 1, 0),
        d.RemoveTpg(WWN, 1),
        d.RemoveTarget(WWN),
        d.AddTarget(WWN2),
        d.AddTpg(WWN2, 1),
        d.AddLun(WWN2, 1, 0),
    ]


def test_new_nexus_recreates_the_tpg() -> None:
    old = base()
    new = copy.deepcopy(old)
    new.find_target(WWN).tpgs[0].nexus_wwn = "naa.5001405fffffffff"
    assert d.plan(d.desired_state(old), d.desired_state(new)) == [
        d.RemoveLun(WWN, 1, 0), d.RemoveTpg(WWN, 1), d.AddTpg(WWN, 1), d.AddLun(WWN, 1, 0),
    ]


def test_lun_on_a_missing_storage_object_is_skipped_not_fatal() -> None:
    cfg = base()
    cfg.find_target(WWN).tpgs[0].luns[0].storage_object = "/backstores/fileio/nosuch"
    state = d.desired_state(cfg)
    assert state.targets[WWN].tpgs[1].luns == {} and state.devices == {}


def test_other_fabrics_are_not_served() -> None:
    cfg = base()
    iscsi = new_vhost_target("naa.5001405000000009")
    iscsi.fabric = "iscsi"
    cfg.targets.append(iscsi)
    assert set(d.desired_state(cfg).targets) == {WWN}
