"""virtio-scsi device logic (virtio 1.x, 5.6) over split virtqueues, addressed like the kernel's vhost-scsi.

Queue 0 is the control queue (task management, asynchronous-notification queries), queue 1 the event queue
(hotplug/unplug rescans, parameter changes), queues 2.. carry SCSI commands. LUN field: byte 0 is 1, byte 1 the
target id, which is the TPG tag (so TPG 1 LUN 0 is `[0:0:1:0]` in the guest), bytes 2-3 the LUN in flat space
(0x4000 | lun).

Hot path: the request header is parsed in place from the first readable buffer when it holds all 51 bytes (it
does for Linux guests); data buffers are handed to `TargetPort.execute` as the chain's own memoryviews. Only the
32-byte CDB is copied, on purpose: the guest can rewrite its memory while we run the command, and the SCSI core
must range-check and execute the same CDB.
"""

from __future__ import annotations

import collections
import struct
from typing import Any, Mapping, Sequence

from vhostscsi.scsi.port import TargetPort
from vhostscsi.virtio import native
from vhostscsi.virtio.virtqueue import Chain, SplitVirtqueue

CDB_SIZE = 32
SENSE_SIZE = 96
REQ_SIZE = 19 + CDB_SIZE  # lun[8] tag u64 task_attr prio crn cdb[32]
RESP_SIZE = 12 + SENSE_SIZE  # sense_len u32 resid u32 status_qualifier u16 status u8 response u8 sense[96]
EVENT_SIZE = 16

CONTROL_QUEUE = 0
EVENT_QUEUE = 1
FIRST_REQUEST_QUEUE = 2

# response codes
S_OK = 0
S_OVERRUN = 1
S_ABORTED = 2
S_BAD_TARGET = 3
S_RESET = 4
S_BUSY = 5
S_TRANSPORT_FAILURE = 6
S_TARGET_FAILURE = 7
S_NEXUS_FAILURE = 8
S_FAILURE = 9
S_FUNCTION_COMPLETE = 0
S_FUNCTION_SUCCEEDED = 10
S_FUNCTION_REJECTED = 11
S_INCORRECT_LUN = 12

# control queue
T_TMF = 0
T_AN_QUERY = 1
T_AN_SUBSCRIBE = 2
T_TMF_ABORT_TASK = 0
T_TMF_ABORT_TASK_SET = 1
T_TMF_CLEAR_ACA = 2
T_TMF_CLEAR_TASK_SET = 3
T_TMF_I_T_NEXUS_RESET = 4
T_TMF_LOGICAL_UNIT_RESET = 5
T_TMF_QUERY_TASK = 6
T_TMF_QUERY_TASK_SET = 7

# events
T_NO_EVENT = 0
T_TRANSPORT_RESET = 1
T_ASYNC_NOTIFY = 2
T_PARAM_CHANGE = 3
T_EVENTS_MISSED = 0x80000000
EVT_RESET_HARD = 0
EVT_RESET_RESCAN = 1
EVT_RESET_REMOVED = 2
CAPACITY_CHANGED_REASON = 0x2A | (0x09 << 8)  # asc 0x2a ascq 0x09: CAPACITY DATA HAS CHANGED

_RESP_HDR = struct.Struct("<IIHBB")
_pack_resp = _RESP_HDR.pack_into
# The request header in one call: lun[0], lun[1] (target), lun[2], lun[3], the 32-byte CDB (a private copy).
# Tag, task attribute, priority and CRN are not used (vhost-scsi ignores them too).
_REQ_HDR = struct.Struct("<BBBB15x32s")
_unpack_req = _REQ_HDR.unpack_from
_TMF_REQ = struct.Struct("<II8sQ")
_AN_REQ = struct.Struct("<I8sI")
_AN_RESP = struct.Struct("<IB")
_EVENT = struct.Struct("<I8sI")
# "No event, events missed": Linux answers it with a rescan of the host (new LUNs are added).
_EVENTS_MISSED = _EVENT.pack(T_NO_EVENT | T_EVENTS_MISSED, bytes(8), 0)

