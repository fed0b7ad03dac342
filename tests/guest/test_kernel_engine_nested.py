"""The seed's "Guest Viewpoint", end to end, through the kernel engine.

An outer guest (generic kernel, host root over 9p) runs `vhostscsi kernel apply`, then starts an
inner QEMU with exactly what `vhostscsi qemu-args` prints (`-device vhost-scsi-pci,wwpn=...`), so the
kernel's vhost_scsi serves the inner guest's virtio-scsi driver. The inner guest must see the
seed's disk (`0:0:1:0 LIO-ORG disk0 4.0`, "Mode Sense: 43 00 10 08", write cache and DPO/FUA), and
the write-protected LUN must refuse a WRITE with DATA PROTECT (the nexus ACL at work).

TCG inside TCG: about two and a half minutes here, hence `slow` (run it with `-m slow`).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from support.guest import LIO_WRITABLE_DBROOT, boot_host_root, build_image, generic_kernel, host_root_image

from vhostscsi.config.model import Config, new_storage_object, new_vhost_target
from vhostscsi.config.store import save_config
from vhostscsi.guestkit import VIRTIO_SCSI_MODULES, sg3_utils

pytestmark = [pytest.mark.guest, pytest.mark.slow]

WWN = "naa.500140568720f76f"

INNER_SCRIPT = r"""
sleep 1
for d in /sys/class/scsi_device/*; do
  echo "INNER-DEV $(basename $d) $(cat $d/device/vendor)|$(cat $d/device/model)|$(cat $d/device/rev)"
done
dmesg | grep -E "sd 0:0:1:[01]: \[sd[ab]\] (Mode Sense|Write cache|Write Protect)" | sed 's/^\[[ 0-9.]*\] /INNER-DMESG /'
for lun in 0 1; do
  sg=$(ls /sys/class/scsi_device/0:0:1:$lun/device/scsi_generic/)
  sg_raw -s 512 -i /dev/zero /dev/$sg 2a 00 00 00 00 00 00 00 01 00 > /tmp/out 2>&1
  echo "INNER-WRITE $lun rc=$? $(grep -E 'Sense key|Additional sense' /tmp/out | tr '\n' ' ')"
done
"""

# Runs in the chroot of the host's root (support.guest.chroot_script).
OUTER_STEPS = LIO_WRITABLE_DBROOT + r"""@PYTHON@ -m vhostscsi kernel apply --config @DIR@/config.json; echo "apply rc=$?"
A=$(@PYTHON@ -m vhostscsi qemu-args @WWN@ --config @DIR@/config.json --bus pci.0 --addr 0x5)
echo "ARGS $A"
timeout 1200 qemu-system-x86_64 -accel tcg -smp 1 -m 160 -nodefaults -no-user-config -no-reboot \
  -display none -serial stdio -bios /usr/share/qemu/qboot.rom -kernel @KERNEL@ -initrd @INITRD@ \
  -append "console=ttyS0 quiet loglevel=0 panic=-1" $A
echo "inner rc=$?"
"""


def config() -> Config:
    cfg = Config()
    disk = cfg.add_storage_object(new_storage_object(
        "fileio", "disk0", dev="/run/disk0.img", size=64 << 20, write_back=True))
    ram = cfg.add_storage_object(new_storage_object("ramdisk", "rd0", size=8 << 20))
    tpg = cfg.add_target(new_vhost_target(WWN)).tpgs[0]
    tpg.add_lun(disk)
    tpg.add_lun(ram, write_protect=True)
    return cfg


def test_inner_guest_sees_the_seeds_disk_through_kernel_vhost_scsi(tmp_path: Path) -> None:
    outer_kernel = generic_kernel()
    save_config(config(), tmp_path / "config.json")
    inner = build_image(tmp_path, extra_binaries=sg3_utils(), modules=VIRTIO_SCSI_MODULES, init_script=INNER_SCRIPT)
    steps = (OUTER_STEPS.replace("@PYTHON@", sys.executable).replace("@DIR@", str(tmp_path))
             .replace("@WWN@", WWN).replace("@KERNEL@", str(inner.kernel))
             .replace("@INITRD@", str(inner.initrd)))
    console = boot_host_root(host_root_image(steps, outer_kernel), timeout=1500)
    tail = console[-3000:]
    assert "apply rc=0" in console, tail
    assert f"ARGS -device vhost-scsi-pci,wwpn={WWN},bus=pci.0,addr=0x5" in console, tail
    assert "inner rc=0" in console, tail
    devices = re.findall(r"^INNER-DEV (.*)$", console, re.M)
    assert devices == ["0:0:1:0 LIO-ORG |disk0           |4.0 ", "0:0:1:1 LIO-ORG |rd0             |4.0 "], tail
    dmesg = re.findall(r"^INNER-DMESG (.*)$", console, re.M)
    assert "sd 0:0:1:0: [sda] Write Protect is off" in dmesg, tail
    assert "sd 0:0:1:0: [sda] Mode Sense: 43 00 10 08" in dmesg, tail
    assert "sd 0:0:1:0: [sda] Write cache: enabled, read cache: enabled, supports DPO and FUA" in dmesg, tail
    assert "sd 0:0:1:1: [sdb] Write Protect is on" in dmesg, tail
    writes = dict(re.findall(r"^INNER-WRITE (\d) (.*)$", console, re.M))
    assert writes["0"].startswith("rc=0"), tail
    assert "Data Protect" in writes["1"] and "Write protected" in writes["1"], tail
