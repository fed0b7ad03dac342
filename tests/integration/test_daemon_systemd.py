"""contrib/systemd/vhostscsi.service: systemd accepts it, and what it runs is what `vhostscsi serve` accepts."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from vhostscsi.engines.user.cli import parse_args

UNIT = Path(__file__).parents[2] / "contrib" / "systemd" / "vhostscsi.service"


def directives() -> dict[str, str]:
    out = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";")):
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def test_exec_lines_are_what_the_daemon_understands() -> None:
    d = directives()
    argv = shlex.split(d["ExecStart"])
    assert argv[0].endswith("/vhostscsi") and argv[1] == "serve"
    args = parse_args(argv[2:])
    assert str(args.config) == "/etc/vhostscsi/saveconfig.json" and str(args.socket_dir) == "/run/vhostscsi"
    assert d["ExecReload"] == "/bin/kill -HUP $MAINPID"  # SIGHUP re-reads the configuration
    assert d["KillSignal"] == "SIGTERM" and d["Type"] == "simple"  # SIGTERM drains and exits 0
    assert d["RuntimeDirectory"] == "vhostscsi" and d["RuntimeDirectoryMode"] == "0700"


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze, exe = shutil.which("systemd-analyze"), shutil.which("vhostscsi")
    if analyze is None or exe is None:
        pytest.skip("needs systemd-analyze and an installed vhostscsi")
    unit = tmp_path / "vhostscsi.service"  # same unit, ExecStart pointing at this machine's install
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/vhostscsi", exe))
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [l for l in proc.stderr.splitlines() if "vhostscsi.service" in l]
    assert proc.returncode == 0 and not problems, proc.stderr