_ZERO_SENSE = bytes(SENSE_SIZE)
_NO_BUFFERS: tuple[memoryview, ...] = ()  # the data-out of a read (shared: nothing appends to it)

MAX_PENDING_EVENTS = 64
DEFAULT_NEXUS = "vhost-user"


def lun_bytes(target: int, lun: int) -> bytes:
    """The 8-byte LUN field of a request for (target id, LUN), as the Linux driver builds it (always flat
    addressing, 0x40 in byte 2); the device reads the LUN back as bytes 2-3 & 0x3fff."""
    return bytes((1, target & 0xFF, 0x40 | ((lun >> 8) & 0x3F), lun & 0xFF, 0, 0, 0, 0))


def event_lun_bytes(target: int, lun: int) -> bytes:
    """The LUN field of an event, as the kernel's vhost-scsi fills it: peripheral addressing (byte 2 zero) below
    256, flat above. Linux's driver takes bytes 2-3 verbatim as the LUN number of the device to rescan, so a
    flat-addressed LUN 0 in an event names "LUN 16384" and the event is lost ("SCSI device ... not found")."""
    return bytes((1, target & 0xFF, (0x40 | (lun >> 8)) if lun >= 256 else 0, lun & 0xFF, 0, 0, 0, 0))


def _gather(views: Sequence[memoryview], n: int) -> bytes | None:
    """The first n bytes across `views` (small headers split over descriptors), or None if they are shorter."""
    out = bytearray()
    for v in views:
        take = n - len(out)
        out += v[:take]
        if len(out) == n:
            return bytes(out)
    return None


def _split_at(views: Sequence[memoryview], n: int) -> list[memoryview] | None:
    """The views after the first n bytes (header), or None if they hold fewer than n bytes."""
    for i, v in enumerate(views):
        if n < len(v):
            return [v[n:], *views[i + 1 :]]
        n -= len(v)
        if n == 0:
            return list(views[i + 1 :])
    return None


def _scatter(views: Sequence[memoryview], data: bytes | bytearray) -> int:
    """Write `data` across `views` in order; returns bytes written (short if the views are smaller)."""
    done = 0
    for v in views:
        if done == len(data):
            break
        n = min(len(v), len(data) - done)
        v[:n] = data[done : done + n]
        done += n
    return done


