"""Per-ring I/O state of one connection: the kick, call and error eventfds and whether the ring may run.

Everything a request queue needs on the hot path lives in its own `RingIO` (and the SplitVirtqueue inside the
VirtioScsi device), with no state shared between rings except the device's port map, which only the control
path mutates. That is what lets a later issue hand each request queue to its own thread or process.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable

from vhostscsi.engines.user.coalesce import CoalescePolicy, Verdict
from vhostscsi.engines.user.loop import drain_eventfd
from vhostscsi.engines.user.timerfd import Timerfd
from vhostscsi.virtio.scsi import VirtioScsi
from vhostscsi.virtio.virtqueue import SplitVirtqueue

log = logging.getLogger("vhostscsi.serve")

# Adaptive polling (what kernel vhost's busy-poll and SPDK do): after a kick-driven batch the ring stays
# polled, kicks suppressed, for up to POLL_WINDOW_US microseconds after the last request that arrived; a
# request arriving meanwhile is served without the guest's kick (an MMIO exit) and without our epoll_wait and
# eventfd read. When the window passes with the ring empty, kicks are re-armed and the ring re-checked after
# a full fence (no lost wake-up), and the daemon sleeps again: an idle guest costs no CPU. The window adapts
# (RingPoller): it shrinks to nothing for a guest whose requests come slower than it.
# Off by default (0), as kernel vhost's busy-loop is: measured on a 2-core machine shared with the guest's
# QEMU, a 50 us window lowered in-guest QD1 IOPS in 4 runs out of 4 (the spinning daemon takes the core
# QEMU's vCPU and main loop need) and changed QD16 by less than the noise (bench/README.md, "The event
# loop and adaptive polling"). With cores to spare, VHOSTSCSI_POLL_US=50 (microseconds; read once, at
# import) turns it on.
POLL_WINDOW_US = 0
POLL_ENV = "VHOSTSCSI_POLL_US"


def poll_window_from_env(default_us: float = POLL_WINDOW_US) -> float:
    """The polling window in seconds: $VHOSTSCSI_POLL_US (microseconds, >= 0) or ``default_us``."""
    raw = os.environ.get(POLL_ENV, "").strip()
    try:
        us = float(raw) if raw else default_us
    except ValueError:
        log.warning("%s=%r is not a number of microseconds; using %g", POLL_ENV, raw, default_us)
        us = default_us
    return max(0.0, min(us, 10_000.0)) / 1e6


POLL_WINDOW = poll_window_from_env()

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
    """One vring's eventfds. ``serve()`` is the whole data path of a wake-up.

    With interrupt coalescing (a request ring of a daemon started with --coalesce-us), `hold` decides after each
    batch whether the call is signalled now or held, and `timer` (a timerfd the connection watches) ends a hold
    at its deadline: `flush()` then decides and signals for everything pushed since the last signal. Without it
    (`hold` None) every path below is exactly the uncoalesced one.
    """

    __slots__ = ("index", "kick", "call", "err", "enabled", "started", "_broken_reported", "label", "hold", "timer")

    def __init__(self, index: int, label: str) -> None:
        self.index = index
        self.label = label
        self.kick: int | None = None
        self.call: int | None = None
        self.err: int | None = None
        self.enabled = True
        self.started = False
        self._broken_reported = False
        self.hold: CoalescePolicy | None = None
        self.timer: Timerfd | None = None

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
        n = self._wake(device, -1)
        if n is None:
            n = device.process(self.index)
            self.completed(device, n)
        return n

    def serve_kick(self, device: VirtioScsi) -> int:
        """A kick's wake-up: read the kick fd, then `serve`. Returns completions pushed, or -1 when the kick fd
        can never be read (the caller stops watching it; nothing was served).

        Why one method: for a request ring the C side (VirtioScsi.wake) does the kick read, the drain, the
        re-arming and the call-fd write in one call, with no Python between them: at QD1 that glue is on
        the guest's critical path. Other rings read the kick here and go through `serve`."""
        kick = self.kick
        if kick is None:
            return 0
        if self.enabled:
            n = self._wake(device, kick)
            if n is not None:
                return n
        if drain_eventfd(kick) < 0:
            return -1
        return self.serve(device)

    def _wake(self, device: VirtioScsi, kick: int) -> int | None:
        """One wake-up in C (`VirtioScsi.wake`, reading `kick` first unless -1), with `completed` only when the C
        side left the notification to Python (a broken ring); None when this ring has no C wake-up.

        With coalescing, while the policy may hold (`will_hold`), the C side gets no call fd (-1: it skips the
        notification decision, leaving the ring's signalled-used state alone) and the policy decides here, as
        `completed` does for the Python path; otherwise C decides and signals as without coalescing, and the
        policy is told afterwards."""
        call = self.call
        hold = self.hold
        c_decides = call is not None and (hold is None or not hold.will_hold())
        wake = device.wake(self.index, kick, call if c_decides else -1)  # type: ignore[arg-type]
        if wake is None:
            return None
        n, settled = wake
        if not (c_decides and settled):
            self.completed(device, n)  # C decided nothing (no call fd, a possible hold) or the ring broke
        elif n > 0 and hold is not None:
            hold.completions()  # NOTIFY, as will_hold promised: C has signalled; it counts towards the next probe
        return n

    def completed(self, device: VirtioScsi, n: int) -> None:
        """Signal the call fd for ``n`` new used entries if the driver wants it; report a broken ring once."""
        vq = device.queues[self.index]
        if vq is None:
            return
        if n > 0 and self.call is not None:
            self._notify(vq)
        if vq.broken and not self._broken_reported:
            self._broken_reported = True
            log.error("%s: ring %d is broken (%s); the guest must reset the device", self.label, self.index,
                      vq.broken_reason)
            if self.err is not None:
                _signal(self.err)

    def _notify(self, vq: SplitVirtqueue) -> None:
        """New used entries and a call fd: signal now if the driver wants it, or hold the call (coalescing)."""
        hold = self.hold
        if hold is not None:
            if vq.broken:
                hold.end()  # the guest must see this ring's state now: no hold, and none left running
            else:
                verdict = hold.completions()
                if verdict is Verdict.JOINED:
                    return
                if verdict is Verdict.HOLD:
                    assert self.timer is not None
                    self.timer.arm_at(hold.deadline)
                    return
        assert self.call is not None
        if vq.should_notify():
            _signal(self.call)

    def flush(self, device: VirtioScsi, *, disarm: bool = True) -> bool:
        """End a held call now: should_notify over everything pushed since the last signal (it compares against
        the last signalled used index, so EVENT_IDX stays exact), then the call fd. Returns whether a hold was
        running. Called by the hold's timer (`disarm=False`: it has expired) and, before anything stops the ring,
        swaps its call fd or its memory, by the connection; a ring already stopped is signalled unconditionally
        (an interrupt with nothing new costs the guest nothing; a lost one hangs it)."""
        hold = self.hold
        if hold is None or not hold.holding:
            return False
        hold.end()
        if disarm and self.timer is not None and self.timer.fd is not None:
            self.timer.disarm()
        call = self.call
        if call is None:
            return True
        vq = device.queues[self.index]
        if vq is None or vq.should_notify():
            _signal(call)
        return True

    def restarted(self) -> None:
        self._broken_reported = False

    def close(self) -> None:
        _close(self.kick)
        self.kick = None
        self.set_call(None)
        self.set_err(None)
        if self.timer is not None:
            self.timer.close()
            self.timer = None
        self.hold = None


