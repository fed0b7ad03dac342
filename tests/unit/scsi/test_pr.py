"""SPC-2 RESERVE/RELEASE and persistent reservations between two initiators."""

from __future__ import annotations

import struct

from vhostscsi.scsi import TargetPort
from tests.unit.scsi.helpers import NEXUS, OTHER, cdb10, port_with, ramdisk, run

A, B = NEXUS, OTHER
KA, KB = 0xAAAA, 0xBBBB


def pro(p: TargetPort, nexus: str, sa: int, key: int = 0, sa_key: int = 0, type_: int = 0,
        flags: int = 0, length: int = 24) -> tuple[int, int, int]:
    param = struct.pack(">QQ4xB3x", key, sa_key, flags)[:length].ljust(length, b"\0")
    cdb = struct.pack(">BBB2xIB", 0x5F, sa, type_, length, 0)
    return run(p, cdb, dout=param, nexus=nexus).key_asc


def pro_status(p: TargetPort, nexus: str, sa: int, key: int = 0, sa_key: int = 0,
               type_: int = 0) -> int:
    param = struct.pack(">QQ8x", key, sa_key)
    cdb = struct.pack(">BBB2xIB", 0x5F, sa, type_, 24, 0)
    return run(p, cdb, dout=param, nexus=nexus).status


def pri(p: TargetPort, nexus: str, sa: int, alloc: int = 256) -> bytes:
    a = run(p, [0x5E, sa, 0, 0, 0, 0, 0, alloc >> 8, alloc & 0xFF, 0], alloc=alloc, nexus=nexus)
    assert a.status == 0, a
    return a.data


def test_spc2_reserve_blocks_other_initiator() -> None:
    p = port_with(ramdisk())
    assert run(p, [0x16, 0, 0, 0, 0, 0], nexus=A).status == 0
    assert run(p, cdb10(0x28, 0, 1), alloc=512, nexus=B).status == 0x18
    assert run(p, [0, 0, 0, 0, 0, 0], nexus=B).status == 0x18  # even TUR under SPC-2
    assert run(p, [0x12, 0, 0, 0, 36, 0], alloc=36, nexus=B).status == 0
    assert run(p, [0x16, 0, 0, 0, 0, 0], nexus=B).status == 0x18
    assert run(p, [0x17, 0, 0, 0, 0, 0], nexus=B).status == 0  # release by non-holder: no-op
    assert run(p, cdb10(0x28, 0, 1), alloc=512, nexus=A).status == 0
    # PR IN conflicts with any SPC-2 reservation, whoever asks
    assert run(p, [0x5E, 0, 0, 0, 0, 0, 0, 1, 0, 0], alloc=256, nexus=A).status == 0x18
    assert run(p, [0x17, 0, 0, 0, 0, 0], nexus=A).status == 0
    assert run(p, cdb10(0x28, 0, 1), alloc=512, nexus=B).status == 0
    assert run(p, [0x16, 0, 0, 0, 0, 0], nexus=A).status == 0
    p.lun_reset(A, 0)
    assert run(p, [0, 0, 0, 0, 0, 0], nexus=B).status == 0


def test_register_read_keys_and_generation() -> None:
    p = port_with(ramdisk())
    assert pro_status(p, A, 0, 0, KA) == 0
    assert pro_status(p, B, 0, 0, KB) == 0
    keys = pri(p, A, 0)
    assert keys == struct.pack(">II", 2, 16) + struct.pack(">QQ", KA, KB)
    assert pro_status(p, B, 0, 0x1234, 0xCCCC) == 0x18  # wrong current key
    assert pro_status(p, B, 6, 0x1234, 0xCCCC) == 0  # register and ignore existing key
    keys = pri(p, A, 0)
    assert keys[:4] == (3).to_bytes(4, "big") and keys[16:24] == struct.pack(">Q", 0xCCCC)
    assert pro_status(p, A, 0, KA, 0) == 0  # unregister
    assert pri(p, A, 0)[4:8] == (8).to_bytes(4, "big")
    short = run(p, [0x5E, 0, 0, 0, 0, 0, 0, 0, 8, 0], alloc=8, nexus=B)
    assert short.data == struct.pack(">II", 3, 8)


