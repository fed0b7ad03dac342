"""Device side of a split virtqueue (virtio 1.x, 2.7) over mapped guest memory.

Sans-I/O: it reads the driver's rings and writes the used ring through memoryviews, nothing else. The engine
owns the eventfds; it asks `should_notify()` whether to signal the call fd after a batch.

The guest is untrusted. Every descriptor is bounds-checked through `GuestMemory`; a malformed chain (address
outside memory, loop, chain longer than the table, indirect inside indirect, readable after writable) yields a
`Chain` with `error` set so the caller completes it as failed. Only damage that makes the ring itself unusable
(avail index jumping by more than the ring size, a head index beyond the table) sets `broken`: the device then
needs a reset, which the engine reports through the error eventfd.

Memory ordering: indices are read/written through memoryview casts (single 16/32-bit accesses). Used elements
are written before used.idx (x86 keeps store order). Store-then-load sequences go through the ring's own `Fence`.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from vhostscsi.virtio.barrier import Fence
from vhostscsi.virtio.memory import GuestMemory

if TYPE_CHECKING:
    from vhostscsi.virtio.inflight import InflightQueue

VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4
VRING_USED_F_NO_NOTIFY = 1
VRING_AVAIL_F_NO_INTERRUPT = 1
MAX_QUEUE_SIZE = 32768

_DESC = struct.Struct("<QIHH")
_unpack_desc = _DESC.unpack_from


class VirtqueueError(ValueError):
    """The ring cannot be set up (size not a power of two, ring outside memory)."""


class Chain:
    """One request taken from the avail ring: its head index and the guest buffers, split by direction.

    `out` are driver-to-device (readable) buffers, `in_` device-to-driver (writable) ones, in chain order, as
    views of guest memory (no copies). `error` is None for a good chain, else a short reason.
    """

    __slots__ = ("head", "out", "in_", "error")

    def __init__(self, head: int) -> None:
        self.head = head
        self.out: list[memoryview] = []
        self.in_: list[memoryview] = []
        self.error: str | None = None

    def in_len(self) -> int:
        return sum(len(v) for v in self.in_)

    def out_len(self) -> int:
        return sum(len(v) for v in self.out)

    def __repr__(self) -> str:
        return f"Chain(head={self.head}, out={self.out_len()}, in={self.in_len()}, error={self.error!r})"


def ring_sizes(size: int) -> tuple[int, int, int]:
    """Bytes of the descriptor table, avail ring and used ring for a queue of `size` (with the event words)."""
    return 16 * size, 6 + 2 * size, 6 + 8 * size


def vring_need_event(event_idx: int, new_idx: int, old_idx: int) -> bool:
    """The spec's test: has the index crossed `event_idx` while moving from old to new (mod 2**16)?"""
    return ((new_idx - event_idx - 1) & 0xFFFF) < ((new_idx - old_idx) & 0xFFFF)


