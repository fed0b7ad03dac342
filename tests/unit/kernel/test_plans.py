"""Dry-run plans, byte for byte, against directories laid out as LIO's configfs."""

from __future__ import annotations

from pathlib import Path

import pytest

from vhostscsi.engines.kernel.configfs import Configfs, render
from vhostscsi.engines.kernel.desired import desired_state
from vhostscsi.engines.kernel.ledger import Ledger
from vhostscsi.engines.kernel.planner import plan_apply, plan_clear

from . import lio_tree
from .configs import DISK_SERIAL, NEXUS, RD_SERIAL, WWN, one_lun, two_luns

TPG = f"vhost/{WWN}/tpgt_1"


def empty_lio(root: Path) -> Path:
    (root / "core" / "alua").mkdir(parents=True)
    return root


def applied_lio(root: Path) -> Path:
    """configfs as LIO shows it once two_luns() is applied (values as read in a real guest)."""
    cfg = two_luns()
    disk, ram = cfg.storage_objects
    lio_tree.add_device(root, "fileio_0", "disk0",
                        lio_tree.fileio_info("/var/lib/vhostscsi/disk0.img", 64 << 20, True),
                        DISK_SERIAL, disk.attributes, "/var/lib/vhostscsi/disk0.img")
    lio_tree.add_device(root, "rd_mcp_0", "rd0", lio_tree.rd_info(4096), RD_SERIAL, ram.attributes)
    tpg = lio_tree.add_tpg(root, WWN, 1, NEXUS)
    lio_tree.add_lun(tpg, 0, "a08824829b", "core/fileio_0/disk0")
    lio_tree.add_lun(tpg, 1, "b08824829b", "core/rd_mcp_0/rd0")
    lio_tree.add_mapped_lun(tpg, NEXUS, 0, "a08824829b", False)
    lio_tree.add_mapped_lun(tpg, NEXUS, 1, "b08824829b", True)
    return root


def all_ours() -> Ledger:
    return Ledger(None, {"core/fileio_0", "core/fileio_0/disk0", "core/rd_mcp_0", "core/rd_mcp_0/rd0",
                         f"vhost/{WWN}", TPG, f"{TPG}/lun/lun_0", f"{TPG}/lun/lun_1", f"{TPG}/acls/{NEXUS}",
                         f"{TPG}/acls/{NEXUS}/lun_0", f"{TPG}/acls/{NEXUS}/lun_1"})


# The ACL's LUNs are mapped 1 then 0: LIO lists the newest mapping first (REPORT LUNS 0, 1).
APPLY_FROM_EMPTY = """\
mkdir R/core/fileio_0
mkdir R/core/fileio_0/disk0
printf '%s' fd_dev_name=/var/lib/vhostscsi/disk0.img,fd_dev_size=67108864,fd_buffered_io=1 > R/core/fileio_0/disk0/control
printf '%s' /var/lib/vhostscsi/disk0.img > R/core/fileio_0/disk0/udev_path
printf '%s' 1 > R/core/fileio_0/disk0/enable
printf '%s' 4a3a2d4b-1234-4c56-9d8e-0123456789ab > R/core/fileio_0/disk0/wwn/vpd_unit_serial
printf '%s' 1 > R/core/fileio_0/disk0/attrib/emulate_model_alias
mkdir R/core/rd_mcp_0
mkdir R/core/rd_mcp_0/rd0
printf '%s' rd_pages=4096 > R/core/rd_mcp_0/rd0/control
printf '%s' 1 > R/core/rd_mcp_0/rd0/enable
printf '%s' 5b3a2d4b-1234-4c56-9d8e-0123456789ab > R/core/rd_mcp_0/rd0/wwn/vpd_unit_serial
printf '%s' 1 > R/core/rd_mcp_0/rd0/attrib/emulate_model_alias
mkdir R/vhost
mkdir R/vhost/naa.500140568720f76f
mkdir R/vhost/naa.500140568720f76f/tpgt_1
mkdir R/vhost/naa.500140568720f76f/tpgt_1/lun/lun_0
ln -s R/core/fileio_0/disk0 R/vhost/naa.500140568720f76f/tpgt_1/lun/lun_0/a08824829b
mkdir R/vhost/naa.500140568720f76f/tpgt_1/lun/lun_1
ln -s R/core/rd_mcp_0/rd0 R/vhost/naa.500140568720f76f/tpgt_1/lun/lun_1/b08824829b
mkdir R/vhost/naa.500140568720f76f/tpgt_1/acls/naa.5001405aaaaaaaaa
mkdir R/vhost/naa.500140568720f76f/tpgt_1/acls/naa.5001405aaaaaaaaa/lun_1
ln -s R/vhost/naa.500140568720f76f/tpgt_1/lun/lun_1 R/vhost/naa.500140568720f76f/tpgt_1/acls/naa.5001405aaaaaaaaa/lun_1/b08824829b
printf '%s' 1 > R/vhost/naa.500140568720f76f/tpgt_1/acls/naa.5001405aaaaaaaaa/lun_1/write_protect
mkdir R/vhost/naa.500140568720f76f/tpgt_1/acls/naa.5001405aaaaaaaaa/lun_0
ln -s R/vhost/naa.500140568720f76f/tpgt_1/lun/lun_0 R/vhost/naa.500140568720f76f/tpgt_1/acls/naa.5001405aaaaaaaaa/lun_0/a08824829b
printf '%s' 0 > R/vhost/naa.500140568720f76f/tpgt_1/acls/naa.5001405aaaaaaaaa/lun_0/write_protect
printf '%s' naa.5001405aaaaaaaaa > R/vhost/naa.500140568720f76f/tpgt_1/nexus
"""


