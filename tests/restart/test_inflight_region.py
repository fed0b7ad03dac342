"""The in-flight area (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD, split rings), byte for byte and under real kills.

The layout is written here from the vhost-user specification ("Inflight I/O tracking"), independently of
vhostscsi.virtio.inflight: per queue a header (features u64, version u16, desc_num u16, last_batch_head u16,
used_idx u16) and one DescStateSplit per descriptor (inflight u8, padding[5], next u16, counter u64), the
queue's share rounded up to 64 bytes. Rings are real split rings in shared memory (hostdriver.DriverRing on the
driver side, SplitVirtqueue on the device side); "crashes" stop the device code at an exact point (an exception
no code catches) or are real SIGKILLs of a forked device process at random moments.
"""

from __future__ import annotations

import mmap
import os
import random
import signal
import struct
import time

import pytest

from vhostscsi.hostdriver.guestram import GuestRam
from vhostscsi.hostdriver.vring import Desc, DriverRing
from vhostscsi.virtio.inflight import InflightQueue, attach_inflight, inflight_queue_bytes
from vhostscsi.virtio.virtqueue import SplitVirtqueue

HEADER = struct.Struct("<QHHHH")  # features, version, desc_num, last_batch_head, used_idx
DESC = struct.Struct("<B5xHQ")  # inflight, padding, next, counter
FEATURES = (1 << 32) | (1 << 29) | (1 << 28)  # VERSION_1, EVENT_IDX, INDIRECT_DESC
PAGE = 4096


def queue_bytes(size: int) -> int:
    return (HEADER.size + DESC.size * size + 63) // 64 * 64


def region(size: int, *, header: tuple[int, int, int, int, int], states: dict[int, tuple[int, int]]) -> bytes:
    """The exact bytes the spec prescribes: header, then (inflight, counter) for the listed heads, zeros else."""
    out = bytearray(queue_bytes(size))
    HEADER.pack_into(out, 0, *header)
    for head, (inflight, counter) in states.items():
        DESC.pack_into(out, HEADER.size + DESC.size * head, inflight, 0, counter)
    return bytes(out)


def counter_of(area: memoryview | bytearray, head: int) -> int:
    value: int = DESC.unpack_from(area, HEADER.size + DESC.size * head)[2]
    return value


class Crash(BaseException):
    """Not an Exception: nothing in the device code catches it, as nothing survives a SIGKILL."""


class Ring:
    """A driver ring and its shared in-flight area; `device()` is a (new) back-end process's view of both."""

    def __init__(self, size: int = 8, event_idx: bool = False) -> None:
        self.size = size
        self.ram = GuestRam(32 * PAGE)
        self.drv = DriverRing(self.ram, size, event_idx=event_idx)
        self.mem = self.ram.backend_memory()
        self.area = mmap.mmap(-1, queue_bytes(size))  # MAP_SHARED: a forked child writes the same bytes
        self.ids: dict[int, int] = {}  # head -> request number, while the driver has it outstanding
        self.next_id = 0

    def device(self, inflight_cls: type[InflightQueue] = InflightQueue) -> tuple[SplitVirtqueue, list]:
        """A new back end: QEMU restarts the ring at the used index (SET_VRING_BASE), hands over the area."""
        d, u, a = self.drv.uvas()
        vq = SplitVirtqueue.from_uva(self.mem, self.size, d, a, u, last_avail_idx=self.drv.used_idx(),
                                     event_idx=self.drv.event_idx)
        return vq, attach_inflight(vq, inflight_cls(memoryview(self.area), self.size, FEATURES))

    def add(self, head: int | None = None) -> int:
        """One request whose readable buffer holds its number; returns the head."""
        gpa = self.ram.alloc(8)
        self.ram.write(gpa, struct.pack("<Q", self.next_id))
        if head is None:
            head = self.drv.add([(gpa, 8)], [(self.ram.alloc(16), 16)])
        else:
            head = self.drv.add_raw([Desc(gpa, 8, 0, 0)], head=head)
        self.ids[head] = self.next_id
        self.next_id += 1
        return head

    def completed(self) -> list[int]:
        """Request numbers the driver received back since last asked, in used-ring order."""
        return [self.ids.pop(u.head) for u in self.drv.get_used()]


def number(chain) -> int:
    value: int = struct.unpack("<Q", bytes(chain.out[0][:8]))[0]
    return value


