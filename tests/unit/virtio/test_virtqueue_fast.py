"""The fast chain reader (`SplitVirtqueue._simple`) against the general walker (`_walk`) on the same rings.

`_simple` may decline any chain (None: the walker decides), but a chain it accepts must be exactly the walker's:
the same head, the same views (same guest bytes, by address), no error. The common shapes must be accepted,
else the fast path would be dead code. tests/hardening/test_fuzz_virtqueue.py checks pop_all, which goes through
both, against an independent reference walker.
"""

from __future__ import annotations

import ctypes
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vhostscsi.hostdriver.guestram import GuestRam
from vhostscsi.hostdriver.vring import Desc, DriverRing
from vhostscsi.virtio.virtqueue import (
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    SplitVirtqueue,
)

PAGE = 4096
SIZE = 8
_DESC = struct.Struct("<QIHH")


class Rig:
    def __init__(self) -> None:
        self.ram = GuestRam(32 * PAGE, regions=2)  # two regions: some buffers straddle or sit in the other
        self.drv = DriverRing(self.ram, SIZE)
        self.mem = self.ram.backend_memory()
        self.table_gpa = self.ram.alloc(16 * 20, 16)
        self.bufs = self.ram.alloc(4 * PAGE, PAGE)


RIG = Rig()
STATS = {"accepted": 0, "declined": 0}


def where(v: memoryview) -> tuple[int, int]:
    if not len(v):
        return (0, 0)
    return ctypes.addressof(ctypes.c_char.from_buffer(v)), len(v)


def same(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and a[3] == b[3] and [where(v) for v in a[1]] == [where(v) for v in b[1]] \
        and [where(v) for v in a[2]] == [where(v) for v in b[2]]


def vq_for(indirect: bool) -> SplitVirtqueue:
    d, u, a = RIG.drv.uvas()
    return SplitVirtqueue.from_uva(RIG.mem, SIZE, d, a, u, indirect=indirect)


@st.composite
def descs(draw: st.DrawFn, n_max: int) -> list[tuple[int, int, int, int]]:
    """A well-formed chain (readable then writable buffers, small, in memory, NEXT to the following entry), then
    up to two fields made hostile: both accepted chains and near misses are common."""
    n = draw(st.integers(1, n_max))
    split = draw(st.integers(0, n))  # entries from here on are writable
    entries = [[draw(st.integers(0, 4 * PAGE)), draw(st.sampled_from([0, 1, 16, 51, 108, 512, 4096])),
                (VRING_DESC_F_WRITE if k >= split else 0) | (VRING_DESC_F_NEXT if k < n - 1 else 0), k + 1]
               for k in range(n)]
    hostile = (
        st.one_of(st.integers(0, 4 * PAGE), st.sampled_from([16 * PAGE - 8, 16 * PAGE, 2**64 - 1])),
        st.one_of(st.sampled_from([0, 1, 16 * PAGE, 2**31]), st.integers(0, 2**32 - 1)),
        st.one_of(st.integers(0, 3), st.sampled_from([4, 5, 8, 9, 0x8001]), st.integers(0, 0xFFFF)),
        st.one_of(st.integers(0, 5), st.integers(0, 0xFFFF)),
    )
    for _ in range(draw(st.integers(0, 2))):
        k = draw(st.integers(0, n - 1))
        field = draw(st.integers(0, 4))
        if field == 4:  # the direction flipped: a readable buffer after a writable one, or the reverse
            entries[k][2] ^= VRING_DESC_F_WRITE
        else:
            entries[k][field] = draw(hostile[field])
    return [tuple(e) for e in entries]  # type: ignore[misc]


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(descs(SIZE), st.one_of(st.just([]), descs(18)), st.booleans(),
       st.integers(0, SIZE - 1), st.booleans())
def test_fast_reader_accepts_only_what_the_walker_would_return(ring: list, table: list, indirect_head: bool,
                                                               head: int, feature: bool) -> None:
    base = RIG.bufs
    for k, (off, length, flags, nxt) in enumerate(table):
        addr = (base + off) % 2**64 if off < 2**63 else off
        RIG.ram.write(RIG.table_gpa + 16 * k, _DESC.pack(addr, length, flags, nxt))
    for k, (off, length, flags, nxt) in enumerate(ring):
        addr = (base + off) % 2**64 if off < 2**63 else off
        RIG.drv.write_desc(k, Desc(addr, length, flags, nxt))
    if indirect_head:
        RIG.drv.write_desc(head, Desc(RIG.table_gpa, 16 * len(table), VRING_DESC_F_INDIRECT, 0))
    vq = vq_for(feature)
    fast = vq._simple(head)
    if fast is None:
        STATS["declined"] += 1
        return
    STATS["accepted"] += 1
    assert same(fast, vq._walk(head))


def test_the_comparison_saw_accepted_chains() -> None:
    if not sum(STATS.values()):
        import pytest
        pytest.skip("the property test did not run in this session")
    print(f"fast reader: {STATS}")
    assert STATS["accepted"] > 50, STATS


def _chain(rig_indirect: bool, out: list[int], ins: list[int]) -> tuple:
    ram = GuestRam(16 * PAGE)
    drv = DriverRing(ram, SIZE)
    mem = ram.backend_memory()
    d, u, a = drv.uvas()
    vq = SplitVirtqueue.from_uva(mem, SIZE, d, a, u)
    drv.add([(ram.alloc(n), n) for n in out], [(ram.alloc(n), n) for n in ins], indirect=rig_indirect)
    batch = vq.pop_batch()
    assert len(batch) == 1 and batch[0][3] is None
    head = batch[0][0]
    return vq._simple(head), vq._walk(head)


def test_common_shapes_take_the_fast_reader() -> None:
    for indirect in (True, False):
        for out, ins in (([51], [108, 4096]), ([51, 4096], [108]), ([51], [108]), ([51, 512, 512], [108]),
                         ([51], [108] + [4096] * 5), ([51, 4096, 4096], [])):
            fast, slow = _chain(indirect, out, ins)
            assert fast is not None, (indirect, out, ins)
            assert same(fast, slow)
            assert [len(v) for v in fast[1]] == out and [len(v) for v in fast[2]] == ins


def test_flags_the_fast_reader_leaves_to_the_walker() -> None:
    ram = GuestRam(16 * PAGE)
    drv = DriverRing(ram, SIZE)
    mem = ram.backend_memory()
    d, u, a = drv.uvas()
    vq = SplitVirtqueue.from_uva(mem, SIZE, d, a, u)
    buf = ram.alloc(64)
    cases = [
        [Desc(buf, 8, VRING_DESC_F_NEXT | 8, 1), Desc(buf, 8, VRING_DESC_F_WRITE, 0)],  # an unknown flag bit
        [Desc(buf, 8, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1), Desc(buf, 8, 0, 0)],  # readable after writable
        [Desc(buf, 8, VRING_DESC_F_NEXT, 0)],  # loops
        [Desc(2**40, 8, 0, 0)],  # outside memory
    ]
    for descs in cases:
        head = drv.add_raw(descs, head=0)
        assert vq._simple(head) is None
        assert vq.pop_batch()[0][3] is not None or descs[0].flags & 8
