"""Block commands beyond plain READ/WRITE, and round trips on all three backstores."""

from __future__ import annotations

import random
import struct
import threading

from vhostscsi.scsi import Device
from tests.unit.scsi.conftest import aligned
from tests.unit.scsi.helpers import NEXUS, cdb10, cdb16, port_with, ramdisk, run


def _pat(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _unmap_list(*ranges: tuple[int, int]) -> bytes:
    descs = b"".join(struct.pack(">QII", lba, n, 0) for lba, n in ranges)
    return struct.pack(">HH4x", len(descs) + 6, len(descs)) + descs


def _caw(lba: int, n: int = 1, b1: int = 0) -> bytes:
    return struct.pack(">BBQ3xBBB", 0x89, b1, lba, n, 0, 0)


def test_round_trip_write_read_unmap_compare_and_write(anydev: Device) -> None:
    p = port_with(anydev)
    data = _pat(64 * 1024, 1)
    out = aligned(64 * 1024)
    out[:] = data
    r = p.execute(NEXUS, 0, cdb10(0x2A, 128, 128), [out], [])
    assert r.status == 0
    back = aligned(64 * 1024)
    r = p.execute(NEXUS, 0, cdb10(0x28, 128, 128), [], [back[:4096], back[4096:]])
    assert r.status == 0 and r.data_in_len == 65536 and bytes(back) == data
    # UNMAP 8 blocks in the middle: they read back as zeros, their neighbours survive
    assert run(p, [0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], dout=_unmap_list((136, 8))).status == 0
    got = run(p, cdb10(0x28, 128, 24), alloc=24 * 512).data
    assert got[:4096] == data[:4096] and got[4096:8192] == bytes(4096)
    assert got[8192:] == data[8192 : 24 * 512]
    # COMPARE AND WRITE: matching compare writes, mismatching leaves the block alone
    old = data[:512]
    new = _pat(512, 2)
    assert run(p, _caw(128), dout=old + new).status == 0
    assert run(p, cdb10(0x28, 128, 1), alloc=512).data == new
    bad = bytearray(new)
    bad[100] ^= 1
    a = run(p, _caw(128), dout=bytes(bad) + old)
    assert a.key_asc == (0xE, 0x1D, 0) and a.sense[0] == 0xF0 and a.sense[3:7] == (100).to_bytes(4, "big")
    assert run(p, cdb10(0x28, 128, 1), alloc=512).data == new
    # WRITE SAME (16) with a pattern, and with UNMAP
    blk = _pat(512, 3)
    assert run(p, cdb16(0x93, 300, 10), dout=blk).status == 0
    assert run(p, cdb10(0x28, 300, 10), alloc=5120).data == blk * 10
    assert run(p, cdb16(0x93, 300, 5, b1=0x08), dout=bytes(512)).status == 0
    assert run(p, cdb10(0x28, 300, 10), alloc=5120).data == bytes(2560) + blk * 5
    assert run(p, cdb10(0x35, 0, 0)).status == 0


def test_write_same_rules() -> None:
    p = port_with(ramdisk())  # LIO's rd_mcp: max_write_same_len 0
    assert run(p, cdb16(0x93, 0, 1), dout=bytes(512)).key_asc == (5, 0x24, 0)
    from tests.unit.scsi.conftest import TP
    p = port_with(ramdisk(**dict(TP)))
    assert run(p, cdb16(0x93, 0, 0), dout=bytes(512)).key_asc == (5, 0x24, 0)  # WSNZ
    assert run(p, cdb16(0x93, 0, 1, b1=0x02), dout=bytes(512)).key_asc == (5, 0x20, 0)
    assert run(p, cdb16(0x93, 2047, 2), dout=bytes(512)).key_asc == (5, 0x21, 0)
    assert run(p, cdb16(0x93, 0, 4097), dout=bytes(512)).key_asc == (5, 0x24, 0)
    assert run(p, cdb16(0x93, 0, 1, b1=0x10), dout=bytes(512)).key_asc == (5, 0x24, 0)


def _unmap_cdb(param_len: int, b1: int = 0) -> list[int]:
    return [0x42, b1, 0, 0, 0, 0, 0, param_len >> 8, param_len & 0xFF, 0]


def test_unmap_rules(tmp_path: object) -> None:
    from tests.unit.scsi.helpers import fileio
    dev = fileio(str(tmp_path) + "/d.img", emulate_tpu=1, max_unmap_lba_count=8,
                 max_unmap_block_desc_count=1)
    p = port_with(dev)
    assert run(p, _unmap_cdb(24), dout=_unmap_list((0, 9))).key_asc == (5, 0x26, 0)
    assert run(p, _unmap_cdb(40), dout=_unmap_list((0, 1), (2, 1))).key_asc == (5, 0x26, 0)
    assert run(p, _unmap_cdb(24), dout=_unmap_list((2047, 2))).key_asc == (5, 0x21, 0)
    assert run(p, _unmap_cdb(4), dout=bytes(4)).key_asc == (5, 0x1A, 0)
    assert run(p, _unmap_cdb(24, b1=1), dout=_unmap_list((0, 1))).key_asc == (5, 0x24, 0)
    assert run(p, _unmap_cdb(48), dout=_unmap_list((0, 1))).key_asc == (5, 0x24, 0)  # overflow
    assert run(p, _unmap_cdb(0)).status == 0
    no_tpu = port_with(fileio(str(tmp_path) + "/e.img"))
    assert run(no_tpu, _unmap_cdb(24), dout=_unmap_list((0, 1))).key_asc == (5, 0x20, 0)


def test_compare_and_write_rules() -> None:
    p = port_with(ramdisk())
    assert run(p, _caw(0, 2), dout=bytes(2048)).key_asc == (5, 0x24, 0)
    assert run(p, _caw(2048), dout=bytes(1024)).key_asc == (5, 0x21, 0)
    assert run(p, _caw(0), dout=bytes(512)).key_asc == (5, 0x0E, 0x03)
    assert run(p, _caw(0, 0)).status == 0
    off = port_with(ramdisk(emulate_caw=0))
    assert run(off, _caw(0), dout=bytes(1024)).key_asc == (5, 0x20, 0)


def test_compare_and_write_is_atomic_between_threads() -> None:
    """Many threads increment one counter block with COMPARE AND WRITE through two ports:
    with the compare+write atomic, every success is one increment and none is lost."""
    from tests.unit.scsi.helpers import WWN
    from vhostscsi.scsi import TargetPort

    dev = ramdisk()
    ports = [port_with(dev)]
    p2 = TargetPort(WWN, 2, relative_port_id=2)
    p2.add_lun(0, dev)
    ports.append(p2)
    wins = [0] * 4

    def worker(i: int) -> None:
        p = ports[i % 2]
        for _ in range(150):
            cur = run(p, cdb10(0x28, 5, 1), alloc=512).data
            n = int.from_bytes(cur[:8], "big")
            nxt = (n + 1).to_bytes(8, "big") + bytes(504)
            if run(p, _caw(5), dout=cur + nxt).status == 0:
                wins[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = int.from_bytes(run(ports[0], cdb10(0x28, 5, 1), alloc=512).data[:8], "big")
    assert final == sum(wins) and final > 0


def test_sync_cache_verify_start_stop_seek() -> None:
    from tests.unit.scsi.helpers import fileio
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = port_with(fileio(d + "/x.img"))
        assert run(p, cdb10(0x35, 0, 0)).status == 0
        assert run(p, cdb10(0x35, 2048, 1)).key_asc == (5, 0x21, 0)
        assert run(p, cdb16(0x91, 0, 2048)).status == 0
    rd = port_with(ramdisk())
    assert run(rd, cdb10(0x35, 4096, 1)).status == 0  # rd_mcp: no sync_cache, no check
    assert run(rd, cdb10(0x2F, 0, 10)).status == 0
    assert run(rd, cdb16(0x8F, 2040, 9)).key_asc == (5, 0x21, 0)
    assert run(rd, [0x1B, 1, 0, 0, 1, 0]).status == 0
    assert run(rd, [0x1B, 0, 0, 0, 1, 0]).key_asc == (5, 0x24, 0)  # IMMED=0
    assert run(rd, [0x1B, 1, 0, 0, 0, 0]).key_asc == (5, 0x24, 0)  # stop
    assert run(rd, [0x1B, 1, 0, 0, 0x11, 0]).key_asc == (5, 0x24, 0)  # power condition
    assert run(rd, [0x01, 0, 0, 0, 0, 0]).status == 0  # REZERO UNIT
    assert run(rd, cdb10(0x2B, 0, 0)).status == 0  # SEEK(10)


def test_backstore_errors_become_sense() -> None:
    import errno
    from vhostscsi.backstores import BackstoreError

    dev = ramdisk()
    p = port_with(dev)

    def fail(code: int):  # type: ignore[no-untyped-def]
        def f(*a: object, **k: object) -> None:
            raise BackstoreError(code, "injected")
        return f

    dev.backstore.writev = fail(errno.ENOSPC)  # type: ignore[method-assign]
    assert run(p, cdb10(0x2A, 0, 1), dout=bytes(512)).key_asc == (7, 0x27, 0x07)
    dev.backstore.readv = fail(errno.EIO)  # type: ignore[method-assign]
    assert run(p, cdb10(0x28, 0, 1), alloc=512).key_asc == (3, 0x11, 0)
    dev.backstore.flush = fail(errno.EBADF)  # type: ignore[method-assign]
    assert run(p, cdb10(0x35, 0, 0)).key_asc == (2, 0x08, 0)
