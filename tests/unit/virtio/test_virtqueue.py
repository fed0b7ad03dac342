"""Split virtqueue, device side, against a driver-side ring in real shared memory."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vhostscsi.hostdriver.guestram import GuestRam
from vhostscsi.hostdriver.vring import Desc, DriverRing
from vhostscsi.virtio.inflight import InflightQueue, attach_inflight, inflight_queue_bytes
from vhostscsi.virtio.virtqueue import (
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    SplitVirtqueue,
    VirtqueueError,
    vring_need_event,
)

PAGE = 4096


class Pair:
    """A driver ring and the device's view of it over the same memfd."""

    def __init__(self, size: int = 8, *, event_idx: bool = False, regions: int = 1, ram_pages: int = 16) -> None:
        self.ram = GuestRam(ram_pages * PAGE, regions=regions)
        self.drv = DriverRing(self.ram, size, event_idx=event_idx)
        self.mem = self.ram.backend_memory()
        d, u, a = self.drv.uvas()
        self.vq = SplitVirtqueue.from_uva(self.mem, size, d, a, u, event_idx=event_idx)

    def buf(self, data: bytes | int) -> tuple[int, int]:
        n = data if isinstance(data, int) else len(data)
        gpa = self.ram.alloc(n)
        if not isinstance(data, int):
            self.ram.write(gpa, data)
        return gpa, n


@pytest.fixture
def pair():
    return Pair()


def test_pop_chain_in_order_and_complete(pair: Pair) -> None:
    req, data, resp = pair.buf(b"REQ"), pair.buf(b"payload"), pair.buf(16)
    head = pair.drv.add([req, data], [resp])
    assert pair.vq.has_avail()
    chain = pair.vq.pop()
    assert chain is not None and chain.error is None and chain.head == head
    assert [bytes(v) for v in chain.out] == [b"REQ", b"payload"]
    assert [len(v) for v in chain.in_] == [16]
    chain.in_[0][:4] = b"DONE"
    assert pair.vq.pop() is None
    pair.vq.push(chain.head, 4)
    assert pair.drv.get_used() == [(head, 4)]
    assert pair.ram.read(resp[0], 4) == b"DONE"


def test_used_ring_bytes(pair: Pair) -> None:
    head = pair.drv.add([pair.buf(b"x")], [])
    pair.vq.pop()
    pair.vq.push(head, 0x01020304)
    used = pair.ram.read(pair.drv.used_gpa, 12)
    assert used == struct.pack("<HHII", 0, 1, head, 0x01020304)


def test_indirect_chain(pair: Pair) -> None:
    head = pair.drv.add([pair.buf(b"abc")], [pair.buf(8), pair.buf(4)], indirect=True)
    chain = pair.vq.pop()
    assert chain.error is None and chain.head == head
    assert [bytes(v) for v in chain.out] == [b"abc"] and [len(v) for v in chain.in_] == [8, 4]


def test_chain_straddling_regions() -> None:
    p = Pair(regions=2)
    gpa = p.ram.alloc_straddling(64, 10)
    p.ram.write(gpa, bytes(range(64)))
    p.drv.add([(gpa, 64)], [])
    chain = p.vq.pop()
    assert chain.error is None and [len(v) for v in chain.out] == [10, 54]
    assert b"".join(map(bytes, chain.out)) == bytes(range(64))


@pytest.mark.parametrize(
    "descs, reason",
    [
        ([Desc(0xDEAD0000000, 16)], "outside guest memory"),
        ([Desc(2**64 - 4, 16)], "outside guest memory"),
        ([Desc(0x1000, 16, VRING_DESC_F_NEXT, 1), Desc(0x1000, 16, VRING_DESC_F_NEXT, 0)], "loops"),
        ([Desc(0x1000, 16, VRING_DESC_F_NEXT, 99)], "beyond table"),
        ([Desc(0x1000, 16, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1), Desc(0x1000, 16)], "readable descriptor after"),
        ([Desc(0x1000, 24, VRING_DESC_F_INDIRECT)], "multiple of 16"),
        ([Desc(0x1000, 16, VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT, 1), Desc(0x1000, 1)], "NEXT"),
    ],
)
def test_bad_chains_fail_the_request_not_the_ring(pair: Pair, descs: list[Desc], reason: str) -> None:
    head = pair.drv.add_raw(descs)
    chain = pair.vq.pop()
    assert chain is not None and chain.head == head
    assert chain.error is not None and reason in chain.error
    assert not pair.vq.broken
    pair.vq.push(chain.head, 0)
    good = pair.drv.add([pair.buf(b"ok")], [])
    assert pair.vq.pop().error is None and pair.drv.get_used()[0].head == head and good is not None


