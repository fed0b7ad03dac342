"""Driver side of a split virtqueue laid out in `GuestRam`: what a guest's virtio driver does.

Besides well-formed chains it can write any descriptor bytes on purpose (`add_raw`), so tests can hand a back
end out-of-range addresses, loops, over-long chains and wrong directions and check it survives them.
"""

from __future__ import annotations

import struct
from typing import NamedTuple, Sequence

from vhostscsi.hostdriver.guestram import GuestRam
from vhostscsi.virtio.virtqueue import (
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    VRING_USED_F_NO_NOTIFY,
    ring_sizes,
    vring_need_event,
)

_DESC = struct.Struct("<QIHH")


class Desc(NamedTuple):
    """A raw descriptor: exactly the 16 bytes the driver writes (no validation: that is the point)."""

    addr: int
    length: int
    flags: int = 0
    next: int = 0


MALFORMED_KINDS = (
    "out-of-range", "wrapping", "loop", "too-long", "wrong-direction", "indirect-in-indirect", "bad-indirect-length",
)


def malformed_chain(kind: str, ram: GuestRam, size: int, base: int = 0) -> list[Desc]:
    """Descriptors for one deliberately broken request, to be written at table slots base, base+1, ...

    Every kind must make a back end fail that request (used length 0) and carry on serving the ring.
    """
    ok = ram.alloc(64)

    def nxt(k: int) -> int:
        """Table slot of the k-th descriptor of this chain."""
        return (base + k) % size

    if kind == "out-of-range":
        return [Desc(ram.gpa_base + ram.size + 0x1000_0000, 51)]
    if kind == "wrapping":
        return [Desc(2**64 - 16, 64)]
    if kind == "loop":
        return [Desc(ok, 51, VRING_DESC_F_NEXT, nxt(1)), Desc(ok, 51, VRING_DESC_F_NEXT, nxt(0))]
    if kind == "too-long":  # visits every slot of the table and comes back to the first
        return [Desc(ok, 1, VRING_DESC_F_NEXT, nxt(k + 1)) for k in range(size)]
    if kind == "wrong-direction":  # a readable buffer after a writable one
        return [Desc(ok, 64, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, nxt(1)), Desc(ok, 51)]
    if kind == "indirect-in-indirect":
        inner = ram.alloc(16)
        _DESC.pack_into(ram.view(inner, 16), 0, inner, 16, VRING_DESC_F_INDIRECT, 0)
        return [Desc(inner, 16, VRING_DESC_F_INDIRECT)]
    if kind == "bad-indirect-length":
        return [Desc(ok, 24, VRING_DESC_F_INDIRECT)]
    raise ValueError(f"unknown malformed chain kind {kind!r}; choose from {', '.join(MALFORMED_KINDS)}")


class Used(NamedTuple):
    head: int
    length: int


