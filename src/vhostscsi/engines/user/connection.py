"""One QEMU connected to one vhost target's socket: vhost-user messages in, ring service out.

The protocol itself is the sans-I/O `Session`; this module is its I/O shell: it reads the socket (with the fds
that ride on it), sends the replies, owns the eventfds the session hands over, registers kick fds with the
loop, and serves a ring on every kick. When the peer goes (QEMU exits or is killed) everything is released:
fds closed, guest memory unmapped, and the target is free for the next connection.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Callable, Mapping

from vhostscsi.engines.user.coalesce import CoalescePolicy
from vhostscsi.engines.user.listener import Peer
from vhostscsi.engines.user.loop import PRIO_CONTROL, PRIO_DATA, EventLoop, Timer, drain_eventfd
from vhostscsi.engines.user.rings import POLL_WINDOW, RingIO, RingPoller
from vhostscsi.engines.user.timerfd import Timerfd
from vhostscsi.vhost_user import codec
from vhostscsi.vhost_user.codec import Decoder, Message, ProtocolError
from vhostscsi.vhost_user.protocol import MAX_FDS, VIRTIO_SCSI_F_HOTPLUG, bit
from vhostscsi.vhost_user.session import (
    Action,
    CallFd,
    ErrFd,
    KickFd,
    MemoryChanged,
    RingEnabled,
    RingStarted,
    RingStopped,
    Session,
    UnsealedMemoryRefused,
)
from vhostscsi.virtio.scsi import EVENT_QUEUE, FIRST_REQUEST_QUEUE, VirtioScsi

log = logging.getLogger("vhostscsi.serve")

# Control + event queue + up to 16 request queues. QEMU asks (GET_QUEUE_NUM) and refuses to start a device with
# more queues than this, with a clear error, so the limit is visible to the admin rather than silent.
MAX_REQUEST_QUEUES = 16
RECV_SIZE = 65536
SEND_TIMEOUT = 5.0
STATE_LOG_DELAY = 0.3


def _identity(fd: int) -> tuple[int, int] | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _close_unclaimed(arrived: dict[int, tuple[int, int] | None], actions: object) -> None:
    """Close fds that came with a message and that the session neither handed over nor closed itself.

    The session promises to close every fd it does not hand over; this is the net under that promise (a
    SET_VRING_KICK with a short payload used to leave its fd open), so that a hostile front end cannot make
    the daemon run out of fds. An fd still open with the same inode is the one that arrived: nothing else
    can have reused its number while the session ran.
    """
    claimed = {getattr(a, "fd", None) for a in actions}  # type: ignore[attr-defined]
    for fd, ident in arrived.items():
        if fd not in claimed and ident is not None and _identity(fd) == ident:
            log.debug("closing fd %d the session left open", fd)
            os.close(fd)


class Connection:
    """Serves one accepted socket until the peer hangs up or the daemon stops."""

    def __init__(
        self,
        loop: EventLoop,
        sock: socket.socket,
        peer: Peer,
        label: str,
        ports: Mapping[int, object],
        nexus: Mapping[int, str],
        on_closed: Callable[["Connection"], None],
        *,
        allow_unsealed_memory: bool = False,
        poll_window: float = POLL_WINDOW,
        coalesce: float = 0.0,
    ) -> None:
        """`coalesce`: interrupt coalescing bound in seconds for the request rings (0: off; coalesce.py)."""
        self.loop = loop
        self.sock = sock
        self.peer = peer
        self.label = label
        self._on_closed = on_closed
        self.session = Session(num_queues=FIRST_REQUEST_QUEUE + MAX_REQUEST_QUEUES,
                               allow_unsealed_memory=allow_unsealed_memory)
        self.device = VirtioScsi(ports, nexus)
        self.rings = [RingIO(i, label) for i in range(self.session.num_queues)]
        # Request rings are polled for `poll_window` seconds after a kick-driven batch (rings.RingPoller).
        self.poll_window = poll_window
        self._pollers: dict[int, RingPoller] = {}
        # Interrupt coalescing (coalesce.py): each request ring gets a hold policy and a timerfd when it first
        # starts; `_held` lists those rings, whose holds every stop path flushes (`flush_holds`).
        self.coalesce = coalesce
        self._held: list[RingIO] = []
        self.decoder = Decoder()
        self.closed = False
        self._reported_state = 0  # request queues running, as last logged
        self._warned_unsealed = False  # the guest RAM's file could not be sealed against shrinking (once)
        self._state_timer: Timer | None = None
        self._rescan_asked = False  # a resumed guest was told to rescan its LUNs (once per connection)
        sock.setblocking(True)
        sock.settimeout(SEND_TIMEOUT)  # only sends can block: receives use MSG_DONTWAIT
        loop.add_reader(sock.fileno(), self._on_readable, PRIO_CONTROL)

    # ---- control socket ---------------------------------------------------------------------------------------
    def _on_readable(self) -> None:
        try:
            self._read_messages()
        except Exception:  # a bug below us must cost this guest its connection, not every guest the daemon
            log.exception("%s: internal error handling %s; dropping the connection", self.label, self.peer)
            self.close("dropped after an internal error")

    def _read_messages(self) -> None:
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.sock, RECV_SIZE, MAX_FDS, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError as e:
            self.close(f"socket error: {e.strerror or e}")
            return
        if not data:
            for fd in fds:
                os.close(fd)
            self.close("disconnected" if not self.decoder.buffered else "disconnected in the middle of a message")
            return
        try:
            messages = self.decoder.feed(data, fds)
        except ProtocolError as e:
            for fd in self.decoder.take_fds():
                os.close(fd)
            self.close(f"protocol error: {e}")
            return
        for msg in messages:
            if self.closed:
                for fd in msg.fds:
                    os.close(fd)
                continue
            self._handle(msg)

    def _handle(self, msg: Message) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: <- %s %s", self.label, msg.name(), msg.payload.hex())
        arrived = {fd: _identity(fd) for fd in msg.fds}
        # Every control message ends the running holds first, decided and signalled over the ring as it still is:
        # GET_VRING_BASE and RESET_* stop rings, SET_VRING_ENABLE 0 disables one, SET_VRING_CALL replaces the fd
        # the held call is owed to, SET_MEM_TABLE / ADD/REM_MEM_REG / SET_VRING_ADDR / SET_VRING_KICK rebuild the
        # ring over new memory (the old ring's signalled-used state is dropped, and the old memory unmapped),
        # SET_STATUS 0 resets the device. None of them is on the data path, so one rule with no list to go stale.
        if self._held:
            self.flush_holds()
        try:
            response = self.session.handle(msg)
        except UnsealedMemoryRefused as e:
            _close_unclaimed(arrived, ())
            log.error("%s: %s: %s", self.label, self.peer, e)
            self.close("refused")
            return
        except ProtocolError as e:
            _close_unclaimed(arrived, ())
            self.close(f"protocol error: {e}")
            return
        _close_unclaimed(arrived, response.actions)
        self._apply(response.actions)
        for reply in response.replies:
            try:
                if reply.fds:
                    socket.send_fds(self.sock, [codec.encode(reply)], list(reply.fds))
                else:
                    self.sock.sendall(codec.encode(reply))
            except OSError as e:
                self.close(f"cannot send {reply.name()} reply: {e.strerror or e}")
                return
            finally:
                for fd in reply.fds:
                    os.close(fd)

    # ---- actions from the session -----------------------------------------------------------------------------
    def _apply(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, KickFd):
                self._set_kick(a.index, a.fd)
            elif isinstance(a, CallFd):
                self.rings[a.index].new_call_fd(a.fd)
            elif isinstance(a, ErrFd):
                self.rings[a.index].set_err(a.fd)
            elif isinstance(a, RingStarted):
                self._ring_started(a)
            elif isinstance(a, RingStopped):
                self.device.set_queue(a.index, None)
                self.rings[a.index].started = False
            elif isinstance(a, RingEnabled):
                ring = self.rings[a.index]
                ring.enabled = a.enabled
                if a.enabled and ring.started:
                    ring.serve(self.device)
            elif isinstance(a, MemoryChanged):
                regions = a.memory.regions
                log.debug("%s: memory table: %d region(s), %d MiB", self.label, len(regions),
                          sum(r.size for r in regions) >> 20)
                if not self._warned_unsealed and not all(r.sealed for r in regions):
                    self._warned_unsealed = True
                    log.warning("%s: %s: guest RAM cannot be sealed against shrinking (hugetlbfs or plain file, or "
                                "a memfd without sealing), accepted because of --allow-unsealed-memory: if that "
                                "process truncated it the daemon would die (SIGBUS); prefer -object "
                                "memory-backend-memfd", self.label, self.peer)
        self._log_driver_state()

    def _set_kick(self, index: int, fd: int | None) -> None:
        old = self.rings[index].set_kick(fd)
        if old is not None:
            self.loop.remove_reader(old)
            os.close(old)
        if fd is not None:
            ring = self.rings[index]
            try:
                os.set_blocking(fd, False)
                self.loop.add_reader(fd, lambda: self._on_kick(ring), PRIO_DATA)
            except OSError as e:  # e.g. a regular file: epoll refuses it
                log.warning("%s: kick fd of ring %d cannot be watched (%s); ring not served",
                            self.label, index, e.strerror or e)
                ring.set_kick(None)
                os.close(fd)

    def _ring_started(self, a: RingStarted) -> None:
        ring = self.rings[a.index]
        if self.coalesce > 0 and a.index >= FIRST_REQUEST_QUEUE and ring.hold is None:
            self._add_hold(ring)
        self.device.set_queue(a.index, a.vq)
        ring.started = True
        ring.restarted()
        if a.resubmit:
            log.info("%s: resubmitting %d in-flight request(s) on ring %d", self.label, len(a.resubmit), a.index)
            ring.completed(self.device, self.device.resubmit(a.index, a.resubmit))
        if a.index == EVENT_QUEUE:
            self._ask_rescan_if_resumed()
        # Requests may already wait in the ring (a restart after reboot, or a kick QEMU sent before the fd).
        ring.serve(self.device)

    def _add_hold(self, ring: RingIO) -> None:
        """Give a request ring its hold policy and its timerfd (watched at data priority, like its kick fd)."""
        try:
            timer = Timerfd()
        except OSError as e:  # out of fds: serve the ring uncoalesced rather than not at all
            log.warning("%s: ring %d: no timerfd for interrupt coalescing (%s); its calls are not held",
                        self.label, ring.index, e.strerror or e)
            return
        ring.hold = CoalescePolicy(self.coalesce)
        ring.timer = timer
        assert timer.fd is not None
        self.loop.add_reader(timer.fd, lambda: self._on_hold_timer(ring), PRIO_DATA)
        self._held.append(ring)

    def _on_hold_timer(self, ring: RingIO) -> None:
        timer = ring.timer
        if timer is None or timer.fd is None:
            return
        timer.consume()
        try:
            ring.flush(self.device, disarm=False)
        except Exception:
            self._serve_failed(ring)

    def flush_holds(self) -> int:
        """End every held call now (decide, signal); returns how many were held. Before guest memory can go."""
        return sum(ring.flush(self.device) for ring in self._held)

    def _log_holds(self) -> None:
        """What coalescing did for this guest (an admin deciding whether it pays; the guest test reads it)."""
        policies = [ring.hold for ring in self._held if ring.hold is not None]
        if policies:
            log.info("%s: interrupt coalescing: %d holds, %d of them batched completions", self.label,
                     sum(p.holds for p in policies), sum(p.batched_holds for p in policies))

    def _ask_rescan_if_resumed(self) -> None:
        """On a reconnect to a running guest, have it rescan: LUNs added or removed while no daemon ran were never
        announced, and the guest would keep its old view. Only with hotplug negotiated (else the guest reads no
        events), and never for a new guest, whose driver scans by itself. Delivered now into a posted event buffer,
        or at the event queue's next kick if the guest has none posted yet."""
        if self._rescan_asked or not self.session.resumed or not self.session.features & bit(VIRTIO_SCSI_F_HOTPLUG):
            return
        self._rescan_asked = True
        log.info("%s: reconnected to a running guest: asking it to rescan its LUNs (the configuration may have "
                 "changed while no daemon ran)", self.label)
        self._event(self.device.rescan())

    def _log_driver_state(self) -> None:
        """Log the guest driver's state once it settles: rings start one message at a time, and SeaBIOS starts
        and resets the device within moments, so logging every transition would only be noise."""
        if self._state_timer is None and self._driver_state() != self._reported_state:
            self._state_timer = self.loop.call_later(STATE_LOG_DELAY, self._report_driver_state)

    def _driver_state(self) -> int:
        return sum(1 for r in self.rings[FIRST_REQUEST_QUEUE:] if r.started)

    def _report_driver_state(self) -> None:
        self._state_timer = None
        queues = self._driver_state()
        if self.closed or queues == self._reported_state:
            return
        self._reported_state = queues
        if queues:
            log.info("%s: guest driver started (%d request queue%s)", self.label, queues, "s"[: queues > 1])
        else:
            log.info("%s: guest driver stopped (device reset, reboot or shutdown)", self.label)

    # ---- data path --------------------------------------------------------------------------------------------
    def _on_kick(self, ring: RingIO) -> None:
        if ring.kick is None:
            return
        n = 0
        if ring.started:
            try:
                n = ring.serve_kick(self.device)  # reads the kick fd first (in C for a request ring)
            except Exception:
                self._serve_failed(ring)
                return
        elif drain_eventfd(ring.kick) < 0:
            n = -1
        if n < 0:
            log.warning("%s: kick fd of ring %d is not an eventfd; no longer watched", self.label, ring.index)
            self.loop.remove_reader(ring.kick)
            os.close(ring.kick)
            ring.set_kick(None)
            return
        if n and self.poll_window > 0 and ring.index >= FIRST_REQUEST_QUEUE:
            self._poll(ring)

    def _poll(self, ring: RingIO) -> None:
        poller = self._pollers.get(ring.index)
        if poller is None:
            poller = self._pollers[ring.index] = RingPoller(ring, self.device, self.poll_window,
                                                            self._serve_failed)
        if poller.start():
            self.loop.add_poller(poller)

    def _serve_failed(self, ring: RingIO) -> None:
        log.exception("%s: internal error serving ring %d; dropping the connection", self.label, ring.index)
        self.close("dropped after an internal error")

    def drain(self) -> int:
        """Serve whatever the guest has queued on every running ring (shutdown: nothing left behind)."""
        return sum(ring.serve(self.device) for ring in self.rings if ring.started)

    # ---- events to the guest ----------------------------------------------------------------------------------
    def lun_added(self, tag: int, lun: int) -> None:
        self._event(self.device.lun_added(tag, lun))

    def lun_removed(self, tag: int, lun: int) -> None:
        self._event(self.device.lun_removed(tag, lun))

    def capacity_changed(self, tag: int, lun: int) -> None:
        self._event(self.device.capacity_changed(tag, lun))

    def _event(self, delivered: int) -> None:
        self.rings[EVENT_QUEUE].completed(self.device, delivered)

    # ---- teardown ---------------------------------------------------------------------------------------------
    def close(self, reason: str) -> None:
        """Release everything the peer gave us; idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._state_timer is not None:
            self._state_timer.cancel()
        self.loop.remove_reader(self.sock.fileno())
        for poller in self._pollers.values():
            self.loop.remove_poller(poller)
            poller.active = False
        try:
            self.flush_holds()  # a held call goes out while the rings and guest memory are still there
        except Exception:
            log.exception("%s: internal error flushing held interrupts", self.label)
        self._log_holds()
        self._apply(self.session.close())  # stops rings, unmaps guest memory
        for ring in self.rings:
            if ring.kick is not None:
                self.loop.remove_reader(ring.kick)
            if ring.timer is not None and ring.timer.fd is not None:
                self.loop.remove_reader(ring.timer.fd)
            ring.close()
        self._held.clear()
        for fd in self.decoder.take_fds():
            os.close(fd)
        self.sock.close()
        log.info("%s: %s: %s", self.label, reason, self.peer)
        self._on_closed(self)
