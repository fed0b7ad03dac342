"""READ/WRITE through virtio-scsi on a real block device (a loop device, O_DIRECT), on both request-queue paths.

Why apart from the equivalence test: the block backstore is the one whose fd refuses some buffers (O_DIRECT wants
them aligned), and the C path must then hand the request back so that `BlockBackstore.readv`/`writev` bounce it.
A counting wrapper on the backstore's own readv/writev tells which path moved the data: with the C path an
aligned request never reaches them and a misaligned one does; with the pure path both do. The data is checked
against the device itself.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.loop import loop_device
from vhostscsi.backstores.block import BlockBackstore
from vhostscsi.hostdriver.guestram import GuestRam
from vhostscsi.hostdriver.vring import DriverRing
from vhostscsi.scsi import Device, TargetPort
from vhostscsi.virtio import native
from vhostscsi.virtio import scsi as vs
from vhostscsi.virtio.scsi import VirtioScsi, lun_bytes
from vhostscsi.virtio.virtqueue import SplitVirtqueue

pytestmark = pytest.mark.usefixtures("both_paths")  # the C request-queue path and the pure one (conftest.py)

PAGE = 4096
SIZE = 1 << 20
NEXUS = "naa.5001405000000001"


class Counted:
    """How often the backstore's own data methods ran (the Python path), per direction."""

    def __init__(self, disk: BlockBackstore) -> None:
        self.reads = self.writes = 0
        real_readv, real_writev = disk.readv, disk.writev

        def readv(offset, bufs):  # type: ignore[no-untyped-def]
            self.reads += 1
            return real_readv(offset, bufs)

        def writev(offset, bufs, fua=False):  # type: ignore[no-untyped-def]
            self.writes += 1
            return real_writev(offset, bufs, fua)

        disk.readv = readv  # type: ignore[method-assign]
        disk.writev = writev  # type: ignore[method-assign]


class World:
    def __init__(self, dev_path: str) -> None:
        self.dev_path = dev_path
        self.disk = BlockBackstore("blk", dev_path)
        self.count = Counted(self.disk)
        port = TargetPort("naa.5001405000000009", 1)
        port.add_lun(0, Device(self.disk, "blk", "0f4a9bd8-5c3e-4f11-9d8e-000000000001", write_back=True))
        self.ram = GuestRam(64 * PAGE)
        self.ring = DriverRing(self.ram, 16, event_idx=True)
        d, u, a = self.ring.uvas()
        self.vs = VirtioScsi({1: port}, nexus={1: NEXUS})
        self.vs.set_queue(2, SplitVirtqueue.from_uva(self.ram.backend_memory(), 16, d, a, u, event_idx=True))
        self.hdr = self.ram.alloc(64)
        self.resp = self.ram.alloc(vs.RESP_SIZE)
        self.data = self.ram.alloc(4 * PAGE, PAGE)

    def request(self, cdb: bytes, *, write: bytes = b"", read: int = 0, skew: int = 0) -> tuple[int, int, int, bytes]:
        """One command with its data buffer `skew` bytes past a page boundary: (status, response, used length,
        data read)."""
        self.ram.write(self.hdr, lun_bytes(1, 0) + struct.pack("<QBBB", 1, 0, 0, 0) + cdb.ljust(32, b"\0"))
        buf = self.data + skew
        out, ins = [(self.hdr, vs.REQ_SIZE)], [(self.resp, vs.RESP_SIZE)]
        if write:
            self.ram.write(buf, write)
            out.append((buf, len(write)))
        if read:
            ins.append((buf, read))
        self.ring.add(out, ins, indirect=True)
        assert self.vs.process(2) == 1
        (used,) = self.ring.get_used()
        _sl, _resid, _q, status, response = struct.unpack("<IIHBB", self.ram.read(self.resp, 12))
        return status, response, used.length, self.ram.read(buf, read) if read else b""

    def on_device(self, offset: int, n: int) -> bytes:
        fd = os.open(self.dev_path, os.O_RDONLY)
        try:
            return os.pread(fd, n, offset)
        finally:
            os.close(fd)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with loop_device(tmp_path / "blk.img", SIZE) as dev:
        w = World(dev)
        w.request(bytes(6))  # TEST UNIT READY: the first command establishes the I_T nexus (the C path
        # declines a LUN whose nexus is not there yet, as execute_fast does)
        try:
            yield w
        finally:
            w.disk.close()
            w.ram.close()


def rw10(opcode: int, lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", opcode, 0, lba, 0, blocks, 0)


@pytest.mark.parametrize("skew", [0, 1], ids=["aligned", "misaligned"])
def test_write_then_read_on_a_block_device(world: World, skew: int) -> None:
    pattern = bytes((i * 7 + skew) & 0xFF for i in range(2 * PAGE))
    lba = 24  # 512-byte blocks: byte 12288
    assert world.request(rw10(0x2A, lba, 16), write=pattern, skew=skew)[:3] == (0, vs.S_OK, vs.RESP_SIZE)
    assert world.on_device(lba * 512, len(pattern)) == pattern
    status, response, used, data = world.request(rw10(0x28, lba, 16), read=len(pattern), skew=skew)
    assert (status, response, used, data) == (0, vs.S_OK, vs.RESP_SIZE + len(pattern), pattern)
    # which path moved the bytes: the C one takes the aligned request itself; O_DIRECT refuses the misaligned
    # buffer, and then (as on the pure path) the backstore's own readv/writev bounce it
    by_python = 0 if native.AVAILABLE and skew == 0 else 1
    assert (world.count.writes, world.count.reads) == (by_python, by_python)


def test_a_range_past_the_end_is_answered_by_python(world: World) -> None:
    status, response, used, _ = world.request(rw10(0x28, SIZE // 512 - 1, 2), read=1024)
    assert (status, response, used) == (2, vs.S_OK, vs.RESP_SIZE)  # CHECK CONDITION (LBA out of range), from the SCSI core
    assert (world.count.writes, world.count.reads) == (0, 0)
