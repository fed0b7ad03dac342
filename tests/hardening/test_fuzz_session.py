"""Fuzzing the vhost-user codec and session: hostile message streams with real fds, as a broken QEMU would send.

Each case builds a stream of messages (mostly the requests QEMU sends, with payloads that are valid, off by a
few bytes, or random; memory tables whose regions overlap, are empty, wrap, or exceed their memfd; vring
indices out of range; ring sizes that are not powers of two; fd counts too many or too few, fds of the wrong
kind), cuts it into chunks at random (fds ride on the chunk that ends a message, as with sendmsg, or on a
random chunk), and feeds it through `Decoder` and `Session` exactly as the daemon's connection does
(`engines/user/connection.py`: ProtocolError drops the peer, replies' fds are closed after sending, ring fds
handed over in actions are owned and replaced).

Checked per case: nothing but ProtocolError escapes; rings the session starts can be drained without error;
after the peer is dropped no fd created for the case is open and no guest memory stays mapped in this process.
"""

from __future__ import annotations

import os
import random
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vhostscsi.vhost_user import codec
from vhostscsi.vhost_user.codec import Decoder, Inflight, Message, ProtocolError, RegionDesc, VringAddr
from vhostscsi.vhost_user.protocol import (
    DEFAULT_FEATURES,
    DEFAULT_PROTOCOL_FEATURES,
    FLAG_NEED_REPLY,
    VERSION,
    VRING_NOFD_MASK,
    Request,
)
from vhostscsi.vhost_user.session import CallFd, ErrFd, KickFd, RingStarted, Session, UnsealedMemoryRefused

CASES = int(os.environ.get("VHOSTSCSI_FUZZ_CASES", "10000"))
NUM_QUEUES = 3
MEM_NAME = "hardening-fuzz-mem"
STATS = {"unsealed_refused": 0, "cases": 0, "messages": 0, "protocol_errors": 0, "rings_started": 0, "chains": 0, "left_open": 0,
         "decoder_lost": 0}

QEMU_ORDER = [
    Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES, Request.SET_PROTOCOL_FEATURES, Request.GET_QUEUE_NUM,
    Request.SET_OWNER, Request.SET_FEATURES, Request.SET_MEM_TABLE, Request.GET_INFLIGHT_FD,
    Request.SET_INFLIGHT_FD, Request.SET_VRING_CALL, Request.SET_VRING_ERR, Request.SET_VRING_NUM,
    Request.SET_VRING_BASE, Request.SET_VRING_ADDR, Request.SET_VRING_KICK, Request.SET_VRING_ENABLE,
    Request.GET_VRING_BASE, Request.RESET_DEVICE, Request.RESET_OWNER, Request.GET_CONFIG, Request.ADD_MEM_REG,
    Request.REM_MEM_REG, Request.SET_LOG_BASE, Request.SET_BACKEND_REQ_FD, Request.SET_STATUS, Request.GET_STATUS,
]
UVA_BASE = 0x7F00_0000_0000


