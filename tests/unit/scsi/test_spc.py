"""REQUEST SENSE, unit attentions, MODE SELECT, REPORT SUPPORTED OPERATION CODES, REPORT
TARGET PORT GROUPS, descriptor sense on big LUNs."""

from __future__ import annotations

import struct

from vhostscsi.scsi import TargetPort
from tests.unit.scsi.helpers import (NEXUS, OTHER, WWN, cdb10, cdb16, port_with, ramdisk,
                                     run)

TUR = [0, 0, 0, 0, 0, 0]
REQUEST_SENSE = [0x03, 0, 0, 0, 96, 0]


def test_request_sense_without_pending_condition_is_no_sense() -> None:
    p = port_with(ramdisk())
    a = run(p, [0x03, 0, 0, 0, 18, 0], alloc=18)
    assert a.status == 0 and a.data == bytes([0x70, 0, 0, 0, 0, 0, 0, 10]) + bytes(10)
    assert run(p, [0x03, 1, 0, 0, 18, 0], alloc=18).key_asc == (5, 0x24, 0)
    assert run(p, [0x03, 0, 0, 0, 0, 0], alloc=18).key_asc == (2, 0x08, 0)  # no buffer to map
    big = run(p, [0x03, 0, 0, 0, 252, 0], alloc=252)
    assert big.result.data_in_len == 252 and big.data[18:] == bytes(234)


def test_capacity_change_raises_unit_attention_once() -> None:
    dev = ramdisk(size=1 << 20)
    p = port_with(dev)
    assert run(p, TUR).status == 0  # the initiator is now known to the port
    dev.backstore.size = 2 << 20  # the medium grew (the ramdisk's size attribute)
    p.notify_capacity_changed(0)
    # INQUIRY and REPORT LUNS run despite the pending condition
    assert run(p, [0x12, 0, 0, 0, 36, 0], alloc=36).status == 0
    a = run(p, [0x25] + [0] * 9, alloc=8)
    assert a.status == 2 and a.key_asc == (6, 0x2A, 0x09)
    b = run(p, [0x25] + [0] * 9, alloc=8)
    assert b.status == 0 and b.data[:4] == (4095).to_bytes(4, "big")
    assert run(p, TUR, nexus=OTHER).status == 0  # a newcomer saw no change


def test_request_sense_reports_and_clears_unit_attention() -> None:
    dev = ramdisk()
    p = port_with(dev)
    run(p, TUR)
    p.lun_reset(NEXUS, 0)
    a = run(p, REQUEST_SENSE, alloc=96)
    assert a.status == 0 and a.data[2] == 6 and a.data[12:14] == bytes([0x29, 0x03])
    assert run(p, TUR).status == 0


def test_invalid_cdb_is_reported_before_unit_attention() -> None:
    p = port_with(ramdisk())
    run(p, TUR)
    p.lun_reset(NEXUS, 0)
    assert run(p, cdb10(0x28, 4096, 1), alloc=512).key_asc == (5, 0x21, 0)
    assert run(p, TUR).key_asc == (6, 0x29, 0x03)


def test_unit_attention_priority_and_clearing() -> None:
    p = port_with(ramdisk())
    run(p, TUR)
    p.notify_capacity_changed(0)
    p.lun_reset(NEXUS, 0)  # 29h goes ahead of 2Ah
    assert run(p, TUR).key_asc == (6, 0x29, 0x03)
    assert run(p, TUR).status == 0  # LIO (UA_INTLCK_CTRL 00b) clears them all at once


def test_new_lun_raises_reported_luns_changed_on_the_other_luns() -> None:
    p = port_with(ramdisk())
    run(p, TUR)
    p.add_lun(1, ramdisk(name="d1"))
    assert run(p, TUR, lun=1).status == 0  # the new LUN itself has nothing pending
    a = run(p, [0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], alloc=256)
    assert a.status == 0 and a.data[:4] == (16).to_bytes(4, "big")
    # LIO's REPORT LUNS neither reports nor clears it: the next command on LUN 0 gets it
    assert run(p, TUR).key_asc == (6, 0x3F, 0x0E)
    assert run(p, TUR).status == 0
    p.remove_lun(1)
    assert run(p, TUR).key_asc == (6, 0x3F, 0x0E)


