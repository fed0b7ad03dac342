"""A write-protected LUN refuses every command that changes the medium, by opcode (and service action),
whether or not the initiator sent data-out buffers; commands that only read still work."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from vhostscsi.scsi import opcodes as op
from tests.unit.scsi.helpers import cdb10, cdb16, fileio, port_with, ramdisk, run

WP = (7, 0x27, 0)


def _ws32(b10: int = 0x08) -> bytes:
    c = bytearray(32)
    c[0], c[7], c[9], c[10] = 0x7F, 0x18, op.WRITE_SAME_32, b10
    c[12:20] = (0).to_bytes(8, "big")
    c[28:32] = (8).to_bytes(4, "big")
    return bytes(c)


NO_DATA_WRITES = [
    ("write_same10_unmap", cdb10(0x41, 0, 8, b1=0x08)),
    ("write_same16_unmap", cdb16(0x93, 0, 8, b1=0x08)),
    ("write_same16_anchor", cdb16(0x93, 0, 8, b1=0x10)),
    ("write_same32_unmap", _ws32()),
    ("write10_zero_length", cdb10(0x2A, 0, 0)),
    ("write16_no_buffer", cdb16(0x8A, 0, 8)),
    ("unmap_no_list", struct.pack(">BBxxxxxHx", 0x42, 0, 24)),
    ("caw_no_buffer", struct.pack(">BBQxxxBxx", 0x89, 0, 0, 1)),
    ("write_verify10_no_buffer", cdb10(0x2E, 0, 8)),
    ("format_unit", bytes([0x04, 0, 0, 0, 0, 0])),
]


@pytest.mark.parametrize("cdb", [c for _, c in NO_DATA_WRITES], ids=[n for n, _ in NO_DATA_WRITES])
def test_write_protected_lun_refuses_medium_changes_without_data_out(cdb: bytes) -> None:
    dev = ramdisk(emulate_tpu=1, emulate_tpws=1, emulate_caw=1)
    dev.backstore.writev(0, [memoryview(b"\xa5" * 8192)])
    p = port_with(dev, write_protect=True)
    run(p, [0, 0, 0, 0, 0, 0])  # the power-on unit attention
    assert run(p, cdb).key_asc == WP
    assert run(p, cdb10(0x28, 0, 16), alloc=8192).data == b"\xa5" * 8192


def test_a_writable_lun_still_unmaps_with_write_same_without_data_out(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    path.write_bytes(b"\xa5" * (1 << 20))
    p = port_with(fileio(str(path), emulate_tpu=1, emulate_tpws=1, max_write_same_len=4096,
                          max_unmap_lba_count=8192, max_unmap_block_desc_count=1))
    run(p, [0, 0, 0, 0, 0, 0])
    assert run(p, cdb16(0x93, 0, 8, b1=0x08)).status == 0
    assert run(p, cdb10(0x28, 0, 8), alloc=4096).data == bytes(4096)


@pytest.mark.parametrize("cdb", [
    bytes([0, 0, 0, 0, 0, 0]), cdb10(0x28, 0, 1), cdb10(0x35, 0, 0), cdb10(0x2F, 0, 1),
    bytes([0x1A, 0, 0x3F, 0, 255, 0]), cdb16(0x9E, 0, 32, b1=0x10),
], ids=["tur", "read10", "sync_cache", "verify10", "mode_sense6", "read_capacity16"])
def test_write_protected_lun_answers_commands_that_do_not_change_the_medium(cdb: bytes) -> None:
    p = port_with(ramdisk(), write_protect=True)
    run(p, [0, 0, 0, 0, 0, 0])
    alloc = 512 if cdb[0] in (0x28, 0x1A, 0x9E) else 0
    assert run(p, cdb, alloc=alloc).key_asc != WP


def test_changes_medium_table() -> None:
    writes = {0x04, 0x0A, 0x2A, 0xAA, 0x8A, 0x2E, 0xAE, 0x8E, 0x41, 0x93, 0x42, 0x89}
    reads = {0x00, 0x08, 0x28, 0xA8, 0x88, 0x2F, 0x8F, 0x35, 0x91, 0x12, 0x1A, 0x5A, 0x9E, 0xA0, 0x5E}
    for code in writes:
        assert op.changes_medium(bytes([code]) + bytes(31)), hex(code)
    for code in reads:
        assert not op.changes_medium(bytes([code]) + bytes(31)), hex(code)
    assert op.changes_medium(_ws32())
    read32 = bytearray(_ws32())
    read32[9] = 0x09  # READ(32)
    assert not op.changes_medium(bytes(read32))
