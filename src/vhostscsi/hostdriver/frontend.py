"""The vhost-user front end (QEMU's side of the socket), blocking, for tests and benchmarks.

It sends the same messages in the same order as QEMU 7.2's vhost-user-scsi, over a real unix stream socket
with fds as SCM_RIGHTS, so whatever answers it (the daemon, or a Session in a test) is driven as QEMU drives it.
"""

from __future__ import annotations

import os
import select
import socket
from dataclasses import dataclass

from vhostscsi.hostdriver.guestram import GuestRam
from vhostscsi.hostdriver.vring import DriverRing
from vhostscsi.vhost_user import codec
from vhostscsi.vhost_user.codec import Decoder, Message, VringAddr
from vhostscsi.vhost_user.protocol import (
    FLAG_NEED_REPLY,
    VERSION,
    VHOST_USER_F_PROTOCOL_FEATURES,
    ProtocolFeature,
    Request,
    bit,
)

_REPLYING = frozenset({Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES, Request.GET_VRING_BASE,
                       Request.GET_QUEUE_NUM, Request.GET_CONFIG, Request.GET_INFLIGHT_FD})


# What this front end knows how to honour; offered bits outside it are declined, as QEMU declines what it lacks
# (BACKEND_REQ, for one, would oblige us to open a back-end channel with SET_BACKEND_REQ_FD).
SUPPORTED_PROTOCOL_FEATURES = (
    bit(ProtocolFeature.MQ)
    | bit(ProtocolFeature.REPLY_ACK)
    | bit(ProtocolFeature.CONFIG)
    | bit(ProtocolFeature.RESET_DEVICE)
    | bit(ProtocolFeature.INFLIGHT_SHMFD)
)


