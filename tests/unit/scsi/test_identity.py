"""INQUIRY, VPD pages, MODE SENSE and READ CAPACITY: the bytes a guest's probe sees."""

from __future__ import annotations

from vhostscsi.scsi.inquiry import naa_designator
from tests.unit.scsi.helpers import SERIAL, WWN, cdb16, port_with, ramdisk, run


def test_standard_inquiry_matches_lio() -> None:
    p = port_with(ramdisk(name="disk0"))
    a = run(p, [0x12, 0, 0, 0, 96, 0], alloc=96)
    assert a.status == 0 and a.result.data_in_len == 96
    d = a.data
    assert d[:8] == bytes([0x00, 0x00, 0x06, 0x02, 91, 0xB8, 0x00, 0x02])
    assert d[8:36] == b"LIO-ORG disk0           4.0 "
    assert d[58:66] == bytes.fromhex("00a00c60046004c0")
    assert d[66:] == bytes(30)


def test_inquiry_truncates_to_allocation_length() -> None:
    p = port_with(ramdisk())
    a = run(p, [0x12, 0, 0, 0, 36, 0], alloc=255)
    assert a.result.data_in_len == 36 and a.data[8:16] == b"LIO-ORG "


def test_product_is_first_15_chars_of_name_or_plugin_default() -> None:
    p = port_with(ramdisk(name="a-very-long-backstore-name"))
    assert run(p, [0x12, 0, 0, 0, 96, 0], alloc=96).data[16:32] == b"a-very-long-bac "
    p = port_with(ramdisk(name="disk0", emulate_model_alias=0))
    assert run(p, [0x12, 0, 0, 0, 96, 0], alloc=96).data[16:32] == b"RAMDISK-MCP     "


def test_inquiry_page_code_without_evpd_is_invalid_field() -> None:
    a = run(port_with(ramdisk()), [0x12, 0, 0x80, 0, 96, 0], alloc=96)
    assert a.status == 2 and a.key_asc == (5, 0x24, 0) and len(a.sense) == 18
    assert a.sense == bytes([0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0, 0, 0])


def test_vpd_00_lists_lio_pages() -> None:
    a = run(port_with(ramdisk()), [0x12, 1, 0x00, 0, 255, 0], alloc=255)
    assert a.data == bytes([0, 0, 0, 8, 0x00, 0x80, 0x83, 0x86, 0xB0, 0xB1, 0xB2, 0xB3])


def test_vpd_80_is_unit_serial_with_nul() -> None:
    a = run(port_with(ramdisk()), [0x12, 1, 0x80, 0, 255, 0], alloc=255)
    assert a.data == bytes([0, 0x80, 0, 37]) + SERIAL.encode() + b"\x00"


def test_naa_designator_from_serial() -> None:
    assert naa_designator(SERIAL) == bytes.fromhex("6001405" + "5e0b6bfa1f3d4f5e9e5a01234")


def test_vpd_83_designators() -> None:
    a = run(port_with(ramdisk()), [0x12, 1, 0x83, 0, 255, 0], alloc=255)
    d = a.data
    assert d[:4] == bytes([0, 0x83]) + (len(d) - 4).to_bytes(2, "big")
    assert d[4:8] == bytes([0x01, 0x03, 0x00, 0x10]) and d[8:24] == naa_designator(SERIAL)
    t10 = b"LIO-ORG disk0:" + SERIAL.encode() + b"\x00"
    assert d[24:28] == bytes([0x02, 0x01, 0x00, len(t10)]) and d[28 : 28 + len(t10)] == t10
    o = 28 + len(t10)
    assert d[o : o + 8] == bytes([0x61, 0x94, 0, 4, 0, 0, 0, 1])  # relative target port 1
    assert d[o + 8 : o + 16] == bytes([0x61, 0x95, 0, 4, 0, 0, 0, 0])  # target port group 0
    assert d[o + 16 : o + 24] == bytes([0x01, 0x06, 0, 4, 0, 0, 0, 0])  # LU group 0
    name = (WWN + ",t,0x0001").encode() + b"\x00" * 3  # NUL, padded to 32
    assert d[o + 24 : o + 28] == bytes([0x63, 0x98, 0, len(name)])
    assert d[o + 28 : o + 28 + len(name)] == name
    o += 28 + len(name)
    tname = WWN.encode() + b"\x00" * 4
    assert d[o:] == bytes([0x63, 0xA8, 0, len(tname)]) + tname


def test_no_serial_means_no_evpd_pages() -> None:
    from vhostscsi.backstores import RamdiskBackstore
    from vhostscsi.scsi import Device, TargetPort

    dev = Device(RamdiskBackstore("d", 1 << 20), "d", "", {}, False)
    p = TargetPort(WWN, 1)
    p.add_lun(0, dev)
    assert run(p, [0x12, 1, 0x00, 0, 255, 0], alloc=255).data == bytes([0, 0, 0, 0])
    assert run(p, [0x12, 1, 0x80, 0, 255, 0], alloc=255).data == bytes([0, 0x80, 0, 0])


