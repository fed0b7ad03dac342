"""READ/WRITE (6/10/12/16), transfer-length rules, write protection, on real backstores."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest

from vhostscsi.scsi import Device
from tests.unit.scsi.helpers import (NEXUS, cdb10, cdb16, fileio, port_with, ramdisk, run)


@pytest.fixture(params=["ramdisk", "fileio"])
def dev(request: pytest.FixtureRequest, tmp_path: Path) -> Device:
    if request.param == "ramdisk":
        return ramdisk(size=1 << 20)
    return fileio(str(tmp_path / "disk.img"), size=1 << 20)


def _pattern(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def test_write_then_read_round_trip_all_sizes(dev: Device) -> None:
    p = port_with(dev)
    for i, (w, r) in enumerate([
        (bytes([0x0A, 0, 0, 8, 8, 0]), bytes([0x08, 0, 0, 8, 8, 0])),
        (cdb10(0x2A, 16, 8), cdb10(0x28, 16, 8)),
        (struct.pack(">BBIIBB", 0xAA, 0, 32, 8, 0, 0), struct.pack(">BBIIBB", 0xA8, 0, 32, 8, 0, 0)),
        (cdb16(0x8A, 2040, 8), cdb16(0x88, 2040, 8)),
    ]):
        payload = _pattern(4096, i)
        assert run(p, w, dout=payload).status == 0
        a = run(p, r, alloc=4096)
        assert a.status == 0 and a.result.data_in_len == 4096 and a.data == payload


def test_read_scatters_into_several_guest_buffers(dev: Device) -> None:
    p = port_with(dev)
    payload = _pattern(8192, 7)
    assert run(p, cdb10(0x2A, 100, 16), dout=payload).status == 0
    bufs = [bytearray(100), bytearray(4000), bytearray(4092)]
    r = p.execute(NEXUS, 0, cdb10(0x28, 100, 16), [], [memoryview(b) for b in bufs])
    assert r.status == 0 and r.data_in_len == 8192 and b"".join(bufs) == payload


def test_lba_out_of_range(dev: Device) -> None:
    p = port_with(dev)
    assert run(p, cdb10(0x28, 2047, 1), alloc=512).status == 0
    a = run(p, cdb10(0x28, 2047, 2), alloc=1024)
    assert a.key_asc == (5, 0x21, 0) and a.result.data_in_len == 0
    assert run(p, cdb16(0x8A, 2**64 - 1, 1), dout=bytes(512)).key_asc == (5, 0x21, 0)
    assert run(p, bytes([0x08, 0x1F, 0xFF, 0xFF, 1, 0]), alloc=512).key_asc == (5, 0x21, 0)


def test_read_underflow_and_overflow(dev: Device) -> None:
    """As LIO 6.1: a buffer shorter than the transfer is INVALID FIELD IN CDB; a longer one is
    served by ramdisk/block and fails on fileio (LOGICAL UNIT COMMUNICATION FAILURE)."""
    p = port_with(dev)
    payload = _pattern(1024, 3)
    run(p, cdb10(0x2A, 0, 2), dout=payload)
    a = run(p, cdb10(0x28, 0, 1), alloc=4096)
    if dev.plugin == "fileio":
        assert a.key_asc == (2, 0x08, 0)
    else:
        assert a.status == 0 and a.result.data_in_len == 512 and a.data == payload[:512]
    assert run(p, cdb10(0x28, 0, 2), alloc=700).key_asc == (5, 0x24, 0)
    assert run(p, cdb10(0x28, 0, 2)).key_asc == (5, 0x24, 0)


def test_write_with_wrong_data_out_length_is_refused(dev: Device) -> None:
    p = port_with(dev)
    a = run(p, cdb10(0x2A, 0, 2), dout=bytes(512))
    assert a.key_asc == (5, 0x0E, 0x03)
    assert run(p, cdb10(0x2A, 0, 1), dout=bytes(1024)).key_asc == (5, 0x0E, 0x03)


def test_fua_and_dpo_need_write_back(tmp_path: Path) -> None:
    wb = port_with(ramdisk(write_back=True))
    assert run(wb, cdb10(0x2A, 0, 1, b1=0x18), dout=bytes(512)).status == 0
    wt = port_with(ramdisk(write_back=False))
    assert run(wt, cdb10(0x2A, 0, 1, b1=0x08), dout=bytes(512)).key_asc == (5, 0x24, 0)
    assert run(wt, cdb10(0x28, 0, 1, b1=0x10), alloc=512).key_asc == (5, 0x24, 0)
    assert run(wt, cdb10(0x2A, 0, 1), dout=bytes(512)).status == 0


def test_protect_bits_are_invalid_without_pi() -> None:
    p = port_with(ramdisk())
    assert run(p, cdb10(0x28, 0, 1, b1=0x20), alloc=512).key_asc == (5, 0x24, 0)


def test_write_protected_lun_refuses_any_data_out() -> None:
    dev = ramdisk()
    p = port_with(dev, write_protect=True)
    a = run(p, cdb10(0x2A, 0, 1), dout=_pattern(512, 1))
    assert a.key_asc == (7, 0x27, 0)
    assert run(p, cdb10(0x28, 0, 1), alloc=512).data == bytes(512)
    assert run(p, [0x00, 0, 0, 0, 0, 0]).status == 0


def test_fileio_write_reaches_the_file(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    p = port_with(fileio(str(path), write_back=False))
    payload = _pattern(512, 9)
    assert run(p, cdb10(0x2A, 3, 1), dout=payload).status == 0
    with open(path, "rb") as f:
        f.seek(3 * 512)
        assert f.read(512) == payload


def test_report_luns_and_unknown_luns() -> None:
    dev = ramdisk()
    p = port_with(dev)
    p.add_lun(3, ramdisk(name="d3"))
    a = run(p, [0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 0, 0], alloc=255)
    assert a.data == bytes([0, 0, 0, 16, 0, 0, 0, 0]) + bytes(8) + bytes([0, 3]) + bytes(6)
    assert run(p, [0x00] * 6, lun=5).key_asc == (5, 0x25, 0)
    p.remove_lun(0)
    inq = run(p, [0x12, 0, 0, 0, 96, 0], lun=0, alloc=96)
    assert inq.status == 0 and inq.data[0] == 0x3F and inq.data[16:32] == b"RAMDISK-MCP     "
    assert run(p, cdb10(0x2A, 0, 1), dout=bytes(512), lun=0).key_asc == (7, 0x27, 0)
    assert run(p, [0, 0, 0, 0, 0, 0], lun=0).key_asc == (5, 0x25, 0)
    assert run(p, [0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 0, 0], alloc=255).data[8:10] == bytes([0, 3])


def test_unknown_opcode_and_empty_cdb() -> None:
    p = port_with(ramdisk())
    assert run(p, [0x1E, 0, 0, 0, 1, 0]).key_asc == (5, 0x20, 0)  # PREVENT ALLOW: not in LIO
    assert run(p, [0xC0] + [0] * 15).key_asc == (5, 0x20, 0)
    r = p.execute(NEXUS, 0, b"", [], [])
    assert r.status == 2 and r.sense[12] == 0x24


def test_data_path_hands_the_guest_buffers_to_the_backstore_uncopied() -> None:
    """READ and WRITE pass the very buffer list (or views of it) to the backstore."""
    from tests.unit.scsi.helpers import RecordingBackstore, SERIAL

    seen: list[object] = []

    class Spy(RecordingBackstore):
        def readv(self, offset: int, bufs: list[memoryview]) -> None:  # type: ignore[override]
            seen.append(bufs)
            super().readv(offset, bufs)

        def writev(self, offset: int, bufs: list[memoryview], fua: bool = False) -> None:  # type: ignore[override]
            seen.append(bufs)
            super().writev(offset, bufs, fua)

    dev = Device(Spy(1 << 20), "d", SERIAL, {}, True)
    p = port_with(dev)
    out = [memoryview(bytearray(b"\x07" * 4096))]
    assert p.execute(NEXUS, 0, cdb10(0x2A, 8, 8), out, []).status == 0
    assert seen[-1] is out
    din = [memoryview(bytearray(2048)), memoryview(bytearray(2048))]
    assert p.execute(NEXUS, 0, cdb10(0x28, 8, 8), [], din).status == 0
    assert seen[-1] is din and bytes(din[1]) == b"\x07" * 2048


def test_write_through_passes_fua_to_the_backstore() -> None:
    """Without a write-back cache every WRITE must be durable on return: fua=True."""
    from tests.unit.scsi.helpers import RecordingBackstore, SERIAL

    fuas: list[bool] = []

    class Spy(RecordingBackstore):
        def writev(self, offset: int, bufs: list[memoryview], fua: bool = False) -> None:  # type: ignore[override]
            fuas.append(fua)
            super().writev(offset, bufs, fua)

    for write_back, attrs, b1, want in [(True, {}, 0, False), (True, {}, 0x08, True),
                                        (False, {}, 0, True),
                                        (True, {"emulate_write_cache": 0}, 0, True)]:
        p = port_with(Device(Spy(1 << 20), "d", SERIAL, attrs, write_back))
        assert run(p, cdb10(0x2A, 0, 1, b1=b1), dout=bytes(512)).status == 0
        assert fuas[-1] is want


def test_residual_follows_lio() -> None:
    """residual is LIO's residual_count: the CDB/buffer gap, 0 if refused before the check."""
    p = port_with(ramdisk())
    assert run(p, cdb10(0x28, 0, 1), alloc=4096).result.residual == 3584  # underflow
    assert run(p, cdb10(0x28, 0, 2), alloc=512).result.residual == 512  # overflow, refused
    assert run(p, cdb10(0x28, 4096, 1), alloc=512).result.residual == 0  # refused before
    assert run(p, cdb10(0x2F, 0, 8)).result.residual == 4096  # VERIFY: overflow of nothing
    inq = run(p, [0x12, 0, 0, 0, 255, 0], alloc=96)
    assert inq.result.data_in_len == 96 and inq.result.residual == 159  # alloc > buffer
    inq = run(p, [0x12, 0, 0, 0, 255, 0], alloc=255)
    assert inq.result.data_in_len == 96 and inq.result.residual == 159  # shorter answer
    assert run(p, [0, 0, 0, 0, 0, 0], alloc=64).result.residual == 64
    assert run(p, cdb10(0x28, 0, 8), alloc=4096).result.residual == 0
