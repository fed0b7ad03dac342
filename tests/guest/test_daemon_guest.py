"""A real Linux guest (Debian's kernel, QEMU TCG, SeaBIOS) on `vhostscsi serve`, end to end.

One combined scenario, because every TCG boot costs seconds:
  boot 1  the seed's dmesg lines and `lsscsi -g`; a random MiB written with O_DIRECT, read back, compared;
          LUN 1 created with the shell while the guest runs (it appears), then deleted (it disappears);
          a marker written, then `reboot -f` inside the same QEMU (device reset, rings stopped/restarted)
  boot 2  after the reboot: the disk is back, the pattern still there; power off (QEMU exits)
  boot 3  a new QEMU against the same, still running daemon: the disk again, the same pattern
and finally the backing file holds exactly the guest's pattern, and SIGTERM stops the daemon with status 0.
"""

from __future__ import annotations

import hashlib
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support.config import one_disk_config
from support.daemon import ServeProcess
from support.guest import build_image

from vhostscsi.guestkit import (
    GNU_DD,
    VIRTIO_SCSI_MODULES,
    Guest,
    GuestImage,
    qemu_command,
    shared_memory_args,
)

pytestmark = pytest.mark.guest

WWN = "naa.500140568720f76f"
DISK_SIZE = 64 << 20
PATTERN_BYTES = 1 << 20
MARK_SECTOR = 16384  # 8 MiB in: beyond the pattern

SCRIPT = rf"""
set -u
wait_for() {{ i=0; while [ ! -e "$1" ]; do i=$((i+1)); [ $i -gt 300 ] && return 1; sleep 0.1; done; }}
wait_gone() {{ i=0; while [ -e "$1" ]; do i=$((i+1)); [ $i -gt 300 ] && return 1; sleep 0.1; done; }}
wait_for /sys/class/scsi_disk/0:0:1:0 && wait_for /dev/sda || {{ echo NO-DISK; dmesg | tail -30; exit 1; }}
mark=$(dd if=/dev/sda bs=512 skip={MARK_SECTOR} count=1 2>/dev/null | head -c 8)
if [ "$mark" = REBOOTED ]; then
  echo "AGAIN $(/usr/bin/lsscsi -g | tr -s ' ')"
  echo "AGAIN-MD5 $({GNU_DD} if=/dev/sda bs=64k count=16 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
  exit 0
fi
echo DMESG-BEGIN; dmesg | grep '0:'; echo DMESG-END
echo "LSSCSI $(/usr/bin/lsscsi -g)"
dd if=/dev/urandom of=/tmp/pattern bs=64k count=16 2>/dev/null
{GNU_DD} if=/tmp/pattern of=/dev/sda bs=64k oflag=direct 2>/dev/null && sync
{GNU_DD} if=/dev/sda of=/tmp/back bs=64k count=16 iflag=direct 2>/dev/null
cmp /tmp/pattern /tmp/back && echo ROUNDTRIP-OK
echo "PATTERN-MD5 $(md5sum /tmp/pattern | cut -d' ' -f1)"
echo HOTPLUG-READY
wait_for /sys/class/scsi_device/0:0:1:1 && echo "LUN1-ADDED $(/usr/bin/lsscsi | grep '0:0:1:1' | tr -s ' ')"
wait_gone /sys/class/scsi_device/0:0:1:1 && echo LUN1-REMOVED
printf REBOOTED | {GNU_DD} of=/dev/sda bs=512 seek={MARK_SECTOR} conv=sync oflag=direct 2>/dev/null && sync
echo REBOOTING
reboot -f
"""

SEED_DMESG = [
    r"scsi host0: Virtio SCSI HBA",
    r"scsi 0:0:1:0: Direct-Access +LIO-ORG +disk0 +4\.0 ",
    r"sd 0:0:1:0: \[sda\] \d+ 512-byte logical blocks",
    r"sd 0:0:1:0: \[sda\] Write Protect is off",
    r"sd 0:0:1:0: \[sda\] Mode Sense: 43 00 10 08",
    r"sd 0:0:1:0: \[sda\] Write cache: enabled, read cache: enabled, supports DPO and FUA",
]
SEED_LSSCSI = re.compile(r"^LSSCSI \[0:0:1:0\] +disk +LIO-ORG +disk0 +4\.0 +/dev/sda +/dev/sg0 *$", re.M)


@pytest.fixture(scope="session")
def daemon_image() -> GuestImage:
    return build_image(extra_binaries=["/usr/bin/lsscsi", GNU_DD], modules=VIRTIO_SCSI_MODULES, init_script=SCRIPT)


