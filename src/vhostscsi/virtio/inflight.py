"""In-flight tracking for split rings (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD, layout of the vhost-user spec).

The front end keeps this shared area across back-end restarts. Every head taken from the avail ring is marked
in flight (with a counter giving the order it was taken in) and cleared when it is returned on the used ring, so
a new back-end process can tell exactly which requests the dead one had taken and not completed, and run them
again, oldest first, instead of losing them (the guest would wait forever) or running completed ones twice.

Per queue: a 16-byte header (features u64, version u16, desc_num u16, last_batch_head u16, used_idx u16) and one
16-byte state per descriptor (inflight u8, padding, next u16, counter u64), rounded up to 64 bytes.
"""

from __future__ import annotations

import struct

from vhostscsi.virtio.virtqueue import Chain, SplitVirtqueue, VirtqueueError

_INFLIGHT_HEADER = struct.Struct("<QHHHH")  # features, version, desc_num, last_batch_head, used_idx
INFLIGHT_HEADER_SIZE = 16
INFLIGHT_DESC_SIZE = 16  # inflight u8, padding[5], next u16, counter u64
INFLIGHT_ALIGN = 64


def inflight_queue_bytes(queue_size: int) -> int:
    """Bytes one queue takes in the shared in-flight area (header + one state per descriptor, 64-aligned)."""
    n = INFLIGHT_HEADER_SIZE + INFLIGHT_DESC_SIZE * queue_size
    return (n + INFLIGHT_ALIGN - 1) // INFLIGHT_ALIGN * INFLIGHT_ALIGN


class InflightQueue:
    """One queue's slice of the in-flight area: which heads were taken from avail and not yet returned.

    The area is shared with QEMU and survives our process, so after a restart `recover()` tells which requests
    to run again, in the order they were taken.
    """

    __slots__ = ("buf", "size", "counter")

    def __init__(self, buf: memoryview, size: int, features: int) -> None:
        if len(buf) < inflight_queue_bytes(size):
            raise VirtqueueError(f"in-flight area of {len(buf)} bytes is too small for a queue of {size}")
        self.buf = buf
        self.size = size
        _f, version, desc_num, _lb, _ui = _INFLIGHT_HEADER.unpack_from(buf, 0)
        if version != 1 or desc_num != size:
            buf[: inflight_queue_bytes(size)] = bytes(inflight_queue_bytes(size))
            _INFLIGHT_HEADER.pack_into(buf, 0, features, 1, size, 0, 0)
        # the order number the next popped head gets; public because the C path (virtio.native) carries it on
        self.counter = 1 + max(
            (struct.unpack_from("<Q", buf, INFLIGHT_HEADER_SIZE + INFLIGHT_DESC_SIZE * i + 8)[0]
             for i in range(size)),
            default=0,
        )

    def _desc_off(self, head: int) -> int:
        return INFLIGHT_HEADER_SIZE + INFLIGHT_DESC_SIZE * head

    def record_pop(self, head: int) -> None:
        off = self._desc_off(head)
        struct.pack_into("<Q", self.buf, off + 8, self.counter)
        self.counter += 1
        self.buf[off] = 1

    def before_push(self, head: int) -> None:
        struct.pack_into("<H", self.buf, 12, head)  # last_batch_head

    def after_push(self, head: int, used_idx: int) -> None:
        self.buf[self._desc_off(head)] = 0
        struct.pack_into("<H", self.buf, 14, used_idx)

    def used_idx(self) -> int:
        value: int = struct.unpack_from("<H", self.buf, 14)[0]
        return value

    def recover(self, ring_used_idx: int) -> list[int]:
        """Heads still in flight, oldest first; repairs a push interrupted between used.idx and the region."""
        if self.used_idx() != ring_used_idx:
            last = struct.unpack_from("<H", self.buf, 12)[0]
            if last < self.size:
                self.buf[self._desc_off(last)] = 0
            struct.pack_into("<H", self.buf, 14, ring_used_idx)
        pending = []
        for head in range(self.size):
            off = self._desc_off(head)
            if self.buf[off]:
                pending.append((struct.unpack_from("<Q", self.buf, off + 8)[0], head))
        pending.sort()
        return [h for _c, h in pending]


def attach_inflight(vq: SplitVirtqueue, inflight: InflightQueue) -> list[Chain]:
    """Track `vq` in `inflight` and return the chains to resubmit (taken before a restart, never completed).

    last_avail_idx is set past them, as they were already consumed from the avail ring by the previous process.
    """
    heads = inflight.recover(vq.used_idx)
    vq.inflight = inflight
    vq.last_avail_idx = (vq.used_idx + len(heads)) & 0xFFFF
    vq.arm_event_idx()
    return [vq.walk(h) for h in heads]
