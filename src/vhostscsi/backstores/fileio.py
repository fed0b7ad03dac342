"""LIO's fileio engine: a (usually sparse) file, or a block device, through the page cache.

write_back=false is LIO's O_DSYNC mode: every write is durable when it completes, so the LUN
can honestly report its write cache as disabled. FUA on a write-back LUN uses RWF_DSYNC for
that one write only. Holes stand for unmapped blocks; a file shorter than the LUN reads as
zeros past its end, as a freshly created sparse file should.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence

from vhostscsi.backstores import linux
from vhostscsi.backstores.errors import BackstoreError
from vhostscsi.backstores.fdstore import FdBackstore
from vhostscsi.backstores.iov import preadv_full, pwritev_full

__all__ = ["FileIOBackstore"]

_RWF_DSYNC = getattr(os, "RWF_DSYNC", 0x2)


def _punch_hole(fd: int, offset: int, length: int) -> None:
    linux.fallocate(fd, linux.FALLOC_FL_PUNCH_HOLE | linux.FALLOC_FL_KEEP_SIZE, offset, length)


def _zero_range(fd: int, offset: int, length: int) -> None:
    linux.fallocate(fd, linux.FALLOC_FL_ZERO_RANGE, offset, length)


class FileIOBackstore(FdBackstore):
    """Buffered I/O on a file or block device path."""

    plugin = "fileio"

    def __init__(
        self,
        name: str,
        path: str,
        size: int = 0,
        block_size: int = 512,
        write_back: bool = True,
        readonly: bool = False,
    ) -> None:
        flags = os.O_RDONLY if readonly else os.O_RDWR | os.O_CREAT
        if not write_back and not readonly:
            flags |= os.O_DSYNC
        fd = self._open(path, flags, name)
        self.path = path
        self.write_back = write_back
        try:
            self.is_blockdev = linux.is_block_device(fd)
            real = linux.blk_size(fd) if self.is_blockdev else os.fstat(fd).st_size
        except OSError as exc:
            os.close(fd)
            raise BackstoreError.from_oserror(exc, f"{name}: cannot inspect {path}") from None
        # Without a configured size the LUN follows the file (and refresh_size re-reads it).
        self.follows_file = self.is_blockdev or size <= 0
        if self.follows_file:
            # LIO's fileio on a block device uses the device's size, whatever was asked.
            size = real
        if size <= 0:
            os.close(fd)
            raise BackstoreError(errno.EINVAL, f"{name}: {path} is empty and no size was given")
        super().__init__(name, fd, size, block_size, readonly)

    # --- data path ---------------------------------------------------------------------------
    def readv(self, offset: int, bufs: Sequence[memoryview]) -> None:
        self._check_open()
        preadv_full(self.fd, offset, bufs, self.name, eof_zero=not self.is_blockdev)

    def writev(self, offset: int, bufs: Sequence[memoryview], fua: bool = False) -> None:
        self._check_writable("write")
        # With O_DSYNC (write_back=false) every write is already durable.
        flags = _RWF_DSYNC if fua and self.write_back else 0
        pwritev_full(self.fd, offset, bufs, self.name, flags)

    def native_io(self) -> tuple[object, ...] | None:
        """preadv/pwritev on the fd, RWF_DSYNC for FUA only with write_back (as `writev`); a read past the end
        of a shorter file comes back short and is redone by `readv` (which zero-fills)."""
        return None if self.closed else ("fd", self.fd, self.write_back, 1)

    def unmap(self, offset: int, length: int) -> None:
        """Punch a hole (file) or discard (block device); blocks read back as zeros."""
        self._check_writable("unmap")
        if self.is_blockdev:
            self._space_op(linux.blk_discard, offset, length, "unmap")
        else:
            self._space_op(_punch_hole, offset, length, "unmap")

    def write_zeroes(self, offset: int, length: int) -> None:
        """Zero a range, keeping it allocated (WRITE SAME without UNMAP must not free space)."""
        self._check_writable("write zeroes")
        if self.is_blockdev:
            self._space_op(linux.blk_zeroout, offset, length, "write zeroes")
        else:
            self._space_op(_zero_range, offset, length, "write zeroes")

    def _space_op(self, op: Callable[[int, int, int], None], offset: int, length: int, what: str) -> None:
        """Run a space-management call; where the medium lacks it, writing zeros keeps the contract."""
        if length <= 0:
            return
        try:
            op(self.fd, offset, length)
            self._sync_if_writethrough()
            return
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
                raise BackstoreError.from_oserror(exc, self._io(f"{what} {offset}+{length}")) from None
        self._write_zero_blocks(offset, length)

    def _sync_if_writethrough(self) -> None:
        """fallocate and the discard ioctls bypass O_DSYNC: sync them as a write would be."""
        if not self.write_back:
            os.fdatasync(self.fd)

    def refresh_size(self) -> int:
        """Re-read the size of a block device, or of a file opened without a configured size;
        a configured size (fd_dev_size) stays as configured, as in LIO."""
        self._check_open()
        if self.follows_file:
            try:
                self.size = linux.blk_size(self.fd) if self.is_blockdev else os.fstat(self.fd).st_size
            except OSError as exc:
                raise BackstoreError.from_oserror(exc, self._io("size")) from None
        return self.size
