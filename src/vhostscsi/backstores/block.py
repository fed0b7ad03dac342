"""LIO's iblock engine: a block device with O_DIRECT, so the host page cache is not a second
cache under the guest's own.

Guest buffers are page-aligned almost always, so the fast path hands them to the kernel as they
are. Only when the kernel refuses them (EINVAL: a buffer or length off the device's alignment)
or the range itself is off the device's logical blocks do we go through an aligned bounce
buffer, reading the edge blocks first for a write (read-modify-write).
"""

from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Sequence
from pathlib import Path

from vhostscsi.backstores import linux
from vhostscsi.backstores.errors import BackstoreError
from vhostscsi.backstores.fdstore import FdBackstore
from vhostscsi.backstores.iov import copy_in, copy_out, preadv_full, pwritev_full, total_len

__all__ = ["BlockBackstore"]

_RWF_DSYNC = getattr(os, "RWF_DSYNC", 0x2)


class BlockBackstore(FdBackstore):
    """A block device opened with O_DIRECT; size, alignment and read-only state come from it."""

    plugin = "block"

    def __init__(
        self, name: str, path: str, block_size: int | None = None, readonly: bool = False
    ) -> None:
        flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_DIRECT
        fd = self._open(path, flags, name)
        self.path = path
        try:
            if not linux.is_block_device(fd):
                raise BackstoreError(
                    errno.ENOTBLK, f"{name}: {path} is not a block device: use a fileio backstore for files"
                )
            size = linux.blk_size(fd)
            self.align = max(512, linux.blk_logical_block_size(fd))
            readonly = readonly or linux.blk_readonly(fd)
        except OSError as exc:
            os.close(fd)
            if isinstance(exc, BackstoreError):
                raise
            raise BackstoreError.from_oserror(exc, f"{name}: cannot inspect {path}") from None
        block_size = block_size or self.align
        if block_size < self.align:
            os.close(fd)
            raise BackstoreError(
                errno.EINVAL,
                f"{name}: block_size {block_size} is below the device's logical block size {self.align}",
            )
        super().__init__(name, fd, size, block_size, readonly)

    @property
    def write_cache(self) -> bool | None:
        """Whether the device's queue has a volatile write cache ("write back"), or None when
        sysfs does not say. LIO's iblock reports *this* as WCE (caching page, DPOFUA, FUA
        accepted), not attrib/emulate_write_cache."""
        st = os.fstat(self.fd)
        base = Path(f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")
        for queue in (base / "queue", base / ".." / "queue"):  # a partition uses its disk's queue
            try:
                return (queue / "write_cache").read_text().strip() == "write back"
            except OSError:
                continue
        return None

    @property
    def unmap_zeroes_data(self) -> bool:
        """Discard does not promise zeros on a generic device; write_zeroes is the safe path."""
        return False

    def native_io(self) -> tuple[object, ...] | None:
        """preadv/pwritev on the O_DIRECT fd when offset and length are multiples of the device's alignment;
        a buffer the kernel refuses (EINVAL) sends the request back to `readv`/`writev` and their bounce buffer."""
        return None if self.closed else ("fd", self.fd, True, self.align)

    def _bounce(self, offset: int, length: int) -> tuple[int, mmap.mmap]:
        """An aligned buffer covering [offset, offset+length) rounded out to device blocks."""
        start = offset - offset % self.align
        end = -(-(offset + length) // self.align) * self.align
        return start, mmap.mmap(-1, end - start)

    # --- data path -----------------------------------------------------------------------------
    def readv(self, offset: int, bufs: Sequence[memoryview]) -> None:
        self._check_open()
        length = total_len(bufs)
        if offset % self.align == 0 and length % self.align == 0:
            try:
                preadv_full(self.fd, offset, bufs, self.name, eof_zero=False)
                return
            except BackstoreError as exc:
                if exc.errno != errno.EINVAL:
                    raise
        self._bounced_read(offset, length, bufs)

    def _bounced_read(self, offset: int, length: int, bufs: Sequence[memoryview]) -> None:
        start, buf = self._bounce(offset, length)
        with buf, memoryview(buf) as view:
            preadv_full(self.fd, start, [view], self.name, eof_zero=False)
            copy_out(view[offset - start : offset - start + length], bufs)

    def writev(self, offset: int, bufs: Sequence[memoryview], fua: bool = False) -> None:
        self._check_writable("write")
        flags = _RWF_DSYNC if fua else 0
        length = total_len(bufs)
        if offset % self.align == 0 and length % self.align == 0:
            try:
                pwritev_full(self.fd, offset, bufs, self.name, flags)
                return
            except BackstoreError as exc:
                if exc.errno != errno.EINVAL:
                    raise
        self._bounced_write(offset, length, bufs, flags)

    def _bounced_write(self, offset: int, length: int, bufs: Sequence[memoryview], flags: int) -> None:
        start, buf = self._bounce(offset, length)
        with buf, memoryview(buf) as view:
            head = offset - start
            if head:
                preadv_full(self.fd, start, [view[: self.align]], self.name, eof_zero=False)
            if (offset + length) % self.align:
                last = view.nbytes - self.align
                preadv_full(self.fd, start + last, [view[last:]], self.name, eof_zero=False)
            copy_in(view[head : head + length], bufs)
            pwritev_full(self.fd, start, [view], self.name, flags)

    def unmap(self, offset: int, length: int) -> None:
        """BLKDISCARD, like LIO's iblock; the device decides what discarded blocks read as."""
        self._check_writable("unmap")
        if length <= 0:
            return
        try:
            linux.blk_discard(self.fd, offset, length)
        except OSError as exc:
            raise BackstoreError.from_oserror(exc, self._io(f"unmap {offset}+{length}")) from None

    def write_zeroes(self, offset: int, length: int) -> None:
        """BLKZEROOUT (the device's write-zeroes or the kernel writing zeros); plain writes if refused."""
        self._check_writable("write zeroes")
        if length <= 0:
            return
        if offset % self.align == 0 and length % self.align == 0:
            try:
                linux.blk_zeroout(self.fd, offset, length)
                return
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
                    raise BackstoreError.from_oserror(exc, self._io(f"write zeroes {offset}+{length}")) from None
            self._write_zero_blocks(offset, length)
            return
        self._bounced_write(offset, length, [memoryview(bytearray(length))], 0)

    def refresh_size(self) -> int:
        self._check_open()
        try:
            self.size = linux.blk_size(self.fd)
        except OSError as exc:
            raise BackstoreError.from_oserror(exc, self._io("size")) from None
        return self.size
