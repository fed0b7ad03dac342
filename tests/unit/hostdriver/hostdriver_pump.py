"""A tiny back-end pump for these tests: Session + VirtioScsi behind one end of a real socketpair.

It is the least an engine must do (decode, handle, apply actions, send replies, serve kicks), kept here so the
host-side driver and the sans-I/O layers can be tested together without the daemon. (A uniquely named module,
not conftest.py, so `import` finds it whatever other test directories are collected alongside.)
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Mapping

from vhostscsi.hostdriver.frontend import FrontEnd
from vhostscsi.hostdriver.guestram import GuestRam
from vhostscsi.hostdriver.initiator import ScsiInitiator
from vhostscsi.vhost_user import codec
from vhostscsi.vhost_user.codec import Decoder, ProtocolError
from vhostscsi.vhost_user.session import (
    CallFd,
    ErrFd,
    KickFd,
    RingEnabled,
    RingStarted,
    RingStopped,
    Session,
)
from vhostscsi.virtio.scsi import VirtioScsi


class Pump(threading.Thread):
    def __init__(self, sock: socket.socket, session: Session, device: VirtioScsi) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.session = session
        self.device = device
        self.kick: dict[int, int] = {}
        self.call: dict[int, int] = {}
        self.err: dict[int, int] = {}
        self.enabled: dict[int, bool] = {}
        self.error: BaseException | None = None
        self.protocol_error: str | None = None
        self._stop_r, self._stop_w = os.pipe()
        self.lock = threading.Lock()  # tests post events from their own thread

    def stop(self) -> None:
        os.write(self._stop_w, b"x")
        self.join(5)

    def _swap(self, table: dict[int, int], index: int, fd: int | None) -> None:
        old = table.pop(index, None)
        if old is not None:
            os.close(old)
        if fd is not None:
            table[index] = fd

    def _serve(self, index: int) -> None:
        vq = self.device.queues[index]
        if vq is None or not self.enabled.get(index, True):
            return
        n = self.device.process(index)
        self._signal(index, n)

    def _signal(self, index: int, n: int) -> None:
        vq = self.device.queues[index]
        if vq is None:
            return
        if n and vq.should_notify() and index in self.call:
            os.eventfd_write(self.call[index], 1)
        if vq.broken and index in self.err:
            os.eventfd_write(self.err[index], 1)

    def _apply(self, actions: list[Any]) -> None:
        for a in actions:
            if isinstance(a, KickFd):
                self._swap(self.kick, a.index, a.fd)
            elif isinstance(a, CallFd):
                self._swap(self.call, a.index, a.fd)
                if a.fd is not None:
                    os.eventfd_write(a.fd, 1)  # a completion signalled on the fd this one replaces may be lost
            elif isinstance(a, ErrFd):
                self._swap(self.err, a.index, a.fd)
            elif isinstance(a, RingStarted):
                self.device.set_queue(a.index, a.vq)
                if a.resubmit:
                    self._signal(a.index, self.device.resubmit(a.index, a.resubmit))
                self._serve(a.index)  # buffers may be waiting already (a restart, or a kick before the fd)
            elif isinstance(a, RingStopped):
                self.device.set_queue(a.index, None)
            elif isinstance(a, RingEnabled):
                self.enabled[a.index] = a.enabled

    def run(self) -> None:
        dec = Decoder()
        try:
            while True:
                fds = [self.sock.fileno(), self._stop_r, *self.kick.values()]
                r, _, _ = select.select(fds, [], [], 5)
                if self._stop_r in r:
                    return
                if self.sock.fileno() in r:
                    data, rfds, _f, _a = socket.recv_fds(self.sock, 65536, 16)
                    if not data:
                        return
                    try:
                        msgs = dec.feed(data, rfds)
                    except ProtocolError as e:
                        self.protocol_error = str(e)
                        for fd in dec.take_fds():
                            os.close(fd)
                        return
                    for m in msgs:
                        with self.lock:
                            try:
                                resp = self.session.handle(m)
                            except ProtocolError as e:
                                self.protocol_error = str(e)
                                return
                            self._apply(resp.actions)
                        for rep in resp.replies:
                            data = codec.encode(rep)
                            if rep.fds:
                                socket.send_fds(self.sock, [data], list(rep.fds))
                                for fd in rep.fds:
                                    os.close(fd)
                            else:
                                self.sock.sendall(data)
                for index, fd in list(self.kick.items()):
                    if fd in r:
                        try:
                            os.eventfd_read(fd)
                        except BlockingIOError:
                            continue
                        with self.lock:
                            self._serve(index)
        except BaseException as e:  # surfaced by the fixture: a pump crash is a test failure
            self.error = e
        finally:
            with self.lock:
                self._apply(self.session.close())
            for table in (self.kick, self.call, self.err):
                for fd in table.values():
                    os.close(fd)
                table.clear()
            self.sock.close()

    def post(self, fn_name: str, *args: int) -> None:
        """Call a VirtioScsi event method from the test thread and signal the event queue."""
        with self.lock:
            n = getattr(self.device, fn_name)(*args)
            self._signal(1, n)


class Harness:
    def __init__(self, ports: Mapping[int, Any], *, request_queues: int = 1, ram_size: int = 8 << 20,
                 regions: int = 2, queue_size: int = 64) -> None:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ram = GuestRam(ram_size, regions=regions)
        self.session = Session(num_queues=2 + request_queues)
        self.device = VirtioScsi(ports, nexus={t: f"naa.50014050000000{t:02x}" for t in ports})
        self.pump = Pump(b, self.session, self.device)
        self.pump.start()
        self.fe = FrontEnd(a, timeout=10)
        self.init = ScsiInitiator(self.fe, self.ram, request_queues=request_queues, queue_size=queue_size)

    def close(self) -> None:
        self.fe.close()
        self.pump.stop()
        self.ram.close()


class QemuPeer:
    """A listening socket (tmp_path/vhost.sock), a QEMU started against it (`launch`), and one Pump per connection
    accepted from it (`pump`); `close` kills QEMU, stops the pumps and closes the socket."""

    def __init__(self, tmp_path: Path, *, accept_timeout: float) -> None:
        self.path = str(tmp_path / "vhost.sock")
        self.console = tmp_path / "console.txt"
        self.ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ls.bind(self.path)
        self.ls.listen(1)
        self.ls.settimeout(accept_timeout)
        self.proc: subprocess.Popen[bytes] | None = None
        self.pumps: list[Pump] = []

    def launch(self, cmd: list[str], log: Path) -> None:
        """Start QEMU (`cmd`), its output in `log`."""
        with open(log, "wb") as f:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)

    def pump(self, session: Session, device: VirtioScsi) -> Pump:
        """Accept QEMU's next connection and serve it with a started Pump."""
        conn, _ = self.ls.accept()
        pump = Pump(conn, session, device)
        pump.start()
        self.pumps.append(pump)
        return pump

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        for pump in self.pumps:
            pump.stop()
        self.ls.close()


def wait_console(path: Path, marker: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if marker in text:
            return text
        time.sleep(0.1)
    raise AssertionError(f"guest never printed {marker!r}:\n{path.read_text(errors='replace')[-2000:]}")
