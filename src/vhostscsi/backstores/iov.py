"""Vectored I/O straight between a file descriptor and guest buffers.

One ``preadv``/``pwritev`` per IOV_MAX buffers, looping on short transfers: the kernel may stop
early (signals, page-cache pressure, EOF of a sparse file) and the guest must still get every
byte. Buffers are only ever sliced (a memoryview slice is a view, not a copy), so data moves
between the page cache and guest memory exactly once.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence

from vhostscsi.backstores.errors import BackstoreError

__all__ = ["IOV_MAX", "preadv_full", "pwritev_full", "zero_fill", "total_len", "copy_out", "copy_in"]

try:
    IOV_MAX = max(16, int(os.sysconf("SC_IOV_MAX")))
except (ValueError, OSError):  # pragma: no cover - every Linux has it
    IOV_MAX = 1024

_ZEROS = memoryview(bytes(1 << 16))


def total_len(bufs: Sequence[memoryview]) -> int:
    """Bytes covered by a buffer list."""
    return sum(b.nbytes for b in bufs)


def _flat(bufs: Sequence[memoryview]) -> list[memoryview]:
    """Byte-shaped views of the non-empty buffers (an empty iovec would look like EOF)."""
    out = []
    for b in bufs:
        if b.nbytes:
            out.append(b if b.format == "B" and b.ndim == 1 else b.cast("B"))
    return out


def _advance(views: list[memoryview], i: int, n: int) -> int:
    """Consume n bytes from views[i:], slicing the partly-done buffer in place; returns new i."""
    while n:
        size = views[i].nbytes
        if n >= size:
            n -= size
            i += 1
        else:
            views[i] = views[i][n:]
            n = 0
    return i


def zero_fill(views: Sequence[memoryview]) -> None:
    """Zero buffers without allocating: copy from a shared read-only block of zeros."""
    for v in views:
        v = v if v.format == "B" and v.ndim == 1 else v.cast("B")
        pos, size = 0, v.nbytes
        while pos < size:
            k = min(size - pos, _ZEROS.nbytes)
            v[pos : pos + k] = _ZEROS[:k]
            pos += k


def _full(
    op: Callable[[Sequence[memoryview], int], int],
    offset: int,
    bufs: Sequence[memoryview],
    what: str,
    done: int,
) -> tuple[list[memoryview], int, int] | None:
    """Finish a vectored transfer of which ``done`` bytes (-1: none tried yet) already moved;
    on a call that moves nothing, return (views, index, offset) of the stall for the caller
    to judge (EOF, full device)."""
    n = done
    try:
        views = _flat(bufs)
        i = 0
        if n > 0:
            offset += n
            i = _advance(views, 0, n)
        while i < len(views):
            n = op(views[i : i + IOV_MAX], offset)
            if n == 0:
                return views, i, offset
            offset += n
            i = _advance(views, i, n)
        return None
    except OSError as exc:
        raise BackstoreError.from_oserror(exc, f"{what} at byte {offset}") from None


def preadv_full(fd: int, offset: int, bufs: Sequence[memoryview], what: str, eof_zero: bool) -> None:
    """Fill every buffer from ``fd`` at ``offset``.

    At end of file the rest is zeros when ``eof_zero`` (a sparse fileio file shorter than its
    LUN), else it is an EIO: a block device that ends early has lost media.
    """
    n = -1
    if 0 < len(bufs) <= IOV_MAX:  # the common case: one syscall, no list building
        try:
            n = os.preadv(fd, bufs, offset)
        except OSError as exc:
            raise BackstoreError.from_oserror(exc, f"{what}: read at byte {offset}") from None
        if n == (bufs[0].nbytes if len(bufs) == 1 else total_len(bufs)):
            return
    stall = _full(lambda b, o: os.preadv(fd, b, o), offset, bufs, f"{what}: read", n)
    if stall is not None:
        views, i, at = stall
        if not eof_zero:
            raise BackstoreError(errno.EIO, f"{what}: read at byte {at}: unexpected end of device")
        zero_fill(views[i:])


def pwritev_full(fd: int, offset: int, bufs: Sequence[memoryview], what: str, flags: int = 0) -> None:
    """Write every buffer to ``fd`` at ``offset`` (``flags``: os.RWF_DSYNC for FUA)."""
    n = -1
    if 0 < len(bufs) <= IOV_MAX:  # the common case: one syscall, no list building
        try:
            n = os.pwritev(fd, bufs, offset, flags) if flags else os.pwritev(fd, bufs, offset)
        except OSError as exc:
            raise BackstoreError.from_oserror(exc, f"{what}: write at byte {offset}") from None
        if n == (bufs[0].nbytes if len(bufs) == 1 else total_len(bufs)):
            return
    def op(b: Sequence[memoryview], o: int) -> int:
        return os.pwritev(fd, b, o, flags) if flags else os.pwritev(fd, b, o)

    stall = _full(op, offset, bufs, f"{what}: write", n)
    if stall is not None:
        raise BackstoreError(errno.ENOSPC, f"{what}: write at byte {stall[2]}: no progress")


def copy_out(src: memoryview, bufs: Sequence[memoryview]) -> None:
    """Scatter ``src`` into ``bufs`` (memory to memory: the ramdisk and the bounce buffer)."""
    pos = 0
    for b in _flat(bufs):
        n = b.nbytes
        b[:] = src[pos : pos + n]
        pos += n


def copy_in(dst: memoryview, bufs: Sequence[memoryview]) -> None:
    """Gather ``bufs`` into ``dst``."""
    pos = 0
    for b in _flat(bufs):
        n = b.nbytes
        dst[pos : pos + n] = b
        pos += n
