"""`vhostscsi serve --socket-unit`: a .socket unit systemd accepts, whose sockets the daemon takes over.

systemd itself cannot run here (no PID 1 of ours), so the unit is checked by `systemd-analyze verify` beside
contrib/systemd/vhostscsi.service, and the activation it describes is done by `systemd-socket-activate` (systemd's
own tool for the LISTEN_FDS protocol) listening on exactly the unit's ListenStream= paths.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hardening.harness import Guest
from support.config import save_targets
from support.daemon import ServeProcess
from vhostscsi.config.model import new_storage_object

WWNS = ("naa.5001405aaaaaaaa1", "naa.5001405bbbbbbbb2")
SERVICE = Path(__file__).parents[2] / "contrib" / "systemd" / "vhostscsi.service"
INQUIRY = bytes([0x12, 0, 0, 0, 96, 0])


def _config(tmp: Path) -> Path:
    return save_targets(tmp / "saveconfig.json", {
        wwn: [(new_storage_object("ramdisk", f"rd{i}", size=1 << 20), False)] for i, wwn in enumerate(WWNS)})


def _unit(config: Path, sockets: Path) -> tuple[int, str, str]:
    out = subprocess.run([sys.executable, "-m", "vhostscsi", "serve", "--socket-unit", "--config", str(config),
                          "--socket-dir", str(sockets)], capture_output=True, text=True, timeout=60)
    return out.returncode, out.stdout, out.stderr


def _listen_streams(unit: str) -> list[str]:
    return [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ListenStream=")]


def test_one_listen_stream_per_target_in_the_daemons_socket_dir(tmp_path: Path) -> None:
    rc, unit, err = _unit(_config(tmp_path), tmp_path / "run")
    assert rc == 0, err
    assert _listen_streams(unit) == [str(tmp_path / "run" / f"{w}.sock") for w in WWNS]
    assert "SocketMode=0600" in unit and "DirectoryMode=0700" in unit and "Service=vhostscsi.service" in unit


def test_systemd_analyze_accepts_the_unit_beside_the_service(tmp_path: Path) -> None:
    analyze, exe = shutil.which("systemd-analyze"), shutil.which("vhostscsi")
    if analyze is None or exe is None:
        pytest.fail("needs systemd-analyze (Debian systemd, installed by scripts/setup) and an installed vhostscsi")
    rc, unit, err = _unit(_config(tmp_path), Path("/run/vhostscsi"))
    assert rc == 0, err
    (tmp_path / "vhostscsi.socket").write_text(unit)
    (tmp_path / "vhostscsi.service").write_text(SERVICE.read_text().replace("/usr/local/bin/vhostscsi", exe))
    proc = subprocess.run([analyze, "verify", str(tmp_path / "vhostscsi.socket")], capture_output=True, text=True,
                          timeout=60)
    problems = [line for line in proc.stderr.splitlines() if "vhostscsi." in line]
    assert proc.returncode == 0 and not problems, proc.stderr


def test_no_target_no_unit(tmp_path: Path) -> None:
    rc, unit, err = _unit(tmp_path / "empty.json", tmp_path / "run")
    assert rc == 1 and unit == "" and err.count("\n") == 1 and "no vhost target" in err


def test_the_daemon_takes_over_the_units_sockets(tmp_path: Path) -> None:
    activate = shutil.which("systemd-socket-activate")
    if activate is None:
        pytest.fail("needs systemd-socket-activate (Debian systemd, installed by scripts/setup)")
    config, sockets = _config(tmp_path), tmp_path / "run"
    sockets.mkdir(mode=0o700)
    rc, unit, err = _unit(config, sockets)
    assert rc == 0, err
    listen = tuple(arg for path in _listen_streams(unit) for arg in ("-l", path))
    daemon = ServeProcess(tmp_path, config, wwn=WWNS[0], sockdir=sockets, launcher=(activate, *listen))
    try:
        deadline = time.monotonic() + 30
        while not all((sockets / f"{w}.sock").is_socket() for w in WWNS):
            assert time.monotonic() < deadline and daemon.alive(), daemon.log()
            time.sleep(0.05)
        for wwn in WWNS:  # the first connection makes systemd-socket-activate start the daemon
            with Guest(sockets / f"{wwn}.sock") as init:
                assert init.command(INQUIRY, data_in_len=96).data[8:16] == b"LIO-ORG "
        for wwn in WWNS:
            daemon.wait_log(re.escape(f"{wwn}: listening on {sockets / wwn}.sock (inherited)"))
    finally:
        daemon.terminate()
