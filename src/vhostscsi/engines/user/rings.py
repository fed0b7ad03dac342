"""Per-ring I/O state of one connection: the kick, call and error eventfds and whether the ring may run.

Everything a request queue needs on the hot path lives in its own `RingIO` (and the SplitVirtqueue inside the
VirtioScsi device), with no state shared between rings except the device's port map, which only the control
path mutates. That is what lets a later issue hand each request queue to its own thread or process.
"""

from __future__ import annotations

import logging
import os

from vhostscsi.virtio.scsi import VirtioScsi

log = logging.getLogger("vhostscsi.serve")


def _close(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


def _signal(fd: int) -> None:
    """Signal an eventfd the front end gave us. A full counter (EAGAIN) already means "signalled"; a bogus fd
    (not an eventfd) is the front end's problem and must not stop the ring."""
    try:
        os.write(fd, b"\x01\0\0\0\0\0\0\0")
    except (BlockingIOError, OSError):
        pass


class RingIO:
    """One vring's eventfds. ``serve()`` is the whole data path of a wake-up."""

    __slots__ = ("index", "kick", "call", "err", "enabled", "started", "_broken_reported", "label")

    def __init__(self, index: int, label: str) -> None:
        self.index = index
        self.label = label
        self.kick: int | None = None
        self.call: int | None = None
        self.err: int | None = None
        self.enabled = True
        self.started = False
        self._broken_reported = False

    def set_kick(self, fd: int | None) -> int | None:
        """Swap the kick fd; returns the old one (the caller unregisters it from the loop, then closes it)."""
        old, self.kick = self.kick, fd
        return old

    def set_call(self, fd: int | None) -> None:
        _close(self.call)
        self.call = fd

    def new_call_fd(self, fd: int | None) -> None:
        """Take a new call fd; on a running ring, signal it once. Completions pushed while the front end was
        switching fds (QEMU sets them after starting the rings, and again around a reconnect) were signalled to
        an fd nobody reads any more; an interrupt with nothing new in the used ring costs the guest nothing."""
        self.set_call(fd)
        if fd is not None and self.started:
            _signal(fd)

    def set_err(self, fd: int | None) -> None:
        _close(self.err)
        self.err = fd

    def serve(self, device: VirtioScsi) -> int:
        """Drain the ring (the device re-checks after re-arming notifications) and signal completions."""
        if not self.enabled:
            return 0
        n = device.process(self.index)
        self.completed(device, n)
        return n

    def completed(self, device: VirtioScsi, n: int) -> None:
        """Signal the call fd for ``n`` new used entries if the driver wants it; report a broken ring once."""
        vq = device.queues[self.index]
        if vq is None:
            return
        if n and self.call is not None and vq.should_notify():
            _signal(self.call)
        if vq.broken and not self._broken_reported:
            self._broken_reported = True
            log.error("%s: ring %d is broken (%s); the guest must reset the device", self.label, self.index,
                      vq.broken_reason)
            if self.err is not None:
                _signal(self.err)

    def restarted(self) -> None:
        self._broken_reported = False

    def close(self) -> None:
        _close(self.kick)
        self.kick = None
        self.set_call(None)
        self.set_err(None)
