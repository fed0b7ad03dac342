"""A virtio-scsi initiator on top of the front end: what the guest's virtio_scsi driver does, in miniature.

`ScsiInitiator.command(cdb, ...)` builds the request, posts it on a request queue, kicks (honouring the back
end's notification suppression), waits for the call eventfd and parses the response. It is what integration
tests and the host-side benchmark use to reach the daemon through its real socket.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from vhostscsi.hostdriver.frontend import FrontEnd, FrontEndError
from vhostscsi.hostdriver.guestram import GuestRam
from vhostscsi.hostdriver.vring import DriverRing, Used, malformed_chain
from vhostscsi.vhost_user.protocol import VIRTIO_RING_F_EVENT_IDX, bit
from vhostscsi.virtio import scsi as vs
from vhostscsi.virtio.barrier import full_fence


@dataclass
class ScsiResponse:
    """A parsed virtio_scsi_cmd_resp plus the data-in bytes the back end wrote."""

    response: int
    status: int
    sense: bytes
    resid: int
    status_qualifier: int
    used_len: int
    data: bytes = field(repr=False, default=b"")


def build_request(cdb: bytes, target: int = 1, lun: int = 0, tag: int = 0, task_attr: int = 0) -> bytes:
    if len(cdb) > vs.CDB_SIZE:
        raise ValueError(f"CDB of {len(cdb)} bytes exceeds {vs.CDB_SIZE}")
    return vs.lun_bytes(target, lun) + struct.pack("<QBBB", tag, task_attr, 0, 0) + cdb.ljust(vs.CDB_SIZE, b"\0")


def parse_response(raw: bytes, used_len: int, data: bytes = b"") -> ScsiResponse:
    sense_len, resid, qual, status, response = struct.unpack_from("<IIHBB", raw)
    sense = bytes(raw[12 : 12 + min(sense_len, vs.SENSE_SIZE)])
    return ScsiResponse(response, status, sense, resid, qual, used_len, data)


class ScsiInitiator:
    """Control, event and request queues set up over a FrontEnd; one command at a time or in batches."""

    def __init__(
        self,
        fe: FrontEnd,
        ram: GuestRam,
        *,
        request_queues: int = 1,
        queue_size: int = 128,
        event_idx: bool = True,
    ) -> None:
        self.fe = fe
        self.ram = ram
        self.queue_size = queue_size
        self.event_idx = event_idx
        self.request_queues = request_queues
        self.rings: dict[int, DriverRing] = {}
        self._done: dict[int, dict[int, Used]] = {}
        self._tag = 0

    def start(self, *, features: int | None = None, inflight: bool = False) -> None:
        """Negotiate, send the memory table and bring every ring up, in QEMU's order (with `inflight`, the
        in-flight area first, as QEMU 10 does for a back end it can reconnect to)."""
        self.fe.negotiate(features)
        if inflight:
            self.fe.setup_inflight(2 + self.request_queues, self.queue_size)
        self.fe.set_mem_table(self.ram)
        ev = bool(self.fe.features & bit(VIRTIO_RING_F_EVENT_IDX)) and self.event_idx
        for q in range(2 + self.request_queues):
            ring = DriverRing(self.ram, self.queue_size, event_idx=ev)
            self.rings[q] = ring
            self._done[q] = {}
            self.fe.setup_ring(q, ring)

    def reconnect(self, fe: FrontEnd) -> None:
        """Continue on a new connection (a restarted back end) with the same guest RAM and rings, as QEMU's
        reconnect does: the in-flight area goes back, each ring restarts at its used index, and requests the
        old back end had taken but not completed are the new one's to finish."""
        area = self.fe.take_inflight()
        self.fe = fe
        fe.negotiate()
        if area is not None:
            fe.set_inflight(*area)
        fe.set_mem_table(self.ram)
        for q, ring in self.rings.items():
            fe.setup_ring(q, ring, base=ring.used_idx())

    # ---- posting and waiting ----------------------------------------------------------------------------------

    def kick(self, q: int, *, force: bool = False) -> None:
        full_fence()  # avail.idx (stored) must be visible before we read the device's suppression state
        if self.rings[q].need_kick() or force:
            self.fe.kick(q)

    def collect(self, q: int) -> list[Used]:
        got = self.rings[q].get_used()
        for u in got:
            self._done[q][u.head] = u
        return got

    def _wait(self, q: int, ready: Callable[[], bool], timeout: float) -> bool:
        """Collect completions of queue `q` until `ready()`; sleep on the call fd in between."""
        deadline = time.monotonic() + timeout
        ring = self.rings[q]
        while True:
            self.collect(q)
            if ready():
                return True
            full_fence()  # used_event (stored in get_used) before re-reading used.idx
            if ring.used_idx() != ring.last_used:
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.fe.wait_call(q, min(left, 0.5))

    def wait(self, q: int, head: int, timeout: float = 10.0) -> Used:
        """Wait until chain `head` of queue `q` is completed."""
        done = self._done[q]
        if not self._wait(q, lambda: head in done, timeout):
            raise FrontEndError(f"request {head} on queue {q} not completed within {timeout:g} s")
        return done.pop(head)

    def wait_any(self, q: int, timeout: float = 10.0) -> list[Used]:
        """Completions of queue `q` not yet claimed, in completion order, waiting up to `timeout` for one."""
        done = self._done[q]
        self._wait(q, lambda: bool(done), timeout)
        got = list(done.values())
        done.clear()
        return got

    # ---- SCSI commands ----------------------------------------------------------------------------------------

    def submit(
        self,
        cdb: bytes,
        *,
        target: int = 1,
        lun: int = 0,
        data_out: bytes = b"",
        data_in_len: int = 0,
        queue: int = 2,
        indirect: bool = False,
    ) -> tuple[int, int, int]:
        """Post a command without waiting; returns (head, response gpa, data-in gpa)."""
        self._tag += 1
        req = build_request(cdb, target, lun, self._tag)
        rq = self.ram.alloc(len(req))
        self.ram.write(rq, req)
        out = [(rq, len(req))]
        if data_out:
            g = self.ram.alloc(len(data_out))
            self.ram.write(g, data_out)
            out.append((g, len(data_out)))
        resp = self.ram.alloc(vs.RESP_SIZE)
        ins = [(resp, vs.RESP_SIZE)]
        din = 0
        if data_in_len:
            din = self.ram.alloc(data_in_len)
            ins.append((din, data_in_len))
        head = self.rings[queue].add(out, ins, indirect=indirect)
        return head, resp, din

    def command(self, cdb: bytes, *, timeout: float = 10.0, **kw: Any) -> ScsiResponse:
        """Run one command (keywords as for `submit`) and return its parsed response; the guest RAM it used
        is reclaimed afterwards."""
        mark = self.ram.mark()
        queue = kw.get("queue", 2)
        data_in_len = kw.get("data_in_len", 0)
        try:
            head, resp, din = self.submit(cdb, **kw)
            self.kick(queue)
            used = self.wait(queue, head, timeout)
            data = self.ram.read(din, data_in_len) if data_in_len else b""
            return parse_response(self.ram.read(resp, vs.RESP_SIZE), used.length, data)
        finally:
            self.ram.reset_allocator(mark)

    def tmf(self, subtype: int, *, target: int = 1, lun: int = 0, tag: int = 0, timeout: float = 10.0) -> int:
        """Send a task management function on the control queue; returns the virtio-scsi response code."""
        mark = self.ram.mark()
        try:
            req = struct.pack("<II8sQ", vs.T_TMF, subtype, vs.lun_bytes(target, lun), tag)
            g = self.ram.alloc(len(req))
            self.ram.write(g, req)
            resp = self.ram.alloc(1)
            head = self.rings[0].add([(g, len(req))], [(resp, 1)])
            self.kick(0)
            self.wait(0, head, timeout)
            return self.ram.read(resp, 1)[0]
        finally:
            self.ram.reset_allocator(mark)

    def submit_malformed(self, kind: str, queue: int = 2) -> int:
        """Post one deliberately broken chain (see vring.MALFORMED_KINDS) and kick; returns its head."""
        ring = self.rings[queue]
        base = ring.free[0] if kind in ("loop", "too-long", "wrong-direction") else None
        if kind == "too-long" and len(ring.free) < ring.size:
            raise RuntimeError("a too-long chain needs the whole descriptor table free")
        descs = malformed_chain(kind, self.ram, ring.size, base or 0)
        head = ring.add_raw(descs, head=base)
        self.kick(queue, force=True)
        return head

    def post_event_buffers(self, n: int) -> list[int]:
        """Give the device `n` event buffers (as the guest driver does at probe); returns their GPAs."""
        gpas = []
        for _ in range(n):
            g = self.ram.alloc(vs.EVENT_SIZE)
            self.rings[1].add([], [(g, vs.EVENT_SIZE)])
            gpas.append(g)
        self.kick(1)
        return gpas

    def read_event(self, gpa: int) -> tuple[int, bytes, int]:
        """(event, lun[8], reason) of an event buffer the device filled."""
        return struct.unpack("<I8sI", self.ram.read(gpa, vs.EVENT_SIZE))
