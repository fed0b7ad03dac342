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


# (head, out, in_, error): what `SplitVirtqueue.pop_batch` returns per chain, the fields of a `Chain`
ChainTuple = tuple[int, list[memoryview], list[memoryview], "str | None"]

_PLAIN = VRING_DESC_F_NEXT | VRING_DESC_F_WRITE  # the only flags the fast chain reader accepts
_FAST_MAX = 16  # longest chain (or indirect table, in descriptors) the fast reader takes
# one precompiled struct per indirect table length: a table of k descriptors is read in one call
_TABLE_UNPACK_BY_LEN = {16 * k: struct.Struct("<" + "QIHH" * k).unpack_from for k in range(1, _FAST_MAX + 1)}
# A 3-descriptor chain the fast reader takes, by (flags0, next0, flags1, next1, flags2): NEXT to the following
# entry on the first two, nothing but WRITE on the last, readable before writable. The value: how many are
# writable.
_N, _W = VRING_DESC_F_NEXT, VRING_DESC_F_WRITE
_SHAPES3 = {(_N, 1, _N, 2, 0): 0, (_N, 1, _N, 2, _W): 1, (_N, 1, _N | _W, 2, _W): 2,
            (_N | _W, 1, _N | _W, 2, _W): 3}


class Chain:
    """One request taken from the avail ring: its head index and the guest buffers, split by direction.

    `out` are driver-to-device (readable) buffers, `in_` device-to-driver (writable) ones, in chain order, as
    views of guest memory (no copies). `error` is None for a good chain, else a short reason.
    """

    __slots__ = ("head", "out", "in_", "error")

    def __init__(self, head: int, out: list[memoryview] | None = None, in_: list[memoryview] | None = None,
                 error: str | None = None) -> None:
        self.head = head
        self.out: list[memoryview] = [] if out is None else out
        self.in_: list[memoryview] = [] if in_ is None else in_
        self.error: str | None = error

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
        "_notifications_enabled", "inflight", "_fence", "native",
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
        # what virtio.native keeps per ring for the C path: (in-flight queue it was built for, context), on first use
        self.native: tuple[InflightQueue | None, tuple[object, ...]] | None = None
        self.arm_event_idx()

    def ring_bytes(self, which: str) -> memoryview:
        """The descriptor table, avail ring or used ring ("desc", "avail", "used") as flat bytes: what the C path
        (virtio.native) reads and writes, sized exactly as `ring_sizes` says."""
        view = {"desc": self._desc, "avail": self._avail, "used": self._used}[which]
        return view if view.format == "B" else view.cast("B")

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
        return [Chain(*t) for t in self.pop_batch()]

    def pop_batch(self) -> list[ChainTuple]:
        """`pop_all` as plain `(head, out, in_, error)` tuples: the request queues' hot path.

        Why tuples: a chain object costs more to build than the tuple, and the caller unpacks the tuple in its
        loop header. The common shapes (an indirect table of up to `_FAST_MAX` plain descriptors, a direct chain
        of up to `_FAST_MAX`, every buffer inside the region the previous buffer was in) are read by `_simple`,
        one `unpack_from` for the whole indirect table; anything else, malformed or merely unusual (a chain
        with unknown flag bits, a buffer straddling regions), goes to the general walker `_walk`, which gives
        every verdict. The fast reader only ever accepts chains the general walker accepts, with the same
        buffers (tests/hardening/test_fuzz_virtqueue.py compares pop_all with a reference walker).
        """
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
        walk = self._walk
        simple = self._simple
        inflight = self.inflight
        out: list[ChainTuple] = []
        append = out.append
        for k in range(n):
            head = avail[2 + ((last + k) & mask)]
            if head >= size:
                self.last_avail_idx = (last + k) & 0xFFFF
                self._break(f"avail ring names descriptor {head} in a ring of {size}")
                return out
            append(simple(head) or walk(head))
            if inflight is not None:
                inflight.record_pop(head)
        self.last_avail_idx = avail_idx
        if self.event_idx and self._notifications_enabled:
            self._used[2 + 4 * size] = avail_idx
        return out

    def _simple(self, head: int) -> ChainTuple | None:
        """The common, well-formed chain shapes, read quickly; None means "ask `_walk`" (never a verdict).

        Accepted: the head is either an indirect descriptor (flags exactly INDIRECT, feature negotiated) whose
        table of 1.._FAST_MAX descriptors lies in the last-used region, or a plain descriptor starting a direct
        chain of at most _FAST_MAX descriptors. In both, every descriptor has flags NEXT/WRITE only, the chain
        ends (no NEXT) within the table (a direct chain: with indices inside the ring and no more descriptors
        than the ring has; an indirect one: each NEXT names the following entry), readable buffers come before
        writable ones, and each buffer lies in the region the walk is in. Those are exactly the walks in which
        `_walk` takes no error branch and never leaves its region fast path, so it would return the same views.
        """
        r_gpa, r_size, r_buf = self.memory.last
        addr, length, flags, nxt = _unpack_desc(self._desc, head << 4)
        if flags == VRING_DESC_F_INDIRECT:
            off = addr - r_gpa
            unpack = _TABLE_UNPACK_BY_LEN.get(length)  # None unless 16..16*_FAST_MAX, a multiple of 16
            if unpack is None or not self.indirect or off < 0 or off + length > r_size:
                return None
            k = length >> 4
            descs = unpack(r_buf, off)  # the whole table in one call
        elif flags & ~_PLAIN:
            return None
        else:  # a direct chain: follow NEXT through the ring's table
            size = self.size
            descs = (addr, length, flags, 1)  # `next` rewritten to the entry's position, as in a table
            k = 1
            table = self._desc
            while flags & VRING_DESC_F_NEXT:
                if nxt >= size or k >= size or k >= _FAST_MAX:
                    return None
                addr, length, flags, nxt = _unpack_desc(table, nxt << 4)
                if flags & ~_PLAIN:
                    return None
                k += 1
                descs += (addr, length, flags, k)
        if k == 3:  # every 4 KiB read or write (header, data, response): the loop below unrolled, half the cost
            a0, l0, f0, n0, a1, l1, f1, n1, a2, l2, f2, n2 = descs
            writable = _SHAPES3.get((f0, n0, f1, n1, f2))  # flags, NEXT links and direction in one lookup
            o0 = a0 - r_gpa
            o1 = a1 - r_gpa
            o2 = a2 - r_gpa
            if (writable is None or o0 < 0 or o0 + l0 > r_size or o1 < 0 or o1 + l1 > r_size
                    or o2 < 0 or o2 + l2 > r_size):
                return None
            v0 = r_buf[o0 : o0 + l0]
            v1 = r_buf[o1 : o1 + l1]
            v2 = r_buf[o2 : o2 + l2]
            if writable == 2:
                return head, [v0], [v1, v2], None
            if writable == 1:
                return head, [v0, v1], [v2], None
            return (head, [v0, v1, v2], [], None) if not writable else (head, [], [v0, v1, v2], None)
        out: list[memoryview] = []
        ins: list[memoryview] = []
        last = 4 * k - 4
        for j in range(0, 4 * k, 4):
            addr, length, flags, nxt = descs[j : j + 4]
            if j == last:
                if flags & ~VRING_DESC_F_WRITE:
                    return None  # the table goes on past its end, or odd bits: the walker decides
            elif flags & ~VRING_DESC_F_WRITE != VRING_DESC_F_NEXT or nxt != (j >> 2) + 1:
                return None  # an early end, a NEXT that skips or loops back, odd bits: the walker decides
            off = addr - r_gpa
            if not (0 <= off and off + length <= r_size):
                return None
            if flags & VRING_DESC_F_WRITE:
                ins.append(r_buf[off : off + length])
            elif ins:
                return None
            else:
                out.append(r_buf[off : off + length])
        return head, out, ins, None

    def walk(self, head: int) -> Chain:
        """Gather the buffers of the chain starting at `head`; errors go into `chain.error`, never raised."""
        return Chain(*self._walk(head))

    def _walk(self, head: int) -> ChainTuple:
        """The general walker: every chain shape, every check; returns (head, out, in_, error)."""
        out: list[memoryview] = []
        in_: list[memoryview] = []
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
                return head, out, in_, f"descriptor index {i} beyond table of {table_size}"
            count += 1
            if count > table_size:
                return head, out, in_, "descriptor chain loops or is longer than its table"
            addr, length, flags, nxt = _unpack_desc(table, tbase + (i << 4))
            if flags & VRING_DESC_F_INDIRECT:
                if not self.indirect:
                    return head, out, in_, "indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC"
                if in_indirect:
                    return head, out, in_, "indirect descriptor inside an indirect table"
                if flags & VRING_DESC_F_NEXT:
                    return head, out, in_, "indirect descriptor with NEXT set"
                if length == 0 or length & 15:
                    return head, out, in_, f"indirect table length {length} is not a multiple of 16"
                off = addr - r_gpa
                if 0 <= off and off + length <= r_size:  # read the table in place: no slice
                    table = r_buf
                    tbase = off
                else:
                    t = memory.view(addr, length)
                    if t is None:
                        return head, out, in_, (f"indirect table at {addr:#x} (+{length:#x}) is outside guest "
                                                f"memory")
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
                return head, out, in_, "readable descriptor after a writable one"
            else:
                dst = out
            off = addr - r_gpa
            if 0 <= off and off + length <= r_size:  # fast path: inside the region the last buffer was in
                dst.append(r_buf[off : off + length])
            elif memory.append_views(dst, addr, length):
                r_gpa, r_size, r_buf = memory.last
            else:
                return head, out, in_, f"buffer at {addr:#x} (+{length:#x}) is outside guest memory"
            if not flags & VRING_DESC_F_NEXT:
                return head, out, in_, None
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

    def push_many(self, done: list[tuple[int, int]]) -> None:
        """`push` for a batch of (head, written): the elements, then used.idx once (x86 keeps store order, so
        the driver never sees the index before the elements). With in-flight tracking every element is pushed
        on its own: the in-flight area's recovery repairs at most one interrupted push."""
        if self.inflight is not None:
            for head, written in done:
                self.push(head, written)
            return
        idx = self.used_idx
        mask = self._mask
        u32 = self._used_u32
        for head, written in done:
            slot = (idx & mask) << 1
            u32[slot] = head
            u32[slot + 1] = written
            idx += 1
        idx &= 0xFFFF
        self.used_idx = idx
        self._used[1] = idx

    # ---- notifications ----------------------------------------------------------------------------------------

    def disable_notifications(self) -> None:
        """Ask the driver not to kick while we are draining (or polling) the ring anyway.

        With EVENT_IDX the driver kicks when avail.idx crosses avail_event: putting it one behind
        last_avail_idx means only after 65,535 more buffers, i.e. not while we look. Always paired with
        `enable_notifications()`, which puts it back and re-checks the ring behind a fence.
        """
        self._notifications_enabled = False
        if self.event_idx:
            self._used[2 + 4 * self.size] = (self.last_avail_idx - 1) & 0xFFFF
        else:
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
