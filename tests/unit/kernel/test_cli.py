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