def wait_readable(fd: int, timeout: float) -> bool:
    """Whether `fd` becomes readable within `timeout` seconds. poll, not select: a test process that has opened
    many fds hands out numbers above select's FD_SETSIZE (1024), which select refuses."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0.0, timeout) * 1000))


class FrontEndError(RuntimeError):
    """The back end did not answer as the protocol requires (timeout, hang-up, failure ack, wrong reply)."""


@dataclass
class RingFds:
    """The eventfds of one ring, owned by the front end."""

    kick: int
    call: int
    err: int

    def close(self) -> None:
        for fd in (self.kick, self.call, self.err):
            try:
                os.close(fd)
            except OSError:
                pass


def _eventfd() -> int:
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


class FrontEnd:
    """One vhost-user connection, driven synchronously: each request waits for its reply when one is due."""

    def __init__(self, sock: socket.socket, *, timeout: float = 10.0) -> None:
        self.sock = sock
        self.timeout = timeout
        self._dec = Decoder()
        self._inbox: list[Message] = []
        self.features = 0
        self.protocol_features = 0
        self.queue_num = 0
        self.rings: dict[int, RingFds] = {}
        self.inflight: tuple[codec.Inflight, int] | None = None  # area description and our fd of it

    @classmethod
    def connect(cls, path: str, *, timeout: float = 10.0) -> "FrontEnd":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(path)
        return cls(s, timeout=timeout)

    def close(self) -> None:
        for r in self.rings.values():
            r.close()
        self.rings.clear()
        if self.inflight is not None:
            os.close(self.inflight[1])
            self.inflight = None
        self.sock.close()

    # ---- raw messaging ----------------------------------------------------------------------------------------

    def send(self, msg: Message) -> None:
        data = codec.encode(msg)
        if msg.fds:
            socket.send_fds(self.sock, [data], list(msg.fds))
        else:
            self.sock.sendall(data)

    def recv(self, timeout: float | None = None) -> Message:
        deadline = timeout if timeout is not None else self.timeout
        while not self._inbox:
            if not wait_readable(self.sock.fileno(), deadline):
                raise FrontEndError(f"no reply from the back end within {deadline:g} s")
            data, fds, _flags, _addr = socket.recv_fds(self.sock, 65536, 8)
            if not data:
                for fd in fds:
                    os.close(fd)
                raise FrontEndError("the back end closed the connection")
            self._inbox += self._dec.feed(data, fds)
        return self._inbox.pop(0)

    def request(
        self, req: int, payload: bytes = b"", fds: tuple[int, ...] = (), *, need_reply: bool | None = None
    ) -> Message | None:
        """Send one request; return its reply if the protocol gives one. REPLY_ACK is used when negotiated
        (as QEMU does), and a failure ack raises FrontEndError."""
        if need_reply is None:
            need_reply = bool(self.protocol_features & bit(ProtocolFeature.REPLY_ACK)) and req not in _REPLYING
        self.send(Message(req, VERSION | (FLAG_NEED_REPLY if need_reply else 0), payload, fds))
        if req in _REPLYING or need_reply:
            reply = self.recv()
            if reply.request != req or not reply.is_reply:
                raise FrontEndError(f"expected a reply to {Message(req).name()}, got {reply.name()}")
            if need_reply and req not in _REPLYING and codec.unpack_u64(reply.payload) != 0:
                raise FrontEndError(f"back end refused {Message(req).name()}")
            return reply
        return None

    # ---- the QEMU sequence ------------------------------------------------------------------------------------

    def negotiate(self, features: int | None = None, protocol_features: int | None = None) -> None:
        """GET_FEATURES .. SET_FEATURES as QEMU's vhost_user_backend_init + vhost_dev_start do it."""
        offered = codec.unpack_u64(self.request(Request.GET_FEATURES).payload)  # type: ignore[union-attr]
        if offered & bit(VHOST_USER_F_PROTOCOL_FEATURES):
            pf_offered = codec.unpack_u64(self.request(Request.GET_PROTOCOL_FEATURES).payload)  # type: ignore
            wanted = SUPPORTED_PROTOCOL_FEATURES if protocol_features is None else protocol_features
            pf = wanted & pf_offered
            self.request(Request.SET_PROTOCOL_FEATURES, codec.pack_u64(pf), need_reply=False)
            self.protocol_features = pf
            if pf & bit(ProtocolFeature.MQ):
                self.queue_num = codec.unpack_u64(self.request(Request.GET_QUEUE_NUM).payload)  # type: ignore
        self.request(Request.SET_OWNER)
        want = offered if features is None else features & offered
        self.request(Request.SET_FEATURES, codec.pack_u64(want))
        self.features = want

    def setup_inflight(self, num_queues: int, queue_size: int) -> None:
        """GET_INFLIGHT_FD then SET_INFLIGHT_FD, as QEMU does before starting rings; we keep the area's fd so a
        reconnect can hand it to the next back-end process (`set_inflight`)."""
        if not self.protocol_features & bit(ProtocolFeature.INFLIGHT_SHMFD):
            raise FrontEndError("the back end did not offer INFLIGHT_SHMFD")
        reply = self.request(Request.GET_INFLIGHT_FD, codec.pack_inflight(codec.Inflight(0, 0, num_queues, queue_size)))
        assert reply is not None
        if len(reply.fds) != 1:
            for fd in reply.fds:
                os.close(fd)
            raise FrontEndError(f"GET_INFLIGHT_FD reply carried {len(reply.fds)} fds")
        self.set_inflight(codec.unpack_inflight(reply.payload), reply.fds[0])

    def set_inflight(self, info: codec.Inflight, fd: int) -> None:
        """SET_INFLIGHT_FD with an area from an earlier connection; this FrontEnd owns `fd` from now on."""
        self.inflight = (info, fd)
        self.request(Request.SET_INFLIGHT_FD, codec.pack_inflight(info), (fd,))

    def take_inflight(self) -> tuple[codec.Inflight, int] | None:
        """Hand the in-flight area (and its fd) over to the next connection."""
        got, self.inflight = self.inflight, None
        return got

    def set_mem_table(self, ram: GuestRam) -> None:
        fds = tuple(os.dup(ram.fd) for _ in ram.regions)
        try:
            self.request(Request.SET_MEM_TABLE, codec.pack_memory_table(ram.regions), fds)
        finally:
            for fd in fds:
                os.close(fd)

    def setup_ring(self, index: int, ring: DriverRing, base: int = 0, *, enable: bool = True) -> RingFds:
        """SET_VRING_CALL/ERR, NUM, BASE, ADDR, KICK (+ ENABLE): the ring is live afterwards."""
        old = self.rings.pop(index, None)
        if old is not None:
            old.close()
        fds = RingFds(_eventfd(), _eventfd(), _eventfd())
        self.rings[index] = fds
        self.request(Request.SET_VRING_CALL, codec.pack_vring_file(index, True), (fds.call,))
        self.request(Request.SET_VRING_ERR, codec.pack_vring_file(index, True), (fds.err,))
        self.request(Request.SET_VRING_NUM, codec.pack_vring_state(index, ring.size))
        self.request(Request.SET_VRING_BASE, codec.pack_vring_state(index, base))
        d, u, a = ring.uvas()
        self.request(Request.SET_VRING_ADDR, codec.pack_vring_addr(VringAddr(index, 0, d, u, a, 0)))
        self.request(Request.SET_VRING_KICK, codec.pack_vring_file(index, True), (fds.kick,))
        if enable and self.features & bit(VHOST_USER_F_PROTOCOL_FEATURES):
            self.request(Request.SET_VRING_ENABLE, codec.pack_vring_state(index, 1))
        return fds

    def get_vring_base(self, index: int) -> int:
        reply = self.request(Request.GET_VRING_BASE, codec.pack_vring_state(index, 0))
        return codec.unpack_vring_state(reply.payload).num  # type: ignore[union-attr]

    # ---- eventfds ---------------------------------------------------------------------------------------------

    def kick(self, index: int) -> None:
        os.eventfd_write(self.rings[index].kick, 1)

    def wait_call(self, index: int, timeout: float) -> bool:
        """Wait for the back end to signal ring `index`; True if it did (the counter is consumed)."""
        fd = self.rings[index].call
        if not wait_readable(fd, timeout):
            return False
        try:
            os.eventfd_read(fd)
        except BlockingIOError:
            return False
        return True

    def err_signalled(self, index: int) -> bool:
        try:
            os.eventfd_read(self.rings[index].err)
            return True
        except BlockingIOError:
            return False