def test_vpd_b0_b1_b2_b3_86() -> None:
    p = port_with(ramdisk(write_back=True))
    b0 = run(p, [0x12, 1, 0xB0, 0, 255, 0], alloc=255).data
    assert len(b0) == 20 and b0[:8] == bytes([0, 0xB0, 0, 0x10, 1, 1, 0, 1])
    assert b0[8:12] == (16384).to_bytes(4, "big")
    assert len(run(p, [0x12, 1, 0xB1, 0, 255, 0], alloc=255).data) == 64
    assert run(p, [0x12, 1, 0xB2, 0, 255, 0], alloc=255).data == bytes([0, 0xB2, 0, 4, 0, 0, 0, 0])
    assert run(p, [0x12, 1, 0xB3, 0, 255, 0], alloc=255).data[:4] == bytes([0, 0xB3, 0, 0x0C])
    e86 = run(p, [0x12, 1, 0x86, 0, 255, 0], alloc=255).data
    assert e86[:8] == bytes([0, 0x86, 0, 0x3C, 0, 7, 1, 0])
    p2 = port_with(ramdisk(emulate_tpu=1, max_unmap_lba_count=8192, max_unmap_block_desc_count=1))
    b0 = run(p2, [0x12, 1, 0xB0, 0, 255, 0], alloc=255).data
    assert len(b0) == 64 and b0[20:28] == bytes.fromhex("0000200000000001")
    assert run(p2, [0x12, 1, 0xB2, 0, 255, 0], alloc=255).data[5] == 0x80


def test_unknown_vpd_page_is_invalid_field() -> None:
    assert run(port_with(ramdisk()), [0x12, 1, 0x89, 0, 255, 0], alloc=255).key_asc == (5, 0x24, 0)


def test_mode_sense6_all_pages_write_back_header() -> None:
    a = run(port_with(ramdisk(write_back=True)), [0x1A, 0, 0x3F, 0, 255, 0], alloc=255)
    assert a.data[:4] == bytes([0x43, 0x00, 0x10, 0x08]) and len(a.data) == 68
    assert a.data[4:12] == (2047).to_bytes(4, "big") + (512).to_bytes(4, "big")
    caching = a.data[24:44]
    assert caching[:3] == bytes([0x08, 0x12, 0x04]) and caching[12] == 0x20


def test_mode_sense_write_through_clears_wce_and_dpofua() -> None:
    a = run(port_with(ramdisk(write_back=False)), [0x1A, 0, 0x3F, 0, 255, 0], alloc=255)
    assert a.data[:4] == bytes([0x43, 0x00, 0x00, 0x08]) and a.data[26] == 0x00


def test_mode_sense_write_protected_lun_sets_wp() -> None:
    a = run(port_with(ramdisk(), write_protect=True), [0x1A, 0, 0x3F, 0, 255, 0], alloc=255)
    assert a.data[2] == 0x90


def test_mode_sense_dbd_changeable_and_single_pages() -> None:
    p = port_with(ramdisk())
    a = run(p, [0x1A, 0x08, 0x08, 0, 255, 0], alloc=255)
    assert a.data[:4] == bytes([23, 0, 0x10, 0]) and a.data[4:7] == bytes([0x08, 0x12, 0x04])
    chg = run(p, [0x1A, 0x08, 0x48, 0, 255, 0], alloc=255)
    assert chg.data[4:] == bytes([0x08, 0x12]) + bytes(18)
    ctl = run(p, [0x1A, 0x08, 0x0A, 0, 255, 0], alloc=255).data[4:]
    assert ctl == bytes([0x0A, 0x0A, 0x02, 0x10, 0, 0x40, 0, 0, 0xFF, 0xFF, 0, 30])
    assert run(p, [0x1A, 0, 0x05, 0, 255, 0], alloc=255).key_asc == (5, 0x24, 0)
    assert run(p, [0x1A, 0, 0x3F, 0x01, 255, 0], alloc=255).key_asc == (5, 0x24, 0)


def test_mode_sense10_with_and_without_llba() -> None:
    p = port_with(ramdisk())
    a = run(p, [0x5A, 0, 0x3F, 0, 0, 0, 0, 0, 255, 0], alloc=255)
    assert a.data[:8] == bytes([0, 70, 0, 0x10, 0, 0, 0, 8]) and len(a.data) == 72
    b = run(p, [0x5A, 0x10, 0x3F, 0, 0, 0, 0, 0, 255, 0], alloc=255)
    assert b.data == a.data


def test_read_capacity_10_and_16() -> None:
    p = port_with(ramdisk(size=1 << 20))
    a = run(p, [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], alloc=8)
    assert a.data == (2047).to_bytes(4, "big") + (512).to_bytes(4, "big")
    assert run(p, [0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0], alloc=8).key_asc == (5, 0x24, 0)
    b = run(p, cdb16(0x9E, 0, 32, b1=0x10), alloc=32)
    assert b.data == (2047).to_bytes(8, "big") + (512).to_bytes(4, "big") + bytes(20)
    assert run(p, cdb16(0x9E, 0, 32, b1=0x11), alloc=32).key_asc == (5, 0x24, 0)
