"""A back end dies with requests taken from the ring but not completed; a new one, given the same in-flight
area (INFLIGHT_SHMFD) by the reconnecting front end, finishes them. Nothing is lost and nothing runs twice."""

from __future__ import annotations

import socket
import struct
import threading

from hostdriver_pump import Harness, Pump

from vhostscsi.backstores.ramdisk import RamdiskBackstore
from vhostscsi.hostdriver.frontend import FrontEnd
from vhostscsi.scsi import Device, TargetPort
from vhostscsi.vhost_user.session import Session
from vhostscsi.virtio import scsi as vs
from vhostscsi.virtio.scsi import VirtioScsi


class Crash(BaseException):
    """Not an Exception: nothing in the data path may catch it, as nothing survives a SIGKILL."""


class FreezingPort:
    """Forwards to a real port, but the first READ(10) blocks until released and then 'kills' the process."""

    def __init__(self, port: TargetPort) -> None:
        self.port = port
        self.entered = threading.Event()
        self.release = threading.Event()
        self.frozen = False

    def __getattr__(self, name: str):
        return getattr(self.port, name)

    def execute(self, nexus, lun, cdb, data_out, data_in):
        if cdb[0] == 0x28 and not self.frozen:
            self.frozen = True
            self.entered.set()
            self.release.wait(30)
            raise Crash()
        return self.port.execute(nexus, lun, cdb, data_out, data_in)


def read10(lba: int, n: int) -> bytes:
    return bytes([0x28, 0]) + struct.pack(">IBHB", lba, 0, n, 0)


def write10(lba: int, n: int) -> bytes:
    return bytes([0x2A, 0]) + struct.pack(">IBHB", lba, 0, n, 0)


def test_requests_in_flight_survive_a_back_end_restart() -> None:
    disk = RamdiskBackstore("disk0", 1 << 20)
    disk.writev(7 * 512, [memoryview(b"\x5a" * 512)])
    port = TargetPort("naa.5001405000000001", 1)
    port.add_lun(0, Device(disk, "disk0", "0f4a9bd8-5c3e-4f11-9d8e-000000000000"))
    freezing = FreezingPort(port)
    h1 = Harness({1: freezing})
    pump2 = None
    try:
        init = h1.init
        init.start(inflight=True)
        init.command(bytes(6))  # TEST UNIT READY: any unit attention is consumed before the real test
        head_a, resp_a, din_a = init.submit(read10(7, 1), data_in_len=512)
        head_b, resp_b, _ = init.submit(write10(9, 1), data_out=b"\xa5" * 512)
        init.kick(2, force=True)
        assert freezing.entered.wait(10), "the first back end never took the request"

        # the front end reconnects to a fresh back end process (new Session, new device, same LUNs)
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pump2 = Pump(b, Session(num_queues=3), VirtioScsi({1: port}, nexus={1: "naa.5001405000000001"}))
        pump2.start()
        old_fe = init.fe
        init.reconnect(FrontEnd(a, timeout=10))
        old_fe.close()

        used_a = init.wait(2, head_a, timeout=10)
        used_b = init.wait(2, head_b, timeout=10)
        assert used_a.length == vs.RESP_SIZE + 512 and used_b.length == vs.RESP_SIZE
        assert init.ram.read(resp_a, 12)[10:12] == bytes([0, vs.S_OK])  # status GOOD, response OK
        assert init.ram.read(din_a, 512) == b"\x5a" * 512
        out = bytearray(512)
        disk.readv(9 * 512, [memoryview(out)])
        assert out == b"\xa5" * 512
        # the new back end continues normally, and nothing was completed twice
        assert init.command(read10(9, 1), data_in_len=512).data == b"\xa5" * 512
        assert init.rings[2].used_idx() == 4 and pump2.error is None
    finally:
        freezing.release.set()
        h1.pump.join(5)  # the "dead" back end finally raises Crash and its thread ends without pushing
        assert isinstance(h1.pump.error, Crash)
        h1.fe.close()
        h1.ram.close()
        if pump2 is not None:
            init.fe.close()
            pump2.stop()
        disk.close()