# Every LUN of the applied TPG offline (mapped LUNs first), then its nexus and the nexus ACL.
OFFLINE_ALL = f"""\
rm R/{TPG}/acls/{NEXUS}/lun_0/a08824829b
rmdir R/{TPG}/acls/{NEXUS}/lun_0
rm R/{TPG}/acls/{NEXUS}/lun_1/b08824829b
rmdir R/{TPG}/acls/{NEXUS}/lun_1
rm R/{TPG}/lun/lun_0/a08824829b
rmdir R/{TPG}/lun/lun_0
rm R/{TPG}/lun/lun_1/b08824829b
rmdir R/{TPG}/lun/lun_1
printf '%s' NULL > R/{TPG}/nexus
rmdir R/{TPG}/acls/{NEXUS}
"""


def plan_text(root: Path, cfg, ledger: Ledger) -> str:  # type: ignore[no-untyped-def]
    plan = plan_apply(desired_state(cfg), Configfs(root), ledger)
    return render(plan.ops, Path("R"))


def test_apply_on_empty_lio(tmp_path: Path) -> None:
    assert plan_text(empty_lio(tmp_path), two_luns(), Ledger(None)) == APPLY_FROM_EMPTY


def test_plan_is_shell_with_the_real_root(tmp_path: Path) -> None:
    plan = plan_apply(desired_state(one_lun()), Configfs(empty_lio(tmp_path)), Ledger(None))
    first = render(plan.ops, Path("/sys/kernel/config/target")).splitlines()[0]
    assert first == "mkdir /sys/kernel/config/target/core/fileio_0"


def test_applied_lio_needs_nothing(tmp_path: Path) -> None:
    plan = plan_apply(desired_state(two_luns()), Configfs(applied_lio(tmp_path)), all_ours())
    assert plan.ops == [] and plan.warnings == []
    assert plan.status == [
        "ok        storage object fileio/disk0 (core/fileio_0/disk0)",
        "ok        storage object ramdisk/rd0 (core/rd_mcp_0/rd0)",
        f"ok        {TPG} nexus {NEXUS} (lun_0->fileio/disk0, lun_1->ramdisk/rd0)",
    ]


def test_removing_a_lun_and_its_device(tmp_path: Path) -> None:
    """The nexus ACL stays (its removal would take every LUN offline); lun_1 and rd0 go."""
    text = plan_text(applied_lio(tmp_path), one_lun(), all_ours())
    assert text == f"""\
rm R/{TPG}/acls/{NEXUS}/lun_1/b08824829b
rmdir R/{TPG}/acls/{NEXUS}/lun_1
rm R/{TPG}/lun/lun_1/b08824829b
rmdir R/{TPG}/lun/lun_1
rmdir R/core/rd_mcp_0/rd0
rmdir R/core/rd_mcp_0
"""