# ---- the layout ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 3, 8, 128, 256, 1024, 32768])
def test_queue_share_is_header_plus_states_rounded_to_64(size: int) -> None:
    assert inflight_queue_bytes(size) == queue_bytes(size)
    assert inflight_queue_bytes(size) % 64 == 0


def test_region_bytes_through_pop_and_push() -> None:
    r = Ring(8)
    vq, resubmit = r.device()
    assert resubmit == []
    # A zeroed area (a fresh memfd) gets the header: features, version 1, desc_num = queue size.
    assert bytes(r.area) == region(8, header=(FEATURES, 1, 8, 0, 0), states={})
    heads = [r.add(h) for h in (5, 2, 7)]
    chains = vq.pop_all()
    c = counter_of(r.area, 5)
    assert bytes(r.area) == region(8, header=(FEATURES, 1, 8, 0, 0), states={5: (1, c), 2: (1, c + 1), 7: (1, c + 2)})
    vq.push(chains[1].head, 0)  # head 2 completes first (out of order)
    assert bytes(r.area) == region(8, header=(FEATURES, 1, 8, 2, 1), states={5: (1, c), 2: (0, c + 1), 7: (1, c + 2)})
    vq.push(chains[2].head, 0)
    vq.push(chains[0].head, 0)
    assert bytes(r.area) == region(8, header=(FEATURES, 1, 8, 5, 3), states={5: (0, c), 2: (0, c + 1), 7: (0, c + 2)})
    assert [u.head for u in r.drv.get_used()] == [2, 7, 5] and heads == [5, 2, 7]


# ---- recovery ------------------------------------------------------------------------------------------------


def test_resubmission_follows_the_order_requests_were_taken_not_descriptor_numbers() -> None:
    r = Ring(8)
    vq, _ = r.device()
    for h in (5, 2, 7, 0):
        r.add(h)
    vq.pop_all()
    # A head completed and reused is taken again later: it must come after the ones taken before it.
    vq.push(2, 0)
    assert r.completed() == [1]
    r.add(2)
    vq.pop_all()
    # crash here; a new process attaches the same area
    vq2, resubmit = r.device()
    assert [c.head for c in resubmit] == [5, 7, 0, 2]
    assert [number(c) for c in resubmit] == [0, 2, 3, 4]
    assert vq2.pop() is None  # nothing taken before the crash is taken again from the avail ring
    for c in resubmit:
        vq2.push(c.head, 0)
    assert r.completed() == [0, 2, 3, 4]  # each exactly once, oldest first
    assert bytes(r.area)[:16] == region(8, header=(FEATURES, 1, 8, 2, 5), states={})[:16]


def test_request_completed_just_before_the_crash_is_not_replayed() -> None:
    r = Ring(8)
    vq, _ = r.device()
    for _ in range(3):
        r.add()
    a, b, c = vq.pop_all()
    vq.push(a.head, 0)
    vq.push(c.head, 0)  # the last thing the process did before dying
    vq2, resubmit = r.device()
    assert [number(x) for x in resubmit] == [1]
    for x in resubmit:
        vq2.push(x.head, 0)
    assert r.completed() == [0, 2, 1]
    assert vq2.pop() is None


class CrashAfterUsedIdx(InflightQueue):
    """Dies right after used.idx was published, before the in-flight flag is cleared: a torn push."""

    def after_push(self, head: int, used_idx: int) -> None:
        raise Crash()


class CrashBeforeUsedElem(InflightQueue):
    """Dies after noting the batch head, before the used element and used.idx are written."""

    def before_push(self, head: int) -> None:
        super().before_push(head)
        raise Crash()


class CrashInRecord(InflightQueue):
    """Dies while marking a head in flight: the counter is written (spec offset 8), the flag is not."""

    def record_pop(self, head: int) -> None:
        struct.pack_into("<Q", self.buf, HEADER.size + DESC.size * head + 8, 999)
        raise Crash()


def test_torn_push_after_used_idx_is_repaired_not_replayed() -> None:
    r = Ring(8)
    vq, _ = r.device(CrashAfterUsedIdx)
    r.add(3)
    r.add(6)
    vq.pop_all()
    with pytest.raises(Crash):
        vq.push(6, 0)
    c = counter_of(r.area, 3)
    # Torn: used.idx says 1 (the guest may already have seen head 6 complete), the area still says 0 and 6 in flight.
    assert r.drv.used_idx() == 1
    assert bytes(r.area) == region(8, header=(FEATURES, 1, 8, 6, 0), states={3: (1, c), 6: (1, c + 1)})
    vq2, resubmit = r.device()
    assert [c.head for c in resubmit] == [3]  # 6 is done: running it again would complete it twice
    assert bytes(r.area)[:16] == region(8, header=(FEATURES, 1, 8, 6, 1), states={})[:16]
    assert r.area[HEADER.size + DESC.size * 6] == 0
    vq2.push(3, 0)
    assert r.completed() == [1, 0]


