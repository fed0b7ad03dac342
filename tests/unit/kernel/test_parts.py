"""The kernel engine's small parts: the ledger, configfs reading and writing, module loading."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vhostscsi.engines.kernel import modules
from vhostscsi.engines.kernel.configfs import Configfs, KernelError, Op, execute, render
from vhostscsi.engines.kernel.ledger import Ledger


def test_ledger_follows_operations_and_saves_atomically(tmp_path: Path) -> None:
    path = tmp_path / "run" / "owned.json"
    ledger = Ledger.load(path)
    for op in (Op("mkdir", "core/fileio_0"), Op("mkdir", "core/fileio_0/disk0"),
               Op("write", "core/fileio_0/disk0/enable", "1"), Op("mkdir", "vhost/naa.x"),
               Op("mkdir", "vhost/naa.x/tpgt_1"), Op("rmdir", "vhost/naa.x")):
        ledger.record(op)
    ledger.save()
    assert json.loads(path.read_text()) == {"owned": ["core/fileio_0", "core/fileio_0/disk0"]}
    assert Ledger.load(path).owned == {"core/fileio_0", "core/fileio_0/disk0"}
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_corrupt_ledger_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "owned.json"
    path.write_text("{nope")
    with pytest.raises(KernelError, match="delete it to start over"):
        Ledger.load(path)
    path.write_text('{"owned": 3}')
    with pytest.raises(KernelError, match="is not a vhostscsi kernel record"):
        Ledger.load(path)


def test_shell_rendering_quotes_what_needs_it() -> None:
    ops = [Op("write", "core/fileio_0/my disk/control", "fd_dev_name=/a b,fd_dev_size=1"),
           Op("symlink", "vhost/w/tpgt_1/lun/lun_0/abc", "core/fileio_0/my disk"),
           Op("unlink", "x/y"), Op("rmdir", "x")]
    assert render(ops, Path("/sys/kernel/config/target")) == (
        "printf '%s' 'fd_dev_name=/a b,fd_dev_size=1' > '/sys/kernel/config/target/core/fileio_0/my disk/control'\n"
        "ln -s '/sys/kernel/config/target/core/fileio_0/my disk' /sys/kernel/config/target/vhost/w/tpgt_1/lun/lun_0/abc\n"
        "rm /sys/kernel/config/target/x/y\n"
        "rmdir /sys/kernel/config/target/x\n"
    )


def test_execute_writes_exact_bytes_and_reports_progress(tmp_path: Path) -> None:
    (tmp_path / "core").mkdir()
    done: list[Op] = []
    ops = [Op("mkdir", "core/fileio_0"), Op("mkdir", "core/fileio_0/disk0")]
    execute(ops, tmp_path, done.append)
    (tmp_path / "core/fileio_0/disk0/enable").write_text("0000\n")
    execute([Op("write", "core/fileio_0/disk0/enable", "1"),
             Op("symlink", "core/link", "core/fileio_0/disk0")], tmp_path, done.append)
    # exactly b"1" in one write() at offset 0, as configfs gets it (no newline, no O_TRUNC)
    assert (tmp_path / "core/fileio_0/disk0/enable").read_bytes() == b"1000\n"
    assert os.readlink(tmp_path / "core/link") == str(tmp_path / "core/fileio_0/disk0")
    assert len(done) == 4


def test_execute_stops_at_the_first_failure_with_one_line(tmp_path: Path) -> None:
    done: list[Op] = []
    with pytest.raises(KernelError) as info:
        execute([Op("mkdir", "core"), Op("write", "core/x/control", "v"), Op("mkdir", "never")],
                tmp_path, done.append)
    assert str(info.value) == ("write core/x/control 'v' failed: No such file or directory "
                               "(the kernel log, dmesg, says why)")
    assert done == [Op("mkdir", "core")]
    assert not (tmp_path / "never").exists()


def test_link_targets_read_as_configfs_shows_them(tmp_path: Path) -> None:
    lun = tmp_path / "vhost/w/tpgt_1/lun/lun_0"
    lun.mkdir(parents=True)
    os.symlink("../../../../../../target/core/fileio_0/disk0", lun / "a")
    os.symlink(str(tmp_path / "core/rd_mcp_0/rd0"), lun / "b")
    fs = Configfs(tmp_path)
    assert fs.link_target("vhost/w/tpgt_1/lun/lun_0/a") == "core/fileio_0/disk0"
    assert fs.link_target("vhost/w/tpgt_1/lun/lun_0/b") == "core/rd_mcp_0/rd0"
    assert fs.links_in("vhost/w/tpgt_1/lun/lun_0") == ["a", "b"]


def test_unreadable_attribute_reads_as_none(tmp_path: Path) -> None:
    fs = Configfs(tmp_path)
    assert fs.read("vhost/w/tpgt_1/nexus") is None
    assert fs.listdir("nothing/here") == []


def test_missing_modules_are_those_without_sys_module_entries(tmp_path: Path) -> None:
    (tmp_path / "target_core_mod").mkdir()
    assert modules.missing_modules(["target_core_mod", "vhost_scsi"], tmp_path) == ["vhost_scsi"]


def test_unloadable_module_is_named_with_modprobes_reason(tmp_path: Path) -> None:
    """Real modprobe, a module no kernel has: the error names it, modprobe's reason and the fix."""
    if not any(os.path.exists(p) for p in ("/usr/sbin/modprobe", "/sbin/modprobe")):
        pytest.skip("kmod not installed")
    with pytest.raises(KernelError) as info:
        modules.load_modules(["vhostscsi_no_such_module"], tmp_path)
    text = str(info.value)
    assert text.startswith("cannot load kernel modules: vhostscsi_no_such_module (modprobe: FATAL: Module "
                           "vhostscsi_no_such_module not found")
    assert "CONFIG_VHOST_SCSI" in text and "\n" not in text


def test_existing_configfs_root_needs_nothing(tmp_path: Path) -> None:
    modules.ensure_configfs(tmp_path)  # no mount attempted when the target directory is there


def test_unwritable_ledger_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    ledger = Ledger(blocker / "owned.json", {"core/fileio_0"})
    with pytest.raises(KernelError) as info:
        ledger.save()
    text = str(info.value)
    assert text.startswith(f"cannot save the record of our configfs objects to {blocker}/owned.json: ")
    assert text.endswith("; name a writable file with --ledger") and "\n" not in text
