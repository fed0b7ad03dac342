"""The stand-in's own pieces: guest RAM layout and the driver side of a split ring, checked in bytes."""

from __future__ import annotations

import struct

import pytest

from vhostscsi.hostdriver.guestram import GuestRam
from vhostscsi.hostdriver.vring import MALFORMED_KINDS, Desc, DriverRing, malformed_chain
from vhostscsi.virtio.virtqueue import VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE

PAGE = 4096


def test_regions_share_one_memfd_with_unrelated_uvas() -> None:
    with GuestRam(8 * PAGE, regions=2, gpa_base=0x100000) as ram:
        r0, r1 = ram.regions
        assert (r0.guest_phys_addr, r0.memory_size, r0.mmap_offset) == (0x100000, 4 * PAGE, 0)
        assert (r1.guest_phys_addr, r1.memory_size, r1.mmap_offset) == (0x100000 + 4 * PAGE, 4 * PAGE, 4 * PAGE)
        assert r1.userspace_addr - r0.userspace_addr != 4 * PAGE  # a back end must translate per region
        assert ram.gpa_to_uva(0x100010) == r0.userspace_addr + 0x10
        with pytest.raises(ValueError):
            ram.gpa_to_uva(0x100000 + 8 * PAGE)


def test_alloc_never_straddles_but_can_on_request() -> None:
    with GuestRam(8 * PAGE, regions=2) as ram:
        ram.alloc(4 * PAGE - 100)
        g = ram.alloc(200)
        assert g == 4 * PAGE  # moved to the next region rather than straddling
        with pytest.raises(MemoryError):
            ram.alloc(8 * PAGE)
    with GuestRam(8 * PAGE, regions=2) as ram:
        g = ram.alloc_straddling(64, 24)
        assert g == 4 * PAGE - 24


def test_ring_layout_and_chain_bytes() -> None:
    with GuestRam(16 * PAGE) as ram:
        ring = DriverRing(ram, 8)
        assert ring.desc_gpa % 16 == 0 and ring.avail_gpa % 2 == 0 and ring.used_gpa % 4 == 0
        head = ring.add([(0x1000, 51)], [(0x2000, 108), (0x3000, 512)])
        descs = [struct.unpack_from("<QIHH", ram.read(ring.desc_gpa + 16 * i, 16)) for i in range(3)]
        assert descs == [(0x1000, 51, VRING_DESC_F_NEXT, 1), (0x2000, 108, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2),
                         (0x3000, 512, VRING_DESC_F_WRITE, 0)]
        assert ram.read(ring.avail_gpa, 6) == struct.pack("<HHH", 0, 1, head)


def test_indirect_chain_bytes() -> None:
    with GuestRam(16 * PAGE) as ram:
        ring = DriverRing(ram, 8)
        head = ring.add([(0x1000, 51)], [(0x2000, 108)], indirect=True)
        addr, length, flags, _ = struct.unpack_from("<QIHH", ram.read(ring.desc_gpa + 16 * head, 16))
        assert (length, flags) == (32, VRING_DESC_F_INDIRECT)
        inner = [struct.unpack_from("<QIHH", ram.read(addr + 16 * i, 16)) for i in range(2)]
        assert inner == [(0x1000, 51, VRING_DESC_F_NEXT, 1), (0x2000, 108, VRING_DESC_F_WRITE, 0)]
        assert len(ring.free) == 7


def test_used_entries_free_descriptors_and_set_used_event() -> None:
    with GuestRam(16 * PAGE) as ram:
        ring = DriverRing(ram, 4, event_idx=True)
        h = ring.add([(0x1000, 1)], [(0x2000, 1)])
        struct.pack_into("<II", ram.view(ring.used_gpa + 4, 8), 0, h, 77)
        struct.pack_into("<H", ram.view(ring.used_gpa + 2, 2), 0, 1)
        assert ring.get_used() == [(h, 77)] and len(ring.free) == 4
        assert ram.read(ring.avail_gpa + 4 + 2 * 4, 2) == struct.pack("<H", 1)  # used_event follows


def test_need_kick_honours_avail_event() -> None:
    with GuestRam(16 * PAGE) as ram:
        ring = DriverRing(ram, 4, event_idx=True)
        ring.add([(0x1000, 1)], [])
        assert ring.need_kick()  # avail_event 0: crossing it needs a kick
        ring.add([(0x1000, 1)], [])
        assert not ring.need_kick()  # device has not asked for more
        struct.pack_into("<H", ram.view(ring.used_gpa + 4 + 8 * 4, 2), 0, 2)
        ring.add([(0x1000, 1)], [])
        assert ring.need_kick()


@pytest.mark.parametrize("kind", MALFORMED_KINDS)
def test_malformed_kinds_build(kind) -> None:
    with GuestRam(16 * PAGE) as ram:
        descs = malformed_chain(kind, ram, 8)
        assert descs and all(isinstance(d, Desc) for d in descs)


def test_unknown_malformed_kind() -> None:
    with GuestRam(16 * PAGE) as ram, pytest.raises(ValueError, match="choose from"):
        malformed_chain("cosmic-ray", ram, 8)
