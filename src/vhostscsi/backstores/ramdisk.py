"""Memory-backed LUNs (LIO's rd_mcp): for tests and benchmarks, lost when the process ends.

The memory is one private anonymous mapping, so untouched or unmapped pages cost nothing
(the kernel hands out the shared zero page) and a 1 TiB ramdisk can be created on a small box
as long as the guest does not fill it.
"""

from __future__ import annotations

import errno
import mmap
from collections.abc import Sequence

from vhostscsi.backstores.base import Backstore
from vhostscsi.backstores.errors import BackstoreError
from vhostscsi.backstores.iov import copy_in, copy_out, total_len, zero_fill

__all__ = ["RamdiskBackstore"]

_PAGE = mmap.PAGESIZE


class RamdiskBackstore(Backstore):
    """A disk in anonymous memory; reads and writes are plain memory copies."""

    plugin = "ramdisk"

    def __init__(self, name: str, size: int, block_size: int = 512) -> None:
        super().__init__(name, size, block_size, readonly=False)
        if size <= 0:
            raise BackstoreError(errno.EINVAL, f"{name}: a ramdisk needs a size above 0")
        try:
            self._map = mmap.mmap(
                -1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0)
            )
        except OSError as exc:
            raise BackstoreError.from_oserror(exc, f"{name}: cannot allocate {size} bytes") from None
        self._mem = memoryview(self._map)

    def _span(self, offset: int, length: int) -> memoryview:
        self._check_open()
        if offset < 0 or length < 0 or offset + length > self.size:
            raise BackstoreError(
                errno.EINVAL, f"{self.name}: range {offset}+{length} outside the {self.size}-byte disk"
            )
        return self._mem[offset : offset + length]

    def readv(self, offset: int, bufs: Sequence[memoryview]) -> None:
        if len(bufs) == 1 and not self.closed:  # one buffer (a 4 KiB read): one copy, no list, no generator
            b = bufs[0]
            end = offset + b.nbytes
            if 0 <= offset and end <= self.size:
                try:
                    b[:] = self._mem[offset:end]
                    return
                except (TypeError, ValueError):
                    pass  # not a flat byte view (nothing was copied): the general path casts it
        copy_out(self._span(offset, total_len(bufs)), bufs)

    def writev(self, offset: int, bufs: Sequence[memoryview], fua: bool = False) -> None:
        if len(bufs) == 1 and not self.closed and not self.readonly:  # one buffer: as readv
            b = bufs[0]
            end = offset + b.nbytes
            if 0 <= offset and end <= self.size:
                try:
                    self._mem[offset:end] = b
                    return
                except (TypeError, ValueError):
                    pass
        self._check_writable("write")
        copy_in(self._span(offset, total_len(bufs)), bufs)

    def native_io(self) -> tuple[object, ...] | None:
        """The whole disk as one buffer: the C path copies between it and guest memory (bounds-checked)."""
        return None if self.closed else ("mem", self._mem)

    def flush(self) -> None:
        self._check_open()

    def unmap(self, offset: int, length: int) -> None:
        """Give whole pages back to the kernel (they read as zeros again); zero the edges."""
        self._check_writable("unmap")
        span = self._span(offset, length)
        start = -(-offset // _PAGE) * _PAGE
        end = (offset + length) // _PAGE * _PAGE
        if end > start and hasattr(self._map, "madvise"):
            self._map.madvise(mmap.MADV_DONTNEED, start, end - start)
            zero_fill([span[: start - offset], span[end - offset :]])
        else:
            zero_fill([span])

    def write_zeroes(self, offset: int, length: int) -> None:
        self.unmap(offset, length)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._mem.release()
        self._map.close()