class Case:
    """Builds one hostile stream; every fd it creates is remembered so the test can tell what leaked."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.created: list[int] = []

    def memfd(self, size: int) -> int:
        # mostly sealable, as QEMU's memory-backend-memfd; one in eight cannot be sealed, which the session refuses
        sealing = os.MFD_ALLOW_SEALING if self.rng.random() < 0.875 else 0
        fd = os.memfd_create(MEM_NAME, os.MFD_CLOEXEC | sealing)
        os.ftruncate(fd, size)
        self.created.append(fd)
        return fd

    def eventfd(self) -> int:
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.created.append(fd)
        return fd

    def some_fd(self) -> int:
        r = self.rng.random()
        if r < 0.5:
            return self.eventfd()
        if r < 0.8:
            return self.memfd(self.rng.choice((0, 4096, 65536)))
        fd = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
        self.created.append(fd)
        return fd

    def n(self, interesting: tuple[int, ...], full: int) -> int:
        return self.rng.choice(interesting) if self.rng.random() < 0.8 else self.rng.randrange(full)

    def region(self) -> RegionDesc:
        """Regions that overlap others, are empty, wrap past 2**64, or reach beyond their memfd."""
        return RegionDesc(self.n((0, 0, 65536, 4096, 2**64 - 4096), 2**64),
                          self.n((65536, 4096, 0, 8192, 2**64 - 4096), 2**64),
                          self.n((UVA_BASE, UVA_BASE + 65536, UVA_BASE + 4096), 2**64),
                          self.n((0, 0, 4096, 65536, 2**63), 2**64))

    def ring_index(self) -> int:
        return self.n((0, 1, 2, 2, NUM_QUEUES, 255), 2**32)

    def message(self, req: int) -> Message:
        rng = self.rng
        fds: list[int] = []
        payload = b""
        if req in (Request.SET_FEATURES, Request.SET_PROTOCOL_FEATURES, Request.SET_LOG_BASE, Request.SET_STATUS):
            payload = codec.pack_u64(self.n((DEFAULT_FEATURES, DEFAULT_PROTOCOL_FEATURES, 0, 2**64 - 1), 2**64))
        elif req == Request.SET_MEM_TABLE:
            regions = [self.region() for _ in range(self.n((1, 1, 2, 3, 0, 8, 9), 16))]
            payload = struct.pack("<II", len(regions), 0) + b"".join(struct.pack("<QQQQ", *r) for r in regions)
            for _ in range(len(regions) if rng.random() < 0.8 else rng.randrange(10)):
                fds.append(self.memfd(self.n((65536, 65536, 4096, 0, 131072), 1 << 20)))
        elif req in (Request.ADD_MEM_REG, Request.REM_MEM_REG):  # overlapping, exceeding, unknown regions
            payload = codec.pack_single_region(self.region())
            for _ in range(1 if rng.random() < 0.8 else rng.randrange(3)):
                fds.append(self.memfd(self.n((65536, 65536, 4096, 0, 131072), 1 << 20)))
        elif req in (Request.SET_VRING_NUM, Request.SET_VRING_BASE, Request.GET_VRING_BASE, Request.SET_VRING_ENABLE):
            payload = codec.pack_vring_state(self.ring_index(), self.n((0, 1, 8, 64, 256, 3, 32768, 65536), 2**32))
        elif req == Request.SET_VRING_ADDR:
            base = UVA_BASE + self.n((0, 4096, 65536 - 16, 2**40), 2**48)
            payload = codec.pack_vring_addr(VringAddr(self.ring_index(), 0, base, base + 0x2000, base + 0x1000, 0))
        elif req in (Request.SET_VRING_KICK, Request.SET_VRING_CALL, Request.SET_VRING_ERR):
            nofd = rng.random() < 0.2
            payload = codec.pack_u64(self.ring_index() | (VRING_NOFD_MASK if nofd else 0))
            for _ in range((0 if nofd else 1) if rng.random() < 0.8 else rng.randrange(3)):
                fds.append(self.eventfd())
        elif req == Request.GET_INFLIGHT_FD:
            payload = codec.pack_inflight(Inflight(0, 0, self.n((3, 1, 0, 300), 2**16), self.n((8, 64, 0, 3), 2**16)))
        elif req == Request.SET_INFLIGHT_FD:
            payload = codec.pack_inflight(Inflight(self.n((4096, 0, 2**63), 2**64), self.n((0, 4096), 2**64),
                                                   self.n((3, 1), 2**16), self.n((8, 64, 0), 2**16)))
            fds.append(self.memfd(self.n((4096, 0, 8192), 65536)))
        elif req not in QEMU_ORDER[:5] and rng.random() < 0.5:
            payload = rng.randbytes(rng.randrange(64))
        r = rng.random()
        if r < 0.08:
            payload = payload[: rng.randrange(len(payload) + 1)]
        elif r < 0.12:
            payload += rng.randbytes(rng.randrange(1, 16))
        if rng.random() < 0.05:
            fds.append(self.some_fd())
        flags = VERSION | (FLAG_NEED_REPLY if rng.random() < 0.6 else 0)
        if rng.random() < 0.03:
            flags = rng.randrange(2**32)
        return Message(req, flags, payload, tuple(fds))

    def qemu_start(self) -> list[Message]:
        """QEMU 7.2's start-up sequence with valid values (rings of 8 in one 64 KiB region of random bytes), so
        that mutations of it reach running rings and popped chains."""
        rng = self.rng
        ram = self.memfd(65536)
        if rng.random() < 0.7:
            os.pwrite(ram, rng.randbytes(65536), 0)
            for i in range(NUM_QUEUES):  # plausible descriptors and a few available heads in every ring
                base = 0x400 * i
                for k in range(8):
                    os.pwrite(ram, struct.pack("<QIHH", rng.randrange(65536), rng.choice((0, 1, 16, 51, 108, 4096)),
                                               rng.randrange(8), rng.randrange(9)), base + 16 * k)
                heads = [rng.randrange(8) if rng.random() < 0.9 else rng.randrange(65536) for _ in range(8)]
                os.pwrite(ram, struct.pack("<HH8H", 0, rng.randrange(9), *heads), base + 0x100)
                os.pwrite(ram, struct.pack("<HH", 0, 0), base + 0x200)
        u64 = codec.pack_u64
        msgs = [Message(Request.GET_FEATURES), Message(Request.GET_PROTOCOL_FEATURES),
                Message(Request.SET_PROTOCOL_FEATURES, payload=u64(DEFAULT_PROTOCOL_FEATURES)),
                Message(Request.GET_QUEUE_NUM), Message(Request.SET_OWNER),
                Message(Request.SET_FEATURES, payload=u64(DEFAULT_FEATURES)),
                Message(Request.SET_MEM_TABLE, payload=codec.pack_memory_table([RegionDesc(0, 65536, UVA_BASE, 0)]),
                        fds=(ram,))]
        for i in range(NUM_QUEUES):
            base = UVA_BASE + 0x400 * i
            msgs += [Message(Request.SET_VRING_CALL, payload=u64(i), fds=(self.eventfd(),)),
                     Message(Request.SET_VRING_ERR, payload=u64(i), fds=(self.eventfd(),)),
                     Message(Request.SET_VRING_NUM, payload=codec.pack_vring_state(i, 8)),
                     Message(Request.SET_VRING_BASE, payload=codec.pack_vring_state(i, 0)),
                     Message(Request.SET_VRING_ADDR,
                             payload=codec.pack_vring_addr(VringAddr(i, 0, base, base + 0x200, base + 0x100, 0))),
                     Message(Request.SET_VRING_KICK, payload=u64(i), fds=(self.eventfd(),)),
                     Message(Request.SET_VRING_ENABLE, payload=codec.pack_vring_state(i, 1))]
        return msgs

    def stream(self, count: int) -> list[tuple[bytes, list[int]]]:
        """(chunk, fds) pairs as recvmsg would return them."""
        rng = self.rng
        data = bytearray()
        fd_at: list[tuple[int, list[int]]] = []  # (end offset of a message, its fds)
        start = self.qemu_start() if rng.random() < 0.5 else []
        for k in range(len(start) + count):
            if k < len(start) and rng.random() < 0.9:
                msg = start[k]
            else:
                if k < len(start):
                    for fd in start[k].fds:  # replaced: this message is never sent
                        os.close(fd)
                if rng.random() < 0.7:
                    req = QEMU_ORDER[min(k, len(QEMU_ORDER) - 1) if rng.random() < 0.5 else rng.randrange(len(QEMU_ORDER))]
                else:
                    req = rng.randrange(64)
                msg = self.message(req)
            raw = bytearray(codec.encode(msg)) if len(msg.payload) <= 4096 else bytearray(12)
            if rng.random() < 0.02:
                struct.pack_into("<I", raw, 8, rng.choice((len(msg.payload) + 1, 4097, 2**32 - 1, 0)))
            data += raw
            if msg.fds:
                fd_at.append((len(data), list(msg.fds)))
        if rng.random() < 0.1:
            data += rng.randbytes(rng.randrange(1, 20))  # a partial message at the end
        cuts = {end for end, _ in fd_at} | {rng.randrange(1, len(data) + 1) for _ in range(rng.randrange(4))}
        cuts.add(len(data))
        chunks: list[tuple[bytes, list[int]]] = []
        start = 0
        for cut in sorted(cuts):
            fds = [fd for end, group in fd_at if start < end <= cut for fd in group]
            chunks.append((bytes(data[start:cut]), fds))
            start = cut
        if rng.random() < 0.05 and len(chunks) > 1:  # fds on the wrong chunk
            i, j = rng.sample(range(len(chunks)), 2)
            chunks[j][1].extend(chunks[i][1])
            chunks[i][1].clear()
        return chunks


def _identity(fd: int) -> tuple[int, int] | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class Engine:
    """What the daemon's connection does with a Session's output (fd ownership included), minus the sockets."""

    def __init__(self) -> None:
        self.session = Session(NUM_QUEUES)
        self.decoder = Decoder()
        self.held: dict[tuple[str, int], int] = {}
        self.unattached: dict[int, tuple[int, int] | None] = {}

    def apply(self, actions: list) -> None:
        for a in actions:
            kind = {KickFd: "kick", CallFd: "call", ErrFd: "err"}.get(type(a))
            if kind is not None:
                old = self.held.pop((kind, a.index), None)
                if old is not None and old != a.fd:
                    os.close(old)
                if a.fd is not None:
                    self.held[(kind, a.index)] = a.fd
            elif isinstance(a, RingStarted):
                STATS["rings_started"] += 1
                for chain in [*a.resubmit, *a.vq.pop_all()]:
                    STATS["chains"] += 1
                    a.vq.push(chain.head, 0)

    def handle(self, msg: Message) -> None:
        arrived = {fd: _identity(fd) for fd in msg.fds}
        try:
            resp = self.session.handle(msg)
        except ProtocolError:
            self._net(arrived, ())
            raise
        self._net(arrived, resp.actions)
        self.apply(resp.actions)
        for reply in resp.replies:
            codec.encode(reply)
            for fd in reply.fds:
                os.close(fd)

    @staticmethod
    def _net(arrived: dict[int, tuple[int, int] | None], actions) -> None:
        """The daemon's safety net: close what the session neither handed over nor closed (counted)."""
        claimed = {getattr(a, "fd", None) for a in actions}
        for fd, ident in arrived.items():
            if fd not in claimed and ident is not None and _identity(fd) == ident:
                STATS["left_open"] += 1
                os.close(fd)

    def feed(self, chunk: bytes, fds: list[int]) -> None:
        for fd in fds:
            self.unattached[fd] = _identity(fd)
        try:
            msgs = self.decoder.feed(chunk, fds)
        except ProtocolError:
            self._lost_by_decoder()
            raise
        for msg in msgs:
            for fd in msg.fds:
                self.unattached.pop(fd, None)
        for k, msg in enumerate(msgs):
            try:
                self.handle(msg)
            except ProtocolError:
                for rest in msgs[k + 1 :]:
                    for fd in rest.fds:
                        os.close(fd)
                raise

    def _lost_by_decoder(self) -> None:
        """After a ProtocolError from feed: close take_fds(), and count (then close) any fd the decoder was given
        that it neither attached to a returned message nor handed back (the contract says it must do one)."""
        for fd in self.decoder.take_fds():
            self.unattached.pop(fd, None)
            os.close(fd)
        for fd, ident in self.unattached.items():
            if ident is not None and _identity(fd) == ident:
                STATS["decoder_lost"] += 1
                os.close(fd)
        self.unattached.clear()

    def drop(self) -> None:
        self._lost_by_decoder()
        self.apply(self.session.close())
        for fd in self.held.values():
            os.close(fd)
        self.held.clear()