def shell(config: Path, *args: str) -> str:
    """A one-shot `vhostscsi` shell command, as the admin types it while the daemon runs."""
    proc = subprocess.run([sys.executable, "-m", "vhostscsi", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def start_qemu(img: GuestImage, workdir: Path, sock: Path, *, allow_reboot: bool) -> Guest:
    """QEMU on the daemon's socket, with SeaBIOS (it probes the disk before the kernel: a real peer)."""
    workdir.mkdir(parents=True, exist_ok=True)
    console = workdir / "console.txt"
    console.write_bytes(b"")
    args = shared_memory_args(512) + [
        "-chardev", f"socket,id=vus0,path={sock}",
        "-device", "vhost-user-scsi-pci,chardev=vus0",
    ]
    cmd = qemu_command(img, console, args)
    if allow_reboot:
        cmd.remove("-no-reboot")
    with open(workdir / "qemu.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    return Guest(proc, workdir, None)


def test_guest_on_vhostscsi_serve(tmp_path: Path, daemon_image: GuestImage) -> None:
    disk = tmp_path / "disk0.img"
    config = one_disk_config(tmp_path / "saveconfig.json", disk, DISK_SIZE, wwn=WWN)
    daemon = ServeProcess(tmp_path, config, wwn=WWN, log_path=tmp_path / "serve.log")
    sock = daemon.socket
    guests: list[Guest] = []
    try:
        daemon.wait_log("listening on")

        # ---- boot 1 (and, in the same QEMU, boot 2 after a guest reboot) ----
        g = start_qemu(daemon_image, tmp_path / "qemu1", sock, allow_reboot=True)
        guests.append(g)
        text = g.wait_for("HOTPLUG-READY", timeout=180)
        dmesg = text.split("DMESG-BEGIN", 1)[1].split("DMESG-END", 1)[0]
        for line in SEED_DMESG:
            assert re.search(line, dmesg), f"{line!r} not in the guest's dmesg:\n{dmesg}"
        assert SEED_LSSCSI.search(text), text
        assert "ROUNDTRIP-OK" in text, text
        pattern_md5 = re.search(r"^PATTERN-MD5 ([0-9a-f]{32})$", text, re.M).group(1)  # type: ignore[union-attr]

        shell(config, "/backstores/ramdisk", "create", "name=rd1", "size=16M")
        shell(config, f"/vhost/{WWN}/tpg1/luns", "create", "/backstores/ramdisk/rd1")
        text = g.wait_for(re.compile(r"^LUN1-ADDED .*$", re.M), timeout=60)
        assert re.search(r"^LUN1-ADDED \[0:0:1:1\] disk LIO-ORG rd1 4\.0 /dev/sdb ?$", text, re.M), text
        shell(config, f"/vhost/{WWN}/tpg1/luns", "delete", "lun1")
        text = g.wait_for("LUN1-REMOVED", timeout=60)

        text = g.wait_for("REBOOTING", timeout=60)
        text = g.wait_for(re.compile(r"^AGAIN-MD5 .*$", re.M), timeout=180)  # boot 2, same QEMU
        assert re.search(r"^AGAIN \[0:0:1:0\] disk LIO-ORG disk0 4\.0 /dev/sda /dev/sg0 ?$", text, re.M), text
        assert f"AGAIN-MD5 {pattern_md5}" in text
        g.wait(timeout=60)
        assert g.exit_code == 0, text

        # ---- boot 3: a new QEMU against the same daemon ----
        daemon.wait_log(r"disconnected: qemu")
        g = start_qemu(daemon_image, tmp_path / "qemu2", sock, allow_reboot=False)
        guests.append(g)
        text = g.wait(timeout=180)
        assert re.search(r"^AGAIN \[0:0:1:0\] disk LIO-ORG disk0 4\.0 /dev/sda /dev/sg0 ?$", text, re.M), text
        assert f"AGAIN-MD5 {pattern_md5}" in text
        assert g.exit_code == 0

        with open(disk, "rb") as f:
            assert hashlib.md5(f.read(PATTERN_BYTES)).hexdigest() == pattern_md5
            f.seek(MARK_SECTOR * 512)
            assert f.read(512) == b"REBOOTED".ljust(512, b"\0")

        assert daemon.stop(signal.SIGTERM, timeout=30) == 0
        served = daemon.log()
        assert len(re.findall(rf"{WWN}: connected: qemu-system-x86\[\d+\]", served)) == 2, served
        assert "tpg1 lun1 -> /backstores/ramdisk/rd1" in served and "tpg1 lun1 removed" in served
    finally:
        for g in guests:
            g.kill()
        daemon.kill()