def test_mode_select_accepts_only_current_values() -> None:
    p = port_with(ramdisk(write_back=True))
    sense = run(p, [0x1A, 0x08, 0x08, 0, 255, 0], alloc=255).data
    page = sense[4:]
    param = bytes(4) + page
    cdb = [0x15, 0x10, 0, 0, len(param), 0]
    assert run(p, cdb, dout=param).status == 0
    flipped = bytearray(param)
    flipped[4 + 2] &= ~0x04  # clear WCE
    assert run(p, cdb, dout=bytes(flipped)).key_asc == (5, 0x26, 0)
    assert run(p, [0x15, 0x00, 0, 0, len(param), 0], dout=param).key_asc == (5, 0x24, 0)  # PF=0
    assert run(p, [0x15, 0x10, 0, 0, 5, 0], dout=param[:5]).key_asc == (5, 0x1A, 0)
    unknown = bytes(4) + bytes([0x05, 0x0A]) + bytes(10)
    assert run(p, [0x15, 0x10, 0, 0, 16, 0], dout=unknown).key_asc == (5, 0x24, 0)
    p10 = bytes(8) + page
    assert run(p, [0x55, 0x10, 0, 0, 0, 0, 0, 0, len(p10), 0], dout=p10).status == 0
    assert run(p, [0x15, 0x10, 0, 0, 0, 0]).status == 0


def test_report_supported_operation_codes_as_lio_6_1_and_6_3() -> None:
    old = port_with(ramdisk())  # LIO 6.1: not implemented
    assert run(old, [0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0], alloc=4096).key_asc == (5, 0x20, 0)
    p = port_with(ramdisk(emulate_rsoc=1))
    a = run(p, [0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0], alloc=4096)
    assert a.status == 0
    n = (len(a.data) - 4) // 8
    assert int.from_bytes(a.data[:4], "big") == len(a.data) - 3
    ops = {(a.data[4 + 8 * i], int.from_bytes(a.data[6 + 8 * i : 8 + 8 * i], "big")) for i in range(n)}
    assert (0x28, 0) in ops and (0x9E, 0x10) in ops and (0x89, 0) in ops
    assert (0x42, 0) not in ops  # UNMAP needs emulate_tpu
    one = run(p, [0xA3, 0x0C, 0x01, 0x28, 0, 0, 0, 0, 0, 64, 0, 0], alloc=64)
    assert one.data == bytes([0, 3, 0, 10, 0x28, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0])
    assert run(p, [0xA3, 0x0C, 0x01, 0x9E, 0, 0, 0, 0, 0, 64, 0, 0], alloc=64).key_asc == (5, 0x24, 0)
    sa = run(p, [0xA3, 0x0C, 0x02, 0x9E, 0, 0x10, 0, 0, 0, 64, 0, 0], alloc=64)
    assert sa.data[:4] == bytes([0, 3, 0, 16])
    none = run(p, [0xA3, 0x0C, 0x01, 0xC1, 0, 0, 0, 0, 0, 64, 0, 0], alloc=64)
    assert none.data == bytes([0, 1])
    timeouts = run(p, [0xA3, 0x0C, 0x81, 0x28, 0, 0, 0, 0, 0, 64, 0, 0], alloc=64)
    assert timeouts.data[1] == 0x83 and timeouts.data[14:16] == bytes([0, 0x0A])


def test_report_target_port_groups() -> None:
    dev = ramdisk()
    p = port_with(dev)
    a = run(p, [0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], alloc=256)
    assert a.data == bytes([0, 0, 0, 12, 0x00, 0xCF, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1])
    ext = run(p, [0xA3, 0x2A, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], alloc=256)
    assert ext.data[:8] == bytes([0, 0, 0, 12, 0x10, 0, 0, 0])
    short = run(p, [0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0], alloc=8)
    assert short.data == bytes([0, 0, 0, 12, 0, 0, 0, 0])
    assert run(p, [0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0], alloc=3).key_asc == (5, 0x24, 0)
    p2 = TargetPort(WWN, 2, relative_port_id=2)
    p2.add_lun(0, dev)
    both = run(p, [0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], alloc=256)
    assert both.data[11] == 2 and both.data[16:20] == bytes([0, 0, 0, 2])
    assert run(p, [0x12, 0, 0, 0, 8, 0], alloc=8).data[6] == 0x10  # MULTIP


