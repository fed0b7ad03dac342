"""The back-end state machine driven with the message sequence QEMU 7.2's vhost-user-scsi sends."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vhostscsi.hostdriver.guestram import GuestRam
from vhostscsi.hostdriver.vring import DriverRing
from vhostscsi.vhost_user import codec
from vhostscsi.vhost_user.codec import Message, ProtocolError, VringAddr
from vhostscsi.vhost_user.protocol import (
    DEFAULT_FEATURES,
    DEFAULT_PROTOCOL_FEATURES,
    FLAG_NEED_REPLY,
    VERSION,
    ProtocolFeature,
    Request,
    bit,
)
from vhostscsi.vhost_user.session import (
    CallFd,
    ErrFd,
    KickFd,
    MemoryChanged,
    RingEnabled,
    RingStarted,
    RingStopped,
    Session,
)

PAGE = 4096


def msg(req: int, payload: bytes = b"", fds: tuple[int, ...] = (), need_reply: bool = False) -> Message:
    return Message(req, VERSION | (FLAG_NEED_REPLY if need_reply else 0), payload, fds)


def eventfd() -> int:
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


def fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


@pytest.fixture
def ram():
    with GuestRam(16 * PAGE, regions=2) as r:
        yield r


def negotiate(s: Session) -> None:
    s.handle(msg(Request.SET_PROTOCOL_FEATURES, codec.pack_u64(DEFAULT_PROTOCOL_FEATURES)))
    s.handle(msg(Request.SET_OWNER))
    s.handle(msg(Request.SET_FEATURES, codec.pack_u64(DEFAULT_FEATURES)))


def set_mem(s: Session, ram: GuestRam):
    fds = tuple(os.dup(ram.fd) for _ in ram.regions)
    return s.handle(msg(Request.SET_MEM_TABLE, codec.pack_memory_table(ram.regions), fds, need_reply=True))


def setup_ring(s: Session, ram: GuestRam, index: int, ring: DriverRing, base: int = 0):
    s.handle(msg(Request.SET_VRING_NUM, codec.pack_vring_state(index, ring.size)))
    s.handle(msg(Request.SET_VRING_BASE, codec.pack_vring_state(index, base)))
    d, u, a = ring.uvas()
    s.handle(msg(Request.SET_VRING_ADDR, codec.pack_vring_addr(VringAddr(index, 0, d, u, a, 0))))
    kick = eventfd()
    return kick, s.handle(msg(Request.SET_VRING_KICK, codec.pack_vring_file(index, True), (kick,)))


def test_qemu_7_2_sequence(ram: GuestRam) -> None:
    s = Session(num_queues=3)
    r = s.handle(msg(Request.GET_FEATURES))
    assert codec.unpack_u64(r.replies[0].payload) == DEFAULT_FEATURES
    assert r.replies[0].flags == 0x5
    r = s.handle(msg(Request.GET_PROTOCOL_FEATURES))
    pf = codec.unpack_u64(r.replies[0].payload)
    assert pf & bit(ProtocolFeature.MQ) and pf & bit(ProtocolFeature.REPLY_ACK)
    assert not pf & bit(ProtocolFeature.CONFIG)
    assert s.handle(msg(Request.SET_PROTOCOL_FEATURES, codec.pack_u64(pf))).replies == []
    r = s.handle(msg(Request.GET_QUEUE_NUM))
    assert codec.unpack_u64(r.replies[0].payload) == 3
    s.handle(msg(Request.SET_OWNER))
    call, err = eventfd(), eventfd()
    r = s.handle(msg(Request.SET_VRING_CALL, codec.pack_vring_file(2, True), (call,)))
    assert r.actions == [CallFd(2, call)]
    r = s.handle(msg(Request.SET_VRING_ERR, codec.pack_vring_file(2, True), (err,)))
    assert r.actions == [ErrFd(2, err)]
    s.handle(msg(Request.SET_FEATURES, codec.pack_u64(DEFAULT_FEATURES)))
    r = set_mem(s, ram)
    assert [x.payload for x in r.replies] == [codec.pack_u64(0)]  # REPLY_ACK success
    assert isinstance(r.actions[0], MemoryChanged)
    ring = DriverRing(ram, 8, event_idx=True)
    kick, r = setup_ring(s, ram, 2, ring, base=0)
    assert r.actions[0] == KickFd(2, kick)
    started = r.actions[1]
    assert isinstance(started, RingStarted) and started.index == 2 and started.vq.event_idx
    # the ring works over the mapped memory
    gpa = ram.alloc(4)
    ram.write(gpa, b"ping")
    ring.add([(gpa, 4)], [])
    assert bytes(started.vq.pop().out[0]) == b"ping"
    r = s.handle(msg(Request.SET_VRING_ENABLE, codec.pack_vring_state(2, 1)))
    assert r.actions == [RingEnabled(2, True)]
    r = s.handle(msg(Request.GET_VRING_BASE, codec.pack_vring_state(2, 0)))
    assert codec.unpack_vring_state(r.replies[0].payload) == (2, 1)
    assert r.actions == [RingStopped(2), KickFd(2, None)]
    for fd in (call, err, kick):
        os.close(fd)
    s.close()


def test_memory_fds_are_closed_after_mapping(ram: GuestRam) -> None:
    s = Session(num_queues=3)
    negotiate(s)
    fds = tuple(os.dup(ram.fd) for _ in ram.regions)
    s.handle(msg(Request.SET_MEM_TABLE, codec.pack_memory_table(ram.regions), fds))
    assert not any(fd_is_open(fd) for fd in fds)
    s.close()


def test_bad_mem_table_fails_with_ack_and_closes_fds(ram: GuestRam) -> None:
    s = Session(num_queues=3)
    negotiate(s)
    fd = os.dup(ram.fd)
    r = s.handle(msg(Request.SET_MEM_TABLE, codec.pack_memory_table(ram.regions), (fd,), need_reply=True))
    assert [x.payload for x in r.replies] == [codec.pack_u64(1)]
    assert not fd_is_open(fd) and s.memory is None


def test_unknown_request_with_reply_ack_gets_failure_not_silence() -> None:
    s = Session(num_queues=3)
    negotiate(s)
    r = s.handle(msg(200, b"junk", need_reply=True))
    assert len(r.replies) == 1 and r.replies[0].request == 200 and r.replies[0].payload == codec.pack_u64(1)
    r = s.handle(msg(Request.SET_LOG_BASE, bytes(16), need_reply=True))
    assert r.replies[0].payload == codec.pack_u64(1)


def test_no_ack_without_reply_ack_negotiated() -> None:
    s = Session(num_queues=3)
    assert s.handle(msg(Request.SET_OWNER, need_reply=True)).replies == []


def test_set_features_beyond_offer_fails() -> None:
    s = Session(num_queues=3)
    negotiate(s)
    r = s.handle(msg(Request.SET_FEATURES, codec.pack_u64(1 << 40), need_reply=True))
    assert r.replies[0].payload == codec.pack_u64(1)


def test_ring_index_and_size_validation() -> None:
    s = Session(num_queues=3)
    negotiate(s)
    for payload in (codec.pack_vring_state(3, 128), codec.pack_vring_state(0, 100), codec.pack_vring_state(0, 0)):
        r = s.handle(msg(Request.SET_VRING_NUM, payload, need_reply=True))
        assert r.replies[0].payload == codec.pack_u64(1)
    with pytest.raises(ProtocolError):
        s.handle(msg(Request.GET_VRING_BASE, codec.pack_vring_state(9, 0)))
    with pytest.raises(ProtocolError):
        s.handle(msg(Request.GET_VRING_BASE, b"x"))  # must be answered, but its payload is unreadable


def test_kick_with_wrong_fd_count_closes_fds() -> None:
    s = Session(num_queues=3)
    negotiate(s)
    a, b = eventfd(), eventfd()
    r = s.handle(msg(Request.SET_VRING_KICK, codec.pack_vring_file(0, True), (a, b), need_reply=True))
    assert r.replies[0].payload == codec.pack_u64(1) and r.actions == []
    assert not fd_is_open(a) and not fd_is_open(b)


def test_ring_outside_memory_fails_kick(ram: GuestRam) -> None:
    s = Session(num_queues=3)
    negotiate(s)
    set_mem(s, ram)
    s.handle(msg(Request.SET_VRING_NUM, codec.pack_vring_state(0, 8)))
    s.handle(msg(Request.SET_VRING_ADDR, codec.pack_vring_addr(VringAddr(0, 0, 0, 0x100, 0x200, 0))))
    kick = eventfd()
    r = s.handle(msg(Request.SET_VRING_KICK, codec.pack_vring_file(0, True), (kick,), need_reply=True))
    assert r.replies[0].payload == codec.pack_u64(1)
    assert r.actions == [KickFd(0, kick)]  # the engine owns the fd even though the ring could not start
    os.close(kick)
    s.close()


def test_new_mem_table_rebuilds_running_rings(ram: GuestRam) -> None:
    s = Session(num_queues=3)
    negotiate(s)
    set_mem(s, ram)
    ring = DriverRing(ram, 8)
    kick, r = setup_ring(s, ram, 0, ring)
    gpa = ram.alloc(1)
    ring.add([(gpa, 1)], [])
    r.actions[1].vq.pop()
    r = set_mem(s, ram)
    restarted = [a for a in r.actions if isinstance(a, RingStarted)]
    assert len(restarted) == 1 and restarted[0].vq.last_avail_idx == 1
    os.close(kick)
    s.close()


def test_reset_device_stops_rings(ram: GuestRam) -> None:
    s = Session(num_queues=3)
    negotiate(s)
    set_mem(s, ram)
    kick, _ = setup_ring(s, ram, 1, DriverRing(ram, 8))
    r = s.handle(msg(Request.RESET_DEVICE, need_reply=True))
    assert RingStopped(1) in r.actions and KickFd(1, None) in r.actions
    assert r.replies[0].payload == codec.pack_u64(0)
    os.close(kick)
    s.close()


def test_inflight_fd_round_trip_resubmits(ram: GuestRam) -> None:
    s = Session(num_queues=3)
    negotiate(s)
    r = s.handle(msg(Request.GET_INFLIGHT_FD, codec.pack_inflight(codec.Inflight(0, 0, 3, 8))))
    info = codec.unpack_inflight(r.replies[0].payload)
    (ifd,) = r.replies[0].fds
    assert info.num_queues == 3 and info.queue_size == 8 and os.fstat(ifd).st_size == info.mmap_size
    s.handle(msg(Request.SET_INFLIGHT_FD, r.replies[0].payload, (os.dup(ifd),)))
    set_mem(s, ram)
    ring = DriverRing(ram, 8)
    kick, r = setup_ring(s, ram, 2, ring)
    vq = r.actions[1].vq
    heads = [ring.add([(ram.alloc(1), 1)], []) for _ in range(2)]
    vq.pop_all()
    vq.push(heads[0], 0)
    s.close()  # the back end dies with heads[1] in flight
    # a fresh process: QEMU sends the same in-flight fd back and restarts the ring at used.idx
    s2 = Session(num_queues=3)
    negotiate(s2)
    s2.handle(msg(Request.SET_INFLIGHT_FD, codec.pack_inflight(info), (ifd,)))
    set_mem(s2, ram)
    kick2, r = setup_ring(s2, ram, 2, ring, base=1)
    assert [c.head for c in r.actions[1].resubmit] == [heads[1]]
    assert r.actions[1].vq.last_avail_idx == 2
    os.close(kick)
    os.close(kick2)
    s2.close()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([int(x) for x in Request] + [0, 99, 1000]),
                          st.binary(max_size=48), st.booleans()), max_size=30))
def test_random_messages_only_raise_protocol_error(seq: list[tuple[int, bytes, bool]]) -> None:
    s = Session(num_queues=3)
    negotiate(s)
    try:
        for req, payload, need in seq:
            try:
                r = s.handle(msg(req, payload, need_reply=need))
            except ProtocolError:
                continue
            for rep in r.replies:
                codec.encode(rep)
                for fd in rep.fds:
                    os.close(fd)
    finally:
        s.close()


def test_set_vring_base_on_a_running_ring_takes_effect(ram: GuestRam) -> None:
    """A front end that re-sets a ring without GET_VRING_BASE first (a restart of its own) must get its base."""
    s = Session(num_queues=3)
    negotiate(s)
    set_mem(s, ram)
    ring = DriverRing(ram, 8)
    kick, r = setup_ring(s, ram, 2, ring)
    ring.add([(ram.alloc(1), 1)], [])
    r.actions[1].vq.pop()
    kick2, r = setup_ring(s, ram, 2, ring, base=5)
    assert r.actions[1].vq.last_avail_idx == 5
    os.close(kick)
    os.close(kick2)
    s.close()


_FD_REQUESTS = [Request.SET_MEM_TABLE, Request.SET_INFLIGHT_FD, Request.SET_VRING_KICK, Request.SET_VRING_CALL,
                Request.SET_VRING_ERR, Request.SET_LOG_FD, Request.SET_LOG_BASE, Request.SET_BACKEND_REQ_FD,
                Request.ADD_MEM_REG, Request.GET_INFLIGHT_FD, 99]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_FD_REQUESTS), st.binary(max_size=48), st.integers(0, 2)), max_size=12))
def test_random_messages_with_fds_never_leak_or_escape(seq) -> None:
    """Whatever arrives with fds, each fd is either handed to the engine in an action or closed; nothing but
    ProtocolError escapes."""
    with GuestRam(4 * PAGE) as ram:
        s = Session(num_queues=3)
        negotiate(s)
        try:
            for req, payload, nfds in seq:
                fds = tuple(os.dup(ram.fd) for _ in range(nfds))
                try:
                    r = s.handle(msg(req, payload, fds, need_reply=True))
                except ProtocolError:
                    r = None
                handed = {a.fd for a in (r.actions if r else []) if isinstance(a, (KickFd, CallFd, ErrFd))}
                for fd in fds:
                    assert fd_is_open(fd) == (fd in handed), f"fd {fd} of {Message(req).name()} leaked or lost"
                    if fd in handed:
                        os.close(fd)
                for rep in r.replies if r else []:
                    for fd in rep.fds:
                        os.close(fd)
        finally:
            s.close()


def test_ring_starts_when_memory_arrives_after_the_kick(ram: GuestRam) -> None:
    """Message order is the front end's choice: a ring kicked before the memory table starts once it comes."""
    s = Session(num_queues=3)
    negotiate(s)
    ring = DriverRing(ram, 8)
    kick, r = setup_ring(s, ram, 1, ring)
    assert r.actions == [KickFd(1, kick)]  # nothing to map the ring into yet
    r = set_mem(s, ram)
    started = [a for a in r.actions if isinstance(a, RingStarted)]
    assert [a.index for a in started] == [1]
    os.close(kick)
    s.close()