class VirtioScsi:
    """One virtio-scsi device: the queues of a vhost-user connection and the TPGs they reach."""

    def __init__(
        self,
        ports: Mapping[int, Any],
        nexus: Mapping[int, str] | None = None,
        *,
        max_pending_events: int = MAX_PENDING_EVENTS,
    ) -> None:
        self.ports = ports
        self.nexus = nexus
        self.queues: list[SplitVirtqueue | None] = [None] * 258
        self.pending_events: collections.deque[bytes] = collections.deque()
        self.max_pending_events = max_pending_events
        self.events_missed = False
        self.errors = 0  # exceptions escaping the SCSI core (a bug there), answered as TARGET FAILURE
        self.last_error: BaseException | None = None

    def set_queue(self, index: int, vq: SplitVirtqueue | None) -> None:
        self.queues[index] = vq

    # ---- wake-ups -----------------------------------------------------------------------------------------------

    def process(self, index: int) -> int:
        """Serve one wake-up of queue `index`; returns completions pushed (then ask vq.should_notify())."""
        vq = self.queues[index]
        if vq is None:
            return 0
        if index == EVENT_QUEUE:
            return self._deliver_events(vq)
        if index != CONTROL_QUEUE and native.usable(vq):
            return self._process_native(vq)
        # Chains as tuples; completions published with one used.idx store per batch.
        handle = self._control if index == CONTROL_QUEUE else self._command
        done = 0
        while True:
            vq.disable_notifications()
            batch = vq.pop_batch()
            if batch:
                vq.push_many([(head, handle(out, ins, error)) for head, out, ins, error in batch])
                done += len(batch)
            if vq.broken or not vq.enable_notifications():
                return done

    def wake(self, index: int, kick_fd: int, call_fd: int) -> tuple[int, bool] | None:
        """One whole wake-up of request queue `index` in C (kick read, `process`, notification), when the ring
        can take it (native.serve says how); None when it cannot (no ring, control/event queue, no C path):
        the caller then reads the kick and calls `process` itself."""
        vq = self.queues[index]
        if vq is None or index == CONTROL_QUEUE or index == EVENT_QUEUE or not native.wake_usable(vq):
            return None
        return native.serve(vq, kick_fd, call_fd, self._fast_lun, self._command)

    def _process_native(self, vq: SplitVirtqueue) -> int:
        """`process` for a request queue with the C path (virtio.native): the same wake-up loop, with the quiet-LUN
        READ/WRITE chains run in C and every other chain by `_command`, in ring order."""
        done = 0
        while True:
            vq.disable_notifications()
            done += native.drain(vq, self._fast_lun, self._command)
            if vq.broken or not vq.enable_notifications():
                return done

    def _fast_lun(self, target: int, lun: int) -> tuple[object, ...] | None:
        """The C path's question, once per (target, LUN) per batch: may it run READ/WRITE there itself, and how?
        Only a real TargetPort answers (`TargetPort.fast_lun`); any other port object, e.g. a wrapper that
        intercepts `execute`, gets every command through `_command`."""
        port = self.ports.get(target)
        if not isinstance(port, TargetPort):
            return None
        nexus = self.nexus.get(target, DEFAULT_NEXUS) if self.nexus is not None else DEFAULT_NEXUS
        return port.fast_lun(nexus, lun)

    def resubmit(self, index: int, chains: Sequence[Chain]) -> int:
        """Run chains recovered from the in-flight area (taken by a previous process, never completed)."""
        vq = self.queues[index]
        if vq is None:
            return 0
        if index == EVENT_QUEUE:
            # Taken to carry an event the dead process never delivered: hand each back as "no event, events
            # missed" (Linux rescans, then posts the buffer again) rather than keep it from the guest for good.
            for chain in chains:
                usable = chain.error is None and chain.in_len() >= EVENT_SIZE
                vq.push(chain.head, _scatter(chain.in_, _EVENTS_MISSED) if usable else 0)
            return len(chains)
        handle = self._control if index == CONTROL_QUEUE else self._command
        for chain in chains:
            vq.push(chain.head, handle(chain.out, chain.in_, chain.error))
        return len(chains)

    # ---- commands -----------------------------------------------------------------------------------------------

    def _port_for(self, lun0: int, target: int) -> Any:
        if lun0 != 1:
            return None
        return self.ports.get(target)

    def _command(self, out: list[memoryview], ins: list[memoryview], error: str | None) -> int:
        """Execute one command given a chain's buffers; returns the used length (response + data-in written).

        The port's `execute` takes its own READ/WRITE fast path; a wrapper port (tests freeze or fail commands that
        way) sees every command.
        """
        if error is not None:
            return 0
        # response area (device-writable, first)
        resp: memoryview | bytearray
        if ins and len(ins[0]) >= RESP_SIZE:
            resp = ins[0]
            data_in = ins[1:] if len(resp) == RESP_SIZE else [resp[RESP_SIZE:], *ins[1:]]
            scattered = False
        else:
            rest = _split_at(ins, RESP_SIZE)
            if rest is None:
                return 0  # nowhere to put even a response: complete it empty
            resp = bytearray(RESP_SIZE)  # rare split layout: build it aside (per request, so queues share nothing)
            data_in = rest
            scattered = True
        # request header (driver-readable, first); unpacking copies the CDB: the guest may rewrite its memory
        data_out: Sequence[memoryview]
        if out and len(out[0]) >= REQ_SIZE:
            first = out[0]
            lun0, target, lun_hi, lun_lo, cdb = _unpack_req(first)
            if len(first) != REQ_SIZE:
                data_out = [first[REQ_SIZE:], *out[1:]]
            else:
                data_out = out[1:] if len(out) > 1 else _NO_BUFFERS
        else:
            gathered = _gather(out, REQ_SIZE)
            if gathered is None:
                return self._respond(resp, ins, scattered, S_FAILURE)
            lun0, target, lun_hi, lun_lo, cdb = _unpack_req(gathered)
            data_out = _split_at(out, REQ_SIZE) or []
        port = self.ports.get(target) if lun0 == 1 else None
        if port is None:
            return self._respond(resp, ins, scattered, S_BAD_TARGET)
        lun = ((lun_hi << 8) | lun_lo) & 0x3FFF
        nexus = self.nexus.get(target, DEFAULT_NEXUS) if self.nexus is not None else DEFAULT_NEXUS
        try:
            result = port.execute(nexus, lun, cdb, data_out, data_in)
            sense = result.sense
            data_in_len: int = result.data_in_len
            # As kernel vhost-scsi words it: resid is LIO's residual_count, and any sense goes out as LIO's whole
            # 96-byte sense buffer (sense_len 96, zero after the fixed-format bytes).
            if sense:
                _pack_resp(resp, 0, SENSE_SIZE, result.residual, 0, result.status, S_OK)
                n = len(sense) if len(sense) < SENSE_SIZE else SENSE_SIZE
                resp[12 : 12 + n] = sense[:n]
                resp[12 + n : RESP_SIZE] = _ZERO_SENSE[n:]
            else:
                _pack_resp(resp, 0, 0, result.residual, 0, result.status, S_OK)
        except Exception as e:  # the core promises not to raise or return junk; if it does, fail this command
            self.errors += 1
            self.last_error = e
            return self._respond(resp, ins, scattered, S_TARGET_FAILURE)
        if scattered:
            _scatter(ins, resp)
        return RESP_SIZE + data_in_len

    def _respond(self, resp: Any, ins: Sequence[memoryview], scattered: bool, response: int) -> int:
        """A response with no SCSI status (transport-level failure): only `response` says what happened."""
        _pack_resp(resp, 0, 0, 0, 0, 0, response)
        if scattered:
            _scatter(ins, resp)
        return RESP_SIZE

    # ---- control queue ------------------------------------------------------------------------------------------

    def _control(self, out: list[memoryview], ins: list[memoryview], error: str | None) -> int:
        """Execute one control request (TMF, AN query/subscribe) given a chain's buffers; returns the used length."""
        if error is not None:
            return 0
        head = _gather(out, 4)
        if head is None:
            return 0
        kind = int.from_bytes(head, "little")
        if kind == T_TMF:
            req = _gather(out, _TMF_REQ.size)
            if req is None:
                return 0
            _t, subtype, lun, _tag = _TMF_REQ.unpack(req)
            return _scatter(ins, bytes((self._tmf(subtype, lun),)))
        if kind in (T_AN_QUERY, T_AN_SUBSCRIBE):
            if _gather(out, _AN_REQ.size) is None:
                return 0
            # No asynchronous notifications are supported (as vhost-scsi): event_actual 0, response OK.
            return _scatter(ins, _AN_RESP.pack(0, S_OK))
        return 0  # unknown control request: no response layout to answer in

    def _tmf(self, subtype: int, lun_field: bytes) -> int:
        port = self._port_for(lun_field[0], lun_field[1])
        if port is None:
            return S_BAD_TARGET
        lun = ((lun_field[2] << 8) | lun_field[3]) & 0x3FFF
        nexus = self.nexus.get(lun_field[1], DEFAULT_NEXUS) if self.nexus is not None else DEFAULT_NEXUS
        try:
            if subtype in (T_TMF_ABORT_TASK, T_TMF_QUERY_TASK, T_TMF_QUERY_TASK_SET):
                # Commands run to completion before the next is taken, so no task is ever in flight to abort.
                return S_FUNCTION_COMPLETE
            if subtype in (T_TMF_ABORT_TASK_SET, T_TMF_CLEAR_TASK_SET):
                port.abort_task_set(nexus, lun)
                return S_FUNCTION_COMPLETE
            if subtype == T_TMF_LOGICAL_UNIT_RESET:
                if lun not in port.luns():
                    return S_INCORRECT_LUN
                port.lun_reset(nexus, lun)
                return S_FUNCTION_COMPLETE
            if subtype == T_TMF_I_T_NEXUS_RESET:
                port.it_nexus_reset(nexus)
                return S_FUNCTION_COMPLETE
        except Exception as e:
            self.errors += 1
            self.last_error = e
            return S_FAILURE
        return S_FUNCTION_REJECTED  # CLEAR ACA and anything unknown

    # ---- event queue --------------------------------------------------------------------------------------------

    def lun_added(self, target: int, lun: int) -> int:
        """Tell the guest to scan (target, lun): TRANSPORT_RESET/RESCAN. Returns events delivered now."""
        return self._post(T_TRANSPORT_RESET, target, lun, EVT_RESET_RESCAN)

    def lun_removed(self, target: int, lun: int) -> int:
        """Tell the guest (target, lun) is gone: TRANSPORT_RESET/REMOVED."""
        return self._post(T_TRANSPORT_RESET, target, lun, EVT_RESET_REMOVED)

    def capacity_changed(self, target: int, lun: int) -> int:
        """PARAM_CHANGE with CAPACITY DATA HAS CHANGED, so the guest re-reads the size."""
        return self._post(T_PARAM_CHANGE, target, lun, CAPACITY_CHANGED_REASON)

    def rescan(self) -> int:
        """Tell the guest its view of the LUNs may be stale: one NO_EVENT with EVENTS_MISSED (on the next pending
        event instead, if there is one), delivered as soon as the event queue has a buffer. Linux answers it with a
        rescan of the host, which adds new LUNs; it drops only LUNs whose INQUIRY answers GOOD with a non-zero
        peripheral qualifier, which no LUN of ours does (LIO's CHECK CONDITION). Returns events delivered now."""
        self.events_missed = True
        vq = self.queues[EVENT_QUEUE]
        return self._deliver_events(vq) if vq is not None else 0

    def _post(self, event: int, target: int, lun: int, reason: int) -> int:
        if len(self.pending_events) >= self.max_pending_events:
            self.pending_events.popleft()
            self.events_missed = True
        self.pending_events.append(_EVENT.pack(event, event_lun_bytes(target, lun), reason))
        vq = self.queues[EVENT_QUEUE]
        return self._deliver_events(vq) if vq is not None else 0

    def _deliver_events(self, vq: SplitVirtqueue) -> int:
        """Put pending events into posted event buffers; a missed event marks the next one delivered, or goes
        out on its own (NO_EVENT | EVENTS_MISSED) when no event is pending."""
        done = 0
        while self.pending_events or self.events_missed:
            chain = vq.pop()
            if chain is None:
                break
            if chain.error is not None or chain.in_len() < EVENT_SIZE:
                vq.push(chain.head, 0)  # unusable buffer: give it back, keep the event
                done += 1
                continue
            if not self.pending_events:
                ev = _EVENTS_MISSED
            else:
                ev = self.pending_events.popleft()
                if self.events_missed:
                    ev = _EVENT.pack(_EVENT.unpack(ev)[0] | T_EVENTS_MISSED, *_EVENT.unpack(ev)[1:])
            self.events_missed = False
            vq.push(chain.head, _scatter(chain.in_, ev))
            done += 1
        return done