def test_big_lun_uses_descriptor_sense_and_d_sense(tmp_path: object) -> None:
    from vhostscsi.backstores import FileIOBackstore
    from vhostscsi.scsi import Device

    size = (1 << 32) * 512 + 512 * 8  # just over 2 TiB, as a sparse file
    bs = FileIOBackstore("huge", f"{tmp_path}/huge.img", size=size, block_size=512, write_back=True)
    dev = Device(bs, "huge", "x", {}, True)
    p = TargetPort(WWN, 1)
    p.add_lun(0, dev)
    a = run(p, cdb16(0x88, 1 << 40, 1), alloc=512)
    assert a.sense == bytes([0x72, 5, 0x21, 0, 0, 0, 0, 0])
    ctl = run(p, [0x1A, 0x08, 0x0A, 0, 255, 0], alloc=255).data
    assert ctl[6] == 0x06
    rc = run(p, [0x25] + [0] * 9, alloc=8)
    assert rc.data[:4] == b"\xff\xff\xff\xff"
    # MODE SENSE(10) with LLBAA: the 16-byte descriptor, with LIO's length arithmetic (it
    # counts 17 bytes for it, so the first page starts at 21 and covers the block length)
    ms = run(p, [0x5A, 0x10, 0x08, 0, 0, 0, 0, 0, 255, 0], alloc=255).data
    assert ms[3] == 0x10 and ms[4] == 0x01 and ms[7] == 16
    assert ms[8:16] == ((1 << 32) + 7).to_bytes(8, "big")
    assert ms[21:23] == bytes([0x08, 0x12]) and len(ms) == 21 + 20
    assert ms[:2] == (21 + 20 - 2).to_bytes(2, "big")
    rc16 = run(p, cdb16(0x9E, 0, 32, b1=0x10), alloc=32)
    assert struct.unpack(">Q", rc16.data[:8])[0] == (1 << 32) + 7
    bs.close()


def test_fileio_resize_of_a_real_file_reaches_the_guest(tmp_path: object) -> None:
    """A file opened without a configured size follows the file: grow it, notify, and the
    guest gets CAPACITY DATA HAS CHANGED then the new capacity."""
    from vhostscsi.backstores import FileIOBackstore
    from vhostscsi.scsi import Device

    path = f"{tmp_path}/grow.img"
    with open(path, "wb") as f:
        f.truncate(1 << 20)
    bs = FileIOBackstore("grow", path, size=0, block_size=512, write_back=True)
    p = TargetPort(WWN, 1)
    p.add_lun(0, Device(bs, "grow", "x", {}, True))
    assert run(p, [0x25] + [0] * 9, alloc=8).data[:4] == (2047).to_bytes(4, "big")
    with open(path, "r+b") as f:
        f.truncate(2 << 20)
    p.notify_capacity_changed(0)
    assert run(p, [0x25] + [0] * 9, alloc=8).key_asc == (6, 0x2A, 0x09)
    assert run(p, [0x25] + [0] * 9, alloc=8).data[:4] == (4095).to_bytes(4, "big")
    assert run(p, cdb10(0x28, 4095, 1), alloc=512).status == 0
    bs.close()


def test_report_luns_order_follows_lio_sessions() -> None:
    """LUNs present when the initiator arrives: creation order; LUNs hot-added later come first
    (LIO inserts each new mapping at the head of the initiator's list)."""
    p = TargetPort(WWN, 1)
    p.add_lun(2, ramdisk(name="a"))
    p.add_lun(0, ramdisk(name="b"))
    rl = [0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]

    def order(nexus: str = NEXUS) -> list[int]:
        d = run(p, rl, alloc=256, nexus=nexus).data
        return [d[8 + 8 * i + 1] for i in range(int.from_bytes(d[:4], "big") // 8)]

    assert order() == [2, 0]
    p.add_lun(5, ramdisk(name="c"))
    p.add_lun(1, ramdisk(name="d"))
    assert order() == [1, 5, 2, 0]
    assert order(OTHER) == [2, 0, 5, 1]  # a newcomer maps them in creation order
    p.remove_lun(5)
    assert order() == [1, 2, 0] and order(OTHER) == [2, 0, 1]