def test_reserve_write_exclusive_and_release() -> None:
    p = port_with(ramdisk())
    pro_status(p, A, 0, 0, KA)
    pro_status(p, B, 0, 0, KB)
    assert pro_status(p, A, 1, KA, type_=1) == 0  # WRITE EXCLUSIVE
    res = pri(p, B, 1)
    assert res == struct.pack(">II", 2, 16) + struct.pack(">Q", KA) + bytes(5) + b"\x01" + bytes(2)
    assert run(p, cdb10(0x28, 0, 1), alloc=512, nexus=B).status == 0  # reads allowed
    assert run(p, cdb10(0x2A, 0, 1), dout=bytes(512), nexus=B).status == 0x18
    assert run(p, cdb10(0x2A, 0, 1), dout=bytes(512), nexus=A).status == 0
    assert pro_status(p, B, 1, KB, type_=1) == 0x18
    assert pro_status(p, A, 1, KA, type_=3) == 0x18  # holder may not change the type
    assert pro_status(p, A, 2, KA, type_=3) == 0x18  # release with the wrong type
    assert pro_status(p, A, 2, KA, type_=1) == 0
    assert pri(p, B, 1) == struct.pack(">II", 2, 0)
    assert run(p, cdb10(0x2A, 0, 1), dout=bytes(512), nexus=B).status == 0


def test_exclusive_access_registrants_only() -> None:
    p = port_with(ramdisk())
    pro_status(p, A, 0, 0, KA)
    assert pro_status(p, A, 1, KA, type_=6) == 0  # EXCLUSIVE ACCESS - REGISTRANTS ONLY
    assert run(p, cdb10(0x28, 0, 1), alloc=512, nexus=B).status == 0x18
    assert run(p, [0x12, 0, 0, 0, 36, 0], alloc=36, nexus=B).status == 0  # allowed for all
    assert run(p, [0x25] + [0] * 9, alloc=8, nexus=B).status == 0x18  # LIO lets no other through
    pro_status(p, B, 0, 0, KB)
    assert run(p, cdb10(0x28, 0, 1), alloc=512, nexus=B).status == 0
    # the holder unregisters: reservation released, remaining registrants told so
    assert pro_status(p, A, 0, KA, 0) == 0
    assert run(p, [0, 0, 0, 0, 0, 0], nexus=B).key_asc == (6, 0x2A, 0x04)
    assert pri(p, B, 1)[4:8] == bytes(4)


def test_unregistered_nexus_pr_out_answers_as_lio() -> None:
    p = port_with(ramdisk())
    assert pro(p, A, 1, KA, type_=1) == (2, 0x08, 0)  # RESERVE: LUN COMMUNICATION FAILURE
    assert pro(p, A, 2, KA, type_=1) == (2, 0x08, 0)  # RELEASE
    assert pro(p, A, 3, KA) == (2, 0x08, 0)  # CLEAR
    assert pro_status(p, A, 4, KA, KB, type_=1) == 0x18  # PREEMPT: RESERVATION CONFLICT


def test_preempt_all_registrants_with_zero_key() -> None:
    p = port_with(ramdisk())
    pro_status(p, A, 0, 0, KA)
    pro_status(p, B, 0, 0, KB)
    pro_status(p, A, 1, KA, type_=8)  # EXCLUSIVE ACCESS - ALL REGISTRANTS
    assert pro_status(p, A, 4, KA, 0, type_=3) == 0  # drop all others, take EXCLUSIVE ACCESS
    res = pri(p, A, 1)
    assert res[8:16] == struct.pack(">Q", KA) and res[21] == 3
    assert pri(p, A, 0)[4:8] == (8).to_bytes(4, "big")
    assert run(p, [0, 0, 0, 0, 0, 0], nexus=B).key_asc == (6, 0x2A, 0x05)


def test_preempt_and_clear() -> None:
    p = port_with(ramdisk())
    pro_status(p, A, 0, 0, KA)
    pro_status(p, B, 0, 0, KB)
    pro_status(p, A, 1, KA, type_=3)
    assert pro_status(p, B, 4, KB, 0x9999, type_=3) == 0x18  # key matches nobody
    assert pro_status(p, B, 4, KB, 0, type_=3) == 2  # SA key 0 without all-registrants
    assert pro_status(p, B, 4, KB, KA, type_=3) == 0
    res = pri(p, B, 1)
    assert res[8:16] == struct.pack(">Q", KB) and res[21] == 3
    assert run(p, [0, 0, 0, 0, 0, 0], nexus=A).key_asc == (6, 0x2A, 0x05)
    assert pri(p, B, 0)[4:8] == (8).to_bytes(4, "big")
    pro_status(p, A, 0, 0, KA)
    assert pro_status(p, A, 3, KA) == 0  # CLEAR
    assert pri(p, A, 0)[4:8] == bytes(4) and pri(p, A, 1)[4:8] == bytes(4)
    assert run(p, [0, 0, 0, 0, 0, 0], nexus=B).key_asc == (6, 0x2A, 0x03)


