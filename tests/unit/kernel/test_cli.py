"""`vhostscsi kernel` from the command line, on directories standing in for configfs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vhostscsi.config.store import save_config
from vhostscsi.engines.kernel.cli import main

from .configs import one_lun, two_luns
from .test_plans import APPLY_FROM_EMPTY, all_ours, applied_lio, empty_lio


def saved(tmp_path: Path, cfg) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path / "saveconfig.json"
    save_config(cfg, path)
    return path


def snapshot(root: Path) -> list[tuple[str, bytes]]:
    out = []
    for dirpath, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = Path(dirpath) / name
            out.append((str(path), path.read_bytes() if path.is_file() else b""))
    return sorted(out)


def test_dry_run_prints_the_plan_and_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = empty_lio(tmp_path / "target")
    before = snapshot(root)
    ledger = tmp_path / "owned.json"
    rc = main(["kernel", "apply", "--dry-run", "--config", str(saved(tmp_path, two_luns())),
               "--configfs", str(root), "--ledger", str(ledger)])
    assert rc == 0
    assert capsys.readouterr().out == APPLY_FROM_EMPTY.replace("R/", f"{root}/")
    assert snapshot(root) == before and not ledger.exists()


def test_status_in_sync(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = applied_lio(tmp_path / "target")
    ledger = all_ours()
    ledger.path = tmp_path / "owned.json"
    ledger.save()
    rc = main(["kernel", "status", "--config", str(saved(tmp_path, two_luns())), "--configfs", str(root),
               "--ledger", str(ledger.path)])
    assert rc == 0
    assert capsys.readouterr().out.endswith("in sync\n")


def test_status_lists_what_others_made(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = applied_lio(tmp_path / "target")
    rc = main(["kernel", "status", "--config", str(saved(tmp_path, one_lun())), "--configfs", str(root),
               "--ledger", str(tmp_path / "none.json")])
    out = capsys.readouterr().out
    assert rc == 0  # nothing is ours, so apply would not remove lun_1 or rd0: they are reported
    assert "foreign   vhost/naa.500140568720f76f/tpgt_1/lun/lun_1 (not created by vhostscsi; left alone)" in out
    assert "foreign   core/rd_mcp_0/rd0 (not created by vhostscsi; left alone)" in out


def test_status_out_of_sync_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = empty_lio(tmp_path / "target")
    rc = main(["kernel", "status", "--config", str(saved(tmp_path, one_lun())), "--configfs", str(root),
               "--ledger", str(tmp_path / "none.json")])
    assert rc == 1
    assert capsys.readouterr().out == (
        "create    storage object fileio/disk0 (core/fileio_0/disk0)\n"
        "create    vhost/naa.500140568720f76f/tpgt_1 nexus naa.5001405aaaaaaaaa (lun_0->fileio/disk0)\n"
        "out of sync: 'vhostscsi kernel apply' would make 13 configfs changes\n")


def test_status_without_lio(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["kernel", "status", "--config", str(saved(tmp_path, one_lun())),
               "--configfs", str(tmp_path / "absent")])
    assert rc == 1
    assert capsys.readouterr().out == (f"LIO is not loaded ({tmp_path}/absent is absent): "
                                       "'vhostscsi kernel apply' loads it\n")


def test_clear_dry_run_on_our_objects(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = applied_lio(tmp_path / "target")
    ledger = all_ours()
    ledger.path = tmp_path / "owned.json"
    ledger.save()
    assert main(["kernel", "clear", "--dry-run", "--configfs", str(root), "--ledger", str(ledger.path)]) == 0
    out = capsys.readouterr().out
    assert out.endswith(f"rmdir {root}/core/rd_mcp_0/rd0\nrmdir {root}/core/rd_mcp_0\n")


@pytest.mark.parametrize(("argv", "message"), [
    (["kernel"], "the following arguments are required: action"),
    (["kernel", "aply"], "invalid choice: 'aply'"),
])
def test_usage_errors_are_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("vhostscsi kernel: error: ") and message in err and err.count("\n") == 1


def test_corrupt_config_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "saveconfig.json"
    bad.write_text('{"storage_objects": [')
    assert main(["kernel", "apply", "--config", str(bad), "--configfs", str(empty_lio(tmp_path / "t"))]) == 1
    err = capsys.readouterr().err
    assert "is not valid JSON" in err and err.count("\n") == 1


def test_apply_to_the_real_configfs_needs_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """As a non-root user (simulated: the test itself runs as root here)."""
    from vhostscsi.engines.kernel import modules

    monkeypatch.setattr(modules.os, "geteuid", lambda: 1000)
    assert main(["kernel", "apply", "--config", str(saved(tmp_path, one_lun()))]) == 1
    assert capsys.readouterr().err == (
        "vhostscsi kernel: error: changing LIO needs root (configfs and modprobe): run it with sudo\n")


def test_new_devices_are_configured_before_anything_exports_them() -> None:
    from vhostscsi.engines.kernel.cli import first_stage
    from vhostscsi.engines.kernel.configfs import Op

    ops = [Op("rmdir", "vhost/w/tpgt_1/lun/lun_3"), Op("mkdir", "core/fileio_0"),
           Op("mkdir", "core/fileio_0/disk0"), Op("write", "core/fileio_0/disk0/enable", "1"),
           Op("mkdir", "vhost/w/tpgt_1/lun/lun_0"), Op("symlink", "vhost/w/tpgt_1/lun/lun_0/a", "core/fileio_0/disk0")]
    assert first_stage(ops) == ops[:4]
    only_attributes = [Op("write", "core/fileio_0/disk0/attrib/emulate_tpu", "1"), ops[4], ops[5]]
    assert first_stage(only_attributes) == only_attributes


# LIO's persistent-reservation metadata directory, <dbroot>/pr (dbroot read from configfs)
def with_dbroot(root: Path, dbroot: Path) -> Path:
    (root / "dbroot").write_text(f"{dbroot}\n")
    return root


def test_dry_run_shows_the_pr_directory_first_and_makes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dbroot = tmp_path / "etc" / "target"
    root = with_dbroot(empty_lio(tmp_path / "target"), dbroot)
    rc = main(["kernel", "apply", "--dry-run", "--config", str(saved(tmp_path, two_luns())),
               "--configfs", str(root), "--ledger", str(tmp_path / "owned.json")])
    assert rc == 0
    assert capsys.readouterr().out == f"mkdir -p -m 0700 {dbroot}/pr\n" + APPLY_FROM_EMPTY.replace("R/", f"{root}/")
    assert not (tmp_path / "etc").exists()


def test_dry_run_with_the_pr_directory_in_place_has_no_mkdir(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dbroot = tmp_path / "dbroot"
    (dbroot / "pr").mkdir(parents=True)
    root = with_dbroot(empty_lio(tmp_path / "target"), dbroot)
    main(["kernel", "apply", "--dry-run", "--config", str(saved(tmp_path, two_luns())),
          "--configfs", str(root), "--ledger", str(tmp_path / "owned.json")])
    assert capsys.readouterr().out == APPLY_FROM_EMPTY.replace("R/", f"{root}/")


def test_apply_makes_the_pr_directory_mode_0700(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Even when configfs needs no change; made once, then left alone (and not in the ledger)."""
    dbroot = tmp_path / "var" / "target"  # LIO's default when /etc/target is absent: not there either
    root = with_dbroot(applied_lio(tmp_path / "target"), dbroot)
    ledger = all_ours()
    ledger.path = tmp_path / "owned.json"
    ledger.save()
    argv = ["kernel", "apply", "--config", str(saved(tmp_path, two_luns())), "--configfs", str(root),
            "--ledger", str(ledger.path)]
    old = os.umask(0o022)
    try:
        assert main(argv) == 0
    finally:
        os.umask(old)
    assert capsys.readouterr().out == (f"create    {dbroot}/pr (LIO's persistent-reservation metadata)\n"
                                       "nothing to do: LIO matches the configuration\n")
    assert (dbroot / "pr").is_dir() and (dbroot / "pr").stat().st_mode & 0o7777 == 0o700
    assert main(argv) == 0
    assert capsys.readouterr().out == "nothing to do: LIO matches the configuration\n"
    assert str(dbroot) not in ledger.path.read_text()


