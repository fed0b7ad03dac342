"""`VirtioScsi.rescan()`: one "no event, events missed" on the event queue, the bytes Linux answers with a rescan.

The daemon calls it when QEMU reconnects a running guest to a new daemon (LUNs may have been added or removed
while none ran). The event must be exactly VIRTIO_SCSI_T_NO_EVENT | VIRTIO_SCSI_T_EVENTS_MISSED (0x80000000),
LUN and reason zero, used length 16; one of it, however often the queue is served; waiting for a buffer if the
guest has none posted; and riding on the next real event instead if one is pending.
"""

from __future__ import annotations

import struct

from vhostscsi.hostdriver.guestram import GuestRam
from vhostscsi.hostdriver.vring import DriverRing
from vhostscsi.virtio import scsi as vs
from vhostscsi.virtio.scsi import EVENT_QUEUE, EVENT_SIZE, VirtioScsi
from vhostscsi.virtio.virtqueue import SplitVirtqueue

EVENTS_MISSED_BYTES = bytes.fromhex("00000080" + "00" * 8 + "00000000")  # little-endian 0x80000000, LUN 0, reason 0


class EventRig:
    def __init__(self) -> None:
        self.ram = GuestRam(16 * 4096)
        self.dev = VirtioScsi({})
        self.ring = DriverRing(self.ram, 8, event_idx=True)
        d, u, a = self.ring.uvas()
        self.dev.set_queue(EVENT_QUEUE, SplitVirtqueue.from_uva(self.ram.backend_memory(), 8, d, a, u, event_idx=True))

    def post(self, n: int, size: int = EVENT_SIZE) -> list[int]:
        gpas = [self.ram.alloc(size) for _ in range(n)]
        for g in gpas:
            self.ring.add([], [(g, size)])
        return gpas

    def read(self, gpa: int) -> bytes:
        return self.ram.read(gpa, EVENT_SIZE)


def test_rescan_is_one_no_event_with_events_missed() -> None:
    rig = EventRig()
    bufs = rig.post(3)
    assert rig.dev.rescan() == 1
    assert rig.read(bufs[0]) == EVENTS_MISSED_BYTES
    assert struct.unpack("<I8sI", rig.read(bufs[0])) == (vs.T_NO_EVENT | vs.T_EVENTS_MISSED, bytes(8), 0)
    assert [(u.head, u.length) for u in rig.ring.get_used()] == [(0, EVENT_SIZE)]
    assert rig.dev.process(EVENT_QUEUE) == 0  # once: the other buffers stay posted
    assert rig.ring.get_used() == []
    assert rig.dev.lun_added(1, 1) == 1  # and the next real event carries no stale "missed" flag
    assert struct.unpack("<I8sI", rig.read(bufs[1])) == (vs.T_TRANSPORT_RESET, vs.event_lun_bytes(1, 1),
                                                          vs.EVT_RESET_RESCAN)


def test_rescan_waits_for_an_event_buffer() -> None:
    rig = EventRig()
    assert rig.dev.rescan() == 0  # the guest has posted nothing yet
    assert rig.dev.process(EVENT_QUEUE) == 0
    bufs = rig.post(2)
    assert rig.dev.process(EVENT_QUEUE) == 1  # the kick that posts buffers delivers it
    assert rig.read(bufs[0]) == EVENTS_MISSED_BYTES
    assert rig.dev.process(EVENT_QUEUE) == 0
    assert [u.length for u in rig.ring.get_used()] == [EVENT_SIZE]


def test_rescan_with_an_event_pending_marks_that_event() -> None:
    """Linux handles the flag before the event itself (rescan, then the TRANSPORT_RESET), so one buffer is enough."""
    rig = EventRig()
    assert rig.dev.lun_removed(1, 2) == 0
    assert rig.dev.rescan() == 0
    bufs = rig.post(3)
    assert rig.dev.process(EVENT_QUEUE) == 1
    assert struct.unpack("<I8sI", rig.read(bufs[0])) == (vs.T_TRANSPORT_RESET | vs.T_EVENTS_MISSED,
                                                          vs.event_lun_bytes(1, 2), vs.EVT_RESET_REMOVED)
    assert rig.dev.process(EVENT_QUEUE) == 0


def test_rescan_skips_an_unusable_buffer() -> None:
    rig = EventRig()
    short, good = rig.post(1, size=8)[0], rig.post(1)[0]
    assert rig.dev.rescan() == 2  # the short one handed back empty, the event in the next
    assert [u.length for u in rig.ring.get_used()] == [0, EVENT_SIZE]
    assert rig.ram.read(short, 8) == bytes(8)
    assert rig.read(good) == EVENTS_MISSED_BYTES


def test_no_event_without_rescan() -> None:
    """A device nobody asked to rescan (a new guest) sends nothing on a kick of the event queue."""
    rig = EventRig()
    rig.post(4)
    assert rig.dev.process(EVENT_QUEUE) == 0
    assert rig.ring.get_used() == []