class DriverRing:
    """One split ring owned by the "driver". GPAs of its three parts go into SET_VRING_ADDR (as UVAs)."""

    def __init__(self, ram: GuestRam, size: int, *, event_idx: bool = False) -> None:
        if size <= 0 or size & (size - 1):
            raise ValueError(f"ring size {size} is not a power of two")
        self.ram = ram
        self.size = size
        self.event_idx = event_idx
        dsz, asz, usz = ring_sizes(size)
        self.desc_gpa = ram.alloc(dsz, 16)
        self.avail_gpa = ram.alloc(asz, 2)
        self.used_gpa = ram.alloc(usz, 4)
        self._desc = ram.view(self.desc_gpa, dsz)
        self._avail = ram.view(self.avail_gpa, asz).cast("H")
        self._used = ram.view(self.used_gpa, usz).cast("H")
        self._used_u32 = ram.view(self.used_gpa + 4, 8 * size).cast("I")
        self.free = list(range(size))
        self.avail_idx = 0
        self.last_used = 0
        self._kicked_at = 0
        self._chains: dict[int, list[int]] = {}

    # ---- addresses for SET_VRING_ADDR ---------------------------------------------------------------------

    def uvas(self) -> tuple[int, int, int]:
        """(desc, used, avail) UVAs in SET_VRING_ADDR field order."""
        g = self.ram.gpa_to_uva
        return g(self.desc_gpa), g(self.used_gpa), g(self.avail_gpa)

    # ---- adding buffers -----------------------------------------------------------------------------------

    def _take(self, n: int) -> list[int]:
        if n > len(self.free):
            raise RuntimeError(f"ring full: {n} descriptors needed, {len(self.free)} free")
        taken = self.free[:n]
        del self.free[:n]
        return taken

    def write_desc(self, index: int, d: Desc) -> None:
        _DESC.pack_into(self._desc, 16 * index, d.addr & (2**64 - 1), d.length & 0xFFFFFFFF, d.flags, d.next)

    def add(
        self,
        out: Sequence[tuple[int, int]],
        in_: Sequence[tuple[int, int]],
        *,
        indirect: bool = False,
        publish: bool = True,
    ) -> int:
        """Post a chain of (gpa, length) buffers, readable ones first; return its head descriptor index."""
        bufs = [(a, n, 0) for a, n in out] + [(a, n, VRING_DESC_F_WRITE) for a, n in in_]
        if not bufs:
            raise ValueError("a chain needs at least one buffer")
        if indirect:
            table = self.ram.alloc(16 * len(bufs), 16)
            tv = self.ram.view(table, 16 * len(bufs))
            for i, (a, n, f) in enumerate(bufs):
                nf = f | (VRING_DESC_F_NEXT if i + 1 < len(bufs) else 0)
                _DESC.pack_into(tv, 16 * i, a, n, nf, i + 1 if i + 1 < len(bufs) else 0)
            (head,) = self._take(1)
            self.write_desc(head, Desc(table, 16 * len(bufs), VRING_DESC_F_INDIRECT))
            self._chains[head] = [head]
        else:
            idx = self._take(len(bufs))
            for k, (a, n, f) in enumerate(bufs):
                last = k + 1 == len(bufs)
                self.write_desc(idx[k], Desc(a, n, f | (0 if last else VRING_DESC_F_NEXT), 0 if last else idx[k + 1]))
            head = idx[0]
            self._chains[head] = idx
        if publish:
            self.publish(head)
        return head

    def add_raw(self, descs: Sequence[Desc], *, head: int | None = None) -> int:
        """Write `descs` into consecutive table slots starting at `head` (or the first free slot) and publish
        the first as a chain head. `next` fields are written as given: build loops, long chains, bad addresses."""
        if head is None:
            slots = self._take(len(descs))
            head = slots[0]
            for k, d in enumerate(descs):
                self.write_desc(slots[k], d)
        else:
            slots = [(head + k) % self.size for k in range(len(descs))]
            for s in slots:
                if s in self.free:
                    self.free.remove(s)
            for k, d in enumerate(descs):
                self.write_desc(slots[k], d)
        self._chains[head] = slots
        self.publish(head)
        return head

    def publish_raw_head(self, head: int) -> None:
        """Put any number into the avail ring (even one beyond the table) and publish it."""
        self._avail[2 + (self.avail_idx % self.size)] = head & 0xFFFF
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self._avail[1] = self.avail_idx

    def publish(self, head: int) -> None:
        self.publish_raw_head(head)

    def set_avail_idx(self, value: int) -> None:
        """Write avail.idx directly (to make it jump beyond the ring size, say)."""
        self.avail_idx = value & 0xFFFF
        self._avail[1] = self.avail_idx

    # ---- notifications ------------------------------------------------------------------------------------

    def need_kick(self) -> bool:
        """Whether the device asked to be kicked for what was published since the last kick (driver side)."""
        new, old = self.avail_idx, self._kicked_at
        self._kicked_at = new
        if self.event_idx:
            return vring_need_event(self._used[2 + 4 * self.size], new, old)
        return not (self._used[0] & VRING_USED_F_NO_NOTIFY)

    def set_used_event(self, value: int) -> None:
        """EVENT_IDX: interrupt me when used.idx passes `value`."""
        self._avail[2 + self.size] = value & 0xFFFF

    def set_no_interrupt(self, on: bool) -> None:
        self._avail[0] = 1 if on else 0

    # ---- completions --------------------------------------------------------------------------------------

    def used_idx(self) -> int:
        return self._used[1]

    def avail_event(self) -> int:
        return self._used[2 + 4 * self.size]

    def get_used(self) -> list[Used]:
        """Completions since the last call, in order; their descriptors go back to the free list."""
        out = []
        end = self._used[1]
        while self.last_used != end:
            slot = (self.last_used % self.size) * 2
            head, length = self._used_u32[slot], self._used_u32[slot + 1]
            out.append(Used(head, length))
            for s in self._chains.pop(head, ()):
                self.free.append(s)
            self.last_used = (self.last_used + 1) & 0xFFFF
        if self.event_idx:
            self.set_used_event(self.last_used)
        return out

    def release(self) -> None:
        for v in (self._desc, self._avail, self._used, self._used_u32):
            v.release()