def open_fds() -> set[int]:
    return {int(x) for x in os.listdir("/proc/self/fd")}


def mapped_guest_memory() -> int:
    with open("/proc/self/maps") as f:
        return sum(MEM_NAME in line or "vhostscsi-inflight" in line for line in f)


@settings(max_examples=CASES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.integers(0, 2**64 - 1), st.integers(1, 24))
def test_hostile_message_streams(seed: int, count: int) -> None:
    before = open_fds()
    case = Case(random.Random(seed))
    chunks = case.stream(count)
    engine = Engine()
    fed = 0
    try:
        for chunk, fds in chunks:
            fed += 1
            engine.feed(chunk, fds)
    except UnsealedMemoryRefused:
        STATS["unsealed_refused"] += 1
        STATS["protocol_errors"] += 1
    except ProtocolError:
        STATS["protocol_errors"] += 1
    finally:
        engine.drop()
        for _chunk, fds in chunks[fed:]:  # never received: closing the socket discards in-flight SCM_RIGHTS
            for fd in fds:
                os.close(fd)
    STATS["cases"] += 1
    STATS["messages"] += count
    del engine, chunks
    leaked = open_fds() - before
    assert not leaked, f"fds left open after the peer was dropped: {sorted(leaked)}"
    assert mapped_guest_memory() == 0, "guest memory still mapped after the peer was dropped"


def test_the_fuzz_reached_running_rings() -> None:
    """Runs after the fuzz (file order): the streams must get far enough to start rings and pop chains."""
    if STATS["cases"] == 0:
        import pytest
        pytest.skip("the fuzz test did not run in this session")
    print(f"fuzz figures: {STATS}")
    assert STATS["rings_started"] > 0 and STATS["protocol_errors"] > 0 and STATS["unsealed_refused"] > 0, STATS


def test_the_fuzz_found_no_fd_the_session_left_open() -> None:
    """Session contract: every fd that arrives is handed over in an action or closed by the session. The fuzz
    closes what it leaves (as the daemon's safety net does) and counts it here."""
    if STATS["cases"] == 0:
        import pytest
        pytest.skip("the fuzz test did not run in this session")
    assert STATS["left_open"] == 0, STATS


def test_the_fuzz_found_no_fd_the_decoder_lost() -> None:
    """Decoder contract: after ProtocolError, every fd fed in is either on a returned message or in take_fds()."""
    if STATS["cases"] == 0:
        import pytest
        pytest.skip("the fuzz test did not run in this session")
    assert STATS["decoder_lost"] == 0, STATS