def test_clear_removes_ours_in_dependency_order(tmp_path: Path) -> None:
    plan = plan_clear(Configfs(applied_lio(tmp_path)), all_ours())
    assert render(plan.ops, Path("R")) == f"""\
{OFFLINE_ALL}rmdir R/{TPG}
rmdir R/vhost/{WWN}
rmdir R/core/fileio_0/disk0
rmdir R/core/fileio_0
rmdir R/core/rd_mcp_0/rd0
rmdir R/core/rd_mcp_0
"""


def test_clear_leaves_what_others_made(tmp_path: Path) -> None:
    plan = plan_clear(Configfs(applied_lio(tmp_path)), Ledger(None))
    assert plan.ops == []
    assert f"foreign   {TPG} (not created by vhostscsi; left alone)" in plan.status
    assert "foreign   core/fileio_0/disk0 (not created by vhostscsi; left alone)" in plan.status


def test_our_lun_in_a_foreign_tpg_goes_alone(tmp_path: Path) -> None:
    ledger = Ledger(None, {f"{TPG}/lun/lun_1"})
    plan = plan_clear(Configfs(applied_lio(tmp_path)), ledger)
    assert render(plan.ops, Path("R")) == f"rm R/{TPG}/lun/lun_1/b08824829b\nrmdir R/{TPG}/lun/lun_1\n"


def test_shared_containers_do_not_make_contents_ours(tmp_path: Path) -> None:
    """We made the vhost fabric directory and an HBA; a target and a device others put in them stay."""
    plan = plan_clear(Configfs(applied_lio(tmp_path)), Ledger(None, {"vhost", "core/fileio_0"}))
    assert plan.ops == []


def test_device_exported_by_another_fabric_is_kept(tmp_path: Path) -> None:
    root = applied_lio(tmp_path)
    loop = root / "loopback" / "naa.5001405bbbbbbbbb" / "tpgt_1"
    (loop / "lun").mkdir(parents=True)
    lio_tree.add_lun(loop, 0, "c08824829b", "core/rd_mcp_0/rd0")
    plan = plan_apply(desired_state(one_lun()), Configfs(root), all_ours())
    assert "rmdir core/rd_mcp_0/rd0" not in {f"{op.kind} {op.path}" for op in plan.ops}
    assert plan.warnings == [
        "core/rd_mcp_0/rd0 is still exported by loopback/naa.5001405bbbbbbbbb/tpgt_1/lun/lun_0: left in place"
    ]


def test_changed_attribute_is_written_and_readonly_one_reported(tmp_path: Path) -> None:
    root = applied_lio(tmp_path)
    (root / "core/fileio_0/disk0/attrib/emulate_tpu").write_text("1\n")
    cfg = two_luns()
    cfg.storage_objects[0].attributes["hw_block_size"] = 4096  # read-only: never planned
    cfg.storage_objects[0].attributes["emulate_3pc"] = 0
    (root / "core/fileio_0/disk0/attrib/emulate_3pc").chmod(0o444)
    plan = plan_apply(desired_state(cfg), Configfs(root), all_ours())
    assert render(plan.ops, Path("R")) == "printf '%s' 0 > R/core/fileio_0/disk0/attrib/emulate_tpu\n"
    assert plan.warnings == ["core/fileio_0/disk0/attrib/emulate_3pc is read-only here: 1, configured 0"]
    assert "update    storage object fileio/disk0 (core/fileio_0/disk0): emulate_tpu 1, want 0" in plan.status