def test_all_registrants_reservation() -> None:
    p = port_with(ramdisk())
    pro_status(p, A, 0, 0, KA)
    pro_status(p, B, 0, 0, KB)
    assert pro_status(p, A, 1, KA, type_=7) == 0  # WRITE EXCLUSIVE - ALL REGISTRANTS
    assert pri(p, A, 1)[8:16] == bytes(8)  # key reported as zero
    assert run(p, cdb10(0x2A, 0, 1), dout=bytes(512), nexus=B).status == 0
    assert run(p, cdb10(0x2A, 0, 1), dout=bytes(512), nexus="naa.5001405ccccccccc").status == 0x18
    assert pro_status(p, A, 0, KA, 0) == 0  # the first holder leaves; B still holds it
    assert run(p, cdb10(0x2A, 0, 1), dout=bytes(512), nexus="naa.5001405ccccccccc").status == 0x18
    assert pri(p, B, 1)[4:8] == (16).to_bytes(4, "big")


def test_pr_in_capabilities_full_status_and_bad_input() -> None:
    p = port_with(ramdisk())
    assert pri(p, A, 2) == bytes([0, 8, 0x1D, 0x90, 0xEA, 0x01, 0, 0])
    pro_status(p, A, 0, 0, KA)
    pro_status(p, A, 1, KA, type_=1)
    full = pri(p, A, 3)
    assert full[:8] == struct.pack(">II", 1, 48)  # RESERVE does not bump PRgeneration
    assert full[8:16] == struct.pack(">Q", KA) and full[20] == 0x01 and full[21] == 0x01
    assert full[26:28] == bytes([0, 1]) and full[32:34] == bytes([0x06, 0])
    assert full[36:44] == bytes.fromhex("5001405aaaaaaaaa")
    tiny = run(p, [0x5E, 3, 0, 0, 0, 0, 0, 0, 8, 0], alloc=8)
    assert tiny.data == struct.pack(">II", 1, 0)  # LIO counts only descriptors that fit
    assert run(p, [0x5E, 0x09, 0, 0, 0, 0, 0, 1, 0, 0], alloc=256).key_asc == (5, 0x24, 0)
    assert run(p, [0x5E, 0, 0, 0, 0, 0, 0, 0, 4, 0], alloc=4).key_asc == (5, 0x24, 0)
    bad_len = struct.pack(">BBB2xIB", 0x5F, 0, 0, 16, 0)
    assert run(p, bad_len, dout=bytes(16)).key_asc == (5, 0x1A, 0)
    assert pro(p, A, 1, KA, type_=2) == (5, 0x24, 0)  # unknown type
    assert pro(p, A, 0x08, KA) == (5, 0x24, 0)  # unknown service action
    off = port_with(ramdisk(emulate_pr=0))
    assert run(off, [0x5E, 0, 0, 0, 0, 0, 0, 1, 0, 0], alloc=256).key_asc == (5, 0x20, 0)
    assert run(off, [0x16, 0, 0, 0, 0, 0]).key_asc == (5, 0x20, 0)


def test_registration_makes_spc2_reserve_conflict() -> None:
    p = port_with(ramdisk())
    pro_status(p, A, 0, 0, KA)
    assert run(p, [0x16, 0, 0, 0, 0, 0], nexus=B).status == 0x18
    assert run(p, [0x16, 0, 0, 0, 0, 0], nexus=A).status == 0x18
    pro_status(p, A, 1, KA, type_=1)
    assert run(p, [0x16, 0, 0, 0, 0, 0], nexus=A).status == 0  # holder: GOOD, no change


def test_end_nexus_drops_its_registrations_reservations_and_attentions() -> None:
    p = port_with(ramdisk())
    pro_status(p, A, 0, 0, KA)
    pro_status(p, B, 0, 0, KB)
    pro_status(p, A, 1, KA, type_=3)  # A holds EXCLUSIVE ACCESS
    assert run(p, cdb10(0x28, 0, 1), alloc=512, nexus=B).status == 0x18
    p.lun_reset(A, 0)  # a pending unit attention for A
    p.end_nexus(A)  # A's session ends (guest driver stopped)
    assert run(p, cdb10(0x28, 0, 1), alloc=512, nexus=B).status == 0  # reservation gone
    assert pri(p, B, 0)[8:] == struct.pack(">Q", KB)  # only B's key is left
    assert run(p, [0, 0, 0, 0, 0, 0], nexus=A).status == 0  # no stale unit attention
    assert run(p, [0x16, 0, 0, 0, 0, 0], nexus=B).status == 0x18  # B still registered
    pro_status(p, B, 0, KB, 0)
    assert run(p, [0x16, 0, 0, 0, 0, 0], nexus=B).status == 0
    p.end_nexus(B)
    assert run(p, cdb10(0x2A, 0, 1), dout=bytes(512), nexus=A).status == 0  # SPC-2 gone too