def test_chain_longer_than_ring_is_refused(pair: Pair) -> None:
    descs = [Desc(0x1000, 1, VRING_DESC_F_NEXT, (k + 1) % 8) for k in range(8)]
    pair.drv.add_raw(descs, head=0)
    assert "loops" in pair.vq.pop().error


def test_indirect_inside_indirect(pair: Pair) -> None:
    inner = pair.ram.alloc(16)
    pair.drv.write_desc(0, Desc(0, 0))
    struct.pack_into("<QIHH", pair.ram.view(inner, 16), 0, inner, 16, VRING_DESC_F_INDIRECT, 0)
    pair.drv.add_raw([Desc(inner, 16, VRING_DESC_F_INDIRECT)])
    assert "inside an indirect" in pair.vq.pop().error


def test_avail_idx_jump_breaks_ring(pair: Pair) -> None:
    pair.drv.set_avail_idx(100)
    assert pair.vq.pop() is None and pair.vq.broken and "more than the ring size" in pair.vq.broken_reason


def test_head_beyond_table_breaks_ring(pair: Pair) -> None:
    pair.drv.publish_raw_head(4000)
    assert pair.vq.pop() is None and pair.vq.broken


def test_index_wraparound() -> None:
    p = Pair(size=4)
    # start both sides near the 16-bit wrap point as after a long uptime
    start = 0xFFFE
    p.drv.avail_idx = start
    p.drv._avail[1] = start
    p.drv._used[1] = start
    p.drv.last_used = start
    d, u, a = p.drv.uvas()
    p.vq = SplitVirtqueue.from_uva(p.mem, 4, d, a, u, last_avail_idx=start)
    seen = []
    for round_ in range(5):
        heads = [p.drv.add([p.buf(bytes([round_, k]))], []) for k in range(3)]
        chains = p.vq.pop_all()
        assert [c.head for c in chains] == heads
        for c in chains:
            seen.append(bytes(c.out[0]))
            p.vq.push(c.head, 0)
        assert [u.head for u in p.drv.get_used()] == heads
    assert p.vq.last_avail_idx == (start + 15) & 0xFFFF == p.vq.used_idx
    assert seen[0] == b"\0\0" and len(seen) == 15


def test_event_idx_avail_event_and_should_notify() -> None:
    p = Pair(event_idx=True)
    heads = [p.drv.add([p.buf(b"a")], []) for _ in range(3)]
    assert p.drv.need_kick()
    p.vq.disable_notifications()
    chains = p.vq.pop_all()
    assert not p.vq.enable_notifications()
    assert p.drv.avail_event() == 3  # kick me when you publish entry 3
    p.drv.set_used_event(0)  # driver wants an interrupt after the first completion
    p.vq.push(chains[0].head, 0)
    assert p.vq.should_notify()  # first decision is always yes
    p.vq.push(chains[1].head, 0)
    p.drv.set_used_event(5)
    assert not p.vq.should_notify()  # used idx 2 has not passed 5
    p.vq.push(chains[2].head, 0)
    p.drv.set_used_event(2)
    assert p.vq.should_notify()  # moved from 2 to 3, crossing event 2
    assert [u.head for u in p.drv.get_used()] == heads


def test_enable_notifications_reports_late_arrivals() -> None:
    p = Pair(event_idx=True)
    p.drv.add([p.buf(b"a")], [])
    p.vq.disable_notifications()
    assert len(p.vq.pop_all()) == 1
    p.drv.add([p.buf(b"b")], [])  # arrives while notifications were off
    assert p.vq.enable_notifications() is True
    assert len(p.vq.pop_all()) == 1


