"""A full memory fence for the ring code, in pure CPython.

Why: notification suppression has a lost-wakeup race. The device re-enables notifications (a store to
avail_event or used.flags) and then re-reads avail.idx (a load). x86 may satisfy that load before the store is
visible to the other CPU, so a buffer the driver added in between is seen by nobody and the queue stalls until the
next unrelated kick. Likewise before reading used_event after publishing used.idx. Only a full fence (mfence or a
locked instruction) orders a store before a later load; plain Python attribute and memoryview writes emit none.

How: acquiring an uncontended `threading.Lock` runs an atomic compare-and-exchange in the C runtime (glibc's
semaphore under CPython's lock), and releasing it an atomic add. On x86 both are `lock`-prefixed instructions, and
a locked instruction is a full barrier: no later load is satisfied before an earlier store is visible. That is the
guarantee this module gives, on x86-64, the platform this project targets. (On arm64 those atomics have only
acquire/release semantics, which do not order a store before a later load; a port there needs a real fence.)
Each ring gets its own `Fence` (one lock each), so rings served by different threads never contend on it; the
lock is never held across anything. This is the one place the ring layer touches `threading`; it creates no
threads.
"""

from __future__ import annotations

import threading


class Fence:
    """A callable full fence with a private lock: `fence()` orders earlier stores before later loads."""

    __slots__ = ("_acquire", "_release")

    def __init__(self) -> None:
        lock = threading.Lock()
        self._acquire = lock.acquire
        self._release = lock.release

    def __call__(self) -> None:
        self._acquire()
        self._release()


full_fence = Fence()  # for code without a ring of its own (the host-side driver)
