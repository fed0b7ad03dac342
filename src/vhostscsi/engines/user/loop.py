"""The daemon's event loop: one epoll set for listening sockets, vhost-user control sockets and kick eventfds.

asyncio is deliberately not used: every wake-up on the data path is a plain callback that processes a whole
avail ring synchronously, and nothing here needs coroutines. Keeping the loop this small also keeps it cheap
to run one per queue later (a thread or process each), which a future issue asks for.
"""

from __future__ import annotations

import heapq
import itertools
import os
import selectors
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Callable

Callback = Callable[[], None]

# Lower runs first within one wake-up: data before control (so a ring is drained before GET_VRING_BASE stops
# it), control before new connections (so a disconnect frees the target before its successor is accepted).
PRIO_DATA = 0
PRIO_CONTROL = 1
PRIO_ACCEPT = 2


@dataclass(order=True)
class Timer:
    """A one-shot timer; ``cancel()`` is cheap (lazy removal from the heap)."""

    when: float
    seq: int
    callback: Callback = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    """Readers, timers and signals on one selector; single-threaded by design."""

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._timers: list[Timer] = []
        self._seq = itertools.count()
        self._running = False
        self._signal_callbacks: dict[int, Callable[[int], None]] = {}
        self._old_wakeup_fd: int | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.add_reader(self._wake_r.fileno(), self._on_wakeup, PRIO_CONTROL)

    # -- readers -------------------------------------------------------------------------------------------
    def add_reader(self, fd: int, callback: Callback, priority: int = PRIO_CONTROL) -> None:
        self._sel.register(fd, selectors.EVENT_READ, (priority, callback))

    def remove_reader(self, fd: int) -> None:
        try:
            self._sel.unregister(fd)
        except (KeyError, ValueError):
            pass

    def has_reader(self, fd: int) -> bool:
        try:
            self._sel.get_key(fd)
        except (KeyError, ValueError):
            return False
        return True

    # -- timers --------------------------------------------------------------------------------------------
    def call_later(self, delay: float, callback: Callback) -> Timer:
        timer = Timer(time.monotonic() + delay, next(self._seq), callback)
        heapq.heappush(self._timers, timer)
        return timer

    # -- signals -------------------------------------------------------------------------------------------
    def add_signal_handler(self, signum: int, callback: Callable[[int], None]) -> None:
        """Deliver ``signum`` as an ordinary callback from the loop (never from inside a signal handler).

        Python's C-level handler writes the signal number to the wakeup socket, which wakes the selector;
        the Python-level handler is a no-op, so nothing runs at an arbitrary bytecode boundary.
        """
        if self._old_wakeup_fd is None:
            self._old_wakeup_fd = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        self._signal_callbacks[signum] = callback
        signal.signal(signum, lambda _s, _f: None)

    def _on_wakeup(self) -> None:
        try:
            data = self._wake_r.recv(4096)
        except BlockingIOError:
            return
        for signum in data:
            cb = self._signal_callbacks.get(signum)
            if cb is not None:
                cb(signum)

    def wake(self) -> None:
        """Interrupt a blocking ``select`` from another thread (a zero byte is no signal number)."""
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass

    # -- running -------------------------------------------------------------------------------------------
    def stop(self) -> None:
        self._running = False
        self.wake()

    def _next_timeout(self) -> float | None:
        while self._timers and self._timers[0].cancelled:
            heapq.heappop(self._timers)
        if not self._timers:
            return None
        return max(0.0, self._timers[0].when - time.monotonic())

    def _run_due_timers(self) -> None:
        now = time.monotonic()
        while self._timers and (self._timers[0].cancelled or self._timers[0].when <= now):
            timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.callback()

    def run_once(self, timeout: float | None = None) -> None:
        wait = self._next_timeout()
        if timeout is not None:
            wait = timeout if wait is None else min(wait, timeout)
        events = self._sel.select(wait)
        events.sort(key=lambda ev: ev[0].data[0])
        for key, _mask in events:
            # A callback earlier in this batch may have closed this fd (a disconnect drops its kick fds).
            try:
                current = self._sel.get_key(key.fd)
            except (KeyError, ValueError):
                continue
            if current.data is key.data:
                key.data[1]()
        self._run_due_timers()

    def run(self) -> None:
        self._running = True
        while self._running:
            self.run_once()

    def close(self) -> None:
        if self._old_wakeup_fd is not None:
            signal.set_wakeup_fd(self._old_wakeup_fd)
            self._old_wakeup_fd = None
        for signum in self._signal_callbacks:
            signal.signal(signum, signal.SIG_DFL)
        self._signal_callbacks.clear()
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()


def drain_eventfd(fd: int) -> int:
    """Read an eventfd's counter (non-blocking); 0 if nothing was pending, -1 if ``fd`` can never be read
    again (not an eventfd: a pipe at EOF, or an error), so the caller stops watching it instead of spinning."""
    try:
        data = os.read(fd, 8)
    except BlockingIOError:
        return 0
    except OSError:
        return -1
    return int.from_bytes(data, "little") if data else -1