def test_no_event_idx_flags() -> None:
    p = Pair()
    p.vq.disable_notifications()
    p.drv.add([p.buf(b"a")], [])
    assert not p.drv.need_kick()
    assert p.vq.enable_notifications() is True  # one arrived while kicks were off
    p.vq.pop_all()
    assert p.vq.enable_notifications() is False
    p.drv.add([p.buf(b"a")], [])
    assert p.drv.need_kick()
    p.vq.push(p.vq.pop().head, 0)
    p.drv.set_no_interrupt(True)
    assert not p.vq.should_notify()
    p.drv.set_no_interrupt(False)
    p.vq.push(0, 0)
    assert p.vq.should_notify()


def test_vring_need_event_wraps() -> None:
    assert vring_need_event(0xFFFF, 0, 0xFFFE)
    assert not vring_need_event(5, 0, 0xFFFE)


def test_bad_ring_setup() -> None:
    p = Pair()
    with pytest.raises(VirtqueueError):
        SplitVirtqueue.from_uva(p.mem, 6, *p.drv.uvas())
    with pytest.raises(VirtqueueError, match="outside"):
        SplitVirtqueue.from_uva(p.mem, 8, 0x1000, 0x2000, 0x3000)


def test_inflight_records_and_recovers() -> None:
    p = Pair()
    area = memoryview(bytearray(inflight_queue_bytes(8)))
    iq = InflightQueue(area, 8, features=1 << 32)
    assert struct.unpack_from("<QHH", area, 0) == (1 << 32, 1, 8)
    p.vq.inflight = iq
    heads = [p.drv.add([p.buf(bytes([k]))], []) for k in range(3)]
    chains = p.vq.pop_all()
    p.vq.push(chains[1].head, 0)  # only the middle one completes before the "crash"
    # a new back end process attaches the same area to a fresh view of the same ring
    d, u, a = p.drv.uvas()
    vq2 = SplitVirtqueue.from_uva(p.mem, 8, d, a, u, last_avail_idx=p.vq.used_idx)
    resub = attach_inflight(vq2, InflightQueue(area, 8, features=1 << 32))
    assert [c.head for c in resub] == [heads[0], heads[2]]
    assert [bytes(c.out[0]) for c in resub] == [b"\0", b"\2"]
    assert vq2.last_avail_idx == 3 and vq2.pop() is None


def test_inflight_repairs_interrupted_push() -> None:
    p = Pair()
    area = memoryview(bytearray(inflight_queue_bytes(8)))
    p.vq.inflight = InflightQueue(area, 8, 0)
    h = p.drv.add([p.buf(b"z")], [])
    p.vq.pop()
    p.vq.inflight.before_push(h)
    p.vq.inflight = None
    p.vq.push(h, 0)  # used.idx published, region not updated: as if killed right there
    d, u, a = p.drv.uvas()
    vq2 = SplitVirtqueue.from_uva(p.mem, 8, d, a, u)
    assert attach_inflight(vq2, InflightQueue(area, 8, 0)) == []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(0, 2**64 - 1) | st.integers(0, 64 * PAGE), st.integers(0, 2**32 - 1) | st.integers(0, 256),
                  st.integers(0, 7), st.integers(0, 20)),
        min_size=8, max_size=8,
    ),
    st.lists(st.integers(0, 20), min_size=1, max_size=12),
)
def test_random_descriptor_tables_never_escape(descs: list[tuple[int, int, int, int]], heads: list[int]) -> None:
    """Whatever the driver writes, the ring returns chains or breaks; every view lies inside guest RAM."""
    p = Pair(ram_pages=64)
    for i, (a, n, f, nx) in enumerate(descs):
        p.drv.write_desc(i, Desc(a, n, f, nx))
    for h in heads:
        p.drv.publish_raw_head(h)
    base = p.mem.regions[0]
    total = 0
    while True:
        chain = p.vq.pop()
        if chain is None:
            break
        total += 1
        for v in chain.out + chain.in_:
            assert v.obj is base.buf.obj  # a view of the mapped guest RAM, not of anything else
        if chain.error is None:
            assert chain.out_len() + chain.in_len() <= 8 * 64 * PAGE
        p.vq.push(chain.head, 0)
    assert total <= len(heads)
    assert p.vq.broken or total == len(heads)
