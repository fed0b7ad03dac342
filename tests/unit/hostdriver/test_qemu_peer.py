"""Real QEMU as the front end: its vhost-user-scsi-pci talks to Session + VirtioScsi, and SeaBIOS drives the
request queue (it probes every target before any kernel runs), so no guest kernel is needed to check that the
protocol and the rings work with the real peer."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from conftest import Pump
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


@pytest.fixture
def qemu_peer(tmp_path) -> Iterator[tuple[RecordingSession, CountingPorts, Pump]]:
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    path = str(tmp_path / "vhost.sock")
    ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ls.bind(path)
    ls.listen(1)
    ls.settimeout(30)
    proc = subprocess.Popen(
        [QEMU, "-accel", "tcg", "-smp", "1", "-m", "128", "-nodefaults", "-display", "none",
         "-serial", f"file:{tmp_path / 'console.txt'}",
         "-object", "memory-backend-memfd,id=mem,size=128M,share=on", "-machine", "pc,memory-backend=mem",
         "-chardev", f"socket,id=c0,path={path}", "-device", "vhost-user-scsi-pci,chardev=c0"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "qemu.err", "w"),
    )
    pump = None
    try:
        conn, _ = ls.accept()
        session = RecordingSession(num_queues=3)
        ports = CountingPorts()
        pump = Pump(conn, session, VirtioScsi(ports))
        pump.start()
        yield session, ports, pump
    finally:
        proc.kill()
        proc.wait()
        if pump is not None:
            pump.stop()
        ls.close()


@pytest.mark.guest
def test_seabios_probes_every_target_through_our_rings(qemu_peer) -> None:
    session, ports, pump = qemu_peer
    deadline = time.monotonic() + 90
    while "GET_VRING_BASE" not in session.seen and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pump.error is None and pump.protocol_error is None
    # QEMU 7.2's start sequence, with our protocol features (in-flight area, reset, reply-ack) in use
    for name in ("GET_PROTOCOL_FEATURES", "SET_PROTOCOL_FEATURES", "GET_QUEUE_NUM", "GET_INFLIGHT_FD",
                 "SET_INFLIGHT_FD", "SET_MEM_TABLE", "SET_VRING_KICK", "SET_VRING_ENABLE", "GET_VRING_BASE"):
        assert name in session.seen, f"{name} never arrived: {session.seen}"
    # SeaBIOS scans targets 0..255 at LUN 0; each reached the device as lun[1] and got BAD_TARGET back
    assert sorted(set(ports.asked)) == list(range(256))
    assert session.bases == [(2, 256)]  # the request queue stopped with all 256 requests taken and answered
