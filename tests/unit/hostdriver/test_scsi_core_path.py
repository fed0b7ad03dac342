"""The whole lower data path with real parts: host-side driver -> socket -> Session -> rings -> VirtioScsi ->
the SCSI core -> a ramdisk and a fileio backstore on a real file, and back into guest memory."""

from __future__ import annotations

import os
import struct

import pytest

from vhostscsi.backstores.fileio import FileIOBackstore
from vhostscsi.backstores.ramdisk import RamdiskBackstore
from vhostscsi.scsi import Device, TargetPort
from vhostscsi.virtio import scsi as vs

INQUIRY = bytes([0x12, 0, 0, 0, 96, 0])
READ_CAPACITY_10 = bytes([0x25]) + bytes(9)
REPORT_LUNS = bytes([0xA0, 0, 0, 0, 0, 0]) + struct.pack(">I", 256) + bytes(2)
TEST_UNIT_READY = bytes(6)


def read10(lba: int, n: int) -> bytes:
    return bytes([0x28, 0]) + struct.pack(">IBHB", lba, 0, n, 0)


def write10(lba: int, n: int) -> bytes:
    return bytes([0x2A, 0]) + struct.pack(">IBHB", lba, 0, n, 0)


@pytest.fixture
def port(tmp_path):
    ram = RamdiskBackstore("disk0", 1 << 20)
    path = tmp_path / "disk1.img"
    with open(path, "wb") as f:
        f.truncate(2 << 20)
    fio = FileIOBackstore("disk1", str(path), 2 << 20, write_back=False)
    p = TargetPort("naa.5001405000000001", 1)
    p.add_lun(0, Device(ram, "disk0", "0f4a9bd8-5c3e-4f11-9d8e-000000000000"))
    p.add_lun(1, Device(fio, "disk1", "0f4a9bd8-5c3e-4f11-9d8e-000000000001"))
    yield p, path
    ram.close()
    fio.close()


def clear_unit_attention(h, lun: int) -> None:
    """A fresh LUN reports POWER ON/RESET once, as LIO does; take it out of the way."""
    for _ in range(3):
        if h.init.command(TEST_UNIT_READY, lun=lun).status == 0:
            return


def test_inquiry_capacity_and_luns(harness_factory, port) -> None:
    p, _ = port
    h = harness_factory({1: p})
    h.init.start()
    r = h.init.command(INQUIRY, data_in_len=96)
    assert r.response == vs.S_OK and r.status == 0
    assert r.data[8:16] == b"LIO-ORG " and r.data[16:21] == b"disk0"
    assert r.resid == 96 - (r.data[4] + 5) and r.used_len == vs.RESP_SIZE + r.data[4] + 5
    clear_unit_attention(h, 0)
    r = h.init.command(READ_CAPACITY_10, data_in_len=8)
    assert struct.unpack(">II", r.data) == ((1 << 20) // 512 - 1, 512)
    r = h.init.command(REPORT_LUNS, data_in_len=256)
    assert r.data[:4] == struct.pack(">I", 16) and r.data[8:24] == bytes(8) + bytes([0, 1]) + bytes(6)


def test_write_then_read_back_through_guest_memory(harness_factory, port) -> None:
    p, path = port
    h = harness_factory({1: p})
    h.init.start()
    clear_unit_attention(h, 1)
    payload = os.urandom(8 * 512)
    w = h.init.command(write10(10, 8), lun=1, data_out=payload)
    assert (w.response, w.status, w.resid) == (vs.S_OK, 0, 0)
    with open(path, "rb") as f:
        f.seek(10 * 512)
        assert f.read(len(payload)) == payload  # it really reached the file
    r = h.init.command(read10(10, 8), lun=1, data_in_len=len(payload))
    assert r.status == 0 and r.data == payload and r.used_len == vs.RESP_SIZE + len(payload)


def test_read_past_end_gets_sense_through_virtio(harness_factory, port) -> None:
    p, _ = port
    h = harness_factory({1: p})
    h.init.start()
    clear_unit_attention(h, 0)
    r = h.init.command(read10(2048, 1), data_in_len=512)  # LBA 2048 is one past the 1 MiB ramdisk
    assert r.response == vs.S_OK and r.status == 2
    assert r.sense[2] & 0xF == 5 and r.sense[12] == 0x21  # ILLEGAL REQUEST, LBA OUT OF RANGE
    assert r.resid == 0 and len(r.sense) == 96  # as kernel vhost-scsi: LIO failed it before any transfer


def test_unknown_lun_and_lun_reset(harness_factory, port) -> None:
    p, _ = port
    h = harness_factory({1: p})
    h.init.start()
    r = h.init.command(INQUIRY, lun=7, data_in_len=96)
    assert r.status == 2 and r.sense[12] == 0x25  # LOGICAL UNIT NOT SUPPORTED, as LIO for a LUN other than 0
    assert h.init.tmf(vs.T_TMF_LOGICAL_UNIT_RESET, lun=0) == vs.S_FUNCTION_COMPLETE
    assert h.init.tmf(vs.T_TMF_LOGICAL_UNIT_RESET, lun=7) == vs.S_INCORRECT_LUN
    r = h.init.command(TEST_UNIT_READY)
    assert r.status == 2 and r.sense[12] == 0x29  # the reset shows up as a unit attention


def test_several_request_queues_share_the_luns(harness_factory, port) -> None:
    p, _ = port
    h = harness_factory({1: p}, request_queues=3)
    h.init.start()
    assert h.fe.queue_num == 5 and all(h.device.queues[q] is not None for q in range(5))
    clear_unit_attention(h, 0)
    for q in (2, 3, 4):
        block = bytes([q]) * 512
        assert h.init.command(write10(q, 1), data_out=block, queue=q).status == 0
    for q in (4, 3, 2):  # read back each block through a different queue than wrote it
        other = 2 + (q - 1) % 3
        assert h.init.command(read10(q, 1), data_in_len=512, queue=other).data == bytes([q]) * 512
    assert all(h.init.rings[q].used_idx() >= 2 for q in (2, 3, 4))  # every queue carried traffic
