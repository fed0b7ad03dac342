"""A one-shot timerfd on CLOCK_MONOTONIC, for the event loop: sub-millisecond deadlines without spinning.

Why not the loop's own timers: epoll_wait's timeout is in milliseconds, and a held interrupt must be released
within its bound (tens to hundreds of microseconds), while the daemon sleeps in epoll like any other time. A
timerfd is an fd like a kick eventfd: registered in the loop at data priority, readable when it expires.

`os.timerfd_create` exists from Python 3.13; before that the two libc calls go through ctypes (arming costs
~1-2 us, once per hold). Deadlines are `time.monotonic()` values: CPython reads CLOCK_MONOTONIC on Linux, so
an absolute timer (TFD_TIMER_ABSTIME) fires at exactly the deadline the caller computed.
"""

from __future__ import annotations

import ctypes
import os

CLOCK_MONOTONIC = 1
TFD_TIMER_ABSTIME = 1
_FLAGS = os.O_NONBLOCK | os.O_CLOEXEC  # TFD_NONBLOCK, TFD_CLOEXEC


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_libc = None if hasattr(os, "timerfd_create") else ctypes.CDLL(None, use_errno=True)


def _create() -> int:
    if _libc is None:
        return os.timerfd_create(CLOCK_MONOTONIC, flags=_FLAGS)  # type: ignore[attr-defined]
    fd = _libc.timerfd_create(CLOCK_MONOTONIC, _FLAGS)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"timerfd_create: {os.strerror(err)}")
    return fd


def _settime(fd: int, flags: int, ns: int) -> None:
    if _libc is None:
        os.timerfd_settime_ns(fd, flags=flags, initial=ns)  # type: ignore[attr-defined]
        return
    spec = _Itimerspec(_Timespec(0, 0), _Timespec(ns // 1_000_000_000, ns % 1_000_000_000))
    if _libc.timerfd_settime(fd, flags, ctypes.byref(spec), None) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"timerfd_settime: {os.strerror(err)}")


class Timerfd:
    """One non-blocking, close-on-exec timerfd. `arm_at(deadline)` (monotonic seconds) replaces any earlier
    arming; `disarm()` stops it; `consume()` reads (and clears) an expiry; `close()` is idempotent."""

    __slots__ = ("fd",)

    def __init__(self) -> None:
        self.fd: int | None = _create()

    def arm_at(self, deadline: float) -> None:
        """Expire at `deadline` (time.monotonic() seconds); a deadline already past expires at once."""
        assert self.fd is not None
        _settime(self.fd, TFD_TIMER_ABSTIME, max(1, int(deadline * 1e9)))

    def disarm(self) -> None:
        assert self.fd is not None
        _settime(self.fd, 0, 0)

    def consume(self) -> int:
        """Expiries since the last read (0 if none: the non-blocking read found nothing)."""
        assert self.fd is not None
        try:
            return int.from_bytes(os.read(self.fd, 8), "little")
        except BlockingIOError:
            return 0

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
