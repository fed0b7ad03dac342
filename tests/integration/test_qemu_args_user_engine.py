"""`qemu-args --engine user` output, verbatim, boots a guest that finds its disk on `vhostscsi serve`.

The real daemon serves the saved configuration; QEMU gets exactly the printed -object/-machine/
-chardev/-device arguments (plus the guest's kernel and console); the guest must see the seed's
disk. This is the user-engine twin of the kernel engine's nested test.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support.config import one_disk_config
from support.daemon import ServeProcess
from support.guest import build_image

from vhostscsi.guestkit import VIRTIO_SCSI_MODULES, boot_guest
from vhostscsi.integrations.cli import run

pytestmark = pytest.mark.guest

WWN = "naa.500140568720f76f"
MEMORY_MB = 256

GUEST_SCRIPT = r"""
for i in 1 2 3 4 5 6 7 8 9 10; do [ -e /sys/class/scsi_device/0:0:1:0 ] && break; sleep 1; done
for d in /sys/class/scsi_device/*; do
  echo "DEV $(basename $d) $(cat $d/device/vendor)|$(cat $d/device/model)|$(cat $d/device/rev)"
done
dmesg | grep -E "sd 0:0:1:0: \[sda\] (Mode Sense|Write cache)" | sed 's/^\[[ 0-9.]*\] /DMESG /'
"""


def test_printed_user_engine_args_reach_the_daemon(tmp_path: Path) -> None:
    config = one_disk_config(tmp_path / "saveconfig.json", tmp_path / "disk0.img", 64 << 20, wwn=WWN)
    sockets = tmp_path / "sockets"
    img = build_image(None, modules=VIRTIO_SCSI_MODULES, init_script=GUEST_SCRIPT)
    args = run(["qemu-args", WWN, "--engine", "user", "--config", str(config), "--socket-dir", str(sockets),
                "--memory", f"{MEMORY_MB}M"]).split()
    daemon = ServeProcess(tmp_path, config, wwn=WWN, sockdir=sockets)
    try:
        daemon.wait_socket(30)
        console = boot_guest(img, qemu_args=[*args, "-bios", "/usr/share/qemu/qboot.rom"],
                             memory_mb=MEMORY_MB, timeout=300).replace("\r\n", "\n")
    finally:
        daemon.terminate(30)
    assert re.findall(r"^DEV (.*)$", console, re.M) == ["0:0:1:0 LIO-ORG |disk0           |4.0 "], console[-2000:]
    dmesg = re.findall(r"^DMESG (.*)$", console, re.M)
    assert "sd 0:0:1:0: [sda] Mode Sense: 43 00 10 08" in dmesg, console[-2000:]
    assert "sd 0:0:1:0: [sda] Write cache: enabled, read cache: enabled, supports DPO and FUA" in dmesg
