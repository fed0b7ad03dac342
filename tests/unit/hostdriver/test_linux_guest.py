"""A real Linux guest's virtio_scsi driver on Session + VirtioScsi (the lower layers alone, no daemon): a
capacity change announced only through the event queue (PARAM_CHANGE 2a/09), a LOGICAL UNIT RESET sent by
the guest's error handler (sg_reset) on the control queue, and a LUN hot-added and removed by events. (With one vCPU the driver uses one request queue
whatever num_queues says; several queues are covered by the unit tests.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hostdriver_pump import QemuPeer, wait_console
from support.guest import build_image

from vhostscsi.backstores.fileio import FileIOBackstore
from vhostscsi.backstores.ramdisk import RamdiskBackstore
from vhostscsi.guestkit import (
    GNU_DD,
    VIRTIO_SCSI_MODULES,
    GuestImage,
    qemu_command,
    shared_memory_args,
)
from vhostscsi.scsi import Device, TargetPort
from vhostscsi.vhost_user.session import Session
from vhostscsi.virtio.scsi import VirtioScsi

pytestmark = pytest.mark.guest

SIZE1 = 16 << 20
SIZE2 = 32 << 20

SCRIPT = rf"""
set -u
wait_for() {{ i=0; while [ ! -e "$1" ]; do i=$((i+1)); [ $i -gt 300 ] && return 1; sleep 0.1; done; }}
wait_for /sys/class/scsi_disk/0:0:1:0 && wait_for /dev/sda || {{ echo NO-DISK; dmesg | tail -30; exit 1; }}
echo "SIZE1 $(cat /sys/block/sda/size)"
{GNU_DD} if=/dev/sda of=/dev/null bs=64k count=64 iflag=direct 2>/dev/null && echo READ-OK
echo RESIZE-READY
i=0; while [ "$(cat /sys/block/sda/size)" = {SIZE1 // 512} ]; do i=$((i+1)); [ $i -gt 300 ] && break; sleep 0.1; done
echo "SIZE2 $(cat /sys/block/sda/size)"
/usr/bin/sg_reset -d /dev/sg0; echo "RESET-RC $?"
{GNU_DD} if=/dev/sda of=/dev/null bs=4k count=16 skip=6000 iflag=direct 2>/dev/null && echo IO-AFTER-RESET
echo HOTPLUG-READY
wait_for /sys/class/scsi_device/0:0:1:1 && echo LUN1-ADDED
echo UNPLUG-READY
i=0; while [ -e /sys/class/scsi_device/0:0:1:1 ]; do i=$((i+1)); [ $i -gt 300 ] && break; sleep 0.1; done
[ -e /sys/class/scsi_device/0:0:1:1 ] || echo LUN1-REMOVED
ls /sys/class/scsi_device/
"""


class ResetCounter:
    """The real port, with the TMFs that reach it counted."""

    def __init__(self, port: TargetPort) -> None:
        self.port = port
        self.lun_resets: list[int] = []

    def __getattr__(self, name: str):
        return getattr(self.port, name)

    def lun_reset(self, nexus: str, lun: int) -> None:
        self.lun_resets.append(lun)
        self.port.lun_reset(nexus, lun)


@pytest.fixture(scope="module")
def image() -> GuestImage:
    return build_image(extra_binaries=[GNU_DD, "/usr/bin/sg_reset"], modules=VIRTIO_SCSI_MODULES, init_script=SCRIPT)


def test_guest_resize_event_and_lun_reset(tmp_path: Path, image: GuestImage) -> None:
    img_path = tmp_path / "disk.img"
    with open(img_path, "wb") as f:
        f.truncate(SIZE1)
    fio = FileIOBackstore("disk0", str(img_path), SIZE1, write_back=True)
    dev = Device(fio, "disk0", "0f4a9bd8-5c3e-4f11-9d8e-000000000000", write_back=True)
    real = TargetPort("naa.5001405000000001", 1)
    real.add_lun(0, dev)
    port = ResetCounter(real)
    peer = QemuPeer(tmp_path, accept_timeout=60)
    console = peer.console
    peer.launch(qemu_command(image, console, shared_memory_args(512) + [
        "-chardev", f"socket,id=c0,path={peer.path}", "-device", "vhost-user-scsi-pci,chardev=c0"]),
        tmp_path / "qemu.log")
    try:
        pump = peer.pump(Session(num_queues=3), VirtioScsi({1: port}, nexus={1: "naa.5001405000000002"}))
        text = wait_console(console, "RESIZE-READY", 120)
        assert f"SIZE1 {SIZE1 // 512}" in text and "READ-OK" in text
        # grow the medium; tell the guest only through the event queue (no unit attention is queued)
        os.truncate(img_path, SIZE2)
        fio.size = SIZE2
        assert dev.refresh_capacity()
        pump.post("capacity_changed", 1, 0)
        text = wait_console(console, "HOTPLUG-READY", 120)
        assert f"SIZE2 {SIZE2 // 512}" in text, text[-2000:]
        # hotplug: LUN 1 appears on a TRANSPORT_RESET/RESCAN event, goes on TRANSPORT_RESET/REMOVED
        disk1 = RamdiskBackstore("disk1", 1 << 20)
        real.add_lun(1, Device(disk1, "disk1", "0f4a9bd8-5c3e-4f11-9d8e-000000000001"))
        pump.post("lun_added", 1, 1)
        wait_console(console, "UNPLUG-READY", 60)
        real.remove_lun(1)
        pump.post("lun_removed", 1, 1)
        text = wait_console(console, "GUESTKIT-EXIT", 120)
        disk1.close()
        assert "LUN1-ADDED" in text and "LUN1-REMOVED" in text, text[-2000:]
        assert "RESET-RC 0" in text and "IO-AFTER-RESET" in text, text[-2000:]
        assert port.lun_resets == [0]
        assert "GUESTKIT-EXIT 0" in text
        assert pump.error is None and pump.protocol_error is None
    finally:
        peer.close()
        fio.close()
