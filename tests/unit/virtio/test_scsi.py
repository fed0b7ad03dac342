"""virtio-scsi request/response/TMF/event bytes, through real rings in shared memory.

The target port here is a small recording port (a few commands over a bytearray) so that these tests check the
virtio-scsi layer alone: what reaches `execute` and what bytes come back. The real SCSI core is exercised in
tests/unit/hostdriver over the same path.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest

from vhostscsi.hostdriver.guestram import GuestRam
from vhostscsi.hostdriver.vring import Desc, DriverRing
from vhostscsi.virtio import scsi as vs
from vhostscsi.virtio.scsi import VirtioScsi, lun_bytes
from vhostscsi.virtio.virtqueue import SplitVirtqueue

pytestmark = pytest.mark.usefixtures("both_paths")  # the C request-queue path and the pure one (conftest.py)

PAGE = 4096


@dataclass
class Result:
    status: int
    sense: bytes
    data_in_len: int
    residual: int = 0


class RecordingPort:
    """Answers READ(10)/WRITE(10) over a bytearray, CHECK CONDITION for anything else; records every call."""

    def __init__(self, blocks: int = 16) -> None:
        self.disk = bytearray(512 * blocks)
        self.calls: list[tuple] = []
        self.tmfs: list[tuple] = []
        self._luns = [0, 3]

    def luns(self) -> list[int]:
        return self._luns

    def execute(self, nexus, lun, cdb, data_out, data_in):
        self.calls.append((nexus, lun, bytes(cdb), [len(v) for v in data_out], [len(v) for v in data_in]))
        op = cdb[0]
        if op == 0x28:
            lba, n = struct.unpack(">I", cdb[2:6])[0], struct.unpack(">H", cdb[7:9])[0]
            src = memoryview(self.disk)[512 * lba : 512 * (lba + n)]
            off = 0
            for v in data_in:
                k = min(len(v), len(src) - off)
                v[:k] = src[off : off + k]
                off += k
            return Result(0, b"", off, sum(len(v) for v in data_in) - off)
        if op == 0x2A:
            lba = struct.unpack(">I", cdb[2:6])[0]
            off = 512 * lba
            for v in data_out:
                self.disk[off : off + len(v)] = v
                off += len(v)
            return Result(0, b"", 0)
        if op == 0xFF:
            raise RuntimeError("core bug")
        sense = bytes([0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x20, 0, 0, 0, 0, 0])
        return Result(2, sense, 0, 7)  # a residual only the port knows: the device must pass it through

    def abort_task_set(self, nexus, lun):
        self.tmfs.append(("abort_task_set", nexus, lun))

    def lun_reset(self, nexus, lun):
        self.tmfs.append(("lun_reset", nexus, lun))

    def it_nexus_reset(self, nexus):
        self.tmfs.append(("it_nexus_reset", nexus))


class Rig:
    def __init__(self, size: int = 16) -> None:
        self.ram = GuestRam(64 * PAGE)
        self.mem = self.ram.backend_memory()
        self.port = RecordingPort()
        self.dev = VirtioScsi({1: self.port}, nexus={1: "naa.5001405000000001"})
        self.rings = {}
        for q in range(3):
            drv = DriverRing(self.ram, size, event_idx=True)
            d, u, a = drv.uvas()
            self.dev.set_queue(q, SplitVirtqueue.from_uva(self.mem, size, d, a, u, event_idx=True))
            self.rings[q] = drv

    def close(self) -> None:
        """Unmap and close the memfd: GuestRam's memfd is a plain fd number that garbage collection never closes,
        and a hypothesis test makes a hundred rigs (a leak there pushed later tests past select's FD_SETSIZE)."""
        self.mem.close()
        self.ram.close()

    def __enter__(self) -> "Rig":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def buf(self, data: bytes | int) -> tuple[int, int]:
        n = data if isinstance(data, int) else len(data)
        gpa = self.ram.alloc(n)
        if not isinstance(data, int):
            self.ram.write(gpa, data)
        return gpa, n


def req(target: int, lun: int, cdb: bytes, tag: int = 7, lun0: int = 1) -> bytes:
    lb = bytearray(lun_bytes(target, lun))
    lb[0] = lun0
    return bytes(lb) + struct.pack("<QBBB", tag, 0, 0, 0) + cdb.ljust(32, b"\0")


def read10(lba: int, n: int) -> bytes:
    return bytes([0x28, 0]) + struct.pack(">I", lba) + b"\0" + struct.pack(">H", n) + b"\0"


def write10(lba: int, n: int) -> bytes:
    return bytes([0x2A, 0]) + struct.pack(">I", lba) + b"\0" + struct.pack(">H", n) + b"\0"


def parse_resp(raw: bytes) -> tuple[int, int, int, int, int, bytes]:
    sense_len, resid, qual, status, response = struct.unpack_from("<IIHBB", raw)
    return sense_len, resid, qual, status, response, raw[12 : 12 + sense_len]


@pytest.fixture
def rig():
    r = Rig()
    yield r
    r.close()


def test_lun_field_layout() -> None:
    assert lun_bytes(1, 0) == bytes.fromhex("0101400000000000")
    assert lun_bytes(2, 0x123) == bytes.fromhex("0102412300000000")
    # events as the kernel's vhost-scsi sends them: peripheral addressing below 256 (what Linux looks up)
    assert vs.event_lun_bytes(1, 0) == bytes.fromhex("0101000000000000")
    assert vs.event_lun_bytes(1, 255) == bytes.fromhex("010100ff00000000")
    assert vs.event_lun_bytes(3, 300) == bytes.fromhex("0103412c00000000")


def test_read_goes_straight_into_guest_buffers(rig: Rig) -> None:
    rig.port.disk[512:1024] = bytes(range(256)) * 2
    resp, data = rig.buf(vs.RESP_SIZE), rig.buf(512)
    rig.rings[2].add([rig.buf(req(1, 0, read10(1, 1)))], [resp, data])
    assert rig.dev.process(2) == 1
    (used,) = rig.rings[2].get_used()
    assert used.length == vs.RESP_SIZE + 512
    assert parse_resp(rig.ram.read(*resp)) == (0, 0, 0, 0, vs.S_OK, b"")
    assert rig.ram.read(*data) == bytes(range(256)) * 2
    nexus, lun, cdb, outs, ins = rig.port.calls[0]
    assert (nexus, lun, cdb[:10], outs, ins) == ("naa.5001405000000001", 0, read10(1, 1), [], [512])


def test_write_and_header_split_over_descriptors(rig: Rig) -> None:
    r = req(1, 3, write10(2, 1))
    resp = rig.buf(vs.RESP_SIZE)
    payload = bytes([0xAB]) * 512
    rig.rings[2].add([rig.buf(r[:10]), rig.buf(r[10:] + payload[:100]), rig.buf(payload[100:])], [resp])
    rig.dev.process(2)
    assert rig.port.calls[0][1] == 3 and rig.port.calls[0][3] == [100, 412]
    assert rig.port.disk[1024:1536] == payload
    assert rig.rings[2].get_used()[0].length == vs.RESP_SIZE


def test_response_split_and_residual_and_sense(rig: Rig) -> None:
    a, b, data = rig.buf(50), rig.buf(vs.RESP_SIZE - 50 + 8), rig.buf(64)
    rig.ram.write(a[0], b"\xaa" * 50)  # stale bytes where the sense buffer goes: must come back zeroed
    rig.rings[2].add([rig.buf(req(1, 0, b"\x12\0\0\0\x24\0"))], [a, b, data])
    rig.dev.process(2)
    raw = rig.ram.read(*a) + rig.ram.read(*b)
    sense_len, resid, _q, status, response, sense = parse_resp(raw)
    # as kernel vhost-scsi: the whole 96-byte sense buffer, LIO's residual as given by the core
    assert (sense_len, resid, status, response) == (96, 7, 2, vs.S_OK)
    assert sense[:3] == bytes([0x70, 0, 5]) and sense[12] == 0x20 and sense[18:] == bytes(78)
    assert rig.port.calls[0][4] == [8, 64]  # data-in starts right after the 108-byte response


def test_unknown_target_and_bad_lun_byte(rig: Rig) -> None:
    for r in (req(2, 0, read10(0, 1)), req(1, 0, read10(0, 1), lun0=0)):
        resp = rig.buf(vs.RESP_SIZE)
        rig.rings[2].add([rig.buf(r)], [resp, rig.buf(512)])
        rig.dev.process(2)
        assert parse_resp(rig.ram.read(*resp))[4] == vs.S_BAD_TARGET
    assert rig.port.calls == []


def test_short_header_and_short_response(rig: Rig) -> None:
    resp = rig.buf(vs.RESP_SIZE)
    rig.rings[2].add([rig.buf(b"\1\1")], [resp])
    rig.rings[2].add([rig.buf(req(1, 0, read10(0, 1)))], [rig.buf(20)])
    assert rig.dev.process(2) == 2
    assert parse_resp(rig.ram.read(*resp))[4] == vs.S_FAILURE
    assert [u.length for u in rig.rings[2].get_used()] == [vs.RESP_SIZE, 0]
    assert rig.port.calls == []


def test_malformed_chain_completes_empty_and_queue_continues(rig: Rig) -> None:
    rig.rings[2].add_raw([Desc(0xBAD00000000, 51)])
    resp = rig.buf(vs.RESP_SIZE)
    rig.rings[2].add([rig.buf(req(1, 0, read10(0, 1)))], [resp, rig.buf(512)])
    assert rig.dev.process(2) == 2
    assert [u.length for u in rig.rings[2].get_used()] == [0, vs.RESP_SIZE + 512]


def test_core_exception_is_target_failure(rig: Rig) -> None:
    resp = rig.buf(vs.RESP_SIZE)
    rig.rings[2].add([rig.buf(req(1, 0, b"\xff"))], [resp])
    rig.dev.process(2)
    assert parse_resp(rig.ram.read(*resp))[4] == vs.S_TARGET_FAILURE and rig.dev.errors == 1


def test_cdb_is_a_private_copy(rig: Rig) -> None:
    r = rig.buf(req(1, 0, read10(0, 1)))
    rig.rings[2].add([r], [rig.buf(vs.RESP_SIZE), rig.buf(512)])
    rig.dev.process(2)
    assert isinstance(rig.port.calls[0][2], bytes)


def tmf(rig: Rig, subtype: int, target: int = 1, lun: int = 0) -> int:
    resp = rig.buf(1)
    rig.rings[0].add([rig.buf(struct.pack("<II8sQ", vs.T_TMF, subtype, lun_bytes(target, lun), 5))], [resp])
    rig.dev.process(0)
    assert rig.rings[0].get_used()[-1].length == 1
    return rig.ram.read(*resp)[0]


def test_task_management(rig: Rig) -> None:
    assert tmf(rig, vs.T_TMF_ABORT_TASK) == vs.S_FUNCTION_COMPLETE
    assert tmf(rig, vs.T_TMF_ABORT_TASK_SET, lun=3) == vs.S_FUNCTION_COMPLETE
    assert tmf(rig, vs.T_TMF_LOGICAL_UNIT_RESET) == vs.S_FUNCTION_COMPLETE
    assert tmf(rig, vs.T_TMF_LOGICAL_UNIT_RESET, lun=9) == vs.S_INCORRECT_LUN
    assert tmf(rig, vs.T_TMF_I_T_NEXUS_RESET) == vs.S_FUNCTION_COMPLETE
    assert tmf(rig, vs.T_TMF_CLEAR_ACA) == vs.S_FUNCTION_REJECTED
    assert tmf(rig, vs.T_TMF_LOGICAL_UNIT_RESET, target=5) == vs.S_BAD_TARGET
    n = "naa.5001405000000001"
    assert rig.port.tmfs == [("abort_task_set", n, 3), ("lun_reset", n, 0), ("it_nexus_reset", n)]


def test_an_query_and_subscribe(rig: Rig) -> None:
    for t in (vs.T_AN_QUERY, vs.T_AN_SUBSCRIBE):
        resp = rig.buf(5)
        rig.rings[0].add([rig.buf(struct.pack("<I8sI", t, lun_bytes(1, 0), 0x7E))], [resp])
        rig.dev.process(0)
        assert rig.ram.read(*resp) == struct.pack("<IB", 0, vs.S_OK)


def test_events_hotplug_unplug_resize(rig: Rig) -> None:
    bufs = [rig.buf(vs.EVENT_SIZE) for _ in range(3)]
    for b in bufs:
        rig.rings[1].add([], [b])
    assert rig.dev.process(1) == 0  # no pending events: buffers stay posted
    assert rig.dev.lun_added(1, 2) == 1
    assert rig.dev.lun_removed(1, 2) == 1
    assert rig.dev.capacity_changed(1, 0) == 1
    evs = [struct.unpack("<I8sI", rig.ram.read(*b)) for b in bufs]
    assert evs == [
        (vs.T_TRANSPORT_RESET, vs.event_lun_bytes(1, 2), vs.EVT_RESET_RESCAN),
        (vs.T_TRANSPORT_RESET, vs.event_lun_bytes(1, 2), vs.EVT_RESET_REMOVED),
        (vs.T_PARAM_CHANGE, vs.event_lun_bytes(1, 0), 0x092A),
    ]
    assert [u.length for u in rig.rings[1].get_used()] == [16, 16, 16]


def test_events_wait_for_buffers_and_overflow_sets_missed() -> None:
    with Rig() as rig:
        rig.dev.max_pending_events = 2
        assert rig.dev.lun_added(1, 0) == 0
        assert rig.dev.lun_added(1, 1) == 0
        assert rig.dev.lun_added(1, 2) == 0  # the oldest is dropped
        b = [rig.buf(vs.EVENT_SIZE) for _ in range(3)]
        for x in b:
            rig.rings[1].add([], [x])
        assert rig.dev.process(1) == 2
        first = struct.unpack("<I8sI", rig.ram.read(*b[0]))
        second = struct.unpack("<I8sI", rig.ram.read(*b[1]))
        assert first == (vs.T_TRANSPORT_RESET | vs.T_EVENTS_MISSED, vs.event_lun_bytes(1, 1), vs.EVT_RESET_RESCAN)
        assert second == (vs.T_TRANSPORT_RESET, vs.event_lun_bytes(1, 2), vs.EVT_RESET_RESCAN)


def test_many_requests_one_wakeup_and_notification(rig: Rig) -> None:
    drv = rig.rings[2]
    for _ in range(10):
        drv.add([rig.buf(req(1, 0, read10(0, 1)))], [rig.buf(vs.RESP_SIZE), rig.buf(512)], indirect=True)
    assert rig.dev.process(2) == 10
    vq = rig.dev.queues[2]
    assert vq.should_notify()
    assert len(drv.get_used()) == 10
    assert drv.avail_event() == vq.last_avail_idx == 10


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(
    st.tuples(st.sampled_from([b"", lun_bytes(1, 0) + bytes(11), struct.pack("<II", 0, 5) + lun_bytes(1, 0)]),
              st.binary(max_size=60)).map(lambda t: t[0] + t[1]),
    st.lists(st.integers(0, 700), max_size=3),
    st.integers(0, 2)), min_size=1, max_size=12))