class SplitVirtqueue:
    """One split ring. Not thread-safe: one engine thread owns it at a time."""

    __slots__ = (
        "memory", "size", "event_idx", "indirect", "last_avail_idx", "used_idx", "broken", "broken_reason",
        "_desc", "_avail", "_used", "_used_u32", "_mask", "_signalled_used", "_signalled_valid",
        "_notifications_enabled", "inflight", "_fence",
    )

    def __init__(
        self,
        memory: GuestMemory,
        size: int,
        desc: memoryview,
        avail: memoryview,
        used: memoryview,
        *,
        event_idx: bool = False,
        indirect: bool = True,
        last_avail_idx: int = 0,
    ) -> None:
        if size <= 0 or size > MAX_QUEUE_SIZE or size & (size - 1):
            raise VirtqueueError(f"queue size {size} is not a power of two up to {MAX_QUEUE_SIZE}")
        dsz, asz, usz = ring_sizes(size)
        if len(desc) < dsz or len(avail) < asz or len(used) < usz:
            raise VirtqueueError("ring views are smaller than the queue size requires")
        self.memory = memory
        self.size = size
        self.event_idx = event_idx
        self.indirect = indirect
        self._mask = size - 1
        self._desc = desc[:dsz]
        self._avail = avail[:asz].cast("H")
        self._used = used[:usz].cast("H")
        self._used_u32 = used[4 : 4 + 8 * size].cast("I")
        self.last_avail_idx = last_avail_idx & 0xFFFF
        # The device's view of used.idx: start from what is in memory (it equals last_avail_idx after a clean
        # SET_VRING_BASE, and is the truth after a back-end restart with requests in flight).
        self.used_idx = self._used[1]
        self.broken = False
        self.broken_reason = ""
        self._signalled_used = self.used_idx
        self._signalled_valid = False
        self._notifications_enabled = True
        self.inflight: InflightQueue | None = None
        self._fence = Fence()
        self.arm_event_idx()

    def arm_event_idx(self) -> None:
        """(EVENT_IDX) Ask for a kick on the next buffer. A previous back end may have left avail_event anywhere (it died
        with kicks disabled); the engine still drains the ring once after start for buffers already there."""
        if self.event_idx:
            self._used[2 + 4 * self.size] = self.last_avail_idx

    @classmethod
    def from_uva(
        cls, memory: GuestMemory, size: int, desc_uva: int, avail_uva: int, used_uva: int, **kw: object
    ) -> "SplitVirtqueue":
        """Build from the front end's virtual addresses (SET_VRING_ADDR); each ring must sit in one region."""
        if size <= 0 or size > MAX_QUEUE_SIZE or size & (size - 1):
            raise VirtqueueError(f"queue size {size} is not a power of two up to {MAX_QUEUE_SIZE}")
        dsz, asz, usz = ring_sizes(size)
        views = []
        for name, uva, n in (("descriptor table", desc_uva, dsz), ("avail ring", avail_uva, asz),
                             ("used ring", used_uva, usz)):
            v = memory.uva_view(uva, n)
            if v is None:
                raise VirtqueueError(f"{name} at {uva:#x} (+{n:#x}) is outside guest memory")
            views.append(v)
        return cls(memory, size, views[0], views[1], views[2], **kw)  # type: ignore[arg-type]

    # ---- avail side -------------------------------------------------------------------------------------------

    def _break(self, reason: str) -> None:
        self.broken = True
        self.broken_reason = reason

    def avail_idx(self) -> int:
        return self._avail[1]

    def has_avail(self) -> bool:
        return not self.broken and self._avail[1] != self.last_avail_idx

    def pop(self) -> Chain | None:
        """Take the next available chain, or None if the ring is empty (or broken)."""
        if self.broken:
            return None
        avail_idx = self._avail[1]
        last = self.last_avail_idx
        if avail_idx == last:
            return None
        if ((avail_idx - last) & 0xFFFF) > self.size:
            self._break(f"avail index moved from {last} to {avail_idx}, more than the ring size {self.size}")
            return None
        head = self._avail[2 + (last & self._mask)]
        if head >= self.size:
            self._break(f"avail ring names descriptor {head} in a ring of {self.size}")
            return None
        self.last_avail_idx = (last + 1) & 0xFFFF
        if self.event_idx and self._notifications_enabled:
            self._used[2 + 4 * self.size] = self.last_avail_idx
        chain = self.walk(head)
        if self.inflight is not None:
            self.inflight.record_pop(head)
        return chain

    def pop_all(self) -> list[Chain]:
        """Everything available now (one wake-up's batch); avail.idx is read once for the whole batch."""
        if self.broken:
            return []
        avail = self._avail
        avail_idx = avail[1]
        last = self.last_avail_idx
        n = (avail_idx - last) & 0xFFFF
        if not n:
            return []
        size = self.size
        if n > size:
            self._break(f"avail index moved from {last} to {avail_idx}, more than the ring size {size}")
            return []
        mask = self._mask
        walk = self.walk
        inflight = self.inflight
        out: list[Chain] = []
        for k in range(n):
            head = avail[2 + ((last + k) & mask)]
            if head >= size:
                self.last_avail_idx = (last + k) & 0xFFFF
                self._break(f"avail ring names descriptor {head} in a ring of {size}")
                return out
            out.append(walk(head))
            if inflight is not None:
                inflight.record_pop(head)
        self.last_avail_idx = avail_idx
        if self.event_idx and self._notifications_enabled:
            self._used[2 + 4 * size] = avail_idx
        return out

    def walk(self, head: int) -> Chain:
        """Gather the buffers of the chain starting at `head`; errors go into `chain.error`, never raised."""
        chain = Chain(head)
        out = chain.out
        in_ = chain.in_
        memory = self.memory
        table = self._desc
        tbase = 0  # offset of descriptor 0 in `table`
        table_size = self.size
        in_indirect = False
        r_gpa, r_size, r_buf = memory.last
        i = head
        count = 0
        while True:
            if i >= table_size:
                chain.error = f"descriptor index {i} beyond table of {table_size}"
                return chain
            count += 1
            if count > table_size:
                chain.error = "descriptor chain loops or is longer than its table"
                return chain
            addr, length, flags, nxt = _unpack_desc(table, tbase + (i << 4))
            if flags & VRING_DESC_F_INDIRECT:
                if not self.indirect:
                    chain.error = "indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC"
                    return chain
                if in_indirect:
                    chain.error = "indirect descriptor inside an indirect table"
                    return chain
                if flags & VRING_DESC_F_NEXT:
                    chain.error = "indirect descriptor with NEXT set"
                    return chain
                if length == 0 or length & 15:
                    chain.error = f"indirect table length {length} is not a multiple of 16"
                    return chain
                off = addr - r_gpa
                if 0 <= off and off + length <= r_size:  # read the table in place: no slice
                    table = r_buf
                    tbase = off
                else:
                    t = memory.view(addr, length)
                    if t is None:
                        chain.error = f"indirect table at {addr:#x} (+{length:#x}) is outside guest memory"
                        return chain
                    r_gpa, r_size, r_buf = memory.last
                    table = t
                    tbase = 0
                table_size = length >> 4
                in_indirect = True
                i = 0
                count = 0
                continue
            if flags & VRING_DESC_F_WRITE:
                dst = in_
            elif in_:
                chain.error = "readable descriptor after a writable one"
                return chain
            else:
                dst = out
            off = addr - r_gpa
            if 0 <= off and off + length <= r_size:  # fast path: inside the region the last buffer was in
                dst.append(r_buf[off : off + length])
            elif memory.append_views(dst, addr, length):
                r_gpa, r_size, r_buf = memory.last
            else:
                chain.error = f"buffer at {addr:#x} (+{length:#x}) is outside guest memory"
                return chain
            if not flags & VRING_DESC_F_NEXT:
                return chain
            i = nxt

    # ---- used side --------------------------------------------------------------------------------------------

    def push(self, head: int, written: int) -> None:
        """Return chain `head` to the driver with `written` bytes put in its writable buffers.

        The element is written before used.idx so the driver never sees an index covering a stale element.
        """
        idx = self.used_idx
        inflight = self.inflight
        if inflight is not None:
            inflight.before_push(head)
        slot = (idx & self._mask) << 1
        u32 = self._used_u32
        u32[slot] = head
        u32[slot + 1] = written
        idx = (idx + 1) & 0xFFFF
        self.used_idx = idx
        self._used[1] = idx
        if inflight is not None:
            inflight.after_push(head, idx)

    # ---- notifications ----------------------------------------------------------------------------------------

    def disable_notifications(self) -> None:
        """Ask the driver not to kick while we are draining the ring anyway."""
        self._notifications_enabled = False
        if not self.event_idx:
            self._used[0] = self._used[0] | VRING_USED_F_NO_NOTIFY

    def enable_notifications(self) -> bool:
        """Re-arm driver kicks; return True if buffers arrived meanwhile (the caller must drain again).

        The fence between re-arming (a store) and re-reading avail.idx (a load) closes the lost-wakeup race.
        """
        self._notifications_enabled = True
        if self.event_idx:
            self._used[2 + 4 * self.size] = self.last_avail_idx
        else:
            self._used[0] = self._used[0] & ~VRING_USED_F_NO_NOTIFY & 0xFFFF
        self._fence()
        return self.has_avail()

    def should_notify(self) -> bool:
        """Whether the engine must signal the call fd for completions pushed since the last True answer."""
        self._fence()  # used.idx (stored) must be visible before we read the driver's suppression state
        new = self.used_idx
        old = self._signalled_used
        valid = self._signalled_valid
        self._signalled_used = new
        self._signalled_valid = True
        if not self.event_idx:
            if new == old and valid:
                return False
            return not (self._avail[0] & VRING_AVAIL_F_NO_INTERRUPT)
        if not valid:
            return True
        return vring_need_event(self._avail[2 + self.size], new, old)
