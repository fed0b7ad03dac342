"""The WWN must be a vhost target in the saved configuration (a real saveconfig.json on disk)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vhostscsi.config.model import Config, new_vhost_target
from vhostscsi.config.store import save_config
from vhostscsi.integrations.cli import main

from .seed_text import SEED_PCI_ARGS, SEED_WWN


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    cfg = Config()
    cfg.add_target(new_vhost_target(SEED_WWN))
    path = tmp_path / "saveconfig.json"
    save_config(cfg, path)
    return path


def test_configured_wwn_prints(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["qemu-args", SEED_WWN, "--config", str(config_path), "--bus", "pci.0", "--addr", "0x5"])
    assert (rc, capsys.readouterr().out) == (0, SEED_PCI_ARGS)


def test_env_var_names_the_config(config_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("VHOSTSCSI_CONFIG", str(config_path))
    assert main(["libvirt-xml", SEED_WWN]) == 0
    assert f"wwpn='{SEED_WWN}'" in capsys.readouterr().out


def test_unknown_wwn_is_refused(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["qemu-args", "naa.5001405000000001", "--config", str(config_path)])
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == ""
    assert captured.err == (
        f"vhostscsi qemu-args: error: naa.5001405000000001 is not a vhost target in {config_path}: "
        "create it with 'vhostscsi /vhost create naa.5001405000000001' or pass --no-check\n"
    )


def test_no_check_prints_anyway(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["qemu-args", "naa.5001405000000001", "--config", str(config_path), "--no-check"]) == 0
    assert capsys.readouterr().out == "-device vhost-scsi-pci,wwpn=naa.5001405000000001\n"


def test_missing_config_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["libvirt-xml", SEED_WWN, "--config", str(tmp_path / "none.json")])
    assert rc == 2
    assert capsys.readouterr().err.startswith(f"vhostscsi libvirt-xml: error: no saved configuration at {tmp_path}")


def test_corrupt_config_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "saveconfig.json"
    bad.write_text("{ not json")
    assert main(["qemu-args", SEED_WWN, "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not valid JSON" in err


def test_readiness_notes_name_the_missing_step(tmp_path: Path) -> None:
    from vhostscsi.integrations.cli import readiness_notes

    configfs = tmp_path / "target"
    assert readiness_notes(["qemu-args", SEED_WWN], configfs) == [
        f"{SEED_WWN} is not in the kernel's LIO yet: run 'vhostscsi kernel apply' before starting the guest"]
    (configfs / "vhost" / SEED_WWN).mkdir(parents=True)
    assert readiness_notes(["qemu-args", SEED_WWN], configfs) == []
    sockets = tmp_path / "run"
    assert readiness_notes(["libvirt-xml", SEED_WWN, "--engine", "user", "--socket-dir", str(sockets)]) == [
        f"no daemon socket at {sockets}/{SEED_WWN}.sock yet: start 'vhostscsi serve' before the guest"]


def test_notes_go_to_stderr_and_leave_stdout_clean(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["qemu-args", SEED_WWN, "--config", str(config_path), "--bus", "pci.0", "--addr", "0x5"]) == 0
    captured = capsys.readouterr()
    assert captured.out == SEED_PCI_ARGS
    if not Path(f"/sys/kernel/config/target/vhost/{SEED_WWN}").is_dir():
        assert captured.err.startswith(f"vhostscsi qemu-args: note: {SEED_WWN} is not in the kernel's LIO yet")
