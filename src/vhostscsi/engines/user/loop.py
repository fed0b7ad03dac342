"""The daemon's event loop: one epoll set for listening sockets, vhost-user control sockets and kick eventfds.

asyncio is deliberately not used: every wake-up on the data path is a plain callback that processes a whole
avail ring synchronously, and nothing here needs coroutines. Keeping the loop this small also keeps it cheap
to run one per queue later (a thread or process each), which a future issue asks for.

The loop uses `select.epoll` directly with a dict fd -> (priority, callback): no selector key objects, no
sort when a wake-up reports one fd (the common case on the data path). Guarantees, relied on by the daemon:

- Within one wake-up, callbacks run by priority (`PRIO_DATA`, then `PRIO_CONTROL`, then `PRIO_ACCEPT`), and
  in the kernel's order within one priority.
- A callback may remove (and close) any fd, also one reported later in the same batch: that fd's callback is
  then skipped. An fd number re-registered in the same batch (closed and reused) is not called for the old
  event either; being level-triggered, epoll reports it again on the next wake-up if it is still readable.
- Timers run after the batch's callbacks; signals arrive as ordinary callbacks (never inside a handler).
- Pollers (`add_poller`): while any is active the loop does not sleep (epoll with timeout 0) and calls each
  active poller once per iteration, round-robin, after the fd callbacks; a poller returns False to leave.
  A poller must bound itself (the ring poller in `rings.py` stops after a short idle window), so an idle
  daemon always ends up blocked in epoll_wait.
"""

from __future__ import annotations

import heapq
import itertools
import os
import select
import signal
import socket
import time
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Callable, Protocol

Callback = Callable[[], None]

# Lower runs first within one wake-up: data before control (so a ring is drained before GET_VRING_BASE stops
# it), control before new connections (so a disconnect frees the target before its successor is accepted).
PRIO_DATA = 0
PRIO_CONTROL = 1
PRIO_ACCEPT = 2

_EPOLLIN = select.EPOLLIN
_by_priority = itemgetter(0)


class Poller(Protocol):
    def poll(self) -> bool:
        """Do a bounded amount of work; return True to be called again on the next iteration."""
        ...


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
    """Readers, timers, pollers and signals on one epoll set; single-threaded by design."""

    def __init__(self) -> None:
        self._ep = select.epoll()
        # fd -> (priority, callback); the tuple's identity tells a stale event from a re-registration.
        self._readers: dict[int, tuple[int, Callback]] = {}
        self._timers: list[Timer] = []
        self._pollers: list[Poller] = []
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
        """Watch ``fd`` for reading (level-triggered). Raises OSError if epoll refuses it (a regular file)."""
        if fd in self._readers:
            raise KeyError(f"fd {fd} is already registered")
        self._ep.register(fd, _EPOLLIN)
        self._readers[fd] = (priority, callback)

    def remove_reader(self, fd: int) -> None:
        """Stop watching ``fd``; a no-op if it is not watched. Call it before closing the fd."""
        if self._readers.pop(fd, None) is None:
            return
        try:
            self._ep.unregister(fd)
        except (OSError, ValueError):  # already closed: the kernel dropped it from the set itself
            pass

    def has_reader(self, fd: int) -> bool:
        return fd in self._readers

    # -- pollers -------------------------------------------------------------------------------------------
    def add_poller(self, poller: Poller) -> None:
        """Call ``poller.poll()`` once per iteration (no sleeping meanwhile) until it returns False."""
        if poller not in self._pollers:
            self._pollers.append(poller)

    def remove_poller(self, poller: Poller) -> None:
        try:
            self._pollers.remove(poller)
        except ValueError:
            pass

    @property
    def polling(self) -> bool:
        return bool(self._pollers)

    # -- timers --------------------------------------------------------------------------------------------
    def call_later(self, delay: float, callback: Callback) -> Timer:
        timer = Timer(time.monotonic() + delay, next(self._seq), callback)
        heapq.heappush(self._timers, timer)
        return timer

    # -- signals -------------------------------------------------------------------------------------------
    def add_signal_handler(self, signum: int, callback: Callable[[int], None]) -> None:
        """Deliver ``signum`` as an ordinary callback from the loop (never from inside a signal handler).

        Python's C-level handler writes the signal number to the wakeup socket, which wakes epoll;
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
        """Interrupt a blocking epoll wait from another thread (a zero byte is no signal number)."""
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass

    # -- running -------------------------------------------------------------------------------------------
    def stop(self) -> None:
        self._running = False
        self.wake()

    def _next_timeout(self) -> float:
        """Seconds epoll may sleep: -1 (forever) without timers."""
        timers = self._timers
        while timers and timers[0].cancelled:
            heapq.heappop(timers)
        if not timers:
            return -1
        return max(0.0, timers[0].when - time.monotonic())

    def _run_due_timers(self) -> None:
        timers = self._timers
        if not timers:
            return
        now = time.monotonic()
        while timers and (timers[0].cancelled or timers[0].when <= now):
            timer = heapq.heappop(timers)
            if not timer.cancelled:
                timer.callback()

    def run_once(self, timeout: float | None = None) -> None:
        """One iteration: wait (not at all while a poller is active), run callbacks, timers, pollers."""
        if self._pollers:
            wait = 0.0
        else:
            wait = self._next_timeout()
            if timeout is not None:
                wait = timeout if wait < 0 else min(wait, timeout)
        events = self._ep.poll(wait)
        readers = self._readers
        if len(events) == 1:
            entry = readers.get(events[0][0])
            if entry is not None:
                entry[1]()
        elif events:
            batch = []
            for fd, _mask in events:
                entry = readers.get(fd)
                if entry is not None:
                    batch.append((entry[0], fd, entry))
            batch.sort(key=_by_priority)  # stable: the kernel's order within one priority
            for _prio, fd, entry in batch:
                # A callback earlier in this batch may have removed this fd (a disconnect drops its kick fds),
                # or removed it and registered the number again for something else.
                if readers.get(fd) is entry:
                    entry[1]()
        self._run_due_timers()
        pollers = self._pollers
        if pollers:
            for p in list(pollers):
                if not p.poll():
                    self.remove_poller(p)

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
        self._readers.clear()
        self._pollers.clear()
        self._ep.close()
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