def test_random_requests_on_every_queue_never_escape(reqs) -> None:
    """Random request bytes and buffer layouts on control, event and request queues: every chain completes,
    nothing raises, and the used lengths never exceed what the driver offered."""
    with Rig(size=16) as rig:
        offered = {}
        for raw, ins, q in reqs:
            out = [rig.buf(raw)] if raw else []
            inb = [rig.buf(n) for n in ins if n]
            if not out and not inb:
                continue
            head = rig.rings[q].add(out, inb, indirect=True)
            offered[(q, head)] = sum(n for _g, n in inb)
        for q in (0, 2):
            rig.dev.process(q)
        for q in (0, 2):
            for u in rig.rings[q].get_used():
                assert u.length <= offered[(q, u.head)]
        assert rig.dev.errors == 0


class FillingPort:
    """Writes 0xEE over every data-in byte it is given and reads every data-out byte: touches all it gets."""

    def execute(self, nexus, lun, cdb, data_out, data_in):
        for v in data_out:
            bytes(v)
        for v in data_in:
            v[:] = b"\xee" * len(v)
        return Result(0, b"\x70" + bytes(17), sum(len(v) for v in data_in))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(-96, 96), st.integers(0, 160)), min_size=1, max_size=6), st.booleans())
def test_writes_never_leave_the_regions(descs, at_end) -> None:
    """Buffers hugging the edges of a region that sits inside a bigger memfd: whatever the device writes lands
    inside the region; the canary bytes around it (same file, no guest address) stay intact."""
    from vhostscsi.hostdriver.vring import Desc
    from vhostscsi.virtio.memory import GuestMemory
    from vhostscsi.virtio.virtqueue import VRING_DESC_F_NEXT, VRING_DESC_F_WRITE

    ram = GuestRam(16 * PAGE)
    canary = b"\xc5" * (16 * PAGE)
    ram.mem[:] = canary
    lo, hi = 4 * PAGE, 12 * PAGE  # the only guest-visible bytes: file offsets [lo, hi) at gpa 0x100000
    gpa0 = 0x100000
    mem = GuestMemory.map_fds([(gpa0, hi - lo, 0x7F0000000000, lo)], [ram.fd])
    ring_mem = GuestRam(16 * PAGE)  # rings live elsewhere, so only data buffers touch the guarded region
    drv = DriverRing(ring_mem, 16)
    rmem = ring_mem.backend_memory()
    d, u, a = drv.uvas()
    dev = VirtioScsi({1: FillingPort()})
    dev.set_queue(2, SplitVirtqueue.from_uva(rmem, 16, d, a, u))
    edge = gpa0 + (hi - lo) if at_end else gpa0
    req = lun_bytes(1, 0) + bytes(43)
    ram.mem[lo : lo + len(req)] = req  # a valid header at the start of the region
    chain = [Desc(gpa0, len(req), VRING_DESC_F_NEXT, 1)]
    for k, (delta, length) in enumerate(descs):
        nxt = k + 2 if k + 1 < len(descs) else 0
        chain.append(Desc(edge + delta, length, VRING_DESC_F_WRITE | (VRING_DESC_F_NEXT if nxt else 0), nxt))
    drv.add_raw(chain, head=0)
    dev.process(2)
    assert len(drv.get_used()) == 1
    assert ram.mem[:lo] == canary[:lo] and ram.mem[hi:] == canary[hi:]
    mem.close()
    rmem.close()
    ram.close()
    ring_mem.close()


def test_malformed_core_result_is_target_failure_not_a_crash() -> None:
    class Junk:
        def execute(self, nexus, lun, cdb, data_out, data_in):
            return object()  # no status, no sense: a core bug must not take the ring (or the daemon) down

    with Rig() as rig:
        rig.dev.ports[1] = Junk()
        resp = rig.buf(vs.RESP_SIZE)
        rig.rings[2].add([rig.buf(req(1, 0, read10(0, 1)))], [resp, rig.buf(512)])
        assert rig.dev.process(2) == 1
        assert parse_resp(rig.ram.read(*resp))[4] == vs.S_TARGET_FAILURE and rig.dev.errors == 1
