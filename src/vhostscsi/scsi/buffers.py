"""Moving small replies into, and parameter lists out of, lists of guest buffers.

Only control-path commands (INQUIRY, MODE SENSE, UNMAP parameter lists, ...) copy through
these; READ and WRITE hand the guest's memoryviews to the backstore untouched.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["total", "scatter", "gather", "clip"]


def total(bufs: Sequence[memoryview]) -> int:
    """Byte length of a buffer list."""
    n = 0
    for b in bufs:
        n += b.nbytes
    return n


def scatter(bufs: Sequence[memoryview], data: bytes | bytearray | memoryview, n: int) -> int:
    """Copy the first ``n`` bytes of ``data`` across ``bufs``; returns the count copied."""
    n = min(n, len(data))
    src = memoryview(data)
    done = 0
    for b in bufs:
        if done >= n:
            break
        take = min(b.nbytes, n - done)
        b.cast("B")[:take] = src[done : done + take]
        done += take
    return done


def gather(bufs: Sequence[memoryview], n: int) -> bytes:
    """The first ``n`` bytes of ``bufs`` (fewer if the buffers are shorter) as one bytes."""
    parts = []
    left = n
    for b in bufs:
        if left <= 0:
            break
        take = min(b.nbytes, left)
        parts.append(b.cast("B")[:take])
        left -= take
    return b"".join(parts)


def clip(bufs: Sequence[memoryview], n: int) -> list[memoryview]:
    """A buffer list covering exactly the first ``n`` bytes of ``bufs`` (views, no copies)."""
    out = []
    left = n
    for b in bufs:
        if left <= 0:
            break
        if b.nbytes <= left:
            out.append(b)
            left -= b.nbytes
        else:
            out.append(b.cast("B")[:left])
            left = 0
    return out
