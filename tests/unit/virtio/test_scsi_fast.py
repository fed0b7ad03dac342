"""virtio-scsi over the real SCSI core: requests that take `TargetPort.execute_fast` get, byte for byte, the
responses, data and disk contents that the same requests get through `execute_general` alone.

The general-path device is given a wrapper port that intercepts `execute` (as tests that freeze or fail commands
do) and runs only the general path: the wrapper sees every command, and the comparison is between the two paths.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vhostscsi.backstores.ramdisk import RamdiskBackstore
from vhostscsi.hostdriver.guestram import GuestRam
from vhostscsi.hostdriver.vring import DriverRing
from vhostscsi.scsi import Device, TargetPort
from vhostscsi.virtio import scsi as vs
from vhostscsi.virtio.scsi import VirtioScsi, lun_bytes
from vhostscsi.virtio.virtqueue import SplitVirtqueue

pytestmark = pytest.mark.usefixtures("both_paths")  # the C request-queue path and the pure one (conftest.py)

PAGE = 4096
BLOCKS = 64
NEXUS = "naa.5001405000000001"


class Intercepting:
    """Sees every command; everything else goes to the real port."""

    def __init__(self, port: TargetPort) -> None:
        self.port = port
        self.seen = 0

    def __getattr__(self, name: str):
        return getattr(self.port, name)

    def execute(self, nexus, lun, cdb, data_out, data_in):
        self.seen += 1
        return self.port.execute_general(nexus, lun, cdb, data_out, data_in)


class Side:
    def __init__(self, general: bool) -> None:
        self.disk = RamdiskBackstore("d0", BLOCKS * 512)
        self.disk.writev(0, [memoryview(bytes(i & 0xFF for i in range(BLOCKS * 512)))])
        self.port = TargetPort("naa.5001405000000009", 1)
        self.dev = Device(self.disk, "d0", "0f4a9bd8-5c3e-4f11-9d8e-000000000000", write_back=True)
        self.port.add_lun(0, self.dev)
        self.front = Intercepting(self.port) if general else self.port
        self.ram = GuestRam(64 * PAGE)
        mem = self.ram.backend_memory()
        self.ring = DriverRing(self.ram, 16, event_idx=True)
        d, u, a = self.ring.uvas()
        self.vs = VirtioScsi({1: self.front}, nexus={1: NEXUS})
        self.vs.set_queue(2, SplitVirtqueue.from_uva(mem, 16, d, a, u, event_idx=True))
        self.hdr = self.ram.alloc(64)
        self.resp = self.ram.alloc(vs.RESP_SIZE)
        self.data = self.ram.alloc(16 * 512, PAGE)

    def request(self, cdb: bytes, dout: bytes, din: int, indirect: bool, lun: int = 0) -> tuple[bytes, bytes, int]:
        self.ram.write(self.hdr, lun_bytes(1, lun) + struct.pack("<QBBB", 9, 0, 0, 0) + cdb.ljust(32, b"\0"))
        self.ram.write(self.resp, b"\xee" * vs.RESP_SIZE)  # stale bytes: what the device leaves must match too
        self.ram.write(self.data, b"\xdd" * 16 * 512)
        out = [(self.hdr, vs.REQ_SIZE)]
        ins = [(self.resp, vs.RESP_SIZE)]
        if dout:
            self.ram.write(self.data, dout)
            out.append((self.data, len(dout)))
        elif din:
            ins.append((self.data, din))
        self.ring.add(out, ins, indirect=indirect)
        assert self.vs.process(2) == 1
        (used,) = self.ring.get_used()
        return self.ram.read(self.resp, vs.RESP_SIZE), self.ram.read(self.data, 16 * 512), used.length


def cdb_rw(write: bool, long: bool, lba: int, n: int, b1: int) -> bytes:
    if long:
        return struct.pack(">BBQIBB", 0x8A if write else 0x88, b1, lba, n, 0, 0)
    return struct.pack(">BBIBHB", 0x2A if write else 0x28, b1, lba & 0xFFFFFFFF, 0, n & 0xFFFF, 0)


REQUEST = st.tuples(
    st.booleans(), st.booleans(), st.one_of(st.integers(0, BLOCKS + 2), st.just(2**32 - 1)),
    st.integers(0, 9), st.sampled_from([0, 0, 0, 0x08, 0x10, 0x20, 0x02]),
    st.sampled_from(["exact", "exact", "short", "long", "none"]), st.booleans(), st.sampled_from([0, 0, 0, 1]),
    st.sampled_from([None, None, None, None, "lun_reset", "reserve_other", "release_other", "offline", "online"]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(REQUEST, min_size=1, max_size=12))
def test_fast_and_general_paths_answer_alike(requests: list[tuple]) -> None:
    fast, general = Side(False), Side(True)
    for side in (fast, general):  # the power-on state of the nexus: established, no unit attention
        side.request(bytes(6), b"", 0, True)
    for write, long, lba, n, b1, layout, indirect, lun, event in requests:
        for side in (fast, general):
            if event == "lun_reset":
                side.port.lun_reset(NEXUS, 0)
            elif event in ("reserve_other", "release_other"):
                side.port.execute("naa.5001405000000077", 0, bytes([0x16 if event == "reserve_other"
                                                                     else 0x17]).ljust(32, b"\0"), [], [])
            elif event == "offline":
                side.dev.set_offline("gone")
            elif event == "online":
                side.dev.set_online()
        size = {"exact": n * 512, "short": max(0, n * 512 - 512), "long": n * 512 + 512, "none": 0}[layout]
        size = min(size, 16 * 512)
        payload = bytes((lba * 7 + i) & 0xFF for i in range(size)) if write else b""
        cdb = cdb_rw(write, long, lba, n, b1)
        a = fast.request(cdb, payload, 0 if write else size, indirect, lun)
        b = general.request(cdb, payload, 0 if write else size, indirect, lun)
        assert a == b, (cdb.hex(), layout, event)
    assert bytes(fast.disk._mem) == bytes(general.disk._mem)
    assert general.front.seen == len(requests) + 1  # the wrapper saw every command: no fast path around it


def test_plain_reads_take_the_fast_path() -> None:
    side = Side(False)
    side.request(bytes(6), b"", 0, True)
    calls = []
    real = TargetPort.execute_general
    try:
        TargetPort.execute_general = lambda self, *a: calls.append(a) or real(self, *a)  # type: ignore[method-assign]
        resp, data, used = side.request(cdb_rw(False, False, 1, 2, 0), b"", 1024, True)
    finally:
        TargetPort.execute_general = real  # type: ignore[method-assign]
    assert not calls and used == vs.RESP_SIZE + 1024
    assert resp[:12] == bytes(12) and resp[12:] == b"\xee" * vs.SENSE_SIZE  # GOOD: no sense written
    assert data[:1024] == bytes(i & 0xFF for i in range(512, 1536))
