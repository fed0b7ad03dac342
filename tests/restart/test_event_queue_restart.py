"""A back end dies while delivering an event (LUN hotplug): the event buffer it had taken must not be lost.

The event queue's buffers are taken from the ring only to deliver an event, so a crash can catch one in flight.
attach_inflight moves the new process's ring position past it; if the new process then neither completes it nor
keeps it, the guest is one event buffer short for good (with few buffers: no hotplug event ever again), and the
event itself is gone. The guest must get the buffer back, marked "events missed" (Linux then rescans the host).
"""

from __future__ import annotations

import mmap
import struct

import pytest

from vhostscsi.hostdriver.guestram import GuestRam
from vhostscsi.hostdriver.vring import DriverRing
from vhostscsi.virtio.inflight import InflightQueue, attach_inflight, inflight_queue_bytes
from vhostscsi.virtio.scsi import EVENT_QUEUE, EVENT_SIZE, T_EVENTS_MISSED, T_TRANSPORT_RESET, VirtioScsi
from vhostscsi.virtio.virtqueue import SplitVirtqueue

EVENT = struct.Struct("<I8sI")


class Crash(BaseException):
    """Nothing in the device code catches it, as nothing survives a SIGKILL."""


class CrashBeforePush(InflightQueue):
    def before_push(self, head: int) -> None:
        raise Crash()


def test_event_buffer_taken_by_a_dead_back_end_comes_back_as_events_missed() -> None:
    ram = GuestRam(64 * 4096)
    drv = DriverRing(ram, 8)
    mem = ram.backend_memory()
    area = mmap.mmap(-1, inflight_queue_bytes(8))

    def device(cls: type[InflightQueue]) -> tuple[SplitVirtqueue, list]:
        d, u, a = drv.uvas()
        vq = SplitVirtqueue.from_uva(mem, 8, d, a, u, last_avail_idx=drv.used_idx())
        return vq, attach_inflight(vq, cls(memoryview(area), 8, 0))

    bufs = [ram.alloc(EVENT_SIZE) for _ in range(2)]
    heads = [drv.add([], [(gpa, EVENT_SIZE)]) for gpa in bufs]
    vq, _ = device(CrashBeforePush)
    first = VirtioScsi({})
    first.set_queue(EVENT_QUEUE, vq)
    with pytest.raises(Crash):
        first.lun_added(1, 3)  # takes the first buffer, dies before returning it
    vq2, resubmit = device(InflightQueue)
    assert [c.head for c in resubmit] == heads[:1]
    second = VirtioScsi({})
    second.set_queue(EVENT_QUEUE, vq2)
    second.resubmit(EVENT_QUEUE, resubmit)
    used = drv.get_used()
    assert [u.head for u in used] == heads[:1], "the event buffer the dead back end took never came back"
    event, _lun, _reason = EVENT.unpack(ram.read(bufs[0], EVENT_SIZE))
    assert event & T_EVENTS_MISSED and used[0].length == EVENT_SIZE
    assert second.lun_added(1, 4) == 1  # and the other buffer still carries the next event
    event, lun, _ = EVENT.unpack(ram.read(bufs[1], EVENT_SIZE))
    assert event & ~T_EVENTS_MISSED == T_TRANSPORT_RESET and lun[1] == 1 and lun[3] == 4
