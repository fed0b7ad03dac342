"""A Linux guest writes while its back end dies with writes taken from the ring and not completed. QEMU
(a version that reconnects) comes back to a fresh Session + VirtioScsi and hands over the in-flight area; the
new back end runs the taken requests, and the guest's data reads back intact: nothing lost, no I/O error."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
from hostdriver_pump import QemuPeer, wait_console
from support.guest import build_image, firmware_args

from tests.restart.qemu10 import find_reconnecting_qemu
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

_RECONNECTING = find_reconnecting_qemu()  # QEMU 10 beside the system 7.2 (scripts/setup unpacks it), or why not
QEMU_RECONNECT = None if isinstance(_RECONNECTING, str) else _RECONNECTING.binary
FREEZE_AT = 20  # the 20th WRITE hangs the first back end, which then "dies"

SCRIPT = rf"""
set -u
i=0; while [ ! -e /dev/sda ]; do i=$((i+1)); [ $i -gt 300 ] && {{ echo NO-DISK; exit 1; }}; sleep 0.1; done
dd if=/dev/urandom of=/tmp/pat bs=64k count=64 2>/dev/null
{GNU_DD} if=/tmp/pat of=/dev/sda bs=64k oflag=direct 2>/tmp/err && echo WRITE-DONE || cat /tmp/err
{GNU_DD} if=/dev/sda of=/tmp/back bs=64k count=64 iflag=direct 2>/dev/null
cmp /tmp/pat /tmp/back && echo VERIFY-OK
dmesg | grep -i -E 'error|abort|reset' | head -5
"""


class Crash(BaseException):
    """Not an Exception: nothing in the data path catches it, as nothing survives a SIGKILL."""


class FreezingPort:
    """The real port, except that the FREEZE_AT-th WRITE blocks until released, then 'kills' its thread."""

    def __init__(self, port: TargetPort) -> None:
        self.port = port
        self.writes = 0
        self.frozen = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name: str):
        return getattr(self.port, name)

    def execute(self, nexus, lun, cdb, data_out, data_in):
        if cdb[0] in (0x2A, 0x8A):
            self.writes += 1
            if self.writes == FREEZE_AT:
                self.frozen.set()
                self.release.wait(60)
                raise Crash()
        return self.port.execute(nexus, lun, cdb, data_out, data_in)


@pytest.fixture(scope="module")
def image() -> GuestImage:
    return build_image(extra_binaries=[GNU_DD], modules=VIRTIO_SCSI_MODULES, init_script=SCRIPT)


@pytest.mark.skipif(not QEMU_RECONNECT, reason=f"no QEMU that reconnects: {_RECONNECTING}")
def test_guest_writes_survive_a_back_end_restart(tmp_path: Path, image: GuestImage) -> None:
    disk = RamdiskBackstore("disk0", 16 << 20)
    real = TargetPort("naa.5001405000000001", 1)
    real.add_lun(0, Device(disk, "disk0", "0f4a9bd8-5c3e-4f11-9d8e-000000000000", write_back=True))
    freezing = FreezingPort(real)
    peer = QemuPeer(tmp_path, accept_timeout=60)
    console = peer.console
    peer.launch(qemu_command(image, console, firmware_args(QEMU_RECONNECT) + shared_memory_args(512) + [
        "-chardev", f"socket,id=c0,path={peer.path},reconnect-ms=500", "-device", "vhost-user-scsi-pci,chardev=c0"],
        qemu=QEMU_RECONNECT), tmp_path / "qemu.log")
    try:
        first = peer.pump(Session(num_queues=3), VirtioScsi({1: freezing}))
        assert freezing.frozen.wait(120), f"the guest never wrote: {console.read_text(errors='replace')[-1500:]}"
        first.sock.shutdown(socket.SHUT_RDWR)  # the back end "dies" with the write (and its batch) taken
        second = peer.pump(Session(num_queues=3), VirtioScsi({1: real}))
        text = wait_console(console, "GUESTKIT-EXIT", 180)
        assert "WRITE-DONE" in text and "VERIFY-OK" in text, text[-2000:]
        assert second.error is None and second.protocol_error is None
    finally:
        freezing.release.set()
        peer.close()
        disk.close()