POLL_GROW_START = 10e-6  # the window a shrunk-to-zero poller grows back to first (KVM halt-polling's idea)


class RingPoller:
    """Keeps one request ring polled for a short window after it was served (see POLL_WINDOW_US).

    Registered with the loop (`EventLoop.add_poller`) by ``start()``; ``poll()`` is called once per loop
    iteration, round-robin with the other active pollers and after every fd callback of that iteration, so a
    polled ring starves neither other rings nor control messages. It leaves the loop (returns False) when the
    ring stops, is disabled, or stays empty for the whole window, always re-arming kicks first.

    The window adapts as KVM's halt-polling does: ``max_window`` is the bound; after the ring slept (polling
    ended, or was off), the next kick tells how long the sleep lasted. Shorter than ``max_window``: a longer
    window would have caught that request, so the window doubles (from POLL_GROW_START). Longer: polling could
    not have caught it and only burns a core the guest may need (a QD1 guest under TCG turns a request round in
    hundreds of microseconds), so the window halves, to zero below POLL_GROW_START. Requests caught while
    polling leave it as it is.
    """

    __slots__ = ("ring", "device", "max_window", "window", "until", "active", "slept_at", "on_error", "_clock")

    def __init__(self, ring: RingIO, device: VirtioScsi, window: float,
                 on_error: Callable[[RingIO], None], clock: Callable[[], float] = time.monotonic) -> None:
        self.ring = ring
        self.device = device
        self.max_window = window
        self.window = window
        self.until = 0.0
        self.active = False
        self.slept_at: float | None = None  # when the ring last went back to sleeping on its kick fd
        self.on_error = on_error
        self._clock = clock

    def start(self) -> bool:
        """The ring was just served after a kick: adapt the window, then (if it is not zero) suppress kicks and
        poll until it passes with nothing new. Returns True if the poller must be added to the loop."""
        now = self._clock()
        if self.slept_at is not None:
            slept = now - self.slept_at
            self.slept_at = None
            if slept <= self.max_window:
                self.window = min(self.max_window, max(2 * self.window, POLL_GROW_START))
            else:
                half = self.window / 2
                self.window = half if half >= POLL_GROW_START else 0.0
        if self.window <= 0:
            self.slept_at = now  # sleeping on the kick fd from now
            return False
        vq = self.device.queues[self.ring.index]
        if vq is None or vq.broken:
            return False
        vq.disable_notifications()  # with EVENT_IDX: avail_event one behind, no kick while we poll
        self.until = now + self.window
        if self.active:
            return False
        self.active = True
        return True

    def poll(self) -> bool:
        ring = self.ring
        vq = self.device.queues[ring.index]
        if vq is None or not ring.started or not ring.enabled:
            # Stopped (GET_VRING_BASE, disconnect) or disabled: whoever starts it again serves it, and a new
            # SplitVirtqueue (or process() on re-enable) re-arms kicks. Guest memory may be gone: touch nothing.
            self.active = False
            return False
        if not vq.has_avail():
            if self._clock() < self.until:
                return True
            # Idle for the whole window: re-arm kicks, then re-check (enable_notifications fences between the
            # store and the load, so a buffer added meanwhile is either seen here or kicks us).
            if not vq.enable_notifications():
                self.active = False
                self.slept_at = self._clock()
                return False
        try:
            ring.serve(self.device)
        except Exception:
            self.active = False
            self.on_error(ring)
            return False
        if vq.broken:
            self.active = False
            return False
        vq.disable_notifications()  # with EVENT_IDX: avail_event one behind, no kick while we poll
        self.until = self._clock() + self.window
        return True
