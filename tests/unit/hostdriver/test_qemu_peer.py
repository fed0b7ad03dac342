"""Real QEMU as the front end: its vhost-user-scsi-pci talks to Session + VirtioScsi, and SeaBIOS drives the
request queue (it probes every target before any kernel runs), so no guest kernel is needed to check that the
protocol and the rings work with the real peer."""

from __future__ import annotations

import contextlib
import pathlib
import shutil
import time
from collections.abc import Iterator

import pytest

from hostdriver_pump import Pump, QemuPeer
from support.guest import firmware_args
from tests.restart.qemu10 import find_reconnecting_qemu
from vhostscsi.backstores.ramdisk import RamdiskBackstore
from vhostscsi.scsi import Device, TargetPort
from vhostscsi.vhost_user import codec
from vhostscsi.vhost_user.codec import Message
from vhostscsi.vhost_user.protocol import DEFAULT_PROTOCOL_FEATURES, ProtocolFeature, Request, bit
from vhostscsi.vhost_user.session import Response, Session
from vhostscsi.virtio.scsi import VirtioScsi

QEMU = shutil.which("qemu-system-x86_64")


class CountingPorts(dict):
    """An empty TPG table that remembers which target ids the guest asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[int] = []

    def get(self, key, default=None):  # type: ignore[override]
        self.asked.append(key)
        return super().get(key, default)


class RecordingSession(Session):
    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.seen: list[str] = []
        self.bases: list[tuple[int, int]] = []

    def handle(self, msg: Message) -> Response:
        self.seen.append(msg.name())
        r = super().handle(msg)
        if msg.request == Request.GET_VRING_BASE:
            self.bases.append(tuple(codec.unpack_vring_state(r.replies[0].payload)))
        return r


class FirmwarePeer(QemuPeer):
    """QEMU (firmware only, TCG) on the listening socket, and one pump per accepted connection."""

    def __init__(self, tmp_path: pathlib.Path, qemu: str, *, reconnect: bool = False) -> None:
        super().__init__(tmp_path, accept_timeout=30)
        chardev = f"socket,id=c0,path={self.path}" + (",reconnect-ms=500" if reconnect else "")
        self.launch(
            [qemu, *firmware_args(qemu), "-accel", "tcg", "-smp", "1", "-m", "128", "-nodefaults", "-display", "none",
             "-serial", f"file:{self.console}",
             "-object", "memory-backend-memfd,id=mem,size=128M,share=on", "-machine", "pc,memory-backend=mem",
             "-chardev", chardev, "-device", "vhost-user-scsi-pci,chardev=c0"],
            tmp_path / "qemu.err",
        )

    def serve(self, ports, **session_kw) -> tuple[RecordingSession, Pump]:
        session = RecordingSession(num_queues=3, **session_kw)
        return session, self.pump(session, VirtioScsi(ports))

    def booted(self, marker: bytes = b"VHOSTSCSI-BOOT-OK") -> bool:
        return self.console.exists() and marker in self.console.read_bytes()


@contextlib.contextmanager
def qemu_peer(tmp_path, qemu: str | None = QEMU, **kw) -> Iterator[FirmwarePeer]:
    if qemu is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    peer = FirmwarePeer(tmp_path, qemu, **kw)
    try:
        yield peer
    finally:
        peer.close()


def lun0_port(disk: RamdiskBackstore) -> TargetPort:
    """TPG 1 with the ramdisk as LUN 0, holding a boot sector that prints the marker."""
    disk.writev(0, [memoryview(boot_sector(b"VHOSTSCSI-BOOT-OK\r\n"))])
    port = TargetPort("naa.5001405000000001", 1)
    port.add_lun(0, Device(disk, "disk0", "0f4a9bd8-5c3e-4f11-9d8e-000000000000"))
    return port


def boot_sector(message: bytes) -> bytes:
    """A 512-byte MBR whose x86 real-mode code writes `message` to COM1 and halts."""
    code = bytes([0xFC, 0x31, 0xC0, 0x8E, 0xD8, 0xBA, 0xF8, 0x03])  # cld; xor ax,ax; mov ds,ax; mov dx,0x3f8
    msg_off = len(code) + 3 + 12
    code += bytes([0xBE]) + (0x7C00 + msg_off).to_bytes(2, "little")  # mov si, message
    loop = len(code)
    code += bytes([0xAC, 0x84, 0xC0, 0x74, 0x03, 0xEE])  # lodsb; test al,al; jz done; out dx,al
    code += bytes([0xEB, (loop - (len(code) + 2)) & 0xFF])  # jmp loop
    done = len(code)
    code += bytes([0xFA, 0xF4, 0xEB, (done - (len(code) + 4)) & 0xFF])  # done: cli; hlt; jmp done
    assert len(code) == msg_off
    return (code + message + b"\0").ljust(510, b"\0") + b"\x55\xaa"


def wait_for(cond, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


@pytest.mark.guest
def test_seabios_probes_every_target_through_our_rings(tmp_path) -> None:
    ports = CountingPorts()
    with qemu_peer(tmp_path) as peer:
        session, pump = peer.serve(ports)
        wait_for(lambda: "GET_VRING_BASE" in session.seen, 90)
        assert pump.error is None and pump.protocol_error is None
        # QEMU 7.2's start sequence, with our protocol features (in-flight area, reset, reply-ack) in use
        for name in ("GET_PROTOCOL_FEATURES", "SET_PROTOCOL_FEATURES", "GET_QUEUE_NUM", "GET_INFLIGHT_FD",
                     "SET_INFLIGHT_FD", "SET_MEM_TABLE", "SET_VRING_KICK", "SET_VRING_ENABLE", "GET_VRING_BASE"):
            assert name in session.seen, f"{name} never arrived: {session.seen}"
        # SeaBIOS scans targets 0..255 at LUN 0; each reached the device as lun[1] and got BAD_TARGET back
        assert sorted(set(ports.asked)) == list(range(256))
        assert session.bases == [(2, 256)]  # the queue stopped with all 256 requests taken and answered


@pytest.mark.guest
@pytest.mark.parametrize("mem_slots", [False, True], ids=["mem-table", "mem-slots"])
def test_seabios_boots_from_our_lun(tmp_path, mem_slots: bool) -> None:
    """Firmware finds TPG 1 LUN 0, reads its boot sector through our rings and runs it; with
    CONFIGURE_MEM_SLOTS offered, QEMU sends its memory as ADD_MEM_REG instead of SET_MEM_TABLE."""
    disk = RamdiskBackstore("disk0", 1 << 20)
    kw = {"protocol_features": DEFAULT_PROTOCOL_FEATURES | bit(ProtocolFeature.CONFIGURE_MEM_SLOTS)} if mem_slots else {}
    try:
        with qemu_peer(tmp_path) as peer:
            session, pump = peer.serve({1: lun0_port(disk)}, **kw)
            booted = wait_for(peer.booted, 60)
            assert pump.error is None and pump.protocol_error is None
            assert booted, f"no boot message on the console: {peer.console.read_bytes()[-300:]!r}"
            assert ("ADD_MEM_REG" in session.seen) == mem_slots
            assert ("SET_MEM_TABLE" in session.seen) != mem_slots
    finally:
        disk.close()


_RECONNECTING = find_reconnecting_qemu()  # QEMU 10 beside the system 7.2 (scripts/setup unpacks it), or why not
QEMU_RECONNECT = None if isinstance(_RECONNECTING, str) else _RECONNECTING.binary


@pytest.mark.guest
@pytest.mark.skipif(not QEMU_RECONNECT, reason=f"no QEMU that reconnects: {_RECONNECTING}")
def test_qemu_reconnects_to_a_new_back_end_with_the_inflight_area(tmp_path) -> None:
    """The back end dies after boot; QEMU reconnects to a fresh Session, hands back the in-flight area it got
    from the first one (SET_INFLIGHT_FD without a new GET), and the request ring restarts where it was."""
    disk = RamdiskBackstore("disk0", 1 << 20)
    try:
        with qemu_peer(tmp_path, QEMU_RECONNECT, reconnect=True) as peer:
            port = lun0_port(disk)
            first, pump1 = peer.serve({1: port})
            assert wait_for(peer.booted, 60), peer.console.read_bytes()[-300:]
            taken = first.rings[2].vq.last_avail_idx
            assert taken > 0 and "GET_INFLIGHT_FD" in first.seen
            pump1.stop()  # the back end "dies": its end of the socket closes
            second, pump2 = peer.serve({1: port})
            assert wait_for(lambda: second.rings[2].vq is not None and "SET_VRING_ENABLE" in second.seen, 30)
            assert "SET_INFLIGHT_FD" in second.seen and "GET_INFLIGHT_FD" not in second.seen
            assert second.rings[2].vq.last_avail_idx == taken  # restarted at the used index, nothing in flight
            assert pump2.error is None and pump2.protocol_error is None
    finally:
        disk.close()
