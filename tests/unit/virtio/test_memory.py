"""Guest memory translation: GPA and UVA, bounds, regions meeting, overflow."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vhostscsi.hostdriver.guestram import GuestRam
from vhostscsi.virtio.memory import GuestMemory, GuestMemoryError, MemoryRegion

PAGE = 4096


@pytest.fixture
def ram():
    with GuestRam(4 * PAGE, regions=2, gpa_base=0x10000) as r:
        yield r


def test_gpa_view_sees_guest_bytes(ram: GuestRam) -> None:
    mem = ram.backend_memory()
    ram.write(0x10010, b"hello")
    assert bytes(mem.view(0x10010, 5)) == b"hello"
    mem.view(0x10020, 3)[:] = b"abc"
    assert ram.read(0x10020, 3) == b"abc"
    mem.close()


def test_out_of_range_and_negative(ram: GuestRam) -> None:
    mem = ram.backend_memory()
    assert mem.view(0xFFFF, 1) is None  # just below the first region
    assert mem.view(0x10000 + 4 * PAGE, 1) is None  # just past the end
    assert mem.view(0x10000 + 4 * PAGE - 1, 2) is None
    assert mem.view(-1, 1) is None
    assert mem.view(0x10000, -1) is None
    out: list[memoryview] = []
    assert not mem.append_views(out, 2**64 - 8, 16)  # wraps the 64-bit space
    assert not mem.append_views(out, 0x10000 + 4 * PAGE - 4, 8)
    mem.close()


def test_buffer_spanning_two_regions(ram: GuestRam) -> None:
    mem = ram.backend_memory()
    gpa = ram.alloc_straddling(100, 30)
    ram.write(gpa, bytes(range(100)))
    assert mem.view(gpa, 100) is None  # not contiguous in our mapping
    out: list[memoryview] = []
    assert mem.append_views(out, gpa, 100)
    assert [len(v) for v in out] == [30, 70]
    assert b"".join(bytes(v) for v in out) == bytes(range(100))
    mem.close()


def test_uva_translation_is_per_region(ram: GuestRam) -> None:
    mem = ram.backend_memory()
    r1 = ram.regions[1]
    ram.write(r1.guest_phys_addr + 8, b"uva!")
    assert bytes(mem.uva_view(r1.userspace_addr + 8, 4)) == b"uva!"
    assert mem.uva_to_gpa(r1.userspace_addr + 8) == r1.guest_phys_addr + 8
    # a UVA range running off the end of region 0 is refused even though the GPAs continue
    r0 = ram.regions[0]
    assert mem.uva_view(r0.userspace_addr + r0.memory_size - 2, 4) is None
    assert mem.uva_view(r0.guest_phys_addr, 4) is None  # a GPA is not a UVA
    mem.close()


def test_overlapping_regions_rejected() -> None:
    a = memoryview(bytearray(PAGE))
    b = memoryview(bytearray(PAGE))
    with pytest.raises(GuestMemoryError, match="overlap"):
        GuestMemory([MemoryRegion(0, PAGE, 0x1000000, a), MemoryRegion(PAGE // 2, PAGE, 0x2000000, b)])
    with pytest.raises(GuestMemoryError, match="overlap"):
        GuestMemory([MemoryRegion(0, PAGE, 0x1000000, a), MemoryRegion(PAGE, PAGE, 0x1000800, b)])


def test_map_fds_rejects_region_past_end_of_file(ram: GuestRam) -> None:
    with pytest.raises(GuestMemoryError, match="beyond"):
        GuestMemory.map_fds([(0, 8 * PAGE, 0x7F0000000000, 0)], [ram.fd])


@settings(max_examples=300, deadline=None)
@given(st.integers(-10, 2**64 + 10), st.integers(-10, 6 * PAGE))
def test_views_never_leave_the_regions(gpa: int, length: int) -> None:
    bufs = [bytearray(PAGE), bytearray(PAGE)]
    mem = GuestMemory([MemoryRegion(0x10000, PAGE, 0x7F00000000, memoryview(bufs[0])),
                       MemoryRegion(0x11000, PAGE, 0x7E00000000, memoryview(bufs[1]))])
    out: list[memoryview] = []
    ok = mem.append_views(out, gpa, length)
    inside = 0 <= length and 0x10000 <= gpa and gpa + length <= 0x12000
    assert ok == (inside or (length == 0 and 0 <= gpa <= 2**64))
    if ok:
        assert sum(len(v) for v in out) == length
    v = mem.view(gpa, length)
    if v is not None:
        assert len(v) == length and (0x10000 <= gpa and gpa + length <= 0x12000)


def test_unaligned_mmap_offset(ram: GuestRam) -> None:
    ram.mem[5000:5004] = b"abcd"
    mem = GuestMemory.map_fds([(0x40000, PAGE, 0x7F0000000000, 5000)], [ram.fd])
    assert bytes(mem.view(0x40000, 4)) == b"abcd"
    assert mem.view(0x40000 + PAGE - 1, 2) is None
    mem.close()