def test_unwritable_pr_directory_is_one_line_and_changes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A read-only root (simulated: the tests run as root, which mode bits do not stop)."""
    import errno

    from vhostscsi.engines.kernel import configfs

    def read_only(path: object, mode: int = 0o777, exist_ok: bool = False) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(configfs.os, "makedirs", read_only)
    root = with_dbroot(empty_lio(tmp_path / "target"), Path("/var/target"))
    before = snapshot(root)
    ledger = tmp_path / "owned.json"
    assert main(["kernel", "apply", "--config", str(saved(tmp_path, two_luns())), "--configfs", str(root),
                 "--ledger", str(ledger)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "vhostscsi kernel: error: cannot create /var/target/pr (Read-only file system), where LIO keeps "
        "persistent-reservation metadata (without it every PERSISTENT RESERVE OUT fails): make it writable, "
        "or, while LIO has no storage object yet, point it at a writable directory: "
        f"mkdir -p /var/lib/target && echo /var/lib/target > {root}/dbroot\n")
    assert snapshot(root) == before and not ledger.exists()


def test_no_storage_no_pr_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vhostscsi.config.model import Config

    root = with_dbroot(empty_lio(tmp_path / "target"), tmp_path / "dbroot")
    assert main(["kernel", "apply", "--config", str(saved(tmp_path, Config())), "--configfs", str(root),
                 "--ledger", str(tmp_path / "owned.json")]) == 0
    assert not (tmp_path / "dbroot").exists()


def test_dry_run_before_lio_is_loaded_reads_dbroot_in_the_shell(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from vhostscsi.engines.kernel import cli
    from vhostscsi.engines.kernel.desired import desired_state

    absent = tmp_path / "sys" / "kernel" / "config" / "target"
    monkeypatch.setattr(cli, "DEFAULT_ROOT", absent)
    opts = argparse.Namespace(configfs=absent, dry_run=True)
    assert cli.ensure_pr_directory(opts, desired_state(one_lun())) == [f'mkdir -p -m 0700 "$(cat {absent}/dbroot)/pr"']