def test_changed_backing_rebuilds_our_device_and_its_luns(tmp_path: Path) -> None:
    cfg = two_luns()
    cfg.storage_objects[0].size = 128 << 20
    text = plan_text(applied_lio(tmp_path), cfg, all_ours())
    assert text == f"""\
rm R/{TPG}/acls/{NEXUS}/lun_0/a08824829b
rmdir R/{TPG}/acls/{NEXUS}/lun_0
rm R/{TPG}/lun/lun_0/a08824829b
rmdir R/{TPG}/lun/lun_0
rmdir R/core/fileio_0/disk0
rmdir R/core/fileio_0
mkdir R/core/fileio_0
mkdir R/core/fileio_0/disk0
printf '%s' fd_dev_name=/var/lib/vhostscsi/disk0.img,fd_dev_size=134217728,fd_buffered_io=1 > R/core/fileio_0/disk0/control
printf '%s' /var/lib/vhostscsi/disk0.img > R/core/fileio_0/disk0/udev_path
printf '%s' 1 > R/core/fileio_0/disk0/enable
printf '%s' {DISK_SERIAL} > R/core/fileio_0/disk0/wwn/vpd_unit_serial
printf '%s' 1 > R/core/fileio_0/disk0/attrib/emulate_model_alias
mkdir R/{TPG}/lun/lun_0
ln -s R/core/fileio_0/disk0 R/{TPG}/lun/lun_0/a08824829b
mkdir R/{TPG}/acls/{NEXUS}/lun_0
ln -s R/{TPG}/lun/lun_0 R/{TPG}/acls/{NEXUS}/lun_0/a08824829b
printf '%s' 0 > R/{TPG}/acls/{NEXUS}/lun_0/write_protect
"""


def test_changed_backing_of_a_foreign_device_is_only_reported(tmp_path: Path) -> None:
    cfg = two_luns()
    cfg.storage_objects[0].write_back = False
    plan = plan_apply(desired_state(cfg), Configfs(applied_lio(tmp_path)), Ledger(None))
    assert plan.warnings[0] == (
        "core/fileio_0/disk0 was not created by vhostscsi and differs from the configuration "
        "(mode Buffered-WCE, want O_DSYNC): left alone; remove it (targetcli) to let apply create it")
    assert not any(op.path.startswith("core/fileio_0") and op.kind != "write" for op in plan.ops)


def test_new_nexus_takes_the_luns_offline_and_back(tmp_path: Path) -> None:
    """LIO drops a nexus only from a TPG without LUNs; the old nexus's ACL goes with it."""
    cfg = two_luns()
    for lun in cfg.targets[0].tpgs[0].luns:
        lun.write_protect = False
    cfg.targets[0].tpgs[0].nexus_wwn = "naa.5001405ccccccccc"
    assert plan_text(applied_lio(tmp_path), cfg, all_ours()) == f"""\
{OFFLINE_ALL}mkdir R/{TPG}/lun/lun_0
ln -s R/core/fileio_0/disk0 R/{TPG}/lun/lun_0/a08824829b
mkdir R/{TPG}/lun/lun_1
ln -s R/core/rd_mcp_0/rd0 R/{TPG}/lun/lun_1/b08824829b
printf '%s' naa.5001405ccccccccc > R/{TPG}/nexus
"""


def test_write_protection_off_keeps_the_acl_and_clears_the_flag(tmp_path: Path) -> None:
    cfg = two_luns()
    cfg.targets[0].tpgs[0].luns[1].write_protect = False
    assert plan_text(applied_lio(tmp_path), cfg, all_ours()) == (
        f"printf '%s' 0 > R/{TPG}/acls/{NEXUS}/lun_1/write_protect\n")


def test_second_hba_index_skips_taken_ones(tmp_path: Path) -> None:
    root = empty_lio(tmp_path)
    (root / "core" / "fileio_0").mkdir()
    (root / "core" / "fileio_1").mkdir()
    text = plan_text(root, one_lun(), Ledger(None))
    assert text.startswith("mkdir R/core/fileio_2\nmkdir R/core/fileio_2/disk0\n")


def test_lun_naming_a_missing_storage_object_is_refused() -> None:
    from vhostscsi.engines.kernel.configfs import KernelError

    cfg = two_luns()
    cfg.targets[0].tpgs[0].luns[0].storage_object = "/backstores/fileio/nope"
    with pytest.raises(KernelError, match="names /backstores/fileio/nope, which is not in the configuration"):
        desired_state(cfg)


def test_comma_in_a_file_name_is_refused() -> None:
    from vhostscsi.engines.kernel.configfs import KernelError

    cfg = one_lun()
    cfg.storage_objects[0].dev = "/var/a,b.img"
    with pytest.raises(KernelError, match="LIO cannot take a path containing ','"):
        desired_state(cfg)


