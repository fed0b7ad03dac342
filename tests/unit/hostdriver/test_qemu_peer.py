"""Real QEMU as the front end: its vhost-user-scsi-pci talks to Session + VirtioScsi, and SeaBIOS drives the
request queue (it probes every target before any kernel runs), so no guest kernel is needed to check that the
protocol and the rings work with the real peer."""

from __future__ import annotations

import contextlib
import pathlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from conftest import Pump
from vhostscsi.backstores.ramdisk import RamdiskBackstore
from vhostscsi.scsi import Device, TargetPort
from vhostscsi.vhost_user import codec
from vhostscsi.vhost_user.codec import Message
from vhostscsi.vhost_user.protocol import Request
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


@contextlib.contextmanager
def qemu_peer(tmp_path, ports) -> Iterator[tuple[RecordingSession, Pump, pathlib.Path]]:
    """QEMU (firmware only, TCG) connected to a Session + VirtioScsi over `ports`; yields the console path."""
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    path = str(tmp_path / "vhost.sock")
    console = tmp_path / "console.txt"
    ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ls.bind(path)
    ls.listen(1)
    ls.settimeout(30)
    proc = subprocess.Popen(
        [QEMU, "-accel", "tcg", "-smp", "1", "-m", "128", "-nodefaults", "-display", "none",
         "-serial", f"file:{console}",
         "-object", "memory-backend-memfd,id=mem,size=128M,share=on", "-machine", "pc,memory-backend=mem",
         "-chardev", f"socket,id=c0,path={path}", "-device", "vhost-user-scsi-pci,chardev=c0"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "qemu.err", "w"),
    )
    pump = None
    try:
        conn, _ = ls.accept()
        session = RecordingSession(num_queues=3)
        pump = Pump(conn, session, VirtioScsi(ports))
        pump.start()
        yield session, pump, console
    finally:
        proc.kill()
        proc.wait()
        if pump is not None:
            pump.stop()
        ls.close()


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
    with qemu_peer(tmp_path, ports) as (session, pump, _console):
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
def test_seabios_boots_from_our_lun(tmp_path) -> None:
    """Firmware finds TPG 1 LUN 0, reads its boot sector through our rings and runs it."""
    disk = RamdiskBackstore("disk0", 1 << 20)
    disk.writev(0, [memoryview(boot_sector(b"VHOSTSCSI-BOOT-OK\r\n"))])
    port = TargetPort("naa.5001405000000001", 1)
    port.add_lun(0, Device(disk, "disk0", "0f4a9bd8-5c3e-4f11-9d8e-000000000000"))
    try:
        with qemu_peer(tmp_path, {1: port}) as (_session, pump, console):
            booted = wait_for(lambda: console.exists() and b"VHOSTSCSI-BOOT-OK" in console.read_bytes(), 60)
            assert pump.error is None and pump.protocol_error is None
            assert booted, f"no boot message on the console: {console.read_bytes()[-300:]!r}"
    finally:
        disk.close()