def test_memory_slots_added_and_removed(ram: GuestRam) -> None:
    """CONFIGURE_MEM_SLOTS: regions arrive one at a time; rings run over them; removal drops one region."""
    s = Session(num_queues=3, protocol_features=DEFAULT_PROTOCOL_FEATURES | bit(ProtocolFeature.CONFIGURE_MEM_SLOTS))
    negotiate(s)
    r = s.handle(msg(Request.GET_MAX_MEM_SLOTS))
    assert codec.unpack_u64(r.replies[0].payload) == 32
    for region in ram.regions:
        fd = os.dup(ram.fd)
        r = s.handle(msg(Request.ADD_MEM_REG, codec.pack_single_region(region), (fd,), need_reply=True))
        assert r.replies[0].payload == codec.pack_u64(0) and not fd_is_open(fd)
    assert [x.gpa for x in s.memory.regions] == [x.guest_phys_addr for x in ram.regions]
    ring = DriverRing(ram, 8)
    kick, r = setup_ring(s, ram, 2, ring)
    gpa = ram.alloc(4)
    ram.write(gpa, b"slot")
    ring.add([(gpa, 4)], [])
    assert bytes(r.actions[1].vq.pop().out[0]) == b"slot"
    # overlapping an existing slot is refused; removing an unknown one too
    r = s.handle(msg(Request.ADD_MEM_REG, codec.pack_single_region(ram.regions[0]), (os.dup(ram.fd),),
                     need_reply=True))
    assert r.replies[0].payload == codec.pack_u64(1)
    bogus = codec.RegionDesc(0x7000_0000, 4096, 0x1000, 0)
    assert s.handle(msg(Request.REM_MEM_REG, codec.pack_single_region(bogus), need_reply=True)).replies[0].payload \
        == codec.pack_u64(1)
    # removing the region the rings live in stops them (they cannot be rebuilt without it)
    ring_region = ram.regions[0]
    r = s.handle(msg(Request.REM_MEM_REG, codec.pack_single_region(ring_region), need_reply=True))
    assert r.replies[0].payload == codec.pack_u64(0)
    assert [x.gpa for x in s.memory.regions] == [ram.regions[1].guest_phys_addr]
    assert RingStopped(2) in r.actions
    s.handle(msg(Request.SET_STATUS, codec.pack_u64(0x0F)))
    assert s.handle(msg(Request.GET_STATUS)).replies[0].payload == codec.pack_u64(0x0F)
    os.close(kick)
    s.close()


def test_device_reset_voids_the_inflight_area(ram: GuestRam) -> None:
    s = Session(num_queues=3)
    negotiate(s)
    r = s.handle(msg(Request.GET_INFLIGHT_FD, codec.pack_inflight(codec.Inflight(0, 0, 3, 8))))
    (ifd,) = r.replies[0].fds
    s.handle(msg(Request.SET_INFLIGHT_FD, r.replies[0].payload, (os.dup(ifd),)))
    set_mem(s, ram)
    ring = DriverRing(ram, 8)
    kick, r = setup_ring(s, ram, 2, ring)
    ring.add([(ram.alloc(1), 1)], [])
    r.actions[1].vq.pop_all()  # taken, never completed
    s.handle(msg(Request.RESET_DEVICE))  # the guest reboots
    negotiate(s)
    fresh = DriverRing(ram, 8)
    kick2, r = setup_ring(s, ram, 2, fresh)
    assert r.actions[1].resubmit == []  # nothing from the old rings leaks into the new ones
    for fd in (kick, kick2, ifd):
        os.close(fd)
    s.close()