def test_new_acl_maps_its_luns_in_descending_order(tmp_path: Path) -> None:
    """LIO lists the newest mapping first: 2, 1, 0 mapped is REPORT LUNS 0, 1, 2, as targetcli's demo mode."""
    from vhostscsi.config.model import new_storage_object

    cfg = two_luns()
    extra = cfg.add_storage_object(new_storage_object("ramdisk", "rd1", size=1 << 20, wwn=RD_SERIAL[:-1] + "c"))
    cfg.targets[0].tpgs[0].add_lun(extra).alias = "c08824829b"
    plan = plan_apply(desired_state(cfg), Configfs(empty_lio(tmp_path)), Ledger(None))
    acl = f"{TPG}/acls/{NEXUS}"
    assert [op.path for op in plan.ops if op.kind == "mkdir" and op.path.startswith(acl)] == [
        acl, f"{acl}/lun_2", f"{acl}/lun_1", f"{acl}/lun_0"]
    tpg_luns = [op.path for op in plan.ops if op.kind == "mkdir" and op.path.startswith(f"{TPG}/lun/")]
    assert tpg_luns == [f"{TPG}/lun/lun_0", f"{TPG}/lun/lun_1", f"{TPG}/lun/lun_2"]  # before any mapping


def test_new_nexus_acl_is_mapped_in_descending_order(tmp_path: Path) -> None:
    """A new nexus with write protection: the new ACL's LUNs are all mapped afresh, 1 then 0."""
    cfg = two_luns()
    cfg.targets[0].tpgs[0].nexus_wwn = "naa.5001405ccccccccc"
    acl = f"{TPG}/acls/naa.5001405ccccccccc"
    assert plan_text(applied_lio(tmp_path), cfg, all_ours()) == f"""\
{OFFLINE_ALL}mkdir R/{TPG}/lun/lun_0
ln -s R/core/fileio_0/disk0 R/{TPG}/lun/lun_0/a08824829b
mkdir R/{TPG}/lun/lun_1
ln -s R/core/rd_mcp_0/rd0 R/{TPG}/lun/lun_1/b08824829b
mkdir R/{acl}
mkdir R/{acl}/lun_1
ln -s R/{TPG}/lun/lun_1 R/{acl}/lun_1/b08824829b
printf '%s' 1 > R/{acl}/lun_1/write_protect
mkdir R/{acl}/lun_0
ln -s R/{TPG}/lun/lun_0 R/{acl}/lun_0/a08824829b
printf '%s' 0 > R/{acl}/lun_0/write_protect
printf '%s' naa.5001405ccccccccc > R/{TPG}/nexus
"""


def test_new_lun_is_also_mapped_in_the_nexus_acl(tmp_path: Path) -> None:
    """With an explicit ACL the nexus sees only mapped LUNs: a new LUN must be mapped too.

    Only the new LUN is mapped: LIO will list it first (2, 0, 1), and the mapped LUNs 0 and 1 of
    the live nexus are not remapped to restore ascending order (see Planner.ensure_acl).
    """
    from vhostscsi.config.model import new_storage_object

    cfg = two_luns()
    extra = cfg.add_storage_object(new_storage_object("ramdisk", "rd1", size=1 << 20, wwn=RD_SERIAL[:-1] + "c"))
    cfg.targets[0].tpgs[0].add_lun(extra).alias = "c08824829b"
    text = plan_text(applied_lio(tmp_path), cfg, all_ours())
    assert text.endswith(f"""\
mkdir R/{TPG}/lun/lun_2
ln -s R/core/rd_mcp_1/rd1 R/{TPG}/lun/lun_2/c08824829b
mkdir R/{TPG}/acls/{NEXUS}/lun_2
ln -s R/{TPG}/lun/lun_2 R/{TPG}/acls/{NEXUS}/lun_2/c08824829b
printf '%s' 0 > R/{TPG}/acls/{NEXUS}/lun_2/write_protect
""")
    assert text.startswith("mkdir R/core/rd_mcp_1\nmkdir R/core/rd_mcp_1/rd1\n")
    assert "rmdir" not in text and "rm " not in text