def test_torn_push_before_the_used_element_runs_the_request_again() -> None:
    r = Ring(8)
    vq, _ = r.device(CrashBeforeUsedElem)
    r.add(4)
    vq.pop_all()
    with pytest.raises(Crash):
        vq.push(4, 0)
    assert r.drv.used_idx() == 0  # the guest never saw it complete
    vq2, resubmit = r.device()
    assert [c.head for c in resubmit] == [4]
    vq2.push(4, 0)
    assert r.completed() == [0]


def test_torn_record_leaves_the_request_in_the_avail_ring_for_the_next_process() -> None:
    r = Ring(8)
    vq, _ = r.device()
    r.add(1)
    vq.pop_all()
    vq.inflight = CrashInRecord(memoryview(r.area), 8, FEATURES)
    r.add(2)
    with pytest.raises(Crash):
        vq.pop_all()
    vq2, resubmit = r.device()
    assert [c.head for c in resubmit] == [1]  # recorded: resubmitted
    again = vq2.pop_all()
    assert [c.head for c in again] == [2]  # half-recorded: taken from the ring again, once
    assert counter_of(r.area, 2) > counter_of(r.area, 1)  # and ordered after everything recorded before
    for c in resubmit + again:
        vq2.push(c.head, 0)
    assert r.completed() == [0, 1] and vq2.pop() is None


def test_area_for_another_queue_size_is_reset_not_trusted() -> None:
    r = Ring(8)
    HEADER.pack_into(r.area, 0, FEATURES, 1, 16, 0, 0)  # left by a ring of 16: its states mean nothing here
    r.area[HEADER.size + DESC.size * 3] = 1
    vq, resubmit = r.device()
    assert resubmit == []
    assert bytes(r.area) == region(8, header=(FEATURES, 1, 8, 0, 0), states={})


# ---- real kills ------------------------------------------------------------------------------------------------


def _device_process(r: Ring, seed: int) -> None:
    """A back end in a forked child: takes everything, completes a random subset in random order, forever."""
    try:
        vq, resubmit = r.device()
        rng = random.Random(seed)
        held = list(resubmit)
        while True:
            held += vq.pop_all()
            rng.shuffle(held)
            k = rng.randint(0, len(held))
            for chain in held[:k]:
                vq.push(chain.head, 0)
            held = held[k:]
    finally:
        os._exit(0)


def test_sigkill_at_random_moments_loses_nothing_and_runs_nothing_twice() -> None:
    """300 back-end processes killed with SIGKILL at random points of pop/complete: every request is completed
    once, and what the dead one had taken is resubmitted oldest first."""
    r = Ring(16)
    rng = random.Random(int(os.environ.get("VHOSTSCSI_RESTART_SEED", "9")))
    done: list[int] = []
    torn = resubmitted = 0
    for trial in range(300):
        while r.drv.free:
            r.add()
        pid = os.fork()
        if pid == 0:
            _device_process(r, trial)
        time.sleep(rng.uniform(0, 0.002))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        done += r.completed()
        torn += HEADER.unpack_from(r.area, 0)[4] != r.drv.used_idx()
        vq, resubmit = r.device()  # this process is the next back end
        numbers = [number(c) for c in resubmit]
        assert numbers == sorted(numbers), f"trial {trial}: resubmitted out of order: {numbers}"
        assert not set(numbers) & set(done), f"trial {trial}: completed requests resubmitted"
        resubmitted += len(numbers)
        for c in resubmit:
            vq.push(c.head, 0)
        done += r.completed()
    while r.ids:  # finish: one last clean back end takes what is left
        vq, resubmit = r.device()
        for c in resubmit + vq.pop_all():
            vq.push(c.head, 0)
        done += r.completed()
    assert sorted(done) == list(range(r.next_id)), "a request was lost or completed twice"
    assert resubmitted > 0
    print(f"{r.next_id} requests, {resubmitted} resubmitted after SIGKILL, {torn} torn pushes repaired")
