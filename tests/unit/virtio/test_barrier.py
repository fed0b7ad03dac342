"""The fence helper rests on two facts about the runtime; check them rather than trust them."""

from __future__ import annotations

import platform
import sys

from vhostscsi.virtio.barrier import Fence, full_fence


def test_runtime_locks_are_semaphores_on_x86() -> None:
    # CPython's lock = a POSIX semaphore (atomic cmpxchg to take, atomic add to give): locked instructions.
    assert sys.thread_info.name == "pthread" and sys.thread_info.lock == "semaphore"
    assert platform.machine() in ("x86_64", "AMD64")


def test_fence_can_be_called_back_to_back() -> None:
    for _ in range(1000):
        full_fence()  # never holds the lock between calls, so it can never deadlock or contend with itself
    f = Fence()
    f()
    f()
