"""`vhostscsi demo`, the README's main command, run as a user runs it (twice: create, then reuse)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from support.hostparts import missing_host_part

from vhostscsi.config.store import load_config
from vhostscsi.guestkit import MissingHostPart, find_kernel, qemu_binary

pytestmark = pytest.mark.guest


def demo(workdir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vhostscsi", "demo", "--workdir", str(workdir)],
                          capture_output=True, text=True, timeout=300)


def test_demo_creates_serves_boots_and_stops_cleanly(tmp_path: Path) -> None:
    try:
        qemu_binary()
        find_kernel()
    except MissingHostPart as e:
        missing_host_part(str(e))
    first = demo(tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    out = first.stdout
    assert "Created fileio disk0 with size 67108864" in out and "Created LUN 0." in out
    assert re.search(r"^\[0:0:1:0\] +disk +LIO-ORG +disk0 +4\.0 +/dev/sda +/dev/sg0 *$", out, re.M), out
    for line in ("scsi host0: Virtio SCSI HBA", "[sda] Mode Sense: 43 00 10 08",
                 "[sda] Write cache: enabled, read cache: enabled, supports DPO and FUA"):
        assert line in out
    assert re.search(r"connected: qemu-system-x86\[\d+\]", out) and out.rstrip().endswith(str(tmp_path))
    assert "vhostscsi serve: INFO: stopped" in out
    cfg = load_config(tmp_path / "saveconfig.json")
    assert [t.tpgs[0].luns[0].storage_object for t in cfg.vhost_targets()] == ["/backstores/fileio/disk0"]
    assert list((tmp_path / "run").iterdir()) == []  # the daemon removed its socket

    second = demo(tmp_path)  # the configuration exists now: nothing is created again
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Created" not in second.stdout and "(using /backstores/fileio/disk0 and target naa." in second.stdout
    assert len(load_config(tmp_path / "saveconfig.json").vhost_targets()) == 1


def test_demo_reports_a_broken_config_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "saveconfig.json").write_text("{")
    proc = demo(tmp_path)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "not valid JSON" in proc.stderr, proc.stderr
